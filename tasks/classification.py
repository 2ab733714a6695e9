"""Classification: one label per text or pair, from a fixed set; cross-entropy (or focal loss, class weights,
label smoothing), accuracy, macro-F1, the worst class and calibration."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import peft
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    matthews_corrcoef,
    precision_score,
    recall_score,
)
from transformers import AutoModelForSequenceClassification

from tasks.base import (
    Metric,
    Task,
    calibration_error,
    commonest_prediction,
    label_maps,
    output_spread,
    per_class_report,
    probabilities,
    reliability_bins,
)
from utils import ConfigError, shown

# Labels that spell a missing value (pandas writes NaN so, and spreadsheets and JSON dumps keep it).
NAN_LABELS = ("NaN", "nan")


def of_labels(
    score: Callable[[np.ndarray, np.ndarray, int], float],
) -> Callable[[np.ndarray, np.ndarray, int], float]:
    """A metric of predicted labels as a metric of a classifier's logits (their argmax is the prediction)."""
    return lambda truth, logits, label_names: score(truth, logits.argmax(-1), len(label_names))


def per_class_f1(truth: np.ndarray, predictions: np.ndarray, num_labels: int) -> np.ndarray:
    return f1_score(truth, predictions, labels=range(num_labels), average=None, zero_division=0)


def worst_class(truth: np.ndarray, predictions: np.ndarray, num_labels: int) -> tuple[int, float]:
    """The class with the lowest F1 among those present in `truth` (an absent class has no F1 to speak of)."""
    f1 = per_class_f1(truth, predictions, num_labels)
    present = np.unique(truth)
    label = int(present[np.argmin(f1[present])])
    return label, float(f1[label])


def calibration_bins(truth: np.ndarray, logits: np.ndarray) -> dict[str, list]:
    """The reliability bins of the top probability, against whether its class was right."""
    p = probabilities(logits)
    return reliability_bins(p.max(-1), p.argmax(-1) == truth)


def expected_calibration_error(truth: np.ndarray, logits: np.ndarray, label_names: list[str]) -> float:
    return calibration_error(calibration_bins(truth, logits))


CLASSIFICATION_METRICS = (
    Metric("accuracy", "accuracy", of_labels(lambda t, p, _: accuracy_score(t, p))),
    # every class the model knows counts in the macro averages, also one absent from this split (its F1 is then 0)
    Metric(
        "macro_f1",
        "macro-F1",
        of_labels(lambda t, p, k: f1_score(t, p, labels=range(k), average="macro", zero_division=0)),
    ),
    Metric(
        "balanced_accuracy",
        "balanced accuracy",  # mean recall over the classes present
        of_labels(lambda t, p, _: recall_score(t, p, labels=np.unique(t), average="macro", zero_division=0)),
    ),
    Metric("worst_class_f1", "worst-class F1", of_labels(lambda t, p, k: worst_class(t, p, k)[1])),
    Metric(
        "weighted_f1",
        "weighted F1",
        of_labels(lambda t, p, k: f1_score(t, p, labels=range(k), average="weighted", zero_division=0)),
        in_summary=False,
    ),
    Metric(
        "micro_f1",
        "micro-F1",
        of_labels(lambda t, p, k: f1_score(t, p, labels=range(k), average="micro", zero_division=0)),
        in_summary=False,
    ),
    Metric(
        "macro_precision",
        "macro precision",
        of_labels(lambda t, p, k: precision_score(t, p, labels=range(k), average="macro", zero_division=0)),
        in_summary=False,
    ),
    Metric(
        "macro_recall",
        "macro recall",
        of_labels(lambda t, p, k: recall_score(t, p, labels=range(k), average="macro", zero_division=0)),
        in_summary=False,
    ),
    Metric(
        "mcc", "Matthews correlation", of_labels(lambda t, p, _: matthews_corrcoef(t, p)), in_summary=False
    ),
    Metric(
        "log_loss",
        "log loss",
        lambda t, logits, names: log_loss(t, probabilities(logits), labels=range(len(names))),
        higher_is_better=False,
        in_summary=False,
    ),
    Metric(
        "ece",
        "expected calibration error",
        expected_calibration_error,
        higher_is_better=False,
        in_summary=False,
    ),
)


class Classification(Task):
    """One label per text, from a fixed set."""

    name = "classification"
    model_class = AutoModelForSequenceClassification
    peft_task_type = peft.TaskType.SEQ_CLS
    loss_label = "cross-entropy"
    baseline_label = "majority-class"
    metrics = CLASSIFICATION_METRICS
    default_metric = "val_macro_f1"
    main_metric = "macro_f1"
    compared_metrics = ("accuracy", "macro_f1", "balanced_accuracy", "worst_class_f1")
    text_classes = True
    calibrates = True
    plots = ("confusion_matrix", "per_class_f1", "calibration")
    diagnostics = ("under_fitting", "imbalance", "collapse", "over_confidence")

    def strata(self, labels):
        return labels  # every class in each split in its share, where the counts allow

    def fold_strata(self, labels):
        return np.asarray(labels)

    def label_report(self, distributions, labels, label_names):
        train = [n for n in distributions["train"].values() if n > 0]
        return {
            "class_counts": distributions,
            "imbalance_ratio": max(train) / min(train),
        }  # largest / smallest

    def encode_labels(self, labels, hub_names, column):
        values = sorted(set(labels["train"].tolist()), key=lambda v: (isinstance(v, str), v))
        if len(values) < 2:
            raise ConfigError(
                f"data: training data has a single class ({values[0]!r}); classification needs at least 2"
            )
        if hub_names is not None:
            names, to_id = hub_names, {i: i for i in range(len(hub_names))}
        else:
            names, to_id = [str(v) for v in values], {v: i for i, v in enumerate(values)}
        encoded = {}
        for split, values in labels.items():
            unseen = sorted({str(v) for v in values if v not in to_id})
            if unseen:
                raise ConfigError(
                    f"data: the {split} split has labels that training never saw: {', '.join(unseen[:10])}"
                )
            encoded[split] = [to_id[v] for v in values]
        return names, encoded

    def model_kwargs(self, label_names):
        return label_maps(label_names)

    def calibration_loss(self, logits, truth):
        return F.cross_entropy(logits, torch.as_tensor(np.asarray(truth), dtype=torch.long))

    def collate_labels(self, labels, width):
        return torch.tensor(labels, dtype=torch.long)

    def loss(self, outputs, labels):
        return F.cross_entropy(outputs.logits.float(), labels, reduction="sum")

    def training_loss(self, t, train_labels, label_names):
        weights = class_weights(t.class_weights, train_labels, label_names)
        if t.loss == "cross_entropy" and weights is None and t.label_smoothing == 0:
            return self.loss

        def loss(outputs, labels):
            logits = outputs.logits.float()
            weight = None if weights is None else weights.to(logits.device)
            if t.loss == "cross_entropy":
                return F.cross_entropy(
                    logits, labels, weight=weight, label_smoothing=t.label_smoothing, reduction="sum"
                )
            return focal_loss(logits, labels, t.focal_gamma, weight)

        return loss

    def predict(self, values):
        return values.argmax(-1)

    def prepare(self, frame, split, columns, found, data):
        labels = frame["label"]
        kinds = {
            i: isinstance(v, str)
            for i, v in labels.items()
            if isinstance(v, (str, int, float, np.integer, np.floating)) and not pd.isna(v)
        }
        if len(set(kinds.values())) > 1:  # "3" and 3 would be two classes, or the label encoder's traceback
            first = next(iter(kinds))
            other = next(i for i, is_text in kinds.items() if is_text != kinds[first])
            raise ConfigError(
                f"{columns['label'][0]}: column '{columns['label'][1]}' of the {split} data mixes numbers "
                f"and strings (row {first + 1}: {shown(labels[first])}, row {other + 1}: "
                f"{shown(labels[other])}), allowed: labels of one kind; quote the numbers or name every "
                "label"
            )
        # a label written as NaN is no label: dropped and counted as missing, never a class named "nan"
        return frame.assign(label=labels.mask(labels.isin(NAN_LABELS)))

    def output_check(self, truth, values, label_names):
        found = commonest_prediction(self.predict(values), truth, output_spread(probabilities(values)))
        return {**found, "prediction": label_names[found["prediction"][0]]}

    def label_distribution(self, labels, label_names):
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(label_names))
        return {name: int(n) for name, n in zip(label_names, counts)}

    def prediction_values(self, outputs, attention_mask):
        return outputs.logits.float()

    def decode(self, values, label_names, top_k, text):
        # ranked on the logits themselves, so the first label is exactly predict()'s argmax
        ranked = np.argsort(-values, kind="stable")[: max(top_k, 1)]
        p = probabilities(values)
        row = {"predicted_label": label_names[ranked[0]], "probability": float(p[ranked[0]])}
        if top_k > 1:
            for rank, label in enumerate(ranked, 1):
                row[f"top_{rank}_label"], row[f"top_{rank}_probability"] = label_names[label], float(p[label])
        return row

    def format_prediction(self, row):
        ranked = [(row[f"top_{k}_label"], row[f"top_{k}_probability"]) for k in range(1, len(row) // 2)]
        text = f"{row['predicted_label']} (probability {row['probability']:.3f})"
        return text + ("; top: " + ", ".join(f"{label} {p:.3f}" for label, p in ranked) if ranked else "")

    def baseline(self, train_labels, test_labels, label_names):
        # the training split's class frequencies for every text: it predicts the majority class, with the
        # probabilities of the prior, so its log loss and calibration error are those of knowing only the counts
        counts = np.bincount(train_labels, minlength=len(label_names))
        prior = np.log(np.maximum(counts, 1) / counts.sum())
        majority = int(counts.argmax())
        return {
            "label": label_names[majority],
            **self.scores(test_labels, np.tile(prior, (len(test_labels), 1)), label_names),
        }

    def test_report(self, truth, values, label_names):
        truth, ids = np.asarray(truth), list(range(len(label_names)))
        predictions = self.predict(values)
        return {
            **self.scores(truth, values, label_names),
            "worst_class": label_names[worst_class(truth, predictions, len(label_names))[0]],
            "per_class": per_class_report(truth, predictions, label_names),
            "confusion_matrix": confusion_matrix(truth, predictions, labels=ids).tolist(),  # rows: truth
            "calibration": calibration_bins(truth, values),
        }

    def example_statistics(self, truth, predictions, label_names):
        # columns: correct | predicted class (one-hot) | true class (one-hot) | true positive per class
        truth, predictions = np.asarray(truth), np.asarray(predictions)
        eye = np.eye(len(label_names), dtype=np.float32)
        predicted, actual = eye[predictions], eye[truth]
        correct = (predictions == truth).astype(np.float32)[:, None]
        return np.concatenate([correct, predicted, actual, predicted * actual], axis=1)

    def metrics_from_sums(self, sums, counts, label_names):
        k = len(label_names)
        predicted, actual, true_positive = (sums[:, 1 + i * k : 1 + (i + 1) * k] for i in range(3))
        denominator = predicted + actual
        f1 = np.divide(
            2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0
        )
        present = actual > 0  # balanced accuracy and the worst class are over the classes the resample holds
        recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=present)
        return {
            "accuracy": sums[:, 0] / counts,
            "macro_f1": f1.mean(1),
            "balanced_accuracy": recall.sum(1) / present.sum(1),
            "worst_class_f1": np.where(present, f1, np.inf).min(1),
        }


def class_weights(setting, train_labels: list[int], label_names: list[str]) -> torch.Tensor | None:
    """training.class_weights as one weight per label id: `balanced` gives n / (classes x count of the class)
    over the training rows the run uses, so every class weighs the same in total."""
    if setting is None:
        return None
    if setting == "balanced":
        counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(label_names))
        return torch.tensor(
            len(train_labels) / (len(label_names) * np.maximum(counts, 1)), dtype=torch.float32
        )
    if isinstance(setting, dict):
        unknown = sorted(set(setting) - set(label_names))
        if unknown:
            raise ConfigError(
                f"training.class_weights: no label {', '.join(map(repr, unknown))} in the data; its labels: "
                f"{', '.join(label_names)}"
            )
        setting = [setting.get(name, 1.0) for name in label_names]
    if len(setting) != len(label_names):
        raise ConfigError(
            f"training.class_weights: got {len(setting)} weights, allowed: one per label "
            f"({len(label_names)}: {', '.join(label_names)})"
        )
    return torch.tensor(setting, dtype=torch.float32)


def focal_loss(
    logits: torch.Tensor, labels: torch.Tensor, gamma: float, weight: torch.Tensor | None
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), summed: -alpha_y (1 - p_y)^gamma log p_y, with the class weights as alpha."""
    log_p = F.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    return (loss if weight is None else loss * weight[labels]).sum()
