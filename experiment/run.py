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
from experiment.one_run import run_one
from experiment.plan import Run, plan_runs
from experiment.search import confirmation_runs, open_studies, search, trial_records
from experiment.shards import assign_shards, planned_cost, print_shares
from model import check_against_model, load_model_config
from records.checkpoints import RESUME_STATE, saved_run_key
from records.results import SHARED_FILES, read_results, results_file, untested_trial, write_experiment
from records.shared import read_json
from reporting.data_report import describe_report, save_report
from reporting.summary import summarize
from reporting.tables import describe_baseline, terminal_summary, write_summary
from strategies import STRATEGIES
from tasks import TASKS
from trainer import make_accelerator
from utils import ConfigError, is_main_process, writable_folder

logger = logging.getLogger("bertlab")


def run_experiment(cfg: Config, strategies: list[str], *, resume: bool = False, force: bool = False,
                   dry_run: bool = False, config_file: str = "", command: str = "",
                   shard: tuple[int, int] | None = None, summary_only: bool = False,
                   gather_from: tuple[Path, ...] = ()) -> int:
    """Run every planned run that is not already completed (with `shard` (K, N): only the K-th of N shares of
    the plan), then write and print the summary of the whole plan once all of it has finished; with
    `summary_only`, train nothing and summarise what has (with `gather_from`, after bringing in the runs other
    workers wrote to those folders). Returns the exit status: 0 when every run completed, 1 when some failed or
    (summary only) has not finished."""
    refuse_strategies(cfg, strategies)
    if not dry_run:
        writable_folder(Path(cfg.output.dir), "output.dir")
    runs = plan_runs(cfg, strategies)
    model_configs = {}
    for run in runs:
        if run.cfg.model.name not in model_configs:
            model_configs[run.cfg.model.name] = load_model_config(run.cfg)
    inputs = Inputs()
    runs = resolve_max_length(runs, inputs, model_configs)
    for run in runs:
        check_against_model(run.cfg, model_configs[run.cfg.model.name], [run.strategy])
    data = inputs.data_for(runs[0])
    reports = data_reports(runs, inputs)
    for report in reports.values():
        for line in describe_report(report):
            logger.info("%s", line)
    task = TASKS[cfg.data.task]
    baseline = baseline_of(data, cfg)
    logger.info("data %s: %s examples (train/validation/test), %d labels; %s", data.name,
                "/".join(map(str, data.sizes().values())), len(data.label_names), describe_baseline(task, baseline))
    if cfg.data.folds:  # every fold cut now, so that folds the data cannot give stop the command before any run
        held = sorted(len(inputs.fold_for(run).labels["validation"]) for run in runs if run.fold[0] == 0)
        logger.info("data.folds %d: train and validation together (%d examples) cut into %d folds of %s examples, "
                    "each held out once as a run's validation split%s; test (%d examples) is in none", cfg.data.folds,
                    len(data.labels["train"]) + len(data.labels["validation"]), cfg.data.folds,
                    held[0] if held[0] == held[-1] else f"{held[0]}-{held[-1]}",
                    f", cut anew {cfg.data.fold_repeats} times" if cfg.data.fold_repeats > 1 else "",
                    len(data.labels["test"]))
    results_path = results_file(cfg.output.dir)
    studies, accelerator = [], None
    if cfg.search.method == "optuna":
        if dry_run:
            print_search_plan(cfg, strategies)
            return 0
        accelerator = make_accelerator(cfg.training.fp16, cfg.training.bf16)
        if accelerator.num_processes > 1:
            raise ConfigError(f"search.method: optuna: this launch has {accelerator.num_processes} processes, and a "
                              "search's workers are one process each: start them with python main.py --shard K/N")
        check_shared_files(results_path)  # the trials write records
        templates: dict[str, Run] = {}  # each strategy's first run: the config's own setting
        for run in runs:
            templates.setdefault(run.strategy, run)
        studies = open_studies(list(templates.values()), inputs, cfg)
        if not summary_only:
            search(studies, cfg, inputs, accelerator, {r["run_id"]: r for r in read_results(results_path)}, resume)
        runs = confirmation_runs(studies, cfg)
        if not runs:
            raise ConfigError("the search completed no trial of any strategy, so there is nothing to confirm: see the "
                              f"trials' errors in {results_path}")
    ids = [run.run_id(inputs.data_for(run).fingerprint) for run in runs]
    if gather_from:
        check_shared_files(results_path)
        for line in gather(list(gather_from), Path(cfg.output.dir), set(ids), {study.name for study in studies},
                           cfg.as_saved()):
            logger.info("%s", line)
    stored = read_results(results_path)
    # a search trial validated without test resumes into its confirmation: its kept weights are tested
    trials_done = {r["run_id"]: r["trial"] for r in stored if untested_trial(r) and r["status"] == "completed"}
    completed = {r["run_id"]: r for r in stored if r["status"] == "completed" and not untested_trial(r)}
    outdated = {i for i in ids if i in completed and any(m.name not in completed[i]["test"] for m in task.metrics)}
    if outdated:
        logger.info("%d completed run(s) lack metrics the task reports now: they run again", len(outdated))
        completed = {i: r for i, r in completed.items() if i not in outdated}
    cached = set() if force else {i for i in ids if i in completed}
    mine = list(range(len(runs)))
    if shard is not None:
        costs = [planned_cost(run, inputs) for run in runs]
        owners = assign_shards(costs, shard[1])
        mine = [i for i, owner in enumerate(owners) if owner == shard[0]]
    if not is_main_process() and (dry_run or summary_only):  # the main process prints them
        return 0
    if dry_run:
        print_plan(runs, ids, cached, inputs, completed, cfg, mine)
        if shard is not None:
            print_shares(costs, owners, shard[1])
        return 0
    to_run = [ids[i] for i in mine if ids[i] not in cached]
    folders = {run_id: Path(cfg.output.dir) / "checkpoints" / run.strategy / run_id for run, run_id in zip(runs, ids)}
    if not resume and not force:
        refuse_interrupted([folders[i] for i in to_run if i not in trials_done], stored)
    if resume:  # a resume state that cannot be read stops the command before it writes anything
        for run_id in to_run:
            saved_run_key(folders[run_id])
    check_shared_files(results_path)
    write_experiment(results_path, config_file=config_file, command=command, config=cfg.as_saved(),
                     strategies=strategies, run_ids=ids, studies=[study.name for study in studies])
    for report in reports.values():
        save_report(report, results_path.parent)
    if summary_only:
        return finish(cfg, ids, results_path, describe_baseline(task, baseline), studies)
    share = f" (shard {shard[0]}/{shard[1]}: {len(mine)} of the plan's {len(runs)})" if shard else ""
    logger.info("%d run(s) planned%s: %d already completed (reused; --force runs them again), %d to run",
                len(mine), share, sum(ids[i] in cached for i in mine), sum(ids[i] not in cached for i in mine))
    accelerator = accelerator or make_accelerator(cfg.training.fp16, cfg.training.bf16)
    for name in strategies:
        if accelerator.num_processes > 1 and STRATEGIES[name].one_process:
            raise ConfigError(f"strategy {name} trains on one process, and this launch has "
                              f"{accelerator.num_processes}: run it with python main.py --strategy {name}")
    failed = 0
    for number, i in enumerate(mine, 1):
        if ids[i] in cached:
            continue
        logger.info("run %d/%d: %s %s", number, len(mine), runs[i].strategy, runs[i].describe())
        run_data, encoded = inputs.for_run(runs[i])
        run = runs[i]
        if ids[i] in trials_done and run.trial is None:  # the grid's run of a trial's setting: it stays that trial
            run = dataclasses.replace(run, trial={**trials_done[ids[i]], "confirms": ids[i]})
        record = run_one(run, ids[i], run_data, encoded, accelerator, baseline_of(run_data, run.cfg),
                         resume or ids[i] in trials_done)
        failed += record["status"] != "completed"
    if not accelerator.is_main_process:  # the main process summarises
        return 1 if failed else 0
    if shard is not None:
        finished = {r["run_id"] for r in read_results(results_path) if not untested_trial(r)}
        if not set(ids) <= finished:
            print(f"\nshard {shard[0]}/{shard[1]} done ({len(mine)} run(s), {failed} failed); {len(set(ids) - finished)} "
                  "run(s) of the plan are still to finish in other shards. Once they have: python main.py "
                  "--summary-only (with the same config), then python visualize.py")
            return 1 if failed else 0
    return max(finish(cfg, ids, results_path, describe_baseline(task, baseline), studies), 1 if failed else 0)


def refuse_interrupted(to_run: list[Path], stored: list[dict]) -> None:
    """A run to train (its folder) whose folder holds the checkpoint of an interrupted attempt (killed: no
    record says it ended) is never silently started over: one line says how to resume or discard it."""
    ended = {r["run_id"] for r in stored if r["status"] != "running"}
    left = [folder.name for folder in to_run if folder.name not in ended and (folder / RESUME_STATE).is_file()]
    if left:
        raise ConfigError(f"{len(left)} run(s) of this plan were interrupted and kept their checkpoint (e.g. {left[0]}): "
                          "python main.py --resume (with the same config) continues them, --force discards them "
                          "and trains them anew")


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
            logger.warning("strategy %s is enabled but does not apply to data.task: %s (%s): skipped", strategy,
                           task.name, reason)
        else:
            kept.append(strategy)
    return kept


def refuse_strategies(cfg: Config, strategies: list[str]) -> None:
    """Stop before anything runs when a strategy cannot serve the task or the data."""
    task = TASKS[cfg.data.task]
    for strategy in strategies:
        reason = STRATEGIES[strategy].refuses(task, cfg)
        if reason:
            raise ConfigError(f"strategy {strategy} does not apply to data.task: {task.name} ({reason}); choose "
                              "another with --strategy or strategies.<name>.enabled")


def finish(cfg: Config, ids: list[str], results_path: Path, baseline: str, studies=()) -> int:
    """Write and print the summary of the planned runs' records (with a search's trials beside them); 1 when
    some failed or has not run."""
    stored = read_results(results_path)
    by_id = {r["run_id"]: r for r in stored}
    records = [by_id[i] for i in ids if i in by_id and not untested_trial(by_id[i])]
    missing = len(ids) - len(records)
    if not records:
        raise ConfigError(f"no run of this plan has finished in {results_path} yet: run python main.py (or each "
                          "--shard K/N) first, with the same config")
    summary = summarize(records, cfg.training.early_stopping.metric,
                        trial_records(stored, [study.name for study in studies]))
    write_summary(summary, results_path.parent)
    print("\n" + terminal_summary(summary, results_path.parent))
    print(f"\n{baseline}")
    failed = [r["run_id"] for r in records if r["status"] != "completed"]
    if failed:
        logger.error("%d run(s) failed: %s (see 'error' in their records)", len(failed), ", ".join(failed))
    if missing:
        logger.error("%d planned run(s) have not run yet: the summary holds the %d that have", missing, len(records))
    return 1 if failed or missing else 0
