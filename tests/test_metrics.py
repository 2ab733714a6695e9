"""Every classification metric on a constructed prediction whose answer is worked out by hand."""

import math

import numpy as np
import pytest

from tasks import TASKS
from tasks.classification import calibration_bins

CLASSIFICATION = TASKS["classification"]
NAMES = ["a", "b", "c"]


def logits_for(predictions: list[int], confidence: list[float]) -> np.ndarray:
    """Logits whose softmax gives `confidence` to the predicted class and splits the rest evenly."""
    rows = np.full((len(predictions), 3), 0.0)
    for row, (label, p) in enumerate(zip(predictions, confidence)):
        rows[row] = np.log((1 - p) / 2)
        rows[row, label] = np.log(p)
    return rows


# 10 examples: a is common (6), b is rare (3), c is rarest (1). The model gets every a right, one b, and no c.
TRUTH = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
PREDICTED = [0, 0, 0, 0, 0, 0, 1, 0, 0, 1]
CONFIDENCE = [0.9] * 6 + [0.6, 0.8, 0.8, 0.5]


def test_every_metric_on_a_known_prediction():
    values = logits_for(PREDICTED, CONFIDENCE)
    scores = CLASSIFICATION.scores(TRUTH, values, ["a", "b", "c"])
    # per class: a precision 6/8 recall 1 -> F1 6/7; b precision 1/2 recall 1/3 -> F1 0.4; c: 0
    f1 = [6 / 7, 0.4, 0.0]
    assert scores["accuracy"] == pytest.approx(0.7)
    assert scores["micro_f1"] == pytest.approx(0.7)  # one label per example: micro-F1 is accuracy
    assert scores["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert scores["weighted_f1"] == pytest.approx((6 * f1[0] + 3 * f1[1]) / 10)
    assert scores["macro_precision"] == pytest.approx((6 / 8 + 1 / 2 + 0) / 3)
    assert scores["macro_recall"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert scores["balanced_accuracy"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert scores["worst_class_f1"] == 0.0
    # Matthews correlation from the confusion matrix (multiclass form): c = 7 right, s = 10, p_k predicted, t_k true
    c, s, p, t = 7, 10, np.array([8, 2, 0]), np.array([6, 3, 1])
    assert scores["mcc"] == pytest.approx((c * s - p @ t) / math.sqrt((s * s - p @ p) * (s * s - t @ t)))
    # log loss: the mean of -log(probability of the true class)
    truth_probability = [0.9] * 6 + [0.6, 0.1, 0.1, 0.25]
    assert scores["log_loss"] == pytest.approx(-np.mean(np.log(truth_probability)))
    # calibration, bins of 1/15: 0.9 (6 right) | 0.8 (0 of 2 right) | 0.6 (1 of 1) | 0.5 (0 of 1)
    ece = (6 * abs(0.9 - 1) + 2 * abs(0.8 - 0) + abs(0.6 - 1) + abs(0.5 - 0)) / 10
    assert scores["ece"] == pytest.approx(ece)


def test_test_report_names_the_worst_class_and_holds_the_matrix_and_reliability_bins():
    report = CLASSIFICATION.test_report(TRUTH.tolist(), logits_for(PREDICTED, CONFIDENCE), NAMES)
    assert report["worst_class"] == "c"
    assert report["per_class"]["b"] == {
        "precision": 0.5,
        "recall": pytest.approx(1 / 3),
        "f1": pytest.approx(0.4),
        "support": 3,
    }
    assert report["confusion_matrix"] == [[6, 0, 0], [2, 1, 0], [0, 1, 0]]
    bins = report["calibration"]
    assert sum(bins["count"]) == 10 and bins["count"][13] == 6  # 0.9 falls in [13/15, 14/15)
    assert bins["accuracy"][13] == 1.0 and bins["confidence"][13] == pytest.approx(0.9)
    assert bins["count"][0] == 0 and bins["accuracy"][0] is None


def test_a_class_absent_from_the_split_is_not_the_worst_class():
    truth = np.array([0, 0, 1, 1])
    values = logits_for([0, 0, 1, 0], [0.9] * 4)
    scores = CLASSIFICATION.scores(truth, values, ["a", "b", "c"])
    assert scores["worst_class_f1"] == pytest.approx(2 / 3)  # b, not absent c
    assert scores["balanced_accuracy"] == pytest.approx((1 + 1 / 2) / 2) and scores[
        "macro_recall"
    ] == pytest.approx(0.5)
    assert CLASSIFICATION.test_report(truth, values, NAMES)["worst_class"] == "b"


def test_perfectly_calibrated_predictions_have_no_calibration_error():
    # in the 0.75 bin, 3 of 4 are right: confidence says exactly what happens
    truth = np.array([0, 0, 0, 1])
    values = logits_for([0, 0, 0, 0], [0.75] * 4)
    assert CLASSIFICATION.scores(truth, values, ["a", "b", "c"])["ece"] == pytest.approx(0.0)
    assert calibration_bins(truth, values)["accuracy"][11] == 0.75


def test_the_baseline_predicts_the_majority_with_the_training_prior():
    baseline = CLASSIFICATION.baseline([0] * 6 + [1] * 3 + [2], TRUTH.tolist(), NAMES)
    assert baseline["label"] == "a" and baseline["accuracy"] == 0.6
    assert baseline["log_loss"] == pytest.approx(-np.mean(np.log([0.6] * 6 + [0.3] * 3 + [0.1])))
    assert baseline["worst_class_f1"] == 0.0 and baseline["mcc"] == 0.0


def test_lower_is_better_for_losses_and_calibration_error_only():
    assert CLASSIFICATION.is_better("val_ece", 0.05, 0.1) and CLASSIFICATION.is_better(
        "val_log_loss", 0.5, 0.6
    )
    assert CLASSIFICATION.is_better("val_worst_class_f1", 0.5, 0.4) and CLASSIFICATION.is_better(
        "val_mcc", 0.5, 0.4
    )
