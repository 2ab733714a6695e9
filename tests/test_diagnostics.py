"""Each diagnostic fires on a constructed run made to show it, with the numbers it rests on, and all stay
silent on a healthy run."""

import copy

import numpy as np
import pytest

from reporting.diagnostics import diagnose
from reporting.summary import summarize
from reporting.tables import summary_markdown
from tasks import TASKS

CLASSIFICATION = TASKS["classification"]
NAMES = ["a", "b", "c", "d"]


def epochs(*losses):
    return [
        {"epoch": i + 1, "train_loss": t, "val_loss": v, "val_macro_f1": 0.8}
        for i, (t, v) in enumerate(losses)
    ]


def per_class(f1s, supports=(40, 30, 20, 10)):
    return {n: {"precision": f, "recall": f, "f1": f, "support": s} for n, f, s in zip(NAMES, f1s, supports)}


def healthy() -> dict:
    truth = np.repeat(np.arange(4), [40, 30, 20, 10])
    predictions = truth.copy()
    predictions[::10] = (predictions[::10] + 1) % 4  # 10% wrong, spread over the classes
    return {
        "run_id": "full-1",
        "config_id": "full-c",
        "strategy": "full",
        "status": "completed",
        "varied": {},
        "seed": 1,
        "best_epoch": 3,
        "train_time_s": 10.0,
        "peak_memory_mb": 100,
        "trainable_params": 1000,
        "hyperparameters": {"loss": "cross_entropy", "learning_rate": 1e-4},
        "dataset": {"num_labels": 4, "label_names": NAMES},
        "history": epochs((1.2, 0.9), (0.6, 0.5), (0.3, 0.35), (0.2, 0.36)),
        "test": {
            "accuracy": 0.9,
            "macro_f1": 0.88,
            "per_class": per_class([0.92, 0.9, 0.87, 0.83]),
            "ece": 0.04,
            "log_loss": 0.3,
            "calibration": {
                "count": [0] * 13 + [100, 0],
                "confidence": [None] * 13 + [0.93, None],
                "accuracy": [None] * 13 + [0.9, None],
            },
        },
        "test_predictions": predictions.tolist(),
        "test_labels": truth.tolist(),
    }


def kinds(record):
    return [f["kind"] for f in diagnose(record, CLASSIFICATION)]


def test_a_healthy_run_has_no_findings():
    assert kinds(healthy()) == []


def test_over_fitting_needs_two_epochs_of_rising_validation_loss_under_falling_training_loss():
    record = healthy()
    record["history"] = epochs((1.0, 0.8), (0.5, 0.5), (0.3, 0.6), (0.1, 0.7))
    record["best_epoch"] = 2
    [found] = diagnose(record, CLASSIFICATION)
    assert found["kind"] == "over-fitting" and found["numbers"]["epochs"] == [2, 4]
    assert (
        "rose from 0.500 (epoch 2) to 0.700 (epoch 4)" in found["message"]
        and "best epoch (2)" in found["message"]
    )
    record["history"] = epochs((1.0, 0.8), (0.5, 0.5), (0.3, 0.6), (0.1, 0.55))  # one rising epoch only
    assert kinds(record) == []


def test_under_fitting_compares_the_final_training_loss_with_chance():
    record = healthy()
    record["history"] = epochs((1.4, 1.3), (1.2, 1.1), (1.0, 1.0))  # ln 4 = 1.386: 1.0 is 72% of it
    [found] = diagnose(record, CLASSIFICATION)
    assert found["kind"] == "under-fitting" and found["numbers"]["chance_loss"] == pytest.approx(np.log(4))
    record["hyperparameters"]["loss"] = "focal"  # another scale: not judged against cross-entropy's chance
    assert kinds(record) == []


def test_instability_is_a_jump_in_training_loss():
    record = healthy()
    record["history"] = epochs((1.0, 0.9), (0.4, 0.5), (0.9, 0.45), (0.3, 0.4))
    [found] = diagnose(record, CLASSIFICATION)
    assert found["kind"] == "instability" and found["numbers"]["spikes"] == [[2, 3, 0.4, 0.9]]


def test_imbalance_names_the_weakest_classes_with_their_support():
    record = healthy()
    record["test"].update(accuracy=0.85, macro_f1=0.62, per_class=per_class([0.95, 0.9, 0.25, 0.1]))
    [found] = diagnose(record, CLASSIFICATION)
    assert found["kind"] == "imbalance" and list(found["numbers"]["weakest"]) == ["d", "c"]
    assert "d (F1 0.10, 10 test examples), c (F1 0.25, 20 test examples)" in found["message"]
    # a small gap, one weak class
    record["test"].update(macro_f1=0.80, per_class=per_class([0.9, 0.85, 0.8, 0.2]))
    assert kinds(record) == ["imbalance"]


def test_collapse_is_one_class_taking_nearly_all_predictions():
    record = healthy()
    record["test_predictions"] = [0] * 95 + [1] * 5
    assert "collapse" in kinds(record)
    [found] = [f for f in diagnose(record, CLASSIFICATION) if f["kind"] == "collapse"]
    assert found["numbers"]["label"] == "a" and found["numbers"]["prediction_share"] == 0.95
    record["test"].update(accuracy=0.45, macro_f1=0.2, per_class=per_class([0.6, 0.2, 0.0, 0.0]))
    assert kinds(record) == ["collapse"]  # it explains the weak classes: no separate imbalance finding
    record["test_labels"] = [0] * 92 + [1] * 8  # the data itself is 92% a: predicting it is not a collapse
    assert "collapse" not in kinds(record)


def test_over_confidence_on_a_good_run_whose_confidence_overstates_its_accuracy():
    record = healthy()
    record["test"].update(
        ece=0.15,
        calibration={
            "count": [0] * 14 + [100],
            "confidence": [None] * 14 + [0.99],
            "accuracy": [None] * 14 + [0.9],
        },
    )
    [found] = diagnose(record, CLASSIFICATION)
    assert found["kind"] == "over-confidence" and found["numbers"]["mean_confidence"] == pytest.approx(0.99)
    assert "label_smoothing" in found["next_step"]
    record["test"]["accuracy"] = 0.5  # a poor run: its problem is not the calibration
    assert "over-confidence" not in kinds(record)


def test_the_summary_groups_findings_by_configuration_and_diagnoses_old_records():
    runs = []
    for seed in (1, 2, 3):
        run = copy.deepcopy(healthy())
        run.update(run_id=f"full-{seed}", seed=seed)
        if seed != 2:
            run["history"] = epochs((1.0, 0.8), (0.5, 0.5), (0.3, 0.6), (0.1, 0.7))
        runs.append(run)
    summary = summarize(runs, "val_macro_f1")
    [row] = summary["diagnostics"]
    assert (row["configuration"], row["kind"], row["runs"], row["of"]) == ("full", "over-fitting", 2, 3)
    assert "| full | over-fitting | 2 of 3 |" in summary_markdown(summary)


def test_a_collapse_is_read_on_validation_at_the_best_epoch_one_prediction_or_flat_outputs():
    record = healthy()  # test looks healthy; validation at the best epoch is what the run chose on
    record["validation_outputs"] = {
        "examples": 50,
        "prediction": "a",
        "prediction_share": 1.0,
        "truth_share": 0.4,
        "spread": 0.3,
    }
    [found] = diagnose(record, CLASSIFICATION)
    assert (
        found["kind"] == "collapse"
        and "100% of the predictions on validation at the best epoch are a" in found["message"]
    )
    assert "the head" in found["next_step"] and "learning rate" in found["next_step"]
    # varied predictions, but probabilities that hardly move with the text: the same finding
    record["validation_outputs"].update(prediction_share=0.5, spread=0.004)
    [found] = diagnose(record, CLASSIFICATION)
    assert "barely vary with the input" in found["message"] and found["numbers"]["spread"] == 0.004
    record["validation_outputs"].update(spread=0.25)
    assert kinds(record) == []
    record["validation_outputs"].update(prediction_share=0.95, truth_share=0.94)  # the data is that class
    assert kinds(record) == []


def test_a_collapsed_strategy_is_named_in_the_verdict_as_no_verdict_on_it():
    from reporting.verdict import describe

    runs = []
    for strategy, collapsed in (("full", False), ("bitfit", True)):
        run = copy.deepcopy(healthy())
        run.update(run_id=f"{strategy}-1", config_id=f"{strategy}-c", strategy=strategy)
        if collapsed:
            run["validation_outputs"] = {
                "examples": 50,
                "prediction": "a",
                "prediction_share": 1.0,
                "truth_share": 0.4,
                "spread": 0.001,
            }
            run["history"] = [{**e, "val_macro_f1": 0.1} for e in run["history"]]
        runs.append(run)
    summary = summarize(runs, "val_macro_f1")
    assert summary["verdict"]["collapsed"] == [{"label": "bitfit", "runs": 1, "of": 1}]
    lines = describe(summary["verdict"], CLASSIFICATION)
    assert any(
        line.startswith("bitfit: its run learned little from the text")
        and "no verdict on the strategy" in line
        for line in lines
    )
    assert not any(line.startswith("full: its run learned little") for line in lines)


def test_the_spread_of_outputs_is_zero_when_they_ignore_the_input_whatever_the_number_of_classes():
    from tasks.base import output_spread

    for classes in (2, 77):
        constant = np.tile(np.linspace(1, 2, classes) / np.linspace(1, 2, classes).sum(), (50, 1))
        assert output_spread(constant) == pytest.approx(0.0)
        confident = np.eye(classes)[np.arange(50) % classes] * 0.98 + 0.02 / classes
        assert output_spread(confident) > 0.45  # two balanced classes: 0.49; 77 classes: near 1
    labels = np.array([[0.9, 0.1], [0.1, 0.9]])  # multi-label: each label's yes/no, averaged over labels
    assert output_spread(labels, outcomes_per_column=True) == pytest.approx(0.4)
