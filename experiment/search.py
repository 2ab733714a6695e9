"""Each strategy's settings chosen by an Optuna search (search.method: optuna): trials are runs of the normal loop,
validated and never tested, pruned when they fall behind, shared by workers through one study storage; the best
are then confirmed as ordinary runs, which the summary and the verdict compare."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import threading
import time
import warnings
from pathlib import Path

from filelock import FileLock

from config import short_key, single_run_config
from experiment.inputs import Inputs, baseline_of
from experiment.one_run import RunPruned, run_one
from experiment.plan import Run
from records.checkpoints import drop_checkpoints
from records.results import results_file, save_record
from reporting.verdict import best_of
from schema.search import describe_range, outside_range
from strategies import STRATEGIES
from tasks import TASKS
from utils import ConfigError, stable_hash

logger = logging.getLogger("bertlab")
# optuna is imported inside the functions that use it: a grid never loads it (nor its database layer).

SEARCH_FOLDER = "search"  # under output.dir: the journal of the studies, their locks and the trials' leases
LEASE_SECONDS = 30  # how often a running trial's worker says it is alive
LEASE_GRACE = 300  # a running trial whose worker has been silent this long was left by a killed process
# Trials drawn at random before TPE models the scores: Optuna's 10 would leave a search of 8 trials random
# throughout; the config's own setting and three random ones give it its first model.
STARTUP_TRIALS = 4
POLL_SECONDS = 5  # how often a worker done with its trials looks whether other workers' trials have ended


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
    storage: object  # the study's Optuna storage, for marking a trial another worker left
    lock: FileLock  # held while trials are counted and one is claimed, so workers never exceed `trials`

    @property
    def name(self) -> str:
        return self.optuna_study.study_name


def open_studies(templates: list[Run], inputs: Inputs, cfg) -> list[Study]:
    """The study of each strategy, created or loaded from the storage, with the config's own setting enqueued
    as its first trial. A study is named by what its trials share (strategy, data, every setting it does not
    search, the space), so that a changed config starts a new one and an unchanged one continues."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this runner logs each trial in its own words
    folder = Path(cfg.output.dir) / SEARCH_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.get_storage(cfg.search.storage or study_journal(folder))
    task = TASKS[cfg.data.task]
    metric = cfg.training.early_stopping.metric
    direction = "minimize" if task.is_better(metric, 0.0, 1.0) else "maximize"
    studies = []
    for template in templates:
        space = searched_space(cfg, template.strategy)
        canonical, _ = single_run_config(template.cfg, {key: first_value(spec) for key, spec in space.items()})
        key = dataclasses.replace(template, cfg=canonical).key(inputs.data_for(template).fingerprint)
        name = f"{template.strategy}-{stable_hash({'run': key, 'space': space, 'metric': metric})}"
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True,
                                    pruner=make_pruner(cfg.search.pruner, budget_steps(template, inputs)))
        own = {key: setting_of(template.cfg, key) for key in space}
        for key in (key for key, value in own.items() if outside_range(value, space[key])):
            logger.info("search %s: the config's own %s, %s, lies outside the range searched (%s); it is still "
                        "the first trial", template.strategy, short_key(key), own[key], describe_range(space[key]))
        study.enqueue_trial(own, skip_if_exists=True)
        studies.append(Study(template, space, study, storage, FileLock(str(folder / f"{name}.lock"))))
    return studies


def study_journal(folder: Path):
    """Optuna's journal file in `folder`: no server, safe for several processes, readable by optuna-dashboard."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(folder / "journal.log")
    # the open lock also works on network file systems, where symbolic links may not
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def readable(params: dict) -> dict:
    """A trial's settings with rates and other real numbers to three significant digits: what its run uses and
    its records show (a difference below that changes no result that can be measured)."""
    return {key: float(f"{value:.3g}") if isinstance(value, float) else value for key, value in params.items()}


def first_value(spec: dict | list):
    return spec[0] if isinstance(spec, list) else spec["low"]


def budget_steps(run: Run, inputs: Inputs) -> int:
    """The optimizer steps of a trial that runs its whole epoch budget."""
    t = run.cfg.training
    _, encoded = inputs.for_run(run)
    batches = math.ceil(len(encoded.ids["train"]) / t.batch_size)
    return math.ceil(batches / t.gradient_accumulation_steps) * t.num_epochs


def make_pruner(name: str, budget: int):
    """Optuna's pruner, judging no trial before a quarter of the budget: in its first epochs a good setting
    often still sits at the majority class (the rate warms up), and pruning there lost the best rates."""
    import optuna

    grace = max(1, budget // 4)
    if name == "median":  # two finished trials before it judges: searches here are a few trials each
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=grace)
    if name == "successive_halving":  # rungs at a quarter and three quarters of the budget: the best third goes on
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=grace, reduction_factor=3)
    return optuna.pruners.NopPruner()


def counted(trial) -> bool:
    """Whether a trial counts against search.trials: all but those a killed process left (they run again) and
    draws that repeated an earlier trial's setting (another is drawn)."""
    return not trial.user_attrs.get("interrupted") and "repeats" not in trial.user_attrs


def claim_trial(study: Study, trials: int, sampler_seed: int):
    """A new trial of the study for this worker, or None once `trials` are done or taken. Trials that killed
    processes left running are first failed as interrupted and their settings queued again."""
    import optuna
    from optuna.trial import TrialState

    with study.lock:
        release_abandoned(study)
        claimed = [t for t in study.optuna_study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
        taken = [t for t in claimed if counted(t)]
        repeats = sum("repeats" in t.user_attrs for t in claimed)
        if len(taken) >= trials or repeats >= trials:  # a space of few choices may hold fewer settings than trials
            return None
        # seeded by the trials claimed so far (a repeated draw included, so the next draw differs), not once per
        # process: workers with one seed would draw the same settings, and the draws stay the same however many
        # workers share the study. Hashed: consecutive seeds give numpy's generator nearly the same first draws
        # (0.417 and 0.436 for seeds 1 and 2)
        seed = int(stable_hash([sampler_seed, len(claimed)]), 16) % 2 ** 32
        study.optuna_study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
        with warnings.catch_warnings():  # a first trial outside the range: said once, in open_studies
            warnings.filterwarnings("ignore", message="Fixed parameter .* out of range", category=UserWarning)
            trial = study.optuna_study.ask({key: distribution(spec) for key, spec in study.space.items()})
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_user_attr("position", len(taken) + 1)  # its place among the counted trials, for the log
        return trial


def release_abandoned(study: Study) -> None:
    """Fail the running trials whose worker is gone (its process ended on this host, or silent for
    LEASE_GRACE seconds elsewhere) and queue their settings again: each runs again, counted once."""
    from optuna.trial import TrialState

    for trial in study.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")  # none: its worker stopped between claiming and naming itself
        if worker and alive(worker, lease_path(study, trial.number)):
            continue
        logger.warning("search %s: trial %d was left running by a worker that has stopped (%s): it runs again",
                       study.name, trial.number, worker)
        study.storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study.optuna_study.tell(trial.number, state=TrialState.FAIL)
        study.optuna_study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})


def alive(worker: dict, lease: Path) -> bool:
    if worker["host"] == socket.gethostname():
        if worker["pid"] == os.getpid():
            return True
        try:
            os.kill(worker["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a process of another user holds that number now
            return False
        return True
    return lease.exists() and time.time() - lease.stat().st_mtime < LEASE_GRACE


def lease_path(study: Study, number: int) -> Path:
    return Path(study.lock.lock_file).parent / "leases" / f"{study.name}-{number}"


class Lease:
    """Touches the trial's lease file every LEASE_SECONDS while it runs, so that workers on other machines can
    tell a running trial from one a killed process left."""

    def __init__(self, path: Path):
        self.path, self.stopped = path, threading.Event()

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()
        return self

    def _beat(self):
        while not self.stopped.wait(LEASE_SECONDS):
            self.path.touch()

    def __exit__(self, *exc):
        self.stopped.set()
        self.path.unlink(missing_ok=True)


def run_trial(study: Study, trial, trials: int, inputs: Inputs, accelerator, records: dict[str, dict],
              resume: bool, results_path: Path) -> dict:
    """Train and validate one trial as a run (no test), reporting its best validation score so far after
    every evaluation so that the pruner can stop it; tell the study how it ended; return its record. A trial
    whose run id already has a record (an earlier search, or the grid) is told from that record."""
    from optuna.trial import TrialState

    template = study.template
    settings = readable(trial.params)
    point, problems = single_run_config(template.cfg, settings)
    if problems:  # a setting of the space that no run accepts: checked at load, so only a stale storage
        raise ConfigError(f"search {study.name}, trial {trial.number}: " + "; ".join(problems))
    run = Run(template.strategy, point, settings, source=template.source,
              trial={"study": study.name, "number": trial.number, "space": study.space})
    data, encoded = inputs.for_run(run)
    run_id = run.run_id(data.fingerprint)
    trial.set_user_attr("run_id", run_id)
    record = records.get(run_id)
    if record and record["status"] in ("completed", "pruned"):  # its weights are not this search's to delete
        trial.set_user_attr("earlier_run", True)
        earlier = record.get("trial") or {}
        if earlier.get("study") == study.name and earlier.get("number") != trial.number:
            trial.set_user_attr("repeats", earlier["number"])  # rounded to the same setting: not counted
            logger.info("search %s: a draw repeats trial %d's setting (%s): its result is reused and another is "
                        "drawn", template.strategy, earlier["number"] + 1, run.describe())
    if record and record["status"] == "completed" and not record.get("trial"):  # a grid's run: it is this trial too
        record = {**record, "trial": {**run.trial, "confirms": run_id},  # tested already
                  "varied": {short_key(key): value for key, value in settings.items()}}
        save_record(results_path, record)
    if record is None or record["status"] not in ("completed", "pruned"):
        metric = run.cfg.training.early_stopping.metric
        task = TASKS[run.cfg.data.task]
        seen: list[dict] = []

        def report(entry: dict) -> None:
            seen.append(entry)
            trial.report(best_of(seen, lambda e: e[metric], metric, task)[metric], step=entry["step"])
            if trial.should_prune():
                raise RunPruned(seen)

        logger.info("search %s: trial %d/%d: %s", template.strategy, trial.user_attrs["position"], trials,
                    run.describe())
        with Lease(lease_path(study, trial.number)):
            try:
                record = run_one(run, run_id, data, encoded, accelerator, baseline_of(data, run.cfg), resume,
                                 on_evaluation=report)
            except KeyboardInterrupt:  # stopped by hand: the trial runs again next time, counted once
                with study.lock:
                    trial.set_user_attr("interrupted", True)
                    study.optuna_study.tell(trial, state=TrialState.FAIL)
                    study.optuna_study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
                raise
        records[run_id] = record
    if record["status"] == "completed":
        study.optuna_study.tell(trial, record["best_metric"])
    else:
        trial.set_user_attr("outcome", record.get("error") or record.get("stop_reason") or record["status"])
        study.optuna_study.tell(trial, state=TrialState.PRUNED if record["status"] == "pruned" else TrialState.FAIL)
    return record


def search(studies: list[Study], cfg, inputs: Inputs, accelerator, records: dict[str, dict], resume: bool) -> None:
    """Run this worker's share of every study's trials, strategies taking turns (so that with a time budget
    each gets about its share), until no trial is left to claim and none runs in another worker (a trial a
    killed worker left is claimed again meanwhile)."""
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
                trial = claim_trial(study, cfg.search.trials, cfg.search.sampler_seed)
                if trial is None:
                    active.remove(study)
                    continue
                run_trial(study, trial, cfg.search.trials, inputs, accelerator, records, resume,
                          results_file(cfg.output.dir))
                keep_best_checkpoints(study, cfg)
        running = running_elsewhere(studies)
        if not running:
            return
        if not told:
            logger.info("search: waiting for %d trial(s) that other workers are running", running)
            told = True
        time.sleep(POLL_SECONDS)


def running_elsewhere(studies: list[Study]) -> int:
    """How many trials of the studies other workers are running (after failing those a killed worker left)."""
    from optuna.trial import TrialState

    running = 0
    for study in studies:
        with study.lock:
            release_abandoned(study)
        running += len(study.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return running


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
        if run_id and run_id not in keep and trial.state.is_finished() and not trial.user_attrs.get("earlier_run"):
            drop_checkpoints(Path(cfg.output.dir) / "checkpoints" / study.template.strategy / run_id)


def confirmation_runs(studies: list[Study], cfg) -> list[Run]:
    """The best settings of each strategy, each with every confirmation seed: ordinary runs, tested."""
    seeds = cfg.search.confirm_seeds or cfg.training.seeds or [cfg.training.seed]
    runs = []
    for study in studies:
        chosen = best_trials(study, cfg.search.confirm_top_k)
        if not chosen:
            logger.error("search %s: no trial completed, so there is nothing to confirm (see the trials' records)",
                         study.template.strategy)
        for trial in chosen:
            settings = readable(trial.params)
            point, _ = single_run_config(study.template.cfg, settings)
            for seed in seeds:
                single = dataclasses.replace(point, training=dataclasses.replace(point.training, seed=seed))
                runs.append(Run(study.template.strategy, single, settings, source=study.template.source,
                                trial={"study": study.name, "number": trial.number, "space": study.space,
                                       "confirms": trial.user_attrs["run_id"]}))
    return runs


def trial_records(records: list[dict], studies: list[str]) -> list[dict]:
    """The records of the named studies' trials (those tested as confirmations too)."""
    wanted = set(studies)
    return [r for r in records if (r.get("trial") or {}).get("study") in wanted]

