"""An experiment: the planned runs (strategies x grid x few-shot draws x seeds), which of them are already
done, running each one into a record (with the out-of-memory retry), and the dry-run plan with its time
estimate."""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from checkpoints import saved_run_key
from config import Config, HeadConfig, TrainingConfig, expand_grid, strategy_settings
from data import SPLITS, Encoded, LabelledData, augment_texts, few_shot_rows, load_data, token_ids, tokenize
from data_report import (DATA_REPORT, LENGTH_PERCENTILE, auto_max_length, build_report, describe_report, save_report,
                         token_lengths)
from diagnostics import diagnose
from measure import PeakMemory, device_name, library_versions
from model import (build_model, check_against_model, load_model_config, load_tokenizer, new_head_reason,
                   parameter_counts, part_learning_rates, source_run)
from report import describe_baseline, summarize, terminal_summary, write_summary
from results import RUN_RECORD, read_results, results_file, save_record, write_experiment
from setfit_body import encodings_per_text
from tasks import TASKS
from trackers import run_trackers
from trainer import evaluate, make_accelerator, train
from utils import ConfigError, atomic_write_bytes, atomic_write_json, is_main_process, set_seed, stable_hash

logger = logging.getLogger("bertlab")

# Training keys added after run ids were first handed out: left out of the run key at their defaults, so
# runs made before them keep their ids (and their cached results).
ADDED_TRAINING_KEYS = ("loss", "class_weights", "focal_gamma", "label_smoothing", "sampler", "bf16",
                       "head_learning_rate", "layer_lr_decay")

# The training speed assumed for the time estimate when no earlier run here gives one (MiniLM-L6,
# max_length 64, 2 CPU cores).
GUESSED_SAMPLES_PER_S = 100.0


@dataclasses.dataclass
class Run:
    """One training run of the experiment: a strategy under a config with no lists left in it."""

    strategy: str
    cfg: Config  # seed, rates and swept values resolved to single values
    varied: dict[str, Any]  # the grid values that set this configuration apart from the strategy's others
    shots: int | None = None  # few-shot: training examples per class
    draw: int | None = None  # few-shot: which sample of `shots` per class

    def key(self, data_fingerprint: str) -> dict:
        """Everything that changes the result, so a run id never names two different experiments.
        (How often checkpoints are written changes nothing, so it may differ on --resume; the global
        learning rate is in `settings` when it is the one used.)"""
        excluded = ("checkpoint_every_steps", "seeds", "learning_rate")
        defaults = dataclasses.asdict(TrainingConfig())
        training = {k: v for k, v in dataclasses.asdict(self.cfg.training).items()
                    if k not in excluded and not (k in ADDED_TRAINING_KEYS and v == defaults[k])}
        model = dataclasses.asdict(self.cfg.model)
        if self.cfg.model.head == HeadConfig():  # added later: runs with the model's own head keep their ids
            del model["head"]
        source = source_run(self.cfg)
        if source:  # the run itself, however its folder was named
            model["init_from"] = source["record"]["run_id"]
        else:  # added later: runs without it keep their ids
            del model["init_from"]
        key = {"strategy": self.strategy, "settings": strategy_settings(self.cfg, self.strategy),
               "model": model, "training": training, "data_fingerprint": data_fingerprint}
        if self.shots is not None:
            key["few_shot"] = {"shots_per_class": self.shots, "draw": self.draw}
        if self.cfg.data.augment.enabled:  # off, it changes nothing: earlier runs keep their ids
            key["augment"] = dataclasses.asdict(self.cfg.data.augment)
        return key

    def run_id(self, data_fingerprint: str) -> str:
        return f"{self.strategy}-{stable_hash(self.key(data_fingerprint))}"

    def config_id(self, data_fingerprint: str) -> str:
        """Runs that differ only in seed or few-shot draw share a configuration: they are aggregated."""
        key = self.key(data_fingerprint)
        key["training"].pop("seed")
        key.get("few_shot", {}).pop("draw", None)
        return f"{self.strategy}-{stable_hash(key)}"

    def describe(self) -> str:
        parts = [f"{short_key(k)}={v}" for k, v in self.varied.items()]
        if self.shots is not None:
            parts.append(f"shots={self.shots} draw={self.draw}")
        return " ".join(parts + [f"seed={self.cfg.training.seed}"])


def short_key(dotted: str) -> str:
    """`strategies.lora.rank` -> `rank`: the strategy is already in the row. Other keys stay whole."""
    return dotted.split(".", 2)[2] if dotted.startswith("strategies.") else dotted


def plan_runs(cfg: Config, strategies: list[str]) -> list[Run]:
    """Strategies x their grid (rates, ranks, sweep) x few-shot sizes and draws x seeds."""
    seeds = cfg.training.seeds or [cfg.training.seed]
    few = cfg.few_shot
    shots_and_draws = [(k, d) for k in few.shots_per_class for d in range(few.repeats)] if few.enabled else [(None, None)]
    runs = []
    for strategy in strategies:
        for varied, point in expand_grid(cfg, strategy):
            for shots, draw in shots_and_draws:
                for seed in seeds:
                    single = dataclasses.replace(point, training=dataclasses.replace(point.training, seed=seed,
                                                                                     seeds=None))
                    runs.append(Run(strategy, single, varied, shots, draw))
    return runs


class Inputs:
    """Data, tokenizers, token lengths and token ids, each loaded once per distinct data config and model, shared
    by every run."""

    def __init__(self):
        self.data: dict[str, LabelledData] = {}
        self.tokenizers: dict[str, Any] = {}
        self.lengths: dict[tuple, dict[str, np.ndarray]] = {}
        self.encoded: dict[tuple, Encoded] = {}

    def tokenizer_for(self, run: Run):
        if run.cfg.model.name not in self.tokenizers:
            self.tokenizers[run.cfg.model.name] = load_tokenizer(run.cfg)
        return self.tokenizers[run.cfg.model.name]

    def lengths_for(self, run: Run) -> dict[str, np.ndarray]:
        """Every split's untruncated token lengths under the run's tokenizer."""
        key = (self.data_key(run), run.cfg.model.name)
        if key not in self.lengths:
            data = self.data_for(run)
            self.lengths[key] = {split: token_lengths(self.tokenizer_for(run), data.texts[split],
                                                      data.pairs and data.pairs[split]) for split in SPLITS}
        return self.lengths[key]

    @staticmethod
    def data_key(run: Run) -> str:
        """What the loaded data depends on: augmentation is per run, added in for_run."""
        return stable_hash({**dataclasses.asdict(run.cfg.data), "augment": None})

    def data_for(self, run: Run) -> LabelledData:
        if self.data_key(run) not in self.data:
            self.data[self.data_key(run)] = load_data(run.cfg.data)
        return self.data[self.data_key(run)]

    def for_run(self, run: Run) -> tuple[LabelledData, Encoded]:
        """The data, and the token ids the run trains on: its few-shot sample and augmented rows, if any."""
        data = self.data_for(run)
        token_key = (self.data_key(run), run.cfg.model.name, run.cfg.model.max_length)
        if token_key not in self.encoded:
            self.encoded[token_key] = tokenize(data, self.tokenizer_for(run), run.cfg.model.max_length,
                                               run.cfg.data.doc_stride)
        encoded = self.encoded[token_key]
        rows = range(len(data.labels["train"]))
        if run.shots is not None:
            rows = few_shot_rows(data.labels["train"], run.shots, run.cfg.data.seed, run.draw)
            encoded = encoded.with_train_rows(rows)
        augment = run.cfg.data.augment
        if augment.enabled:
            texts, labels = augment_texts([data.texts["train"][i] for i in rows], [data.labels["train"][i] for i in rows],
                                          augment, run.cfg.training.seed)
            encoded = encoded.with_added_train_rows(token_ids(self.tokenizer_for(run), texts, run.cfg.model.max_length),
                                                    labels)
        return data, encoded


def resolve_max_length(runs: list[Run], inputs: Inputs, model_configs: dict) -> list[Run]:
    """Runs with model.max_length: auto get the length data_report.auto_max_length picks from their training
    data, so their ids, records and saved configs hold the number that was used."""
    resolved, told = [], set()
    for run in runs:
        if run.cfg.model.max_length == "auto":
            limit = getattr(model_configs[run.cfg.model.name], "max_position_embeddings", None)
            if run.strategy == "prompt_tuning" and limit is not None:
                limit -= run.cfg.strategies.prompt_tuning.num_virtual_tokens  # the virtual tokens take positions too
            train = inputs.lengths_for(run)["train"]
            length = auto_max_length(train, limit)
            if (length, run.cfg.model.name) not in told:
                told.add((length, run.cfg.model.name))
                percentile = np.percentile(train, LENGTH_PERCENTILE)
                logger.info("model.max_length auto: %d (the %dth percentile of %s's training token lengths is %.0f%s; "
                            "%.1f%% of training texts are truncated)", length, LENGTH_PERCENTILE, run.cfg.model.name,
                            percentile, f", above the model's limit of {limit}" if limit and percentile > limit else "",
                            100 * (train > length).mean())
            run = dataclasses.replace(run, cfg=dataclasses.replace(
                run.cfg, model=dataclasses.replace(run.cfg.model, max_length=length)))
        resolved.append(run)
    return resolved


def data_reports(runs: list[Run], inputs: Inputs) -> dict[str, dict]:
    """The data report of each data set the runs use (under the first run's model and max_length), by fingerprint."""
    reports = {}
    for run in runs:
        data = inputs.data_for(run)
        if data.fingerprint not in reports:
            reports[data.fingerprint] = build_report(data, inputs.lengths_for(run), run.cfg.model.max_length,
                                                     run.cfg.model.name, TASKS[run.cfg.data.task])
    return reports


def baseline_of(data: LabelledData, cfg: Config) -> dict:
    return TASKS[cfg.data.task].baseline(data.labels["train"], data.labels["test"], data.label_names)


def run_experiment(cfg: Config, strategies: list[str], *, resume: bool = False, force: bool = False,
                   dry_run: bool = False, config_file: str = "", command: str = "",
                   shard: tuple[int, int] | None = None, summary_only: bool = False) -> int:
    """Run every planned run that is not already completed (with `shard` (K, N): only the K-th of N shares of
    the plan), then write and print the summary of the whole plan once all of it has finished; with
    `summary_only`, train nothing and summarise what has. Returns the exit status: 0 when every run
    completed, 1 when some failed or (summary only) has not finished."""
    refuse_strategies(cfg, strategies)
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
    results_path = results_file(cfg.output.dir)
    ids = [run.run_id(inputs.data_for(run).fingerprint) for run in runs]
    completed = {r["run_id"]: r for r in read_results(results_path) if r["status"] == "completed"}
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
    write_experiment(results_path, config_file=config_file, command=command, config=dataclasses.asdict(cfg),
                     strategies=strategies, run_ids=ids)
    for report in reports.values():
        save_report(report, results_path.parent)
    if summary_only:
        return finish(cfg, ids, results_path, describe_baseline(task, baseline))
    share = f" (shard {shard[0]}/{shard[1]}: {len(mine)} of the plan's {len(runs)})" if shard else ""
    logger.info("%d run(s) planned%s: %d already completed (reused; --force runs them again), %d to run",
                len(mine), share, sum(ids[i] in cached for i in mine), sum(ids[i] not in cached for i in mine))
    accelerator = make_accelerator(cfg.training.fp16, cfg.training.bf16)
    if accelerator.num_processes > 1 and "setfit" in strategies:  # its stage runs a trainer of its own
        raise ConfigError(f"strategy setfit trains on one process, and this launch has {accelerator.num_processes}: "
                          "run it with python main.py --strategy setfit")
    failed = 0
    for number, i in enumerate(mine, 1):
        if ids[i] in cached:
            continue
        logger.info("run %d/%d: %s %s", number, len(mine), runs[i].strategy, runs[i].describe())
        run_data, encoded = inputs.for_run(runs[i])
        record = run_one(runs[i], ids[i], run_data, encoded, accelerator, baseline_of(run_data, runs[i].cfg), resume)
        failed += record["status"] != "completed"
    if not accelerator.is_main_process:  # the main process summarises
        return 1 if failed else 0
    if shard is not None:
        finished = {r["run_id"] for r in read_results(results_path)}
        if not set(ids) <= finished:
            print(f"\nshard {shard[0]}/{shard[1]} done ({len(mine)} run(s), {failed} failed); {len(set(ids) - finished)} "
                  "run(s) of the plan are still to finish in other shards. Once they have: python main.py "
                  "--summary-only (with the same config), then python visualize.py")
            return 1 if failed else 0
    return max(finish(cfg, ids, results_path, describe_baseline(task, baseline)), 1 if failed else 0)


def refuse_strategies(cfg: Config, strategies: list[str]) -> None:
    """Stop before anything runs when a strategy cannot serve the task or the data."""
    task = TASKS[cfg.data.task]
    for strategy in strategies:
        reason = task.refused_strategy(strategy)
        if reason:
            raise ConfigError(f"strategy {strategy} does not apply to data.task: {task.name} ({reason}); choose "
                              "another with --strategy or strategies.<name>.enabled")
    if cfg.data.text_pair_column and "setfit" in strategies:
        raise ConfigError("strategy setfit does not apply with data.text_pair_column: its sentence encoder reads single "
                          "texts; choose another with --strategy or strategies.<name>.enabled")


def finish(cfg: Config, ids: list[str], results_path: Path, baseline: str) -> int:
    """Write and print the summary of the planned runs' records; 1 when some failed or has not run."""
    by_id = {r["run_id"]: r for r in read_results(results_path)}
    records = [by_id[i] for i in ids if i in by_id]
    missing = len(ids) - len(records)
    if not records:
        raise ConfigError(f"no run of this plan has finished in {results_path} yet: run python main.py (or each "
                          "--shard K/N) first, with the same config")
    summary = summarize(records, cfg.training.early_stopping.metric)
    write_summary(summary, results_path.parent)
    print("\n" + terminal_summary(summary, results_path.parent))
    print(f"\n{baseline}")
    failed = [r["run_id"] for r in records if r["status"] != "completed"]
    if failed:
        logger.error("%d run(s) failed: %s (see 'error' in their records)", len(failed), ", ".join(failed))
    if missing:
        logger.error("%d planned run(s) have not run yet: the summary holds the %d that have", missing, len(records))
    return 1 if failed or missing else 0


# Training examples per second relative to full fine-tuning, measured on the demo data with 2 CPU cores (full
# 80, lora 101, bitfit 154, prompt tuning 77, partial freezing 219, frozen encoder 321 examples/s). On a GPU
# they lie closer together, which only makes the shares a little less even.
RELATIVE_COST = {"full": 1.0, "lora": 0.8, "bitfit": 0.52, "prompt_tuning": 1.04, "partial_freezing": 0.37,
                 "frozen_encoder": 0.25}


def passes(run: Run) -> int:
    """How many times the run encodes each training text: its epochs; one for a head fitted on features; SetFit:
    as often as its contrastive training does."""
    settings = strategy_settings(run.cfg, run.strategy)
    if run.strategy == "setfit":
        return encodings_per_text(settings)
    return 1 if settings.get("classifier") == "logistic_regression" else run.cfg.training.num_epochs


def planned_cost(run: Run, inputs: Inputs) -> float:
    """A run's training cost from its plan alone (tokens to train on x passes x the strategy's relative cost),
    so that every worker computes the same shares, whatever has run already."""
    _, encoded = inputs.for_run(run)
    return sum(map(len, encoded.ids["train"])) * passes(run) * RELATIVE_COST.get(run.strategy, 1.0)


def assign_shards(costs: list[float], shards: int) -> list[int]:
    """The shard of each run: the costliest first, each to the shard with the least cost so far (the lower
    index among equals), so shares take similar time and every worker derives the same assignment."""
    loads, owners = [0.0] * shards, [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        owners[i] = min(range(shards), key=lambda k: (loads[k], k))
        loads[owners[i]] += costs[i]
    return owners


def print_shares(costs: list[float], owners: list[int], shards: int) -> None:
    loads = [0.0] * shards
    for cost, owner in zip(costs, owners):
        loads[owner] += cost
    print("\nestimated share of the training in each shard: "
          + ", ".join(f"{k}/{shards}: {load / sum(costs):.0%}" for k, load in enumerate(loads)))


def run_one(run: Run, run_id: str, data: LabelledData, encoded: Encoded, accelerator, baseline: dict,
            resume: bool) -> dict:
    """Train and test one run; the record is saved whether the run completes or fails."""
    cfg, strategy = run.cfg, run.strategy
    settings = strategy_settings(cfg, strategy)
    task = TASKS[cfg.data.task]
    output = Path(cfg.output.dir)
    run_dir = output / "checkpoints" / strategy / run_id
    atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False).encode())
    # the training examples as trained on (few-shot, augmented); questions, not their windows
    sizes = {**data.sizes(), "train": len(encoded.examples["train"] if encoded.examples else encoded.labels["train"])}
    record = {"run_id": run_id, "config_id": run.config_id(data.fingerprint), "strategy": strategy,
              "status": "running", "varied": {short_key(k): v for k, v in run.varied.items()},
              "few_shot": {"shots_per_class": run.shots, "draw": run.draw} if run.shots is not None else None,
              "model": cfg.model.name, "task": cfg.data.task,
              "dataset": {"name": data.name, "fingerprint": data.fingerprint, "sizes": sizes,
                          "num_labels": len(data.label_names), "label_names": data.label_names,
                          "label_distribution": {split: task.label_distribution(labels, data.label_names)
                                                 for split, labels in encoded.labels.items()},
                          "majority_baseline": baseline, "augmented_train_rows": encoded.augmented_rows,
                          "report": f"{DATA_REPORT}#{data.fingerprint}"},  # beside the results file
              "seed": cfg.training.seed,
              "hyperparameters": {**dataclasses.asdict(cfg.training), **settings, "max_length": cfg.model.max_length},
              "device": device_name(accelerator.device), "mixed_precision": accelerator.mixed_precision,
              "num_processes": accelerator.num_processes,
              "versions": library_versions(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    started = time.perf_counter()
    attempt = cfg
    if resume:  # a run interrupted after an out-of-memory retry continues as that retry
        for _ in range(halvings_before_checkpoint(run, run_dir, data.fingerprint)):
            attempt = halve_batch(attempt)
            record_retry(record, attempt)
        if attempt is not cfg:
            logger.info("%s: its last checkpoint is from an out-of-memory retry; resuming that retry (batch size %d)",
                        run_id, attempt.training.batch_size)
    memory = PeakMemory(accelerator.device)
    try:
        while True:
            try:
                record.update(fit_and_test(run, attempt, data, encoded, accelerator, run_dir, resume))
                break
            except torch.OutOfMemoryError:
                if accelerator.num_processes > 1:  # the others wait in an exchange: end this process, and the launch
                    raise SystemExit(f"{run_id}: out of memory in process {accelerator.process_index} of "
                                     f"{accelerator.num_processes}: lower training.batch_size (the batch of all "
                                     "processes together) or raise gradient_accumulation_steps, then --resume") from None
                if attempt.training.batch_size == 1:
                    raise
            # outside the except block, so the failed attempt's model and optimizer can be freed; they sit in
            # reference cycles (accelerate wraps the model's forward), which only a collection after
            # free_memory() has dropped the accelerator's references releases
            accelerator.free_memory()
            gc.collect()
            torch.cuda.empty_cache()
            attempt, resume = halve_batch(attempt), False
            record_retry(record, attempt)
            logger.warning("%s: out of GPU memory; retrying from the start with batch size %d and %d accumulation "
                           "steps (the same effective batch)", run_id, attempt.training.batch_size,
                           attempt.training.gradient_accumulation_steps)
        record["status"] = "completed"
        record["diagnostics"] = diagnose(record, task)
        for found in record["diagnostics"]:
            logger.warning("%s: %s: %s. Next: %s", run_id, found["kind"], found["message"], found["next_step"])
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as err:  # a failing run is recorded with its reason; the others go on
        logger.error("%s failed: %s: %s", run_id, type(err).__name__, err)
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    finally:  # also when interrupted, so the memory sampler does not outlive the run
        record["peak_memory_mb"], record["peak_memory_measure"] = memory.stop()
        accelerator.free_memory()
    if cfg.output.keep_checkpoints == "none" and accelerator.is_main_process:
        for checkpoint in [*run_dir.glob("*.pt"), *run_dir.glob("*.safetensors")]:
            checkpoint.unlink()
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["run_time_s"] = round(time.perf_counter() - started, 2)  # building, training, validating, testing, saving
    save_record(results_file(output), record)
    atomic_write_json(run_dir / RUN_RECORD, record)
    return record


def fit_and_test(run: Run, cfg: Config, data: LabelledData, encoded: Encoded, accelerator, run_dir: Path,
                 resume: bool) -> dict:
    """Build the wrapped model, train it and test its best epoch: the record's results."""
    settings = strategy_settings(cfg, run.strategy)
    task = TASKS[cfg.data.task]
    set_seed(cfg.training.seed)  # the same head initialisation for every strategy
    model = build_model(cfg, run.strategy, data.label_names)
    source = source_run(cfg)
    reason = source and new_head_reason(source, cfg, data.label_names)
    init = source and {"run_id": source["record"]["run_id"], "folder": str(source["folder"]),
                       "head": f"re-initialised: {reason}" if reason else "kept"}
    if init:
        logger.info("%s starts from run %s (%s); its head: %s", run_dir.name, init["run_id"], init["folder"], init["head"])
    if not init or reason:  # a fresh head
        task.init_head(model, encoded.labels["train"])
    counts = parameter_counts(model)
    how = (f"{cfg.training.num_epochs} epochs | effective batch "
           f"{cfg.training.batch_size * cfg.training.gradient_accumulation_steps} | lr {settings['learning_rate']:.1e}"
           if not getattr(model, "fit", None) else f"not trained by epoch: {model.fit.__name__}")
    logger.info("%s | %d train examples | %s | trainable %d of %d (%.3f%%)", run_dir.name, len(encoded.labels["train"]),
                how, counts["trainable_params"], counts["total_params"], counts["trainable_pct"])
    run_key = dataclasses.replace(run, cfg=cfg).key(data.fingerprint)  # after an OOM retry: its batch settings
    logged = {**dataclasses.asdict(cfg.training), **settings, "strategy": run.strategy, "model": cfg.model.name,
              "max_length": cfg.model.max_length, "data_fingerprint": data.fingerprint}
    parts = part_learning_rates(model, settings["learning_rate"], cfg.training.head_learning_rate,
                                cfg.training.layer_lr_decay)
    # a strategy may train on something cheaper than the whole model (its feature_view), or by other means than
    # the gradient loop (its fit); both leave the trained weights in `model`
    trained, inputs, features = model, encoded, None
    if getattr(model, "feature_view", None):
        trained, inputs, features = model.feature_view(model, encoded, cfg, accelerator)
    fit = getattr(model, "fit", train)
    with run_trackers(cfg.output.trackers, run_dir.name, Path(cfg.output.dir) / "trackers", logged) as trackers:
        result = fit(trained, inputs, cfg, settings["learning_rate"], run_dir, accelerator, run_key, resume,
                     on_epoch=lambda entry: trackers.log(entry, step=entry["epoch"]),
                     rates={name: rate for name, (_, rate) in parts.items()})
        test = evaluate(trained, inputs, "test", cfg.training, accelerator, task)
        trackers.log({f"test_{name}": test[name] for name in ["loss"] + [m.name for m in task.metrics]},
                     step=result["best_epoch"])
    if features and features["cached"]:  # the time to compute them is part of this run's training time
        result["train_time_s"] = round(result["train_time_s"] + features["seconds"], 2)
    return {**counts, **result, "parameter_groups": parameter_groups(parts, model), "init_from": init,
            "features": features, "export_refused": getattr(model, "not_exportable", None),
            "unfreezing": getattr(model, "unfreezing", None),
            "test": {"loss": test["loss"], **task.test_report(test["truth"], test["values"],
                                                             data.label_names)},
            # for paired comparisons between runs and the task's plots
            "test_predictions": test["predictions"].tolist(), "test_labels": list(test["truth"])}


def parameter_groups(parts: dict[str, tuple[str, float]], model: torch.nn.Module) -> list[dict]:
    """What trains at which rate, by part of the model (the head, each layer, the embeddings), for the record."""
    sizes = dict(model.named_parameters())
    groups: dict[str, dict] = {}
    for name, (part, rate) in parts.items():
        group = groups.setdefault(part, {"part": part, "learning_rate": rate, "parameters": 0})
        group["parameters"] += sizes[name].numel()
    return list(groups.values())


def halve_batch(cfg: Config) -> Config:
    """Half the batch and twice the accumulation: the same effective batch in less memory."""
    t = cfg.training
    halved = dataclasses.replace(t, batch_size=t.batch_size // 2, gradient_accumulation_steps=2 * t.gradient_accumulation_steps,
                                 eval_batch_size=max(1, t.eval_batch_size // 2),
                                 eval_batch_tokens=t.eval_batch_tokens and max(1, t.eval_batch_tokens // 2))
    return dataclasses.replace(cfg, training=halved)


def record_retry(record: dict, attempt: Config) -> None:
    t = attempt.training
    retry = {"batch_size": t.batch_size, "gradient_accumulation_steps": t.gradient_accumulation_steps}
    record.setdefault("oom_retries", []).append(retry)
    record["hyperparameters"].update(retry, eval_batch_size=t.eval_batch_size, eval_batch_tokens=t.eval_batch_tokens)


def halvings_before_checkpoint(run: Run, run_dir: Path, data_fingerprint: str) -> int:
    """How many out-of-memory retries the run had made when its last checkpoint was written (0 when none, or
    when the checkpoint matches no retry: resuming then refuses it, naming what differs)."""
    saved = saved_run_key(run_dir)
    cfg, halvings = run.cfg, 0
    while saved is not None and cfg.training.batch_size > 1:
        cfg, halvings = halve_batch(cfg), halvings + 1
        if dataclasses.replace(run, cfg=cfg).key(data_fingerprint) == saved:
            return halvings
    return 0


def print_plan(runs: list[Run], ids: list[str], cached: set[str], inputs: Inputs, completed: dict[str, dict],
               cfg: Config, mine: list[int]) -> None:
    """What a real run would do (the runs numbered `mine`: all, or a shard's), with the wrapped models' sizes
    and a rough time, training nothing."""
    share = "" if len(mine) == len(runs) else f" in this shard, of the plan's {len(runs)}"
    runs, ids = [runs[i] for i in mine], [ids[i] for i in mine]
    cached = cached & set(ids)
    print(f"{len(runs)} run(s) planned{share}: {len(cached)} already completed in {results_file(cfg.output.dir)} "
          f"(reused), {len(runs) - len(cached)} to run")
    for number, (run, run_id) in enumerate(zip(runs, ids), 1):
        print(f"  {number:3d}  {run_id}  {'cached' if run_id in cached else 'to run':6}  {run.strategy} {run.describe()}")
    print("\nparameters of the wrapped models (built, not trained):")
    built = set()
    for run in runs:
        data = inputs.data_for(run)
        settings = {k: v for k, v in strategy_settings(run.cfg, run.strategy).items() if k != "learning_rate"}
        shape = stable_hash([run.strategy, settings, run.cfg.model.name, dataclasses.asdict(run.cfg.model.head),
                             len(data.label_names)])
        if shape not in built:
            built.add(shape)
            counts = parameter_counts(build_model(run.cfg, run.strategy, data.label_names))
            label = " ".join([run.strategy] + [f"{short_key(k)}={v}" for k, v in run.varied.items()
                                               if not k.endswith(".learning_rate")])
            print(f"  {label:24}  {counts['trainable_params']:>12,} trainable of {counts['total_params']:,} "
                  f"({counts['trainable_pct']:.3f}%)")
    seconds, source = estimate_seconds([r for r, i in zip(runs, ids) if i not in cached], inputs, completed)
    print(f"\nrough time for the runs to do: {seconds / 60:.0f} min if every run trains all its epochs ({source})")


def estimate_seconds(runs: list[Run], inputs: Inputs, completed: dict[str, dict]) -> tuple[float, str]:
    """Examples to train on over the median speed of earlier runs here with the same strategy, model and
    max_length; without one, GUESSED_SAMPLES_PER_S."""
    speeds: dict[tuple, list[float]] = {}
    for record in completed.values():
        key = (record["strategy"], record["model"], record["hyperparameters"].get("max_length"))
        speeds.setdefault(key, []).append(record["train_samples_per_s"])
    total, measured = 0.0, 0
    for run in runs:
        _, encoded = inputs.for_run(run)
        known = speeds.get((run.strategy, run.cfg.model.name, run.cfg.model.max_length))
        measured += bool(known)
        speed = sorted(known)[len(known) // 2] if known else GUESSED_SAMPLES_PER_S
        total += len(encoded.labels["train"]) * passes(run) / speed
    if not runs:
        return 0.0, "nothing to run"
    return total, (f"{measured} of {len(runs)} run(s) timed from earlier runs here, the rest guessed at "
                   f"{GUESSED_SAMPLES_PER_S:.0f} examples/s")
