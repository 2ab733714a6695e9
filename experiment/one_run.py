"""One run: build its model, train and test it into a record (with the out-of-memory retry), saved whether it
completes or fails."""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml

from config import Config
from data import Encoded, LabelledData, epoch_rows
from experiment.costs import step_costs, total_costs
from experiment.plan import Run, short_key
from records.measure import PeakMemory, device_name, library_versions
from model import (
    planned_model,
    export_refused,
    fit_temperature,
    fold_temperature,
    new_head_reason,
    parameter_counts,
    part_learning_rates,
)
from records.checkpoints import BEST_WEIGHTS, drop_checkpoints, load_weights, save_weights, saved_run_key
from records.results import RUN_RECORD, SCHEMA_VERSION, results_file, run_folder, save_record
from records.shape import (
    BatchRetry,
    Costs,
    Dataset,
    FewShot,
    Fold,
    Outcome,
    Planned,
    RecordShapeError,
    RunRecord,
    Step,
    Tested,
    shape_problems,
)
from reporting.data_report import DATA_REPORT
from reporting.diagnostics import diagnose
from reporting.verdict import best_of
from strategies import STRATEGIES
from experiment.trackers import run_trackers
from trainer import (
    Decision,
    RunPaused,
    RunPruned,
    TrainJob,
    TrainResult,
    device_batch,
    evaluate,
    model_inputs,
    train,
)
from utils import ConfigError, atomic_write_bytes, atomic_write_json, set_seed

logger = logging.getLogger("bertlab")


@dataclasses.dataclass
class RunInputs:
    """One planned run with what it trains and tests on: its id, its data as loaded and as encoded, and the
    baseline its record notes."""

    run: Run
    run_id: str
    data: LabelledData
    encoded: Encoded
    baseline: dict

    @property
    def folder(self) -> Path:
        """Its checkpoints, its config and its own record."""
        return run_folder(self.run.cfg.output.dir, self.run.strategy, self.run_id)


def run_one(job: RunInputs, accelerator, resume: bool, on_evaluation=None) -> RunRecord:
    """Train and test one run (a search trial: validate only, `on_evaluation` judging the history after each
    evaluation, perhaps pruning or pausing it); the record is saved whether the run completes, is pruned or fails
    (a paused run has none yet: RunPaused goes to the caller)."""
    cfg, run_dir = job.run.cfg, job.folder
    atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(cfg.as_saved(), sort_keys=False).encode())
    record = new_record(job, accelerator)
    started = time.perf_counter()
    memory = PeakMemory(accelerator.device)
    try:
        record.update(fit_with_retries(job, record, accelerator, resume, on_evaluation))
        record["status"] = "completed"
        if "test" in record:
            record["diagnostics"] = diagnose(record, job.run.task)
        for found in record.get("diagnostics", []):
            logger.warning(
                "%s: %s: %s. Next: %s", job.run_id, found["kind"], found["message"], found["next_step"]
            )
    except (ConfigError, KeyboardInterrupt, RunPaused):
        raise
    except RunPruned as pruned:  # a search trial behind the others: never chosen, never tested
        record.update(pruned_outcome(pruned, job.run), status="pruned")
        logger.info("%s: %s", job.run_id, pruned)
    except Exception as err:  # a failing run is recorded with its reason; the others go on
        logger.error("%s failed: %s: %s", job.run_id, type(err).__name__, err)
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    finally:  # also when interrupted, so the memory sampler does not outlive the run
        record["peak_memory_mb"], record["peak_memory_measure"] = memory.stop()
        accelerator.free_memory()
    if (
        cfg.output.keep_checkpoints == "none" or record["status"] == "pruned"
    ) and accelerator.is_main_process:
        drop_checkpoints(run_dir)
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # building, training, validating, testing, saving
    record["run_time_s"] = round(time.perf_counter() - started, 2)
    save_record(results_file(cfg.output.dir), record)
    atomic_write_json(run_dir / RUN_RECORD, record)
    if problems := shape_problems(record):  # a defect of this code, not of the run: kept, then said
        raise RecordShapeError(
            f"{job.run_id}: its record departs from records/shape.py: " + "; ".join(problems)
        )
    return record


def new_record(job: RunInputs, accelerator) -> Planned:
    """A run's record before it trains: what it is, on what data, with which settings, where, with what."""
    run, data, encoded = job.run, job.data, job.encoded
    cfg, task = run.cfg, run.task
    # the training examples as trained on (few-shot, augmented); questions, not their windows
    sizes = {**data.sizes(), "train": task.example_count(encoded, "train")}
    dataset = Dataset(
        name=data.name,
        fingerprint=data.fingerprint,
        sizes=sizes,
        num_labels=len(data.label_names),
        label_names=data.label_names,
        label_distribution={
            split: task.label_distribution(labels, data.label_names)
            for split, labels in encoded.labels.items()
        },
        majority_baseline=job.baseline,
        augmented_train_rows=encoded.augmented_rows,
        report=f"{DATA_REPORT}#{data.fingerprint}",  # beside the results file
    )
    return Planned(
        schema_version=SCHEMA_VERSION,
        run_id=job.run_id,
        config_id=run.config_id(data.fingerprint),
        strategy=run.strategy,
        status="running",
        varied={short_key(k): v for k, v in run.varied.items()},
        few_shot=FewShot(shots_per_class=run.shots, draw=run.draw) if run.shots is not None else None,
        fold=Fold(folds=cfg.data.folds, repeat=run.fold[0], index=run.fold[1])
        if run.fold is not None
        else None,
        trial=run.trial,
        model=cfg.model.name,
        task=cfg.data.task,
        dataset=dataset,
        seed=cfg.training.seed,
        hyperparameters={
            **dataclasses.asdict(cfg.training),
            **run.settings.recorded(),
            "max_length": cfg.model.max_length,
        },
        device=device_name(accelerator.device),
        mixed_precision=accelerator.mixed_precision,
        num_processes=accelerator.num_processes,
        versions=library_versions(),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def fit_with_retries(job: RunInputs, record: RunRecord, accelerator, resume: bool, on_evaluation) -> Outcome:
    """fit_and_test, retried from the start with half the batch (and twice the accumulation: the same effective
    batch) while a GPU runs out of memory; a run resumed after such a retry continues as that retry. Each
    retry is noted in the record."""
    run, attempt = job.run, job.run.cfg
    if resume:
        for _ in range(halvings_before_checkpoint(run, job.folder, job.data.fingerprint)):
            attempt = halve_batch(attempt)
            record_retry(record, attempt)
        if attempt is not run.cfg:
            logger.info(
                "%s: its last checkpoint is from an out-of-memory retry; resuming that retry (batch size %d)",
                job.run_id,
                attempt.training.batch_size,
            )
    while True:
        try:
            return fit_and_test(job, attempt, accelerator, resume, on_evaluation)
        except torch.OutOfMemoryError:
            # the others wait in an exchange: end this process, and the launch
            if accelerator.num_processes > 1:
                raise SystemExit(
                    f"{job.run_id}: out of memory in process {accelerator.process_index} of "
                    f"{accelerator.num_processes}: lower training.batch_size (the batch of all "
                    "processes together) or raise gradient_accumulation_steps, then --resume"
                ) from None
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
        logger.warning(
            "%s: out of GPU memory; retrying from the start with batch size %d and %d accumulation "
            "steps (the same effective batch)",
            job.run_id,
            attempt.training.batch_size,
            attempt.training.gradient_accumulation_steps,
        )


def pruned_outcome(pruned: RunPruned, run: Run) -> Outcome:
    """A pruned search trial's part of its record: its evaluations, where it stopped, its best so far."""
    seen, metric = pruned.history, run.cfg.training.early_stopping.metric
    best = best_of(seen, lambda e: e[metric], metric, run.task)
    return Outcome(
        history=seen,
        pruned_at=Step(step=seen[-1]["step"], epoch=seen[-1]["epoch"]),
        best_epoch=best["epoch"],
        best_step=best["step"],
        best_metric=best[metric],
        train_time_s=round(sum(e["seconds"] for e in seen), 2),
        stop_reason=f"search: {pruned}",
    )


def fit_and_test(job: RunInputs, cfg: Config, accelerator, resume: bool, on_evaluation=None) -> Outcome:
    """Build the wrapped model, train it (`cfg`: the run's config, or an out-of-memory retry's) and test its best
    evaluation (not a search trial's): the record's results."""
    run, run_dir, encoded = job.run, job.folder, job.encoded
    settings, strategy = run.settings, STRATEGIES[run.strategy]
    model, init, counts = built_model(job, cfg)
    # a strategy may train on something cheaper than the whole model (its feature_view), or by other means than
    # the gradient loop (its fit); both leave the trained weights in `model`
    fit, feature_view = strategy.fit(settings), strategy.feature_view(settings)
    log_start(job, cfg, counts, fit)
    # after an OOM retry: its batch settings
    run_key = dataclasses.replace(run, cfg=cfg).key(job.data.fingerprint)
    parts = part_learning_rates(
        model, settings.learning_rate, cfg.training.head_learning_rate, cfg.training.layer_lr_decay
    )
    trained, inputs, features = model, encoded, None
    if feature_view:
        trained, inputs, features = feature_view(model, encoded, cfg, accelerator)
    step = step_costs(model, trained, inputs, encoded, run.task, accelerator)
    before_epoch = strategy.before_epoch and (lambda epoch: strategy.before_epoch(model, settings, epoch))
    with run_trackers(
        cfg.output.trackers, run_dir.name, Path(cfg.output.dir) / "trackers", tracked_settings(job, cfg)
    ) as trackers:

        def evaluated(history: list[dict]) -> Decision:
            trackers.log(history[-1], step=history[-1]["step"])
            return on_evaluation(history) if on_evaluation else Decision.GO_ON

        train_job = TrainJob(
            cfg,
            settings,
            run_dir,
            run_key,
            resume,
            rates={name: rate for name, (_, rate) in parts.items()},
            before_epoch=before_epoch,
            on_evaluation=evaluated,
        )
        result = (fit or train)(trained, inputs, train_job, accelerator)
        if features and features["cached"]:  # the time to compute them is part of this run's training time
            result.train_time_s = round(result.train_time_s + features["seconds"], 2)
        fitted = Outcome(
            **counts,
            **result.as_record(),
            costs=run_costs(job, cfg, step, result, features),
            parameter_groups=parameter_groups(parts, model),
            init_from=init,
            features=features,
            export_refused=export_refused(strategy, run.head),
            unfreezing=strategy.schedule(model, settings),
        )
        if run.trial and not run.trial.get("confirms"):  # a search trial: test stays unseen
            return fitted
        return {**fitted, **tested(job, cfg, (trained, inputs), accelerator, trackers, result.best_step)}


def tracked_settings(job: RunInputs, cfg: Config) -> dict:
    """What a tracker (TensorBoard) shows of the run's settings."""
    return {
        **dataclasses.asdict(cfg.training),
        **job.run.settings.recorded(),
        "strategy": job.run.strategy,
        "model": cfg.model.name,
        "max_length": cfg.model.max_length,
        "data_fingerprint": job.data.fingerprint,
    }


def log_start(job: RunInputs, cfg: Config, counts: dict, fit) -> None:
    t = cfg.training
    how = (
        f"{t.num_epochs} epochs | effective batch {t.batch_size * t.gradient_accumulation_steps} | "
        f"lr {job.run.settings.learning_rate:.1e}"
        if fit is None
        else f"not trained by epoch: {fit.__name__}"
    )
    logger.info(
        "%s | %d train examples | %s | trainable %d of %d (%.3f%%)",
        job.folder.name,
        len(job.encoded.labels["train"]),
        how,
        counts["trainable_params"],
        counts["total_params"],
        counts["trainable_pct"],
    )


def built_model(job: RunInputs, cfg: Config) -> tuple[torch.nn.Module, dict | None, dict]:
    """The run's wrapped model, seeded so that every strategy starts from the same head; from an earlier run's
    weights when it names one (its head kept unless it no longer fits); and its parameter counts."""
    run, data = job.run, job.data
    set_seed(cfg.training.seed)  # the same head initialisation for every strategy
    source = run.source
    model = planned_model(run.model_plan(cfg), data.label_names)
    reason = source and new_head_reason(source, cfg, data.label_names)
    init = source and {
        "run_id": source["record"]["run_id"],
        "folder": str(source["folder"]),
        "head": f"re-initialised: {reason}" if reason else "kept",
    }
    if init:
        logger.info(
            "%s starts from run %s (%s); its head: %s",
            job.run_id,
            init["run_id"],
            init["folder"],
            init["head"],
        )
    if not init or reason:  # a fresh head
        run.task.init_head(model, job.encoded.labels["train"])
    return model, init, parameter_counts(model)


def tested(job: RunInputs, cfg: Config, trained_on: tuple, accelerator, trackers, best_step: int) -> Tested:
    """A trained run's calibration, decision rule and test report (what it adds to its record), of the module
    that trained and the inputs it reads (`trained_on`: the model, or a head and cached features)."""
    (trained, inputs), task, data, added = trained_on, job.run.task, job.data, {}
    uncalibrated, validation = None, None
    if cfg.training.calibration == "temperature":
        added["calibration"], uncalibrated, validation = calibrate(
            trained, inputs, cfg, accelerator, task, job.folder
        )
    validation = validation or evaluate(trained, inputs, "validation", cfg.training, accelerator, task)
    # the task's decision rule fitted on validation (on its calibrated probabilities): label sets' thresholds
    decision = decision_of(task, validation, cfg, data.label_names)
    if decision is not None:
        added["decision"] = decision
        logger.info("%s: %s", job.run_id, task.describe_decision(decision))
    task = task.decided(decision)
    # whether the kept weights answer the input at all: a collapse is diagnosed, not read as a verdict
    added["validation_outputs"] = task.output_check(
        validation["truth"], validation["values"], data.label_names
    )
    test = evaluate(trained, inputs, "test", cfg.training, accelerator, task)
    trackers.log(
        {f"test_{name}": test[name] for name in ["loss"] + [m.name for m in task.metrics]}, step=best_step
    )
    if uncalibrated is not None:  # under the decision that validation gave before the temperature
        before = job.run.task.decided(uncalibrated["decision"])
        added["test_uncalibrated"] = {
            "loss": uncalibrated["loss"],
            **before.test_report(uncalibrated["truth"], uncalibrated["values"], data.label_names),
        }
    return Tested(
        **added,
        test={"loss": test["loss"], **task.test_report(test["truth"], test["values"], data.label_names)},
        test_unseen=unseen_report(task, test, data),
        # for paired comparisons between runs and the task's plots
        test_predictions=test["predictions"].tolist(),
        test_labels=list(test["truth"]),
    )


def run_costs(job: RunInputs, cfg: Config, step: dict, result: TrainResult, features: dict | None) -> Costs:
    """The run's counted costs (experiment.costs) under `cfg` (the run's, or an out-of-memory retry's): the
    examples its training went through, whether by the loop (epochs run times an epoch's examples), a
    strategy's own fit (as often as it encodes each text) or a head fitted on features computed once."""
    encoded, settings, strategy = job.encoded, job.run.settings, STRATEGIES[job.run.strategy]
    train = len(encoded.labels["train"])
    cached = bool(features and features["cached"])
    if strategy.fit(settings) is not None:
        examples = 0 if cached else strategy.passes(settings, cfg.training.num_epochs) * train
    else:
        t = cfg.training
        examples = result.history[-1]["epoch"] * len(
            epoch_rows(encoded.labels["train"], t.sampler, t.seed, 0)
        )
    return total_costs(step, cfg.training.batch_size, examples, train if cached else 0)


def decision_of(task, validation: dict, cfg: Config, label_names: list[str]) -> dict | None:
    """The task's decision rule (label sets: each label's threshold) fitted on a validation evaluation, with the
    validation scores the task's own default rule gives and this one's."""
    truth, values = validation["truth"], validation["values"]
    decision = task.decide(truth, values, label_names, cfg.training.decision_threshold)
    if decision is None:
        return None
    before, after = (
        task.scores(truth, values, label_names),
        task.decided(decision).scores(truth, values, label_names),
    )
    return {**decision, "validation": {name: [before[name], after[name]] for name in task.compared_metrics}}


def calibrate(
    module, encoded: Encoded, cfg: Config, accelerator, task, run_dir: Path
) -> tuple[dict, dict, dict]:
    """Fit a temperature on the validation logits, score test once before it (the uncalibrated report, with the
    decision validation gives before it), fold it into the head and into the run's best weights (so that
    predict and export give the calibrated probabilities); returns the calibration's record, the uncalibrated
    test evaluation and the calibrated validation evaluation."""
    t = cfg.training
    before = evaluate(module, encoded, "validation", t, accelerator, task)
    temperature = fit_temperature(before["values"], before["truth"], task.calibration_loss)
    # only the rule itself: the uncalibrated report's decisions (its validation scores are not kept)
    decision = task.decide(before["truth"], before["values"], encoded.label_names, t.decision_threshold)
    uncalibrated = {
        **evaluate(module, encoded, "test", t, accelerator, task.decided(decision)),
        "decision": decision,
    }
    model = accelerator.unwrap_model(module)
    rows = list(range(min(8, len(encoded.ids["validation"]))))
    folded = fold_temperature(
        model, model_inputs(device_batch(encoded, "validation", rows, accelerator, task)), temperature
    )
    weights, saved = load_weights(run_dir / BEST_WEIGHTS)
    missing = [name for name in folded if name not in weights]
    if missing:
        raise ValueError(f"training.calibration: the run's saved weights lack {', '.join(missing)}")
    parameters = dict(model.named_parameters())
    weights.update({name: parameters[name].detach().cpu().clone() for name in folded})
    # a run resumed after its calibration is calibrated again on top: the temperatures multiply
    total = temperature * (saved["temperature"] or 1.0)
    save_weights(run_dir / BEST_WEIGHTS, weights, saved["run_key"], saved["epoch"], total)
    after = evaluate(module, encoded, "validation", t, accelerator, task)
    logger.info(
        "%s: temperature %.3f fitted on validation; validation ECE %.4f -> %.4f, log loss %.4f -> %.4f",
        run_dir.name,
        total,
        before["ece"],
        after["ece"],
        before["log_loss"],
        after["log_loss"],
    )
    return (
        {
            "method": "temperature",
            "temperature": total,
            "folded_into": folded,
            "validation": {
                "ece": [before["ece"], after["ece"]],
                "log_loss": [before["log_loss"], after["log_loss"]],
            },
        },
        uncalibrated,
        after,
    )


def unseen_report(task, test: dict, data: LabelledData) -> dict | None:
    """The test report of a test split the data gave, on its rows that no earlier split holds (None when test was
    cleaned like the other splits, so that all of it is unseen)."""
    if data.test_unseen is None:
        return None
    rows = data.test_unseen
    if not rows:
        return {"examples": 0}
    values = np.asarray(test["values"])[rows]
    return {
        "examples": len(rows),
        **task.test_report([test["truth"][i] for i in rows], values, data.label_names),
    }


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
    halved = dataclasses.replace(
        t,
        batch_size=t.batch_size // 2,
        gradient_accumulation_steps=2 * t.gradient_accumulation_steps,
        eval_batch_size=max(1, t.eval_batch_size // 2),
        eval_batch_tokens=t.eval_batch_tokens and max(1, t.eval_batch_tokens // 2),
    )
    return dataclasses.replace(cfg, training=halved)


def record_retry(record: RunRecord, attempt: Config) -> None:
    t = attempt.training
    retry = BatchRetry(batch_size=t.batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps)
    record.setdefault("oom_retries", []).append(retry)
    record["hyperparameters"].update(
        retry, eval_batch_size=t.eval_batch_size, eval_batch_tokens=t.eval_batch_tokens
    )


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
