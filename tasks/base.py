"""The task interface: everything that depends on what is predicted (the model class, the loss, how outputs
become predictions, the metrics and their directions, the baseline, the per-example statistics of the paired
test, the task's data shape and plots), so the loop, the data code, the summary and the report name no task."""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import peft
import torch
from sklearn.metrics import precision_recall_fscore_support

from utils import ConfigError, shown

# What pads per-token prediction values beyond a row's tokens (and marks tokens without a label to learn).
PAD_VALUE = -100


@dataclass(frozen=True)
class Metric:
    name: str  # its key: "val_<name>" in the history, "<name>" in test results and summary rows
    label: str  # how tables and plots name it
    # (truth, prediction values, label names) -> value; the values are what Task.prediction_values gives per
    # example (a classifier's logits), so metrics of probabilities (log loss, calibration) fit the same signature
    compute: Callable[[np.ndarray, np.ndarray, list[str]], float]
    higher_is_better: bool = True
    in_summary: bool = True  # a column of the summary table


class Need(enum.Enum):
    """What a strategy, a head or a setting may need of a task; Task.lacks says whether the task gives it."""

    CLASS_PER_TEXT = (
        "one class per text"  # SetFit's pairs of same- and other-class texts, a logistic regression
    )
    UNMOVED_POSITIONS = "labels that no token placed before the text moves"  # prompt tuning's virtual tokens
    VECTOR_PER_TEXT = "a head that reads one vector per text"  # a head on pooled states


@dataclass(frozen=True)
class LabelCounts:
    """How logs, reports and plots word a task's counts per label."""

    kind: str = "class"  # what one label is called
    unit: str = "example"  # what is counted
    counted: str = "examples"  # what a label's count counts
    total: str = "examples"  # what a split's counts add up to


def pipeline_input(pairs: bool) -> str:
    """One input of a text-classification pipeline, as a model card writes it."""
    return '{"text": "first text", "text_pair": "second text"}' if pairs else '"your text"'


def label_maps(label_names: list[str]) -> dict:
    """A head's size and label names, as transformers' config holds them."""
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


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
    pipeline: str = "text-classification"  # the transformers pipeline an exported model serves
    # what others ask of a task (through lacks()): labels that sit on token positions (virtual tokens before the
    # text would shift them), one class per text, a head that reads one vector per text (so a head on pooled
    # states fits it: model.head.type linear, mlp, or auto's choice for a sentence-transformers model)
    labels_on_positions: str | None = None
    text_classes: bool = False
    pooled_head: bool = True
    # whether its prediction values are logits of classes, which one temperature can calibrate
    calibrates: bool = False
    # a reliability diagram's axes: what a bin's confidence is, and what is counted against it
    reliability_axes: tuple[str, str] = (
        "confidence: the predicted class's probability",
        "accuracy in the bin",
    )
    # whether a text holds a set of labels, each given where its probability reaches the label's threshold
    label_sets: bool = False
    label_counts: LabelCounts = LabelCounts()
    # what the tokens beyond model.max_length become, for the data report
    beyond_max_length: str = "truncated"
    # how predict asks for the second text a run trained on pairs needs
    pair_request: str = "this run was trained on sentence pairs: give each text its second text"
    # the task's own plots and diagnostics (keys of reporting.plots.PLOTS and reporting.diagnostics.DIAGNOSTICS
    # that read what only some tasks have: classes, label sets, numbers); the rest apply to every task
    plots: tuple[str, ...] = ()
    diagnostics: tuple[str, ...] = ()

    def data_columns(self, cfg, known) -> dict[str, tuple[str | None, str | None]]:
        """The columns the data config names, as {text, pair, label: (config key, column)}, and any the task reads
        where they are there (config key None); `known`: the Hub data set's own columns, when it is one bertlab
        knows."""
        return {
            "text": ("data.text_column", cfg.text_column or (known.text_column if known else "text")),
            "pair": ("data.text_pair_column", cfg.text_pair_column),
            "label": ("data.label_column", cfg.label_column or (known.label_column if known else "label")),
        }

    # ---- the task's data shape: what data.py, predict and the data report ask of it

    def prepare(
        self, frame: pd.DataFrame, split: str, columns: dict[str, tuple[str | None, str]], found: dict, data
    ) -> pd.DataFrame:
        """One split's columns (text, pair, label) as cleaning compares them: strings where a row holds a list
        or a mapping. `columns` maps each to (its config key, the column in the data), for error messages;
        what the task repairs or drops it counts in `found`, the split's cleaning counts; `data`: the data config."""
        return frame

    def strata(self, labels: pd.Series) -> pd.Series | None:
        """What splits are carved and train_size sampled in proportion to (None: at random)."""
        return None

    def split_rows(self, labels: pd.Series, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The rows kept and the `holdout` rows held out, for a task that carves splits its own way (None:
        in proportion to strata())."""
        return None

    def fold_strata(self, labels: list) -> np.ndarray | None:
        """What cross-validation folds keep in proportion, from the encoded labels: a class per example, or a 0/1
        row per example (folded iteratively so that rare labels reach every fold); None: folds at random."""
        return None

    def fold_texts(self, texts: list[str], pairs: list[str] | None) -> list[str]:
        """The text whose repeats share a fold, so that no fold validates on a text another trained on."""
        return texts

    def tokenize(
        self, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, doc_stride: int | None
    ) -> Tokenized:
        """Texts as the task reads them (single texts, or pairs cut longest first); the same for training and
        for predict."""
        if pairs is None:
            return Tokenized(token_ids(tokenizer, texts, max_length))
        encoded = tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=True,
        )
        return Tokenized(
            encoded["input_ids"], pair_separator(tokenizer, encoded["input_ids"], encoded["token_type_ids"])
        )

    def align(
        self, tokens: Tokenized, labels: list | None, pairs: list[str] | None
    ) -> tuple[list | None, object]:
        """One split's labels per row of token ids (None: text to predict on), and the layout that leads from
        rows back to examples (None when each row is one example), kept opaque to the code outside tasks."""
        return labels, None

    def examples(self, encoded, split: str, values: np.ndarray) -> tuple[list | None, np.ndarray]:
        """The truth and the prediction values per example of a split, from the values per row the model gave
        (the same, but for tasks whose rows are windows of a longer example)."""
        return (encoded.labels[split] if encoded.labels is not None else None), values

    def example_count(self, encoded, split: str) -> int:
        """How many examples (not rows of token ids) a split holds."""
        return len(encoded.labels[split])

    def text_for_prediction(self, text: str) -> str:
        """A text given to predict, as the task reads it."""
        return text

    def values_per_text(self, encoded, split: str, values: np.ndarray) -> list:
        """Per text given to predict, the values decode() reads."""
        return list(self.examples(encoded, split, values)[1])

    def shown_label(self, label) -> str:
        """A prepared row's label as the data report and the log show it."""
        return str(label)

    def label_report(
        self, distributions: dict[str, dict], labels: dict[str, list], label_names: list[str]
    ) -> dict:
        """The data report's entries on the labels, from each split's label_distribution (and its labels)."""
        return {"label_summary": distributions}

    def lacks(self, need: Need) -> str | None:
        """Why this task cannot give what a strategy, a head or a setting needs, in words; None: it gives it."""
        if need is Need.CLASS_PER_TEXT and not self.text_classes:
            return f"{self.name} has no class per text"
        if need is Need.UNMOVED_POSITIONS and self.labels_on_positions:
            return f"{self.name} reads its {self.labels_on_positions} off token positions"
        if need is Need.VECTOR_PER_TEXT and not self.pooled_head:
            return f"{self.name}'s head reads every token"
        return None

    def report_lines(self, report: dict) -> list[str]:
        """What the log and the report page say of the data report's entries that label_report added."""
        return []

    def problems(self, cfg) -> list[str]:
        """Every setting of the config this task refuses, each as "key: got value, allowed: ...": those of what it
        cannot do (label columns and thresholds belong to label sets, a temperature to logits of classes), then
        its own (config_problems). Called by config validation."""
        d, t, found = cfg.data, cfg.training, []
        if d.label_columns is not None and not self.label_sets:
            found.append(
                f"data.label_columns: got {shown(d.label_columns)}, allowed: null unless data.task is "
                "multi_label (one 0/1 column per label)"
            )
        if t.calibration != "none" and not self.calibrates:
            found.append(
                f"training.calibration: got {shown(t.calibration)}, allowed: none with data.task: "
                f"{self.name} (a temperature calibrates the probabilities of classification and multi_label)"
            )
        if t.decision_threshold != "tuned" and not self.label_sets:
            found.append(
                f"training.decision_threshold: got {shown(t.decision_threshold)}, allowed: tuned with "
                f"data.task: {self.name} (a threshold decides the labels of multi_label)"
            )
        return found + self.config_problems(cfg)

    def config_problems(self, cfg) -> list[str]:
        """Settings of the config that make no sense for this task in particular."""
        return []

    def describe_labels(self, label_names: list[str]) -> str:
        """What the model predicts, in a few words for headings ("5 classes")."""
        return f"{len(label_names)} classes"

    def card_usage(self, pairs: bool) -> list[str]:
        """Python lines for an exported model's card: the pipeline and one call (after the import)."""
        return [
            'classify = pipeline("text-classification", model=FOLDER)',
            f"classify([{pipeline_input(pairs)}], truncation=True, top_k=3)",
        ]

    def exported_decision(self, decision: dict) -> tuple[dict[str, object], list[str]]:
        """What an export writes of a decision rule decide() gave: JSON files beside the weights (by name) that
        card_usage reads, and the model card's lines on the rule."""
        return {}, []

    def card_limit(self, label_names: list[str], distribution: dict | None) -> str:
        """The model card's sentence on what the model can answer."""
        return f"It knows only these labels: {', '.join(label_names)}. Every text gets one of them."

    def calibration_loss(self, logits: torch.Tensor, truth: np.ndarray) -> torch.Tensor:
        """The mean negative log-likelihood of the truth under these logits, which a temperature minimises."""
        raise NotImplementedError(f"{self.name} has no probabilities to calibrate")

    def decide(self, truth: list, values: np.ndarray, label_names: list[str], setting) -> dict | None:
        """The decision rule fitted on validation (label sets: a threshold per label, under
        training.decision_threshold), for the record; None for a task whose decision is fixed."""
        return None

    def decided(self, decision: dict | None) -> Task:
        """The task deciding by a rule decide() gave (itself when there is none)."""
        return self

    def describe_decision(self, decision: dict) -> str:
        """A decision rule decide() gave, with the validation scores it changed (decision_of adds them), for
        the log."""
        raise NotImplementedError(f"{self.name} fits no decision rule")

    def output_check(self, truth: list, values: np.ndarray, label_names: list[str]) -> dict | None:
        """Whether the outputs on these examples depend on the input: the commonest prediction, its share of the
        examples and of the truth, and the spread of the outputs (None: a task this is not checked for)."""
        return None

    def init_head(self, model: torch.nn.Module, train_labels: list) -> None:
        """Adjust a freshly initialised head to the training labels before training (tasks that need nothing
        leave it)."""

    @abc.abstractmethod
    def encode_labels(
        self, labels: dict[str, pd.Series], hub_names: list[str] | None, column: str
    ) -> tuple[list[str], dict[str, list]]:
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
    def example_statistics(
        self, truth: np.ndarray, predictions: np.ndarray, label_names: list[str]
    ) -> np.ndarray:
        """Per test example, numbers whose sums give the compared metrics (shape: examples x statistics).
        The paired bootstrap resamples examples by weighting these rows."""

    @abc.abstractmethod
    def metrics_from_sums(
        self, sums: np.ndarray, counts: np.ndarray, label_names: list[str]
    ) -> dict[str, np.ndarray]:
        """The compared metrics from weighted sums of example_statistics (one row per weighting) and the
        total weight of each weighting."""

    def scores(self, truth, values, label_names: list[str]) -> dict[str, float]:
        return {
            m.name: float(m.compute(np.asarray(truth), np.asarray(values), label_names)) for m in self.metrics
        }

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


# equal-width confidence bins of the expected calibration error and the reliability diagram
CALIBRATION_BINS = 15


def reliability_bins(
    confidence: np.ndarray, outcome: np.ndarray, bins: int = CALIBRATION_BINS
) -> dict[str, list]:
    """Per equal-width bin of the stated probabilities: how many fell in it, their mean and the share of them
    whose outcome came true (a reliability diagram's data; empty bins hold None)."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    mean = lambda x: [
        float(v) if n else None for v, n in zip(np.bincount(which, x, bins) / np.maximum(count, 1), count)
    ]
    return {"count": count.tolist(), "confidence": mean(confidence), "accuracy": mean(outcome.astype(float))}


def per_class_report(truth, predictions, label_names: list[str]) -> dict[str, dict]:
    """Each label's test precision, recall, F1 and support, by name: one class per text, or a label set's
    columns."""
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predictions, labels=list(range(len(label_names))), zero_division=0
    )
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }


def calibration_error(bins: dict[str, list]) -> float:
    """The gap between stated probability and outcome, averaged over the bins weighted by their size."""
    pairs = zip(bins["count"], bins["confidence"], bins["accuracy"])
    return sum(n * abs(c - a) for n, c, a in pairs if n) / sum(bins["count"])


def commonest_prediction(predictions: np.ndarray, truth: list, spread: float) -> dict:
    """What Task.output_check gives a task of classes: the commonest prediction (a row of predictions, as an
    index or a 0/1 vector), the share of examples given it and whose truth it is, and `spread`, how far the
    outputs move with the input (output_spread)."""
    rows = np.asarray(predictions).reshape(len(predictions), -1)
    kinds, counts = np.unique(rows, axis=0, return_counts=True)
    top = kinds[counts.argmax()]
    truth_rows = np.asarray(truth).reshape(len(rows), -1)
    return {
        "examples": len(rows),
        "prediction": top.tolist(),
        "prediction_share": float(counts.max() / len(rows)),
        "truth_share": float((truth_rows == top).all(1).mean()),
        "spread": spread,
    }


def output_spread(probabilities: np.ndarray, outcomes_per_column: bool = False) -> float:
    """How far each text's predicted distribution lies from the average one, as a total variation distance
    averaged over the texts: 0 when the output ignores the input, near 1 for confident, varied predictions,
    whatever the number of classes. Rows of class probabilities (softmax), or with `outcomes_per_column` one
    yes/no probability per column (sigmoid labels), averaged over the columns."""
    p = np.asarray(probabilities, dtype=np.float64)
    away = np.abs(p - p.mean(0))
    return float(away.mean() if outcomes_per_column else 0.5 * away.sum(1).mean())


def probabilities(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def class_settings(cfg) -> list[tuple[str, object, object]]:
    """The settings that act on classes of whole texts, each as (key, value, the value that leaves it off)."""
    t = cfg.training
    return [
        ("training.loss", t.loss, "cross_entropy"),
        ("training.class_weights", t.class_weights, None),
        ("training.label_smoothing", t.label_smoothing, 0),
        ("training.sampler", t.sampler, "random"),
        ("few_shot.enabled", cfg.few_shot.enabled, False),
        ("data.augment.enabled", cfg.data.augment.enabled, False),
    ]


def own_head_setting(cfg) -> tuple[str, object, object]:
    """model.head.type as a task whose head is the model's own checks it: `auto` gives it the model's own."""
    kind = cfg.model.head.type
    return ("model.head.type", "model" if kind == "auto" else kind, "model")


def settings_away_from_defaults(settings: list[tuple[str, object, object]], task: str, why: str) -> list[str]:
    """A config problem for each setting not at the value that leaves it off, as config validation words them."""
    problems = []
    for key, value, default in settings:
        if value != default:
            allowed = (
                "null" if default is None else str(default).lower() if isinstance(default, bool) else default
            )
            problems.append(f"{key}: got {value!r}, allowed: {allowed} with data.task: {task} ({why})")
    return problems


# ----------------------------------------------------------------------------------------------
# Tokenization that several tasks share


@dataclass
class Tokenized:
    """One split's texts as the model reads them, with what leads from its tokens back to the texts."""

    ids: list[list[int]]
    separator: int | None = None  # pairs, for a model with token types (pair_separator)
    firsts: list[list[int]] | None = None  # words: each word's first sub-word
    windows: list[dict] | None = None  # a question's context in windows


def token_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Texts as token ids, truncated at max_length and unpadded: the same for training and for predict."""
    return tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]


def pair_separator(tokenizer, ids: list[list[int]], types: list[list[int]]) -> int | None:
    """For a model that takes token type ids: the separator token, after whose first occurrence the second text's
    type starts (segment_ids), checked against the token type ids the tokenizer gave with these pairs' `ids`.
    None for a model without token types (RoBERTa and DistilBERT tell the texts apart by separators alone)."""
    if "token_type_ids" not in tokenizer.model_input_names:
        return None
    separator = tokenizer.sep_token_id
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(x) for x in ids], batch_first=True, padding_value=-1)
    types = torch.nn.utils.rnn.pad_sequence([torch.tensor(x) for x in types], batch_first=True)
    if separator is None or not torch.equal(segment_ids(ids, ids >= 0, separator), types):
        raise ConfigError(
            "data.text_pair_column: the tokenizer of this model marks the two texts of a pair in a way "
            "bertlab does not know (token type ids other than 0 up to the first separator, 1 after it)"
        )
    return separator


def segment_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, separator: int) -> torch.Tensor:
    """Token type ids of padded pairs: 0 up to and including the first separator, 1 after it, 0 on padding."""
    is_separator = (input_ids == separator).long()
    after_first = (is_separator.cumsum(1) - is_separator) > 0
    return (after_first & attention_mask.bool()).long()
