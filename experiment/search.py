"""Each strategy's settings chosen by an Optuna search (search.method: optuna): trials are runs of the normal loop,
validated and never tested, pruned when they fall behind, shared by workers through one study storage; the best
are then confirmed as ordinary runs, which the summary and the verdict compare."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import socket
import time
import warnings
from pathlib import Path

from config import short_key, single_run_config
from experiment.inputs import Inputs, baseline_of
from experiment.one_run import RunInputs, run_one
from experiment.plan import Run, folds_of
from experiment.pruning import kept_at_rung, make_pruner, rung_steps
from experiment.search_workers import (
    StudyPlace,
    interrupted,
    left_by_stopped_workers,
    release_abandoned,
    running_elsewhere,
    storage_url,
)
from records.checkpoints import drop_checkpoints
from records.results import run_folder, save_record
from schema.search import describe_range, outside_range
from strategies import STRATEGIES
from records.shared import SEARCH_FOLDER
from tasks import TASKS
from trainer import Decision, RunPaused
from utils import ConfigError, stable_hash
from records.shape import RunRecord

logger = logging.getLogger("bertlab")
# optuna is imported inside the functions that use it: a grid never loads it (nor its database layer).

# Trials drawn before TPE models the scores: Optuna's 10 would leave a search of 8 trials unmodelled
# throughout; the config's own setting and three spread over the space give it its first model.
STARTUP_TRIALS = 4
POLL_SECONDS = 5  # how often a worker done with its trials looks whether other workers' trials have ended
# Trials a worker claims at once and trains to each rung together under successive halving: the config's own
# setting and the three random draws first, then four of TPE's (a search of 8 trials in two rounds).
ROUND_SIZE = STARTUP_TRIALS


def searched_space(cfg, strategy: str) -> dict[str, dict | list]:
    """The ranges a strategy's search varies: its own default space, with search.space's keys on top (a
    `strategies.<name>.` key only for that strategy)."""
    space = {f"strategies.{strategy}.{key}": spec for key, spec in STRATEGIES[strategy].space.items()}
    for key, spec in cfg.search.space.items():
        if not key.startswith("strategies.") or key.startswith(f"strategies.{strategy}."):
            space[key] = spec
    return space


def distribution(spec: dict | list):
    """The Optuna distribution of a range or a list of choices (integers when both ends of a range are)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(spec, list):
        return CategoricalDistribution(spec)
    if all(isinstance(spec[end], int) for end in ("low", "high")):
        return IntDistribution(spec["low"], spec["high"], log=spec.get("log", False))
    return FloatDistribution(spec["low"], spec["high"], log=spec.get("log", False))


def setting_of(cfg, key: str):
    """The value a config gives a dotted key (a strategy's rate left null: the rate it runs at)."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    if node is None and key.endswith(".learning_rate") and key.startswith("strategies."):
        return cfg.training.learning_rate
    return node


@dataclasses.dataclass
class Study:
    """One strategy's search: its Optuna study, the run its trials vary (the config's own setting) and its space."""

    template: Run
    space: dict[str, dict | list]
    optuna_study: object
    place: StudyPlace  # where the study lives, and how its workers share it
    lock: object  # held while trials are counted and one is claimed, so workers never exceed `trials`
    trials: int  # search.trials: how many it runs
    rungs: list[int]  # the optimizer steps where successive halving judges trials (none for other pruners)
    # what a trial reports after each evaluation, best so far: val_loss or the metric it is chosen by
    judged_on: str
    maximizes: bool  # whether the study's metric is better higher

    @property
    def name(self) -> str:
        return self.optuna_study.study_name

    def rung_score(self, history: list[dict]) -> float:
        """What a trial reports after its last evaluation in `history`: the best value so far of what it is judged
        on, as the study ranks it (a loss negated when the study's metric is better higher)."""
        values = [entry[self.judged_on] for entry in history]
        if self.judged_on == "val_loss":
            return -min(values) if self.maximizes else min(values)
        return max(values) if self.maximizes else min(values)

    def report(self, trial, history: list[dict], reported: set[int]) -> None:
        """Report to the study a trial's score after each evaluation of `history` whose step is not in `reported`
        (which then holds it)."""
        for i, entry in enumerate(history):
            if entry["step"] not in reported:
                trial.report(self.rung_score(history[: i + 1]), step=entry["step"])
                reported.add(entry["step"])


def open_studies(templates: list[Run], inputs: Inputs, cfg) -> list[Study]:
    """The study of each strategy, created or loaded from the storage, with the config's own setting enqueued
    as its first trial. A study is named by what its trials share (strategy, data, every setting it does not
    search, the space, what they are judged on), so that a changed config starts a new one and an unchanged one
    continues."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this runner logs each trial in its own words
    folder = Path(cfg.output.dir) / SEARCH_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    place = StudyPlace(folder, storage_url(cfg.search.storage))
    logger.info("search: the studies live in %s", place.describe())
    task = TASKS[cfg.data.task]
    metric = cfg.training.early_stopping.metric
    maximizes = task.is_better(metric, 1.0, 0.0)
    judged_on = "val_loss" if cfg.search.prune_on == "val_loss" else metric
    studies = []
    for template in templates:
        space = searched_space(cfg, template.strategy)
        canonical, _ = single_run_config(
            template.cfg, {key: first_value(spec) for key, spec in space.items()}
        )
        key = dataclasses.replace(template, cfg=canonical).key(inputs.data_for(template).fingerprint)
        shared = {"run": key, "space": space, "metric": metric, "judged_on": judged_on}
        name = f"{template.strategy}-{stable_hash(shared)}"
        budget = budget_steps(template, inputs)
        study = optuna.create_study(
            study_name=name,
            storage=place.storage,
            load_if_exists=True,
            direction="maximize" if maximizes else "minimize",
            pruner=make_pruner(cfg.search.pruner, budget),
        )
        own = {key: setting_of(template.cfg, key) for key in space}
        for key in (key for key, value in own.items() if outside_range(value, space[key])):
            logger.info(
                "search %s: the config's own %s, %s, lies outside the range searched (%s); it is still "
                "the first trial",
                template.strategy,
                short_key(key),
                own[key],
                describe_range(space[key]),
            )
        with place.lock(name):  # workers starting together would each queue it
            study.enqueue_trial(own, skip_if_exists=True)
        rungs = rung_steps(budget) if cfg.search.pruner == "successive_halving" else []
        studies.append(
            Study(
                template,
                space,
                study,
                place,
                place.lock(name),
                cfg.search.trials,
                rungs,
                judged_on,
                maximizes,
            )
        )
    return studies


def readable(params: dict) -> dict:
    """A trial's settings with rates and other real numbers to three significant digits: what its run uses and
    its records show (a difference below that changes no result that can be measured)."""
    return {
        key: float(f"{value:.3g}") if isinstance(value, float) else value for key, value in params.items()
    }


def first_value(spec: dict | list):
    return spec[0] if isinstance(spec, list) else spec["low"]


def budget_steps(run: Run, inputs: Inputs) -> int:
    """The optimizer steps of a trial that runs its whole epoch budget."""
    t = run.cfg.training
    _, encoded = inputs.for_run(run)
    batches = math.ceil(len(encoded.ids["train"]) / t.batch_size)
    return math.ceil(batches / t.gradient_accumulation_steps) * t.num_epochs


def counted(trial, left: set[int]) -> bool:
    """Whether a trial counts against search.trials: all but those a stopped worker `left` (they run again)
    and draws that repeated an earlier trial's setting (another is drawn)."""
    return trial.number not in left and "repeats" not in trial.user_attrs


def claim_trial(study: Study, trials: int, sampler_seed: int):
    """A new trial of the study for this worker (which holds the study's lock), or None once `trials` are done
    or taken, or while its next draw waits for the first trials, which other workers run, to end (so that the
    draws are those one worker would make)."""
    from optuna.trial import TrialState

    trials_so_far = study.optuna_study.get_trials(deepcopy=False)
    left = left_by_stopped_workers(trials_so_far)
    claimed = [t for t in trials_so_far if t.state != TrialState.WAITING]
    taken = [t for t in claimed if counted(t, left)]
    repeats = sum("repeats" in t.user_attrs for t in claimed)
    # a space of few choices may hold fewer settings than trials
    if len(taken) >= trials or repeats >= trials:
        return None
    queued = len(claimed) < len(trials_so_far)  # a setting waiting to run (again): taken without a draw
    first = taken[:STARTUP_TRIALS]  # the counted ones: a repeat or a rerun never holds the draws up
    if not queued and len(claimed) >= STARTUP_TRIALS and not all(t.state.is_finished() for t in first):
        return None  # TPE draws once the first trials have their scores: drawn sooner, it would draw blind
    study.optuna_study.sampler = sampler_for(len(claimed), sampler_seed)
    with warnings.catch_warnings():  # a first trial outside the range: said once, in open_studies
        warnings.filterwarnings("ignore", message="Fixed parameter .* out of range", category=UserWarning)
        trial = study.optuna_study.ask({key: distribution(spec) for key, spec in study.space.items()})
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
    trial.set_user_attr("position", len(taken) + 1)  # its place among the counted trials, for the log
    study.place.lease(study.name, trial).beat()  # alive from the start, before its run is built
    return trial


def sampler_for(claimed: int, sampler_seed: int):
    """The sampler of a study's next draw, after `claimed` trials. The first STARTUP_TRIALS: Optuna's scrambled
    Sobol sequence, which spreads them over the space (on banking77, three random draws fell in the upper third
    of every strategy's log range, and TPE then spent its next draws on the rest). Then TPE, seeded by the
    trials claimed so far (a repeated draw included, so the next draw differs), not once per process: workers
    with one seed would draw the same settings, and the draws stay the same however many workers share the
    study. Hashed: consecutive seeds give numpy's generator nearly the same first draws (0.417 and 0.436 for
    seeds 1 and 2)."""
    import optuna

    if claimed < STARTUP_TRIALS:  # the sequence goes on from the study's own count of its draws
        # "experimental": its interface may change, which pinning optuna covers
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(
                qmc_type="sobol", scramble=True, seed=sampler_seed, warn_independent_sampling=False
            )
    seed = int(stable_hash([sampler_seed, claimed]), 16) % 2**32
    # the constant liar: the trials of a round, drawn before any of them has a score, are drawn apart
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS, constant_liar=True)


def claim_round(study: Study, trials: int, sampler_seed: int) -> list:
    """The trials this worker trains together next: ROUND_SIZE under successive halving (they wait for each
    other at its rungs), else one at a time (each draw then knows every earlier trial's score)."""
    claimed = []
    with study.lock:  # a whole round under one hold: rounds are those one worker would form, with their draws
        release_abandoned(study)  # trials that stopped workers left are failed, their settings queued again
        while len(claimed) < (ROUND_SIZE if study.rungs else 1):
            trial = claim_trial(study, trials, sampler_seed)
            if trial is None:
                break
            claimed.append(trial)
    return claimed


class TrialRun:
    """A claimed trial on its way through its round: its run, trained in stretches from rung to rung (paused in
    between with a checkpoint), reporting after every evaluation."""

    def __init__(self, study: Study, trial, inputs: Inputs):
        settings = readable(trial.params)
        point, problems = single_run_config(study.template.cfg, settings)
        if problems:  # a setting of the space that no run accepts: checked at load, so only a stale storage
            raise ConfigError(f"search {study.name}, trial {trial.number}: " + "; ".join(problems))
        template = study.template
        self.study, self.trial = study, trial
        self.run = Run(
            template.strategy,
            point,
            settings,
            fold=template.fold,
            source=template.source,
            trial={"study": study.name, "number": trial.number, "space": study.space},
        )
        data, encoded = inputs.for_run(self.run)
        self.run_id = self.run.run_id(data.fingerprint)
        self.inputs = RunInputs(self.run, self.run_id, data, encoded, baseline_of(data, self.run.cfg))
        trial.set_user_attr("run_id", self.run_id)
        self.reported: set[int] = set()  # the steps reported to the study
        self.rungs_judged = 0
        self.waiting_at: int | None = None  # the step it paused at, judged when it resumes
        self.score: float | None = None  # what it reported there
        # whether it goes on from there, judged once the rest of its round is there
        self.kept: bool | None = None
        self.stretches = 0
        # whether others of its round may still reach its next rung (else it is judged at once)
        self.waits = True

    @property
    def number(self) -> int:  # among the counted trials, as the log numbers them
        return self.trial.user_attrs["position"]

    def on_evaluation(self, history: list[dict]) -> Decision:
        """Report the evaluations not yet reported; at the first evaluation past a rung it has not been judged at,
        pause until the rest of its round is there, then judge it there (go on, or prune); at any other, let
        Optuna's pruner judge it (the median pruner: successive halving judges at rungs only)."""
        self.study.report(self.trial, history, self.reported)
        step = history[-1]["step"]
        passed = sum(rung <= step for rung in self.study.rungs)
        if passed > self.rungs_judged:
            if self.waits and step != self.waiting_at:
                self.waiting_at, self.score = step, self.study.rung_score(history)
                return Decision.PAUSE
            self.rungs_judged = passed
            kept = (
                self.kept if step == self.waiting_at else self.goes_on(self.study.rung_score(history), step)
            )
            return Decision.GO_ON if kept else Decision.PRUNE
        return Decision.PRUNE if self.trial.should_prune() else Decision.GO_ON

    def goes_on(self, score: float, step: int) -> bool:
        """Whether its score at the last rung `step` passed keeps it going (kept_at_rung)."""
        rung = max(rung for rung in self.study.rungs if rung <= step)
        return kept_at_rung(
            self.study.optuna_study.get_trials(deepcopy=False), score, rung, self.study.maximizes
        )

    def advance(self, accelerator, resume: bool) -> dict | None:
        """Train on to its next rung: None when it pauses there, else its record (completed, pruned or failed)."""
        if not self.stretches:
            logger.info(
                "search %s: trial %d/%d: %s",
                self.run.strategy,
                self.number,
                self.study.trials,
                self.run.describe(),
            )
        self.stretches += 1
        try:
            return run_one(
                self.inputs, accelerator, resume or self.stretches > 1, on_evaluation=self.on_evaluation
            )
        except RunPaused:
            return None


def earlier_result(
    study: Study, trial: TrialRun, records: dict[str, RunRecord], results_path: Path
) -> RunRecord | None:
    """The record of a run with the trial's id that an earlier search (or the grid) completed or pruned, or None.
    A draw that rounded to an earlier trial's setting is marked as a repeat: not counted, another is drawn."""
    record = records.get(trial.run_id)
    if not record or record["status"] not in ("completed", "pruned"):
        return None
    trial.trial.set_user_attr("earlier_run", True)  # its weights are not this search's to delete
    earlier = record.get("trial") or {}
    if earlier.get("study") == study.name and earlier.get("number") != trial.trial.number:
        say_repeat(trial, earlier["number"])
    if record["status"] == "completed" and not earlier:  # a grid's run: it is this trial too, tested already
        record = {
            **record,
            "trial": {**trial.run.trial, "confirms": trial.run_id},
            "varied": {short_key(key): value for key, value in trial.run.settings.recorded().items()},
        }
        save_record(results_path, record)
    return record


def say_repeat(trial: TrialRun, number: int) -> None:
    trial.trial.set_user_attr("repeats", number)  # rounded to the same setting: not counted
    logger.info(
        "search %s: a draw repeats trial %d's setting (%s): its result is reused and another is drawn",
        trial.run.strategy,
        number + 1,
        trial.run.describe(),
    )


def tell(study: Study, trial, record: RunRecord, reused: bool = False) -> None:
    """Tell the study how a trial ended, from its record (`reused`: the record of an earlier run outside the
    study, a grid's say, whose scores at each evaluation the trial then reports, so that they count when later
    trials are judged at a rung; a repeat of one of the study's trials reports none, as it is not counted)."""
    from optuna.trial import TrialState

    if reused and "repeats" not in trial.user_attrs:
        study.report(trial, record.get("history") or [], set())
    if record["status"] == "completed":
        study.optuna_study.tell(trial, record["best_metric"])
        return
    trial.set_user_attr("outcome", record.get("error") or record.get("stop_reason") or record["status"])
    study.optuna_study.tell(
        trial, state=TrialState.PRUNED if record["status"] == "pruned" else TrialState.FAIL
    )


@dataclasses.dataclass
class SearchWork:
    """What this worker's search trains with: the planned data, the devices, every record so far by run id
    (the trials' added as they end), whether to resume interrupted trials, and the results file."""

    inputs: Inputs
    accelerator: object
    records: dict[str, RunRecord]
    resume: bool
    results_path: Path


def run_round(study: Study, claimed: list, work: SearchWork) -> None:
    """Train a round of claimed trials (validated, never tested) together: each to the next rung, where it
    pauses until the others are there; then each is judged against all the scores at that rung (kept_at_rung)
    and the survivors go on to the next rung. Judged as each arrived, the first trials of a study always went on
    (nothing to compare with) and cost the search most of its time."""
    going, twins, records = [], [], work.records
    for trial in claimed:
        run = TrialRun(study, trial, work.inputs)
        twin = next((other for other in going if other.run_id == run.run_id), None)
        # a draw that rounded to the setting of another trial of this round: told its result after it
        if twin:
            say_repeat(run, twin.trial.number)
            twins.append(run)
        elif (record := earlier_result(study, run, records, work.results_path)) is not None:
            tell(study, trial, record, reused=True)
        else:
            going.append(run)
    unfinished = list(going)
    with contextlib.ExitStack() as leases:
        for run in going:
            leases.enter_context(study.place.lease(study.name, run.trial))
        try:
            for run in going:
                run.waits = len(going) > 1
            while going:
                waiting = []
                for run in going:
                    record = run.advance(work.accelerator, work.resume)
                    if record is None:
                        waiting.append(run)
                        continue
                    records[run.run_id] = record
                    tell(study, run.trial, record)
                    unfinished.remove(run)
                going = sorted(waiting, key=lambda run: run.score, reverse=study.maximizes)
                if going:
                    for run in going:
                        run.kept = run.goes_on(run.score, run.waiting_at)
                    going_on = [run for run in going if run.kept]
                    logger.info(
                        "search %s: at the rung of step %d, judged on %s: %s; going on: %s",
                        study.template.strategy,
                        min(run.waiting_at for run in going),
                        study.judged_on,
                        ", ".join(f"trial {run.number} ({abs(run.score):.4g})" for run in going),
                        ", ".join(f"trial {run.number}" for run in going_on) or "none",
                    )
                    # one going on alone is judged at its next rung at once, without pausing
                    for run in going:
                        run.waits = len(going_on) > 1
        # stopped by hand: the unfinished trials run again next time, each counted once
        except KeyboardInterrupt:
            with study.lock:
                for run in unfinished + twins:
                    interrupted(study, run.trial)
            raise
    for run in twins:
        tell(study, run.trial, records[run.run_id])


def search(studies: list[Study], cfg, work: SearchWork) -> None:
    """Run this worker's share of every study's trials, a round at a time, strategies taking turns (so that with a
    time budget each gets about its share), until no trial is left to claim and none runs in another worker (a
    trial a killed worker left is claimed again meanwhile)."""
    budget = cfg.search.time_budget
    started = time.monotonic()
    told = False
    while True:
        active = list(studies)
        while active:
            for study in list(active):
                if budget is not None and time.monotonic() - started > budget:
                    logger.info("search: the time budget of %gs is spent; no new trial starts", budget)
                    active = []
                    break
                claimed = claim_round(study, cfg.search.trials, cfg.search.sampler_seed)
                if not claimed:
                    active.remove(study)
                    continue
                run_round(study, claimed, work)
                keep_best_checkpoints(study, cfg)
        running = running_elsewhere(studies)
        if not running:
            return
        if not told:
            logger.info("search: waiting for %d trial(s) that other workers are running", running)
            told = True
        time.sleep(POLL_SECONDS)


def best_trials(study: Study, k: int) -> list:
    """The study's `k` best completed trials with distinct settings (pruned and failed ones are never chosen)."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    done = study.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    lower = study.optuna_study.direction == StudyDirection.MINIMIZE
    chosen, seen = [], set()
    for trial in sorted(done, key=lambda t: (t.value if lower else -t.value, t.number)):
        settings = stable_hash(readable(trial.params))
        if settings not in seen:
            seen.add(settings)
            chosen.append(trial)
    return chosen[:k]


def keep_best_checkpoints(study: Study, cfg) -> None:
    """Drop the checkpoints of the trials this search trained that cannot be confirmed (pruned, failed,
    outside the best confirm_top_k), so a search keeps at most that many runs' weights on disk."""
    keep = {t.user_attrs.get("run_id") for t in best_trials(study, cfg.search.confirm_top_k)}
    for trial in study.optuna_study.get_trials(deepcopy=False):
        run_id = trial.user_attrs.get("run_id")
        if (
            run_id
            and run_id not in keep
            and trial.state.is_finished()
            and not trial.user_attrs.get("earlier_run")
        ):
            drop_checkpoints(run_folder(cfg.output.dir, study.template.strategy, run_id))


def confirmation_runs(studies: list[Study], cfg) -> list[Run]:
    """The best settings of each strategy, each with every confirmation seed on every fold (the trials ran on
    the first): ordinary runs, tested."""
    seeds = cfg.search.confirm_seeds or cfg.training.seeds or [cfg.training.seed]
    runs = []
    for study in studies:
        chosen = best_trials(study, cfg.search.confirm_top_k)
        if not chosen:
            logger.error(
                "search %s: no trial completed, so there is nothing to confirm (see the trials' records)",
                study.template.strategy,
            )
        for trial in chosen:
            settings = readable(trial.params)
            point, _ = single_run_config(study.template.cfg, settings)
            for fold, seed in itertools.product(folds_of(cfg), seeds):
                single = dataclasses.replace(point, training=dataclasses.replace(point.training, seed=seed))
                runs.append(
                    Run(
                        study.template.strategy,
                        single,
                        settings,
                        fold=fold,
                        source=study.template.source,
                        trial={
                            "study": study.name,
                            "number": trial.number,
                            "space": study.space,
                            "confirms": trial.user_attrs["run_id"],
                        },
                    )
                )
    return runs


def trial_records(records: list[RunRecord], studies: list[str]) -> list[RunRecord]:
    """The records of the named studies' trials (those tested as confirmations too)."""
    wanted = set(studies)
    return [r for r in records if (r.get("trial") or {}).get("study") in wanted]
