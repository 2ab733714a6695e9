"""Tasks: everything that depends on what is predicted (the model class, the loss, how outputs become
predictions, the metrics and their directions, the baseline, the per-example statistics of the paired
test, the task's own plots), one registry entry each, so the loop, the summary and the report name none.

How token classification and extractive QA would fit this interface is sketched in docs/tasks.md."""

from __future__ import annotations

import abc
import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import peft
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, log_loss, matthews_corrcoef,
                             precision_recall_fscore_support, precision_score, recall_score)
from seqeval.metrics import accuracy_score as tag_accuracy
from seqeval.metrics import classification_report as entity_report
from seqeval.metrics.sequence_labeling import get_entities
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoModelForTokenClassification

from utils import ConfigError


@dataclass(frozen=True)
class Metric:
    name: str  # its key: "val_<name>" in the history, "<name>" in test results and summary rows
    label: str  # how tables and plots name it
    # (truth, prediction values, label names) -> value; the values are what Task.prediction_values gives per
    # example (a classifier's logits), so metrics of probabilities (log loss, calibration) fit the same signature
    compute: Callable[[np.ndarray, np.ndarray, list[str]], float]
    higher_is_better: bool = True
    in_summary: bool = True  # a column of the summary table


def pipeline_input(pairs: bool) -> str:
    """One input of a text-classification pipeline, as a model card writes it."""
    return '{"text": "first text", "text_pair": "second text"}' if pairs else '"your text"'


def label_maps(label_names: list[str]) -> dict:
    """A head's size and label names, as transformers' config holds them."""
    return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)}}


class Task(abc.ABC):
    name: str
    model_class: type  # a transformers Auto class, built with model_kwargs()
    peft_task_type: peft.TaskType  # tells PEFT which head to train and save beside the adapter
    loss_label: str  # what the training and validation losses are, for plot axes
    baseline_label: str  # names the baseline in the summary
    metrics: tuple[Metric, ...]  # computed on validation every epoch and on test
    default_metric: str  # the validation metric that chooses when the config names none
    main_metric: str  # the score that plots of score against cost use
    compared_metrics: tuple[str, ...]  # the metrics the paired bootstrap compares
    plots: tuple[str, ...] = ()  # visualize.Plotter methods that draw this task's own plots
    diagnostics: tuple[str, ...] = ()  # diagnostics.DIAGNOSTICS that apply to this task beyond the general ones
    stratified: bool = True  # splits carved and train_size sampled in each class's proportion
    has_classes: bool = True  # labels are classes: class counts, imbalance, few-shot per class
    words: bool = False  # each example is a list of words with one label per word
    spans: bool = False  # each example is a question whose answer is a span of its context (the pair text)
    pipeline: str = "text-classification"  # the transformers pipeline an exported model serves

    def data_columns(self, cfg, known) -> dict[str, tuple[str, str | None]]:
        """The columns the data config names, as {text, pair, label: (config key, column)}; `known`: the Hub data
        set's own columns, when it is one bertlab knows."""
        return {"text": ("data.text_column", cfg.text_column or (known.text_column if known else "text")),
                "pair": ("data.text_pair_column", cfg.text_pair_column),
                "label": ("data.label_column", cfg.label_column or (known.label_column if known else "label"))}

    def examples(self, encoded, split: str, values: np.ndarray) -> tuple[list | None, np.ndarray]:
        """The truth and the prediction values per example of a split, from the values per row the model gave
        (the same, but for tasks whose rows are windows of a longer example)."""
        return (encoded.labels[split] if encoded.labels is not None else None), values

    def config_problems(self, cfg) -> list[str]:
        """Settings of the config that make no sense for this task, each as "key: got value, allowed: ...".
        Called by config validation."""
        return []

    def refused_strategy(self, strategy: str) -> str | None:
        """Why a strategy cannot serve this task (None when it can)."""
        return None

    def describe_labels(self, label_names: list[str]) -> str:
        """What the model predicts, in a few words for headings ("5 classes")."""
        return f"{len(label_names)} classes"

    def card_usage(self, pairs: bool) -> list[str]:
        """Python lines for an exported model's card: the pipeline and one call (after the import)."""
        return ['classify = pipeline("text-classification", model=FOLDER)',
                f"classify([{pipeline_input(pairs)}], truncation=True, top_k=3)"]

    def card_limit(self, label_names: list[str], distribution: dict | None) -> str:
        """The model card's sentence on what the model can answer."""
        return f"It knows only these labels: {', '.join(label_names)}. Every text gets one of them."

    def init_head(self, model: torch.nn.Module, train_labels: list) -> None:
        """Adjust a freshly initialised head to the training labels before training (tasks that need nothing
        leave it)."""

    @abc.abstractmethod
    def encode_labels(self, labels: dict[str, pd.Series], hub_names: list[str] | None,
                      column: str) -> tuple[list[str], dict[str, list]]:
        """The label names and each split's labels as the loop takes them, from the raw label column (`hub_names`:
        a Hub ClassLabel's names, when the data set has one)."""

    @abc.abstractmethod
    def model_kwargs(self, label_names: list[str]) -> dict:
        """Keyword arguments for model_class.from_pretrained (head size, label names)."""

    @abc.abstractmethod
    def collate_labels(self, labels: list, width: int) -> torch.Tensor:
        """The labels of one batch as a tensor; `width` is the batch's padded length in tokens."""

    @abc.abstractmethod
    def loss(self, outputs, labels: torch.Tensor) -> torch.Tensor:
        """The loss summed over the batch's examples (not averaged), so that gradient accumulation can
        divide by the examples of the whole window and stay exact."""

    def training_loss(self, t, train_labels: list, label_names: list[str]) -> Callable:
        """The loss training minimises, under the training config `t` (summed like loss(); the validation loss
        is always loss()). Tasks without loss options train on loss() itself."""
        return self.loss

    @abc.abstractmethod
    def predict(self, values: np.ndarray) -> np.ndarray:
        """One prediction per row from its prediction values: what the record keeps and the paired test compares."""

    @abc.abstractmethod
    def label_distribution(self, labels: list, label_names: list[str]) -> dict:
        """How one split's labels are spread, for records and model cards."""

    @abc.abstractmethod
    def prediction_values(self, outputs, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per row, what the metrics, predict() and decode() need (left on the device); per-token values are padded
        with PAD_VALUE where `attention_mask` is 0, since batches of other widths are padded with it too."""

    @abc.abstractmethod
    def decode(self, values: np.ndarray, label_names: list[str], top_k: int, text: str) -> dict:
        """One row's prediction for a person, as named columns (the first is the prediction itself); `text` is
        the text it was made on, for tasks that point into it."""

    @abc.abstractmethod
    def format_prediction(self, row: dict) -> str:
        """A decoded prediction in one line for the terminal."""

    @abc.abstractmethod
    def baseline(self, train_labels: list, test_labels: list, label_names: list[str]) -> dict:
        """What a model that learned nothing from the text scores on test: every metric, and what it predicts."""

    @abc.abstractmethod
    def test_report(self, truth: list, values: np.ndarray, label_names: list[str]) -> dict:
        """The test results of a run: every metric and whatever detail the task adds."""

    @abc.abstractmethod
    def example_statistics(self, truth: np.ndarray, predictions: np.ndarray, label_names: list[str]) -> np.ndarray:
        """Per test example, numbers whose sums give the compared metrics (shape: examples x statistics).
        The paired bootstrap resamples examples by weighting these rows."""

    @abc.abstractmethod
    def metrics_from_sums(self, sums: np.ndarray, counts: np.ndarray, label_names: list[str]) -> dict[str, np.ndarray]:
        """The compared metrics from weighted sums of example_statistics (one row per weighting) and the
        total weight of each weighting."""

    def scores(self, truth, values, label_names: list[str]) -> dict[str, float]:
        return {m.name: float(m.compute(np.asarray(truth), np.asarray(values), label_names)) for m in self.metrics}

    def summary_metrics(self) -> list[Metric]:
        """The metrics the summary table, the report and the score plots show."""
        return [m for m in self.metrics if m.in_summary]

    def metric(self, name: str) -> Metric:
        """A metric by its name, with or without the "val_" or "test_" of its key."""
        bare = name.removeprefix("val_").removeprefix("test_")
        return next(m for m in self.metrics if m.name == bare)

    def selection_metrics(self) -> list[str]:
        """The validation metrics that may choose the best epoch and setting."""
        return ["val_loss"] + [f"val_{m.name}" for m in self.metrics]

    def is_better(self, key: str, new: float, old: float | None) -> bool:
        """Whether `new` improves on `old` for this history key ("val_loss", "val_<metric>")."""
        if old is None:
            return True
        lower = key.endswith("loss") or not self.metric(key).higher_is_better
        return new < old if lower else new > old

    def label(self, key: str) -> str:
        """How a history key reads: "val_macro_f1" -> "validation macro-F1"."""
        split = "validation" if key.startswith("val_") else "test"
        name = key.removeprefix("val_").removeprefix("test_")
        return f"{split} {'loss' if name == 'loss' else self.metric(name).label}"


# What pads per-token prediction values beyond a row's tokens (and marks tokens without a label to learn).
PAD_VALUE = -100

CALIBRATION_BINS = 15  # equal-width confidence bins of the expected calibration error and the reliability diagram


def of_labels(score: Callable[[np.ndarray, np.ndarray, int], float]) -> Callable[[np.ndarray, np.ndarray, int], float]:
    """A metric of predicted labels as a metric of a classifier's logits (their argmax is the prediction)."""
    return lambda truth, logits, label_names: score(truth, logits.argmax(-1), len(label_names))


def probabilities(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def per_class_f1(truth: np.ndarray, predictions: np.ndarray, num_labels: int) -> np.ndarray:
    return f1_score(truth, predictions, labels=range(num_labels), average=None, zero_division=0)


def worst_class(truth: np.ndarray, predictions: np.ndarray, num_labels: int) -> tuple[int, float]:
    """The class with the lowest F1 among those present in `truth` (an absent class has no F1 to speak of)."""
    f1 = per_class_f1(truth, predictions, num_labels)
    present = np.unique(truth)
    label = int(present[np.argmin(f1[present])])
    return label, float(f1[label])


def calibration_bins(truth: np.ndarray, logits: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, list]:
    """Per equal-width bin of the top probability: how many predictions fell in it, their mean confidence and
    the share of them that were right (a reliability diagram's data; empty bins hold None)."""
    p = probabilities(logits)
    confidence, correct = p.max(-1), (p.argmax(-1) == truth)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    mean = lambda x: [float(v) if n else None for v, n in zip(np.bincount(which, x, bins) / np.maximum(count, 1), count)]
    return {"count": count.tolist(), "confidence": mean(confidence), "accuracy": mean(correct.astype(float))}


def expected_calibration_error(truth: np.ndarray, logits: np.ndarray, label_names: list[str]) -> float:
    """The gap between confidence and accuracy, averaged over CALIBRATION_BINS bins weighted by their size."""
    bins = calibration_bins(truth, logits)
    return sum(n * abs(c - a) for n, c, a in zip(bins["count"], bins["confidence"], bins["accuracy"]) if n) / len(truth)


CLASSIFICATION_METRICS = (
    Metric("accuracy", "accuracy", of_labels(lambda t, p, _: accuracy_score(t, p))),
    # every class the model knows counts in the macro averages, also one absent from this split (its F1 is then 0)
    Metric("macro_f1", "macro-F1", of_labels(lambda t, p, k: f1_score(t, p, labels=range(k), average="macro", zero_division=0))),
    Metric("balanced_accuracy", "balanced accuracy",  # mean recall over the classes present
           of_labels(lambda t, p, _: recall_score(t, p, labels=np.unique(t), average="macro", zero_division=0))),
    Metric("worst_class_f1", "worst-class F1", of_labels(lambda t, p, k: worst_class(t, p, k)[1])),
    Metric("weighted_f1", "weighted F1", of_labels(lambda t, p, k: f1_score(t, p, labels=range(k), average="weighted",
                                                                              zero_division=0)), in_summary=False),
    Metric("micro_f1", "micro-F1", of_labels(lambda t, p, k: f1_score(t, p, labels=range(k), average="micro",
                                                                        zero_division=0)), in_summary=False),
    Metric("macro_precision", "macro precision", of_labels(lambda t, p, k: precision_score(
        t, p, labels=range(k), average="macro", zero_division=0)), in_summary=False),
    Metric("macro_recall", "macro recall", of_labels(lambda t, p, k: recall_score(
        t, p, labels=range(k), average="macro", zero_division=0)), in_summary=False),
    Metric("mcc", "Matthews correlation", of_labels(lambda t, p, _: matthews_corrcoef(t, p)), in_summary=False),
    Metric("log_loss", "log loss", lambda t, logits, names: log_loss(t, probabilities(logits), labels=range(len(names))),
           higher_is_better=False, in_summary=False),
    Metric("ece", "expected calibration error", expected_calibration_error, higher_is_better=False, in_summary=False),
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
    plots = ("confusion_matrices", "per_class_f1", "calibration")
    diagnostics = ("under_fitting", "imbalance", "collapse", "over_confidence")

    def encode_labels(self, labels, hub_names, column):
        values = sorted(set(labels["train"].tolist()), key=lambda v: (isinstance(v, str), v))
        if len(values) < 2:
            raise ConfigError(f"data: training data has a single class ({values[0]!r}); classification needs at least 2")
        if hub_names is not None:
            names, to_id = hub_names, {i: i for i in range(len(hub_names))}
        else:
            names, to_id = [str(v) for v in values], {v: i for i, v in enumerate(values)}
        encoded = {}
        for split, values in labels.items():
            unseen = sorted({str(v) for v in values if v not in to_id})
            if unseen:
                raise ConfigError(f"data: the {split} split has labels that training never saw: {', '.join(unseen[:10])}")
            encoded[split] = [to_id[v] for v in values]
        return names, encoded

    def model_kwargs(self, label_names):
        return label_maps(label_names)

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
                return F.cross_entropy(logits, labels, weight=weight, label_smoothing=t.label_smoothing, reduction="sum")
            return focal_loss(logits, labels, t.focal_gamma, weight)

        return loss

    def predict(self, values):
        return values.argmax(-1)

    def label_distribution(self, labels, label_names):
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(label_names))
        return {name: int(n) for name, n in zip(label_names, counts)}

    def prediction_values(self, outputs, attention_mask):
        return outputs.logits.float()

    def decode(self, values, label_names, top_k, text):
        # ranked on the logits themselves, so the first label is exactly predict()'s argmax
        ranked = np.argsort(-values, kind="stable")[:max(top_k, 1)]
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
        return {"label": label_names[majority],
                **self.scores(test_labels, np.tile(prior, (len(test_labels), 1)), label_names)}

    def test_report(self, truth, values, label_names):
        truth, ids = np.asarray(truth), list(range(len(label_names)))
        predictions = self.predict(values)
        precision, recall, f1, support = precision_recall_fscore_support(truth, predictions, labels=ids, zero_division=0)
        return {**self.scores(truth, values, label_names),
                "worst_class": label_names[worst_class(truth, predictions, len(label_names))[0]],
                "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                                     "support": int(support[i])} for i, name in enumerate(label_names)},
                "confusion_matrix": confusion_matrix(truth, predictions, labels=ids).tolist(),  # rows: truth
                "calibration": calibration_bins(truth, values)}

    def example_statistics(self, truth, predictions, label_names):
        # columns: correct | predicted class (one-hot) | true class (one-hot) | true positive per class
        truth, predictions = np.asarray(truth), np.asarray(predictions)
        eye = np.eye(len(label_names), dtype=np.float32)
        predicted, actual = eye[predictions], eye[truth]
        correct = (predictions == truth).astype(np.float32)[:, None]
        return np.concatenate([correct, predicted, actual, predicted * actual], axis=1)

    def metrics_from_sums(self, sums, counts, label_names):
        k = len(label_names)
        predicted, actual, true_positive = (sums[:, 1 + i * k:1 + (i + 1) * k] for i in range(3))
        denominator = predicted + actual
        f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
        present = actual > 0  # balanced accuracy and the worst class are over the classes the resample holds
        recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=present)
        return {"accuracy": sums[:, 0] / counts, "macro_f1": f1.mean(1),
                "balanced_accuracy": recall.sum(1) / present.sum(1),
                "worst_class_f1": np.where(present, f1, np.inf).min(1)}


def class_weights(setting, train_labels: list[int], label_names: list[str]) -> torch.Tensor | None:
    """training.class_weights as one weight per label id: `balanced` gives n / (classes x count of the class)
    over the training rows the run uses, so every class weighs the same in total."""
    if setting is None:
        return None
    if setting == "balanced":
        counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(label_names))
        return torch.tensor(len(train_labels) / (len(label_names) * np.maximum(counts, 1)), dtype=torch.float32)
    if isinstance(setting, dict):
        unknown = sorted(set(setting) - set(label_names))
        if unknown:
            raise ConfigError(f"training.class_weights: no label {', '.join(map(repr, unknown))} in the data; its labels: "
                              f"{', '.join(label_names)}")
        setting = [setting.get(name, 1.0) for name in label_names]
    if len(setting) != len(label_names):
        raise ConfigError(f"training.class_weights: got {len(setting)} weights, allowed: one per label "
                          f"({len(label_names)}: {', '.join(label_names)})")
    return torch.tensor(setting, dtype=torch.float32)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float, weight: torch.Tensor | None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), summed: -alpha_y (1 - p_y)^gamma log p_y, with the class weights as alpha."""
    log_p = F.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    return (loss if weight is None else loss * weight[labels]).sum()


def class_settings(cfg) -> list[tuple[str, object, object]]:
    """The settings that act on classes of whole texts, each as (key, value, the value that leaves it off)."""
    t = cfg.training
    return [("training.loss", t.loss, "cross_entropy"), ("training.class_weights", t.class_weights, None),
            ("training.label_smoothing", t.label_smoothing, 0), ("training.sampler", t.sampler, "random"),
            ("few_shot.enabled", cfg.few_shot.enabled, False), ("data.augment.enabled", cfg.data.augment.enabled, False),
            ("strategies.frozen_encoder.classifier", cfg.strategies.frozen_encoder.classifier, "head")]


def settings_away_from_defaults(settings: list[tuple[str, object, object]], task: str, why: str) -> list[str]:
    """A config problem for each setting not at the value that leaves it off, as config validation words them."""
    problems = []
    for key, value, default in settings:
        if value != default:
            allowed = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
            problems.append(f"{key}: got {value!r}, allowed: {allowed} with data.task: {task} ({why})")
    return problems


def correlation(truth: np.ndarray, predicted: np.ndarray, ranked: bool = False) -> float:
    """Pearson's correlation (Spearman's with `ranked`: Pearson's of the ranks, ties at their mean rank); 0 when
    either side is constant, where correlation is undefined (a model predicting one value relates to nothing)."""
    x, y = (rankdata(predicted), rankdata(truth)) if ranked else (np.asarray(predicted, float), np.asarray(truth, float))
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


REGRESSION_METRICS = (
    Metric("spearman", "Spearman correlation", lambda t, p, _: correlation(t, p, ranked=True)),
    Metric("pearson", "Pearson correlation", lambda t, p, _: correlation(t, p)),
    Metric("rmse", "RMSE", lambda t, p, _: float(np.sqrt(np.mean((p - t) ** 2))), higher_is_better=False),
    Metric("mae", "MAE", lambda t, p, _: float(np.mean(np.abs(p - t))), higher_is_better=False),
    Metric("mse", "MSE", lambda t, p, _: float(np.mean((p - t) ** 2)), higher_is_better=False, in_summary=False),
)


class Regression(Task):
    """One number per text or pair (a similarity or a rating), scored by its correlation with the truth and
    its error."""

    name = "regression"
    model_class = AutoModelForSequenceClassification  # with one output, the head is a linear regressor
    peft_task_type = peft.TaskType.SEQ_CLS
    loss_label = "squared error"
    baseline_label = "training-mean"
    metrics = REGRESSION_METRICS
    default_metric = "val_spearman"
    main_metric = "spearman"
    compared_metrics = ("spearman", "pearson", "rmse", "mae")
    plots = ("predicted_vs_true",)
    stratified = False
    has_classes = False

    def config_problems(self, cfg):
        return settings_away_from_defaults(class_settings(cfg), "regression", "it applies to classes")

    def describe_labels(self, label_names):
        return f"'{label_names[0]}' predicted"

    def card_usage(self, pairs):
        return ['score = pipeline("text-classification", model=FOLDER)',
                f'score([{pipeline_input(pairs)}], truncation=True, function_to_apply="none")  # the number itself: no '
                'softmax on one output']

    def card_limit(self, label_names, distribution):
        train = distribution["train"]
        return (f"It learned {label_names[0]} from values between {train['min']:.3f} and {train['max']:.3f}; outside "
                "that range its predictions are guesses.")

    def refused_strategy(self, strategy):
        if strategy == "setfit":
            return "setfit learns from pairs of texts of the same and of different classes"
        return None

    def init_head(self, model, train_labels):
        # The output starts at the training mean: from 0, small-rate strategies (LoRA, BitFit) spent their
        # updates reaching the mean and stayed there (question pairs: test Spearman 0.02 against 0.76 centred)
        outputs = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1]
        with torch.no_grad():
            for layer in outputs:  # under PEFT, the trained copy of the head and the original beside it
                if layer.bias is not None:
                    layer.bias.fill_(float(np.mean(train_labels)))

    def encode_labels(self, labels, hub_names, column):
        encoded = {}
        for split, values in labels.items():
            numbers = pd.to_numeric(values, errors="coerce")
            if numbers.isna().any():
                raise ConfigError(f"data.label_column: regression needs numbers, and the {split} split's '{column}' "
                                  f"holds {values[numbers.isna()].iloc[0]!r}")
            encoded[split] = numbers.astype(float).tolist()
        if np.std(encoded["train"]) == 0:
            raise ConfigError(f"data: every training label is {encoded['train'][0]}; regression needs labels that vary")
        return [column], encoded

    def model_kwargs(self, label_names):
        return {**label_maps(label_names), "problem_type": "regression"}  # one name: one output

    def collate_labels(self, labels, width):
        return torch.tensor(labels, dtype=torch.float32)

    def loss(self, outputs, labels):
        return F.mse_loss(outputs.logits.float().squeeze(-1), labels, reduction="sum")

    def predict(self, values):
        return values

    def label_distribution(self, labels, label_names):
        values = np.asarray(labels, dtype=float)
        return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                "max": float(values.max())}

    def prediction_values(self, outputs, attention_mask):
        return outputs.logits.float().squeeze(-1)

    def decode(self, values, label_names, top_k, text):
        return {f"predicted_{label_names[0]}": float(values)}

    def format_prediction(self, row):
        (name, value), = row.items()
        return f"{name.removeprefix('predicted_')} {value:.3f}"

    def baseline(self, train_labels, test_labels, label_names):
        mean = float(np.mean(train_labels))
        return {"label": f"{mean:.3f}", **self.scores(test_labels, np.full(len(test_labels), mean), label_names)}

    def test_report(self, truth, values, label_names):
        return self.scores(truth, values, label_names)

    def example_statistics(self, truth, predictions, label_names):
        # columns: x, y, x², y², xy for Pearson; the same over ranks (ranked once, over the whole split) for
        # Spearman; squared and absolute error
        x, y = np.asarray(predictions, float), np.asarray(truth, float)
        rx, ry = rankdata(x), rankdata(y)
        return np.stack([x, y, x * x, y * y, x * y, rx, ry, rx * rx, ry * ry, rx * ry, (x - y) ** 2, np.abs(x - y)], 1)

    def metrics_from_sums(self, sums, counts, label_names):
        def pearson(sx, sy, sxx, syy, sxy):
            covariance, vx, vy = counts * sxy - sx * sy, counts * sxx - sx ** 2, counts * syy - sy ** 2
            scale = np.sqrt(np.maximum(vx * vy, 0))
            return np.divide(covariance, scale, out=np.zeros_like(covariance), where=scale > 0)

        mse = sums[:, 10] / counts
        return {"pearson": pearson(*sums[:, 0:5].T), "spearman": pearson(*sums[:, 5:10].T), "rmse": np.sqrt(mse),
                "mae": sums[:, 11] / counts}


def tag_sequences(truth, values, label_names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Per sentence, the true and the predicted tag of each word the model saw: the tokens whose truth is not
    PAD_VALUE (a word's first sub-word), as tag names."""
    gold, predicted = [], []
    for row_truth, row_values in zip(truth, values):
        row_truth = np.asarray(row_truth)
        scored = np.flatnonzero(row_truth != PAD_VALUE)
        gold.append([label_names[t] for t in row_truth[scored]])
        predicted.append([label_names[v] for v in np.asarray(row_values)[scored]])
    return gold, predicted


def entity_counts(gold: list[str], predicted: list[str]) -> tuple[int, int, int]:
    """Entities of one sentence (conlleval's rules, as seqeval's default): found exactly, predicted, true."""
    true, found = set(get_entities(gold)), set(get_entities(predicted))
    return len(true & found), len(found), len(true)


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (micro, over all entities) and the share of words tagged right."""
    found, guessed, true = np.sum([entity_counts(g, p) for g, p in zip(gold, predicted)], axis=0) if gold else (0, 0, 0)
    words = sum(map(len, gold))
    return {"f1": 2 * found / (guessed + true) if guessed + true else 0.0,
            "precision": found / guessed if guessed else 0.0, "recall": found / true if true else 0.0,
            "accuracy": tag_accuracy(gold, predicted) if words else 0.0}


def of_tags(name: str) -> Callable[[list, np.ndarray, list[str]], float]:
    return lambda truth, values, label_names: entity_scores(*tag_sequences(truth, values, label_names))[name]


class TokenClassification(Task):
    """One tag per word (named entities in IOB tags: B-PER, I-PER, O, ...), scored on whole entities."""

    name = "token_classification"
    model_class = AutoModelForTokenClassification
    peft_task_type = peft.TaskType.TOKEN_CLS
    loss_label = "cross-entropy summed over the words"
    baseline_label = "no-entity"
    metrics = (Metric("f1", "entity F1", of_tags("f1")), Metric("precision", "entity precision", of_tags("precision")),
               Metric("recall", "entity recall", of_tags("recall")), Metric("accuracy", "word accuracy", of_tags("accuracy")))
    default_metric = "val_f1"
    main_metric = "f1"
    compared_metrics = ("f1", "precision", "recall", "accuracy")
    plots = ("per_class_f1",)
    stratified = False
    has_classes = False
    words = True
    pipeline = "token-classification"

    def data_columns(self, cfg, known):
        return {"text": ("data.tokens_column", cfg.tokens_column or "tokens"),
                "label": ("data.tags_column", cfg.tags_column or "ner_tags")}

    def config_problems(self, cfg):
        text_settings = [("data.text_pair_column", cfg.data.text_pair_column, None),
                         ("model.head.type", cfg.model.head.type, "model")]
        return settings_away_from_defaults(text_settings + class_settings(cfg), "token_classification",
                                           "it applies to whole texts")

    def describe_labels(self, label_names):
        return f"{len(label_names)} tags"

    def card_usage(self, pairs):
        return ['tag = pipeline("token-classification", model=FOLDER, aggregation_strategy="simple")',
                'tag("Anna Schmidt ordered from the Leeds store")  # entities with their words and character offsets']

    def card_limit(self, label_names, distribution):
        return f"It knows only these tags: {', '.join(label_names)}. Every word gets one of them."

    def refused_strategy(self, strategy):
        return {"setfit": "it learns one vector per text, and tags are per word",
                "prompt_tuning": "its virtual tokens shift the positions the tags are aligned to"}.get(strategy)

    def encode_labels(self, labels, hub_names, column):
        rows = {split: [tags.split(" ") for tags in values] for split, values in labels.items()}
        seen = [tag for row in rows["train"] for tag in row]
        if all(tag.lstrip("-").isdigit() for row in rows.values() for tags in row for tag in tags):
            if hub_names is None:
                raise ConfigError(f"data.tag_names: the tags in '{column}' are integers; name them in order with "
                                  "data.tag_names (e.g. [O, B-PER, I-PER, ...]), or give the tags as strings")
            names = list(hub_names)
            to_id = {str(i): i for i in range(len(names))}
        else:  # "O" first, then by entity type, B before I
            names = sorted(set(seen), key=lambda tag: (tag != "O", tag[2:], tag))
            to_id = {tag: i for i, tag in enumerate(names)}
        encoded = {}
        for split, tags in rows.items():
            unknown = sorted({tag for row in tags for tag in row if tag not in to_id})
            if unknown:
                raise ConfigError(f"data: the {split} split has tags that {'data.tag_names does not name' if hub_names else 'training never saw'}: "
                                  f"{', '.join(unknown[:10])}")
            encoded[split] = [[to_id[tag] for tag in row] for row in tags]
        return names, encoded

    def model_kwargs(self, label_names):
        return label_maps(label_names)

    def collate_labels(self, labels, width):
        return torch.tensor([row + [PAD_VALUE] * (width - len(row)) for row in labels], dtype=torch.long)

    def loss(self, outputs, labels):
        return F.cross_entropy(outputs.logits.float().flatten(0, 1), labels.flatten(), ignore_index=PAD_VALUE,
                               reduction="sum")

    def predict(self, values):
        # each row's tokens, without the padding of its batch, as a list (rows differ in length)
        rows = np.empty(len(values), dtype=object)
        for i, row in enumerate(np.asarray(values)):
            rows[i] = row[row != PAD_VALUE].tolist()
        return rows

    def label_distribution(self, labels, label_names):
        counts = np.bincount([tag for row in labels for tag in row if tag != PAD_VALUE], minlength=len(label_names))
        return {name: int(n) for name, n in zip(label_names, counts)}

    def prediction_values(self, outputs, attention_mask):
        return outputs.logits.argmax(-1).masked_fill(attention_mask == 0, PAD_VALUE)

    def decode(self, values, label_names, top_k, text):
        # `values`: one tag id per word the model saw (the words max_length cut off are left outside)
        words = text.split()
        tags = [label_names[v] for v in values] + ["O"] * (len(words) - len(values))
        entities = [f"{kind}: {' '.join(words[start:end + 1])}" for kind, start, end in get_entities(tags)]
        return {"entities": "; ".join(entities), "tags": " ".join(tags)}

    def format_prediction(self, row):
        return row["entities"] or "(no entities)"

    def baseline(self, train_labels, test_labels, label_names):
        # every word tagged with the commonest training tag (O): no entity at all
        common = int(np.bincount([t for row in train_labels for t in row], minlength=len(label_names)).argmax())
        gold = [[label_names[t] for t in row] for row in test_labels]
        return {"label": label_names[common], **entity_scores(gold, [[label_names[common]] * len(row) for row in gold])}

    def scores(self, truth, values, label_names):
        return entity_scores(*tag_sequences(truth, values, label_names))

    def test_report(self, truth, values, label_names):
        gold, predicted = tag_sequences(truth, values, label_names)
        report = entity_report(gold, predicted, output_dict=True, zero_division=0)
        types = sorted({kind for kind, _, _ in get_entities([tag for row in gold for tag in row])})
        return {**entity_scores(gold, predicted),
                "per_class": {kind: {"precision": float(report[kind]["precision"]), "recall": float(report[kind]["recall"]),
                                     "f1": float(report[kind]["f1-score"]), "support": int(report[kind]["support"])}
                              for kind in types}}

    def example_statistics(self, truth, predictions, label_names):
        # per sentence: entities found exactly, predicted, true; words tagged right, words
        rows = []
        for gold, predicted in zip(*tag_sequences(truth, predictions, label_names)):
            rows.append([*entity_counts(gold, predicted), sum(g == p for g, p in zip(gold, predicted)), len(gold)])
        return np.asarray(rows, dtype=np.float64)

    def metrics_from_sums(self, sums, counts, label_names):
        found, guessed, true, right, words = sums.T
        ratio = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b > 0)
        return {"f1": ratio(2 * found, guessed + true), "precision": ratio(found, guessed), "recall": ratio(found, true),
                "accuracy": ratio(right, words)}


def normalized_answer(text: str) -> str:
    """SQuAD's normalisation (its v1.1 evaluation script): lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def answer_scores(predicted: str, answers: list[str]) -> tuple[float, float]:
    """Exact match and F1 of a predicted answer against the best of the true ones, as SQuAD v1.1 scores them."""
    def f1(gold: str) -> float:
        mine, theirs = normalized_answer(predicted).split(), normalized_answer(gold).split()
        same = sum((Counter(mine) & Counter(theirs)).values())
        return 0.0 if same == 0 else 2 * same / (len(mine) + len(theirs))

    return (max(float(normalized_answer(predicted) == normalized_answer(gold)) for gold in answers),
            max(f1(gold) for gold in answers))


def question_scores(truth: list[list[str]], predicted) -> np.ndarray:
    """Exact match and F1 (answer_scores) of each question: questions x 2."""
    return np.array([answer_scores(p, answers) for p, answers in zip(predicted, truth)], dtype=np.float64).reshape(-1, 2)


def mean_answer_scores(truth: list[list[str]], predicted) -> dict[str, float]:
    """F1 and exact match averaged over the questions."""
    scores = question_scores(truth, predicted)
    return {"f1": float(scores[:, 1].mean()), "exact_match": float(scores[:, 0].mean())}


# Span decoding as in the SQuAD literature and Hugging Face's examples: the best starts and ends considered, and
# the longest answer in tokens.
N_BEST = 20
MAX_ANSWER_TOKENS = 30


def best_span(logits: np.ndarray, offsets: list) -> tuple[float, int, int] | None:
    """The highest-scoring (start + end logit) span of one window that lies in the context (`offsets` holds None
    for question and special tokens), ends at or after its start and is at most MAX_ANSWER_TOKENS long, as
    (score, first character, end character); None when the window has no such span."""
    length = len(offsets)
    starts, ends = logits[:length, 0], logits[:length, 1]
    best = None
    for start in np.argsort(-starts)[:N_BEST]:
        for end in np.argsort(-ends)[:N_BEST]:
            if offsets[start] is None or offsets[end] is None or not start <= end < start + MAX_ANSWER_TOKENS:
                continue
            score = float(starts[start] + ends[end])
            if best is None or score > best[0]:
                best = (score, offsets[start][0], offsets[end][1])
    return best


class QuestionAnswering(Task):
    """Extractive question answering (SQuAD): the answer is a span of the context, found in windows of the
    context when it is longer than the model reads, and scored per question by exact match and F1."""

    name = "question_answering"
    model_class = AutoModelForQuestionAnswering
    peft_task_type = peft.TaskType.QUESTION_ANS
    loss_label = "cross-entropy of the answer's start and end"
    baseline_label = "no-answer"
    metrics = (Metric("f1", "F1", lambda t, v, _: mean_answer_scores(t, v)["f1"]),
               Metric("exact_match", "exact match", lambda t, v, _: mean_answer_scores(t, v)["exact_match"]))
    default_metric = "val_f1"
    main_metric = "f1"
    compared_metrics = ("f1", "exact_match")
    stratified = False
    has_classes = False
    spans = True
    pipeline = "question-answering"

    def data_columns(self, cfg, known):
        return {"text": ("data.text_column", cfg.text_column or "question"),
                "pair": ("data.text_pair_column", cfg.text_pair_column or "context"),
                "label": ("data.label_column", cfg.label_column or "answers")}

    def config_problems(self, cfg):
        settings = [("model.head.type", cfg.model.head.type, "model")] + class_settings(cfg)
        problems = settings_away_from_defaults(settings, "question_answering", "it applies to whole texts")
        if isinstance(cfg.model.max_length, int) and not 1 <= cfg.data.doc_stride < cfg.model.max_length:
            problems.append(f"data.doc_stride: got {cfg.data.doc_stride}, allowed: 1 <= stride < model.max_length "
                            f"({cfg.model.max_length})")
        return problems

    def refused_strategy(self, strategy):
        return {"setfit": "it learns one vector per text, and answers are spans",
                "prompt_tuning": "its virtual tokens shift the positions of the answer's start and end"}.get(strategy)

    def describe_labels(self, label_names):
        return "answer spans"

    def card_usage(self, pairs):
        return ['answer = pipeline("question-answering", model=FOLDER)',
                'answer(question="your question", context="the text that holds the answer")']

    def card_limit(self, label_names, distribution):
        return "It answers with a span of the context it is given; a question the context does not answer still gets one."

    def encode_labels(self, labels, hub_names, column):
        # each split's answers as cleaning left them (JSON text): {"text": [...], "answer_start": [...]}
        return ["answer"], {split: [json.loads(answers) for answers in values] for split, values in labels.items()}

    def model_kwargs(self, label_names):
        return {}

    def collate_labels(self, labels, width):
        return torch.tensor(labels, dtype=torch.long)  # (start, end) token of the answer per window

    def loss(self, outputs, labels):
        return (F.cross_entropy(outputs.start_logits.float(), labels[:, 0], reduction="sum")
                + F.cross_entropy(outputs.end_logits.float(), labels[:, 1], reduction="sum"))

    def prediction_values(self, outputs, attention_mask):
        logits = torch.stack([outputs.start_logits, outputs.end_logits], -1).float()
        return logits.masked_fill((attention_mask == 0)[..., None], PAD_VALUE)

    def examples(self, encoded, split, values):
        """Each question's answer: the best span over its windows (best_span), with the true answers."""
        windows, found = encoded.windows[split], {}
        for window, logits in zip(windows, values):
            span = best_span(np.asarray(logits), window["offsets"])
            if span is not None and (window["example"] not in found or span[0] > found[window["example"]][0]):
                found[window["example"]] = span
        contexts = encoded.examples[split]
        predicted = np.empty(len(contexts), dtype=object)
        for example, item in enumerate(contexts):
            span = found.get(example)
            predicted[example] = item["context"][span[1]:span[2]] if span else ""
        truth = [item["answers"] for item in contexts] if encoded.labels is not None else None
        return truth, predicted

    def predict(self, values):
        return values

    def label_distribution(self, labels, label_names):
        if labels and isinstance(labels[0], dict):  # questions with their answers
            return {"questions": len(labels), "answers": sum(len(a["text"]) for a in labels)}
        return {"windows": len(labels), "windows holding the answer": sum(1 for start, _ in labels if start > 0)}

    def decode(self, values, label_names, top_k, text):
        return {"answer": str(values)}

    def format_prediction(self, row):
        return repr(row["answer"]) if row["answer"] else "(no answer found in the context)"

    def baseline(self, train_labels, test_labels, label_names):
        # no answer at all: what a model that read nothing could say without guessing
        return {"label": "(no answer)", **self.scores([a["text"] for a in test_labels], [""] * len(test_labels), label_names)}

    def scores(self, truth, values, label_names):
        return mean_answer_scores(truth, values)  # both at once: each reads every answer

    def test_report(self, truth, values, label_names):
        return self.scores(truth, values, label_names)

    def example_statistics(self, truth, predictions, label_names):
        return question_scores(truth, predictions)

    def metrics_from_sums(self, sums, counts, label_names):
        return {"exact_match": sums[:, 0] / counts, "f1": sums[:, 1] / counts}


TASKS: dict[str, Task] = {
    "classification": Classification(),
    "regression": Regression(),
    "token_classification": TokenClassification(),
    "question_answering": QuestionAnswering(),
}
