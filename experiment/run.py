"""Running an experiment: the plan, which runs are already done, running the rest (or a shard's share), then
the summary once the whole plan has finished."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from config import Config
from experiment.dry_run import print_plan, print_search_plan
from experiment.gather import gather
from experiment.inputs import Inputs, baseline_of, data_reports, resolve_max_length
from experiment.one_run import RunInputs, run_one
from experiment.plan import Run, Share, plan_runs
from experiment.search import SearchWork, confirmation_runs, open_studies, search, trial_records
from experiment.shards import assign_shards, planned_cost, print_shares
from model import check_against_model, load_model_config
from records.checkpoints import RESUME_STATE, saved_run_key
from records.results import (
    SHARED_FILES,
    read_results,
    results_file,
    run_folder,
    untested_trial,
    write_experiment,
)
from records.shared import read_json
from reporting.data_report import describe_report, save_report
from reporting.summary import summarize
from reporting.tables import describe_baseline, terminal_summary, write_summary
from strategies import STRATEGIES
from tasks import TASKS
from trainer import make_accelerator
from utils import ConfigError, is_main_process, writable_folder
from records.shape import RunRecord, Trial

logger = logging.getLogger("bertlab")


@dataclasses.dataclass(frozen=True)
class Launch:
    """What the command asked of the experiment: its strategies, and what to do with the plan."""

    strategies: list[str]
    resume: bool = False  # continue interrupted runs from their last checkpoint
    force: bool = False  # train again what has completed
    dry_run: bool = False  # print the plan, train nothing
    shard: tuple[int, int] | None = None  # (K, N): only the K-th of N shares of the plan
    summary_only: bool = False  # train nothing: summarise what has finished
    gather_from: tuple[Path, ...] = ()  # other workers' output folders, brought in before the summary
    config_file: str = ""  # for experiment.json
    command: str = ""


@dataclasses.dataclass
class Plan:
    """The experiment's runs, resolved against the models and the data once, with their ids."""

    runs: list[Run]
    inputs: Inputs
    reports: dict  # the data report of each data set the runs read
    baseline: str  # what a model that learned nothing scores, in words
    studies: list = dataclasses.field(default_factory=list)  # a search's studies (none for a grid)

    def ids(self) -> list[str]:
        return [run.run_id(self.inputs.data_for(run).fingerprint) for run in self.runs]


def run_experiment(cfg: Config, launch: Launch) -> int:
    """Run every planned run that is not already completed (or a shard's share of them), then write and print
    the summary of the whole plan once all of it has finished; with `summary_only`, train nothing and summarise
    what has (after bringing in the runs other workers wrote to `gather_from`). Returns the exit status: 0 when
    every run completed, 1 when some failed or (summary only) has not finished."""
    refuse_strategies(cfg, launch.strategies)
    if not launch.dry_run:
        writable_folder(Path(cfg.output.dir), "output.dir")
    plan = resolved_plan(cfg, launch.strategies)
    results_path = results_file(cfg.output.dir)
    accelerator = None
    if cfg.search.method == "optuna":
        if launch.dry_run:
            print_search_plan(cfg, launch.strategies)
            return 0
        accelerator = make_accelerator(cfg.training.fp16, cfg.training.bf16)
        searched(plan, cfg, launch, accelerator, results_path)
    ids = plan.ids()
    if launch.gather_from:
        check_shared_files(results_path)
        for line in gather(
            list(launch.gather_from),
            Path(cfg.output.dir),
            set(ids),
            {study.name for study in plan.studies},
            cfg.as_saved(),
        ):
            logger.info("%s", line)
    stored = read_results(results_path)
    completed, trials_done = finished_runs(stored, ids, TASKS[cfg.data.task])
    mine, shares = shard_of(plan, launch.shard)
    share = Share(ids, mine, set() if launch.force else {i for i in ids if i in completed}, trials_done)
    if not is_main_process() and (launch.dry_run or launch.summary_only):  # the main process prints them
        return 0
    if launch.dry_run:
        print_plan(plan.runs, plan.inputs, share, completed, cfg)
        if shares:
            print_shares(*shares, launch.shard[1])
        return 0
    start_writing(plan, share, stored, cfg, launch)
    if launch.summary_only:
        return finish(cfg, ids, results_path, plan.baseline, plan.studies)
    accelerator = accelerator or make_accelerator(cfg.training.fp16, cfg.training.bf16)
    failed = train_runs(plan, share, accelerator, launch)
    if not accelerator.is_main_process:  # the main process summarises
        return 1 if failed else 0
    if launch.shard is not None and not shard_finished(ids, results_path, launch.shard, len(mine), failed):
        return 1 if failed else 0
    return max(finish(cfg, ids, results_path, plan.baseline, plan.studies), 1 if failed else 0)


def start_writing(plan: Plan, share: Share, stored: list[RunRecord], cfg: Config, launch: Launch) -> None:
    """Stop before anything is written on what would stop the experiment later (a run's interrupted
    checkpoint, an unreadable resume state or shared file); then write experiment.json and the data reports."""
    results_path = results_file(cfg.output.dir)
    folders = {
        run_id: run_folder(cfg.output.dir, run.strategy, run_id) for run, run_id in zip(plan.runs, share.ids)
    }
    to_run = share.to_run()
    if not launch.resume and not launch.force:
        refuse_interrupted([folders[i] for i in to_run if i not in share.trials_done], stored)
    if launch.resume:
        for run_id in to_run:
            saved_run_key(folders[run_id])
    check_shared_files(results_path)
    write_experiment(
        results_path,
        config_file=launch.config_file,
        command=launch.command,
        config=cfg.as_saved(),
        strategies=launch.strategies,
        run_ids=share.ids,
        studies=[study.name for study in plan.studies],
    )
    for report in plan.reports.values():
        save_report(report, results_path.parent)


def resolved_plan(cfg: Config, strategies: list[str]) -> Plan:
    """The planned runs, each checked against its model and given its max_length; the data loaded once (and
    cut into folds when asked, so that folds the data cannot give stop the command before any run), its
    report logged."""
    runs = plan_runs(cfg, strategies)
    model_configs = {}
    for run in runs:
        if run.cfg.model.name not in model_configs:
            model_configs[run.cfg.model.name] = load_model_config(run.cfg)
    inputs = Inputs()
    runs = resolve_max_length(runs, inputs, model_configs)
    for run in runs:
        check_against_model(model_configs[run.cfg.model.name], [run.model_plan()])
    data = inputs.data_for(runs[0])
    reports = data_reports(runs, inputs)
    for report in reports.values():
        for line in describe_report(report, TASKS[cfg.data.task]):
            logger.info("%s", line)
    task = TASKS[cfg.data.task]
    baseline = baseline_of(data, cfg)
    logger.info(
        "data %s: %s examples (train/validation/test), %d labels; %s",
        data.name,
        "/".join(map(str, data.sizes().values())),
        len(data.label_names),
        describe_baseline(task, baseline),
    )
    if cfg.data.folds:
        log_folds(cfg, runs, inputs, data)
    return Plan(runs, inputs, reports, describe_baseline(task, baseline))


def log_folds(cfg: Config, runs: list[Run], inputs: Inputs, data) -> None:
    held = sorted(len(inputs.fold_for(run).labels["validation"]) for run in runs if run.fold[0] == 0)
    logger.info(
        "data.folds %d: train and validation together (%d examples) cut into %d folds of %s examples, "
        "each held out once as a run's validation split%s; test (%d examples) is in none",
        cfg.data.folds,
        len(data.labels["train"]) + len(data.labels["validation"]),
        cfg.data.folds,
        held[0] if held[0] == held[-1] else f"{held[0]}-{held[-1]}",
        f", cut anew {cfg.data.fold_repeats} times" if cfg.data.fold_repeats > 1 else "",
        len(data.labels["test"]),
    )


def searched(plan: Plan, cfg: Config, launch: Launch, accelerator, results_path: Path) -> None:
    """A search's studies (this worker runs its share of their trials, unless it only summarises), and its
    plan's runs become their confirmation runs."""
    if accelerator.num_processes > 1:
        raise ConfigError(
            f"search.method: optuna: this launch has {accelerator.num_processes} processes, and a "
            "search's workers are one process each: start them with python main.py --shard K/N"
        )
    check_shared_files(results_path)  # the trials write records
    templates: dict[str, Run] = {}  # each strategy's first run: the config's own setting
    for run in plan.runs:
        templates.setdefault(run.strategy, run)
    plan.studies = open_studies(list(templates.values()), plan.inputs, cfg)
    if not launch.summary_only:
        records = {r["run_id"]: r for r in read_results(results_path)}
        search(plan.studies, cfg, SearchWork(plan.inputs, accelerator, records, launch.resume, results_path))
    plan.runs = confirmation_runs(plan.studies, cfg)
    if not plan.runs:
        raise ConfigError(
            "the search completed no trial of any strategy, so there is nothing to confirm: see the "
            f"trials' errors in {results_path}"
        )


def finished_runs(
    stored: list[RunRecord], ids: list[str], task
) -> tuple[dict[str, RunRecord], dict[str, Trial]]:
    """The planned runs completed and tested (those lacking a metric the task reports now run again), and the
    search trials validated without test, which resume into their confirmation (their weights are tested)."""
    trials_done = {
        r["run_id"]: r["trial"] for r in stored if untested_trial(r) and r["status"] == "completed"
    }
    completed = {r["run_id"]: r for r in stored if r["status"] == "completed" and not untested_trial(r)}
    outdated = {
        i for i in ids if i in completed and any(m.name not in completed[i]["test"] for m in task.metrics)
    }
    if outdated:
        logger.info("%d completed run(s) lack metrics the task reports now: they run again", len(outdated))
    return {i: r for i, r in completed.items() if i not in outdated}, trials_done


def shard_of(plan: Plan, shard: tuple[int, int] | None) -> tuple[list[int], tuple | None]:
    """The plan's runs this worker runs (their places in it), and with a shard each run's cost and owner."""
    if shard is None:
        return list(range(len(plan.runs))), None
    costs = [planned_cost(run, plan.inputs) for run in plan.runs]
    owners = assign_shards(costs, shard[1])
    return [i for i, owner in enumerate(owners) if owner == shard[0]], (costs, owners)


def train_runs(plan: Plan, share: Share, accelerator, launch: Launch) -> int:
    """Train this worker's share of the plan's runs that have not completed; returns how many failed."""
    shard, ids, mine, cached, trials_done = (
        launch.shard,
        share.ids,
        share.mine,
        share.cached,
        share.trials_done,
    )
    share = f" (shard {shard[0]}/{shard[1]}: {len(mine)} of the plan's {len(plan.runs)})" if shard else ""
    logger.info(
        "%d run(s) planned%s: %d already completed (reused; --force runs them again), %d to run",
        len(mine),
        share,
        sum(ids[i] in cached for i in mine),
        sum(ids[i] not in cached for i in mine),
    )
    for name in launch.strategies:
        if accelerator.num_processes > 1 and STRATEGIES[name].one_process:
            raise ConfigError(
                f"strategy {name} trains on one process, and this launch has "
                f"{accelerator.num_processes}: run it with python main.py --strategy {name}"
            )
    failed = 0
    for number, i in enumerate(mine, 1):
        if ids[i] in cached:
            continue
        run = plan.runs[i]
        logger.info("run %d/%d: %s %s", number, len(mine), run.strategy, run.describe())
        run_data, encoded = plan.inputs.for_run(run)
        # the grid's run of a trial's setting: it stays that trial
        if ids[i] in trials_done and run.trial is None:
            run = dataclasses.replace(run, trial={**trials_done[ids[i]], "confirms": ids[i]})
        record = run_one(
            RunInputs(run, ids[i], run_data, encoded, baseline_of(run_data, run.cfg)),
            accelerator,
            launch.resume or ids[i] in trials_done,
        )
        failed += record["status"] != "completed"
    return failed


def shard_finished(
    ids: list[str], results_path: Path, shard: tuple[int, int], share: int, failed: int
) -> bool:
    """Whether the whole plan has finished once this shard has; if not, say so and what to run then."""
    finished = {r["run_id"] for r in read_results(results_path) if not untested_trial(r)}
    if set(ids) <= finished:
        return True
    print(
        f"\nshard {shard[0]}/{shard[1]} done ({share} run(s), {failed} failed); {len(set(ids) - finished)} "
        "run(s) of the plan are still to finish in other shards. Once they have: python main.py "
        "--summary-only (with the same config), then python visualize.py"
    )
    return False


def refuse_interrupted(to_run: list[Path], stored: list[dict]) -> None:
    """A run to train (its folder) whose folder holds the checkpoint of an interrupted attempt (killed: no
    record says it ended) is never silently started over: one line says how to resume or discard it."""
    ended = {r["run_id"] for r in stored if r["status"] != "running"}
    left = [
        folder.name for folder in to_run if folder.name not in ended and (folder / RESUME_STATE).is_file()
    ]
    if left:
        raise ConfigError(
            f"{len(left)} run(s) of this plan were interrupted and kept their checkpoint (e.g. {left[0]}): "
            "python main.py --resume (with the same config) continues them, --force discards them "
            "and trains them anew"
        )


def check_shared_files(results_path: Path) -> None:
    """Before anything is written: a damaged shared file stops the experiment, kept as it is."""
    for name in SHARED_FILES:
        read_json(results_path.with_name(name))


def applicable(cfg: Config, strategies: list[str]) -> list[str]:
    """Of the strategies a config enables, those that serve its task; each other is skipped with one warning
    line (naming one with --strategy still refuses it, in refuse_strategies)."""
    task, kept = TASKS[cfg.data.task], []
    for strategy in strategies:
        reason = STRATEGIES[strategy].refuses(task, cfg)
        if reason:
            logger.warning(
                "strategy %s is enabled but does not apply to data.task: %s (%s): skipped",
                strategy,
                task.name,
                reason,
            )
        else:
            kept.append(strategy)
    return kept


def refuse_strategies(cfg: Config, strategies: list[str]) -> None:
    """Stop before anything runs when a strategy cannot serve the task or the data."""
    task = TASKS[cfg.data.task]
    for strategy in strategies:
        reason = STRATEGIES[strategy].refuses(task, cfg)
        if reason:
            raise ConfigError(
                f"strategy {strategy} does not apply to data.task: {task.name} ({reason}); choose "
                "another with --strategy or strategies.<name>.enabled"
            )


def finish(cfg: Config, ids: list[str], results_path: Path, baseline: str, studies=()) -> int:
    """Write and print the summary of the planned runs' records (with a search's trials beside them); 1 when
    some failed or has not run."""
    stored = read_results(results_path)
    by_id = {r["run_id"]: r for r in stored}
    records = [by_id[i] for i in ids if i in by_id and not untested_trial(by_id[i])]
    missing = len(ids) - len(records)
    if not records:
        raise ConfigError(
            f"no run of this plan has finished in {results_path} yet: run python main.py (or each "
            "--shard K/N) first, with the same config"
        )
    summary = summarize(
        records, cfg.training.early_stopping.metric, trial_records(stored, [study.name for study in studies])
    )
    write_summary(summary, results_path.parent)
    print("\n" + terminal_summary(summary, results_path.parent))
    print(f"\n{baseline}")
    failed = [r["run_id"] for r in records if r["status"] != "completed"]
    if failed:
        logger.error("%d run(s) failed: %s (see 'error' in their records)", len(failed), ", ".join(failed))
    if missing:
        logger.error(
            "%d planned run(s) have not run yet: the summary holds the %d that have", missing, len(records)
        )
    return 1 if failed or missing else 0
