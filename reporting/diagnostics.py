"""Diagnostics: plain-language findings about a finished run (over-fitting, under-fitting, instability, and the
task's own: imbalance, collapse, over-confidence), each with the numbers it rests on and a next step; silent on
a healthy run. A pure function of the run's record, so reports can diagnose records made before it existed."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from records.shape import Diagnostic, RunRecord

# Thresholds, each chosen so that a healthy fine-tuning run on the demo data and on TREC stays silent.
OVERFIT_EPOCHS = 2  # consecutive epochs of rising validation loss under falling training loss
UNDERFIT_SHARE = 0.5  # final training cross-entropy above this share of chance level (ln of the class count)
SPIKE_RATIO = 1.25  # an epoch's training loss this many times the previous epoch's
IMBALANCE_GAP = 0.10  # accuracy minus macro-F1
WEAK_CLASS_GAP = 0.30  # a class's F1 this far below the median class's
COLLAPSE_SHARE = 0.90  # one prediction takes this share of the validation (or test) predictions
# How far a text's predicted distribution lies from the average one (tasks.base.output_spread): collapsed runs
# on a spam-like set gave 0.0005 or less, runs that learned 0.2 to 0.8 (spam, banking77; benchmarks/README.md)
FLAT_SPREAD = 0.02
CONFIDENT_ACCURACY = 0.70  # over-confidence is only diagnosed on runs that are otherwise good
OVERCONFIDENT_ECE = 0.10


def finding(kind: str, message: str, next_step: str, **numbers) -> Diagnostic:
    return {"kind": kind, "message": message, "next_step": next_step, "numbers": numbers}


def over_fitting(record: RunRecord) -> Diagnostic | None:
    history = record["history"]
    run = 0
    for before, after in zip(history, history[1:]):
        run = (
            run + 1
            if after["val_loss"] > before["val_loss"] and after["train_loss"] < before["train_loss"]
            else 0
        )
        if run >= OVERFIT_EPOCHS:
            start = history[history.index(after) - run]
            return finding(
                "over-fitting",
                f"validation loss rose from {start['val_loss']:.3f} (epoch {start['epoch']}) to {after['val_loss']:.3f} "
                f"(epoch {after['epoch']}) while training loss fell from {start['train_loss']:.3f} to "
                f"{after['train_loss']:.3f}; the best epoch ({record['best_epoch']}) was kept",
                "fewer epochs are enough (early stopping already keeps the best); for more from the data, try a smaller "
                "learning rate, more dropout (model.dropout) or label smoothing",
                epochs=[start["epoch"], after["epoch"]],
                val_loss=[start["val_loss"], after["val_loss"]],
                train_loss=[start["train_loss"], after["train_loss"]],
                best_epoch=record["best_epoch"],
            )
    return None


def under_fitting(record: RunRecord) -> Diagnostic | None:
    if record["hyperparameters"].get("loss", "cross_entropy") != "cross_entropy":
        return None  # other losses have other scales: the chance level below is cross-entropy's
    final, chance = record["history"][-1]["train_loss"], math.log(record["dataset"]["num_labels"])
    if final < UNDERFIT_SHARE * chance:
        return None
    return finding(
        "under-fitting",
        f"training loss is still {final:.3f} after {record['history'][-1]['epoch']:g} epoch(s), {final / chance:.0%} of chance "
        f"level ({chance:.3f}, a uniform guess over {record['dataset']['num_labels']} classes)",
        "train longer (training.num_epochs, patience) or at a higher learning rate; a frozen or small update may "
        "be too weak for this data",
        final_train_loss=final,
        chance_loss=chance,
        epochs=record["history"][-1]["epoch"],
    )


def instability(record: RunRecord) -> Diagnostic | None:
    history = record["history"]
    spikes = [
        (before, after)
        for before, after in zip(history, history[1:])
        if after["train_loss"] > SPIKE_RATIO * before["train_loss"]
    ]
    if not spikes:
        return None
    before, after = spikes[0]
    return finding(
        "instability",
        f"training loss jumped from {before['train_loss']:.3f} (epoch {before['epoch']}) to {after['train_loss']:.3f} "
        f"(epoch {after['epoch']})" + (f", and {len(spikes) - 1} more time(s)" if len(spikes) > 1 else ""),
        "lower the learning rate or raise training.warmup_ratio",
        spikes=[[b["epoch"], a["epoch"], b["train_loss"], a["train_loss"]] for b, a in spikes],
    )


def imbalance(record: RunRecord) -> Diagnostic | None:
    test = record["test"]
    per_class = test.get("per_class", {})
    present = {name: c for name, c in per_class.items() if c["support"] > 0}
    if not present:
        return None
    median = float(np.median([c["f1"] for c in present.values()]))
    weak = sorted(
        (name for name, c in present.items() if c["f1"] < median - WEAK_CLASS_GAP),
        key=lambda n: present[n]["f1"],
    )
    gap = test["accuracy"] - test["macro_f1"]
    if gap < IMBALANCE_GAP and not weak:
        return None
    weakest = weak or [min(present, key=lambda n: present[n]["f1"])]
    named = ", ".join(
        f"{n} (F1 {present[n]['f1']:.2f}, {present[n]['support']} test examples)" for n in weakest[:3]
    )
    return finding(
        "imbalance",
        f"accuracy {test['accuracy']:.3f} against macro-F1 {test['macro_f1']:.3f}; weakest: {named}",
        "compare training.class_weights: balanced, training.sampler: oversample or data.augment against plain "
        "training with several seeds (configs/imbalanced.yaml)",
        accuracy=test["accuracy"],
        macro_f1=test["macro_f1"],
        median_class_f1=median,
        weakest={n: present[n] for n in weakest},
    )


def collapse(record: RunRecord) -> Diagnostic | None:
    """One prediction for (nearly) every input, or outputs that barely move with it: on validation at the best
    epoch (validation_outputs), or on test for records made before those were kept."""
    seen = record.get("validation_outputs")
    if seen is None:
        seen = test_outputs(record)
        if seen is None:
            return None
    share, truth_share, spread = seen["prediction_share"], seen["truth_share"], seen.get("spread")
    flat = spread is not None and spread < FLAT_SPREAD
    if not flat and (share < COLLAPSE_SHARE or truth_share >= COLLAPSE_SHARE):
        return None
    where = "validation at the best epoch" if "spread" in seen else "test"
    said = [
        f"{share:.0%} of the predictions on {where} are {seen['prediction']}, which is {truth_share:.0%} of "
        "its labels"
    ]
    if flat:
        said.append(
            f"the predicted probabilities barely vary with the input (each text's distribution lies "
            f"{spread:.4f} from the average one; models that learned from the text give 0.2 or more)"
        )
    return finding(
        "collapse",
        "; ".join(said) + ": the run learned little from the text, so its scores say little about the "
        "strategy",
        "likely causes, most likely first: the head (model.head.type: auto reads what the encoder was trained to "
        "give), the learning rate (search it: search.method=optuna), too few steps (more epochs); with rare "
        "classes, class weights or oversampling",
        label=seen["prediction"],
        prediction_share=share,
        label_share=truth_share,
        spread=spread,
    )


def test_outputs(record: RunRecord) -> Diagnostic | None:
    """The commonest test prediction of a classification record, its share and its labels' share."""
    predictions = np.asarray(record.get("test_predictions", []))
    if predictions.size == 0 or predictions.ndim != 1:
        return None
    counts = np.bincount(predictions, minlength=record["dataset"]["num_labels"])
    top = int(counts.argmax())
    return {
        "prediction": record["dataset"]["label_names"][top],
        "prediction_share": float(counts[top] / counts.sum()),
        "truth_share": float(np.mean(np.asarray(record["test_labels"]) == top)),
    }


def over_confidence(record: RunRecord) -> Diagnostic | None:
    test = record["test"]
    if "ece" not in test or test["accuracy"] < CONFIDENT_ACCURACY or test["ece"] < OVERCONFIDENT_ECE:
        return None
    bins = test["calibration"]
    total = sum(bins["count"])
    confidence = sum(c * n for c, n in zip(bins["confidence"], bins["count"]) if n) / total
    if confidence <= test["accuracy"]:
        return None  # under-confident: the probabilities understate, which costs less
    return finding(
        "over-confidence",
        f"mean confidence {confidence:.3f} against accuracy {test['accuracy']:.3f}: expected calibration error "
        f"{test['ece']:.3f}, log loss {test['log_loss']:.3f}",
        "if the probabilities are used (thresholds, abstaining), try training.label_smoothing: 0.1",
        mean_confidence=confidence,
        accuracy=test["accuracy"],
        ece=test["ece"],
        log_loss=test["log_loss"],
    )


# Each diagnostic, and whether only the tasks that name it run it (Task.diagnostics): those read class scores.
DIAGNOSTICS: dict[str, tuple[Callable[[dict], dict | None], bool]] = {
    "over_fitting": (over_fitting, False),
    "instability": (instability, False),
    "under_fitting": (under_fitting, True),
    "imbalance": (imbalance, True),
    "collapse": (collapse, True),
    "over_confidence": (over_confidence, True),
}


def diagnose(record: RunRecord, task) -> list[Diagnostic]:
    """The findings on one completed run."""
    checks = [
        check for name, (check, task_own) in DIAGNOSTICS.items() if not task_own or name in task.diagnostics
    ]
    findings = [found for found in (check(record) for check in checks) if found is not None]
    # a collapse explains the weak classes: one finding, not two
    if any(f["kind"] == "collapse" for f in findings):
        findings = [f for f in findings if f["kind"] != "imbalance"]
    return findings
