"""Multi-label classification: any number of labels per text or pair, from a fixed set (tags); binary
cross-entropy per label, a threshold per label tuned on validation, and micro, macro and per-text F1, exact
matches, Hamming loss, label ranking and calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import peft
import torch
import torch.nn.functional as F
from scipy.special import expit
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    hamming_loss,
    label_ranking_average_precision_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
)
from transformers import AutoModelForSequenceClassification

from tasks.base import (
    LabelCounts,
    Metric,
    Task,
    calibration_error,
    class_settings,
    commonest_prediction,
    label_maps,
    output_spread,
    per_class_report,
    pipeline_input,
    reliability_bins,
    settings_away_from_defaults,
)
from tasks.classification import class_weights
from utils import ConfigError

# What joins a row's labels once prepared (cleaning compares rows as strings): a character no label holds.
JOINED = "\x1f"
# What joins the labels and the probabilities in a prediction's columns.
SHOWN = "|"
# before thresholds are tuned: validation during training, and a label with no positives
DEFAULT_THRESHOLD = 0.5


def parsed(rows: pd.Series | list) -> list[list[str]]:
    """Each prepared row's labels."""
    return [row.split(JOINED) if row else [] for row in rows]


def multi_hot(rows: list[list[str]], label_names: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(label_names)}
    hot = np.zeros((len(rows), len(label_names)), dtype=np.int64)
    for row, labels in enumerate(rows):
        hot[row, [index[label] for label in labels]] = 1
    return hot


def best_f1_threshold(probability: np.ndarray, truth: np.ndarray) -> float:
    """The threshold (a label given where its probability reaches it) with the highest F1 on these examples:
    midway between the lowest probability it gives the label to and the highest below it, so that the same
    examples get the label and a small shift on new text does not flip it. DEFAULT_THRESHOLD for a label with
    no positive example."""
    if truth.sum() == 0:
        return DEFAULT_THRESHOLD
    precision, recall, thresholds = precision_recall_curve(truth, probability)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
    )[: len(thresholds)]
    chosen = thresholds[int(np.argmax(f1))]
    below = probability[probability < chosen]
    return float((chosen + below.max()) / 2) if below.size else float(chosen)


# Where an export keeps each label's threshold, beside the weights (the model card's usage reads it).
THRESHOLDS = "thresholds.json"


class MultiLabel(Task):
    """A set of labels per text, each given where its probability reaches the label's threshold."""

    name = "multi_label"
    model_class = AutoModelForSequenceClassification
    peft_task_type = peft.TaskType.SEQ_CLS
    loss_label = "binary cross-entropy, summed over labels"
    baseline_label = "label-frequency"
    default_metric = "val_micro_f1"
    main_metric = "micro_f1"
    compared_metrics = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy")
    calibrates = True
    label_sets = True
    label_counts = LabelCounts(
        kind="label", unit="text", counted="texts with the label", total="labels given"
    )
    reliability_axes = ("stated probability of each label", "share of them that apply")
    plots = ("per_class_f1", "calibration", "label_co_occurrence")
    diagnostics = ("collapse",)

    def __init__(self, thresholds: list[float] | None = None):
        self.thresholds = np.asarray(
            DEFAULT_THRESHOLD if thresholds is None else thresholds, dtype=np.float64
        )
        decided = lambda score: lambda truth, logits, names: score(truth, self.predict(logits))
        probability = lambda score: lambda truth, logits, names: score(truth, expit(logits))
        self.metrics = (
            Metric(
                "micro_f1", "micro-F1", decided(lambda t, p: f1_score(t, p, average="micro", zero_division=0))
            ),
            # every label counts in the macro average, also one absent from this split (its F1 is then 0)
            Metric(
                "macro_f1", "macro-F1", decided(lambda t, p: f1_score(t, p, average="macro", zero_division=0))
            ),
            # per text, then averaged; a text with no label and none predicted is right (1)
            Metric(
                "samples_f1",
                "per-text F1",
                decided(lambda t, p: f1_score(t, p, average="samples", zero_division=1)),
            ),
            Metric("subset_accuracy", "exact-set accuracy", decided(accuracy_score)),
            Metric("hamming_loss", "Hamming loss", decided(hamming_loss), higher_is_better=False),
            Metric(
                "lrap", "label ranking avg. precision", probability(label_ranking_average_precision_score)
            ),
            Metric(
                "micro_precision",
                "micro precision",
                decided(lambda t, p: precision_score(t, p, average="micro", zero_division=0)),
                in_summary=False,
            ),
            Metric(
                "micro_recall",
                "micro recall",
                decided(lambda t, p: recall_score(t, p, average="micro", zero_division=0)),
                in_summary=False,
            ),
            Metric(
                "log_loss",
                "log loss",
                probability(lambda t, p: log_loss(t.ravel(), p.ravel(), labels=[0, 1])),
                higher_is_better=False,
                in_summary=False,
            ),
            Metric(
                "ece",
                "expected calibration error",
                lambda t, logits, names: calibration_error(calibration_bins(t, logits)),
                higher_is_better=False,
                in_summary=False,
            ),
        )

    # ---- the data's shape: a set of labels per row

    def data_columns(self, cfg, known):
        columns = super().data_columns(cfg, known)
        if cfg.label_columns:  # one 0/1 column per label; the column names are the labels
            columns["label"] = ("data.label_columns", None)
            columns.update({f"label={name}": ("data.label_columns", name) for name in cfg.label_columns})
        return columns

    def prepare(self, frame, split, columns, found, data):
        """Each row's labels as one string (sorted, joined by JOINED), from a list, a string split on
        data.label_separator, or 0/1 columns; a row with no label is kept (no label applies)."""
        flags = [name for name in frame if name.startswith("label=")]
        if flags:
            values = frame[flags]
            bad = ~values.isin([0, 1, True, False])
            if bad.any().any():
                row, column = np.argwhere(bad.to_numpy())[0]
                raise ConfigError(
                    f"data.label_columns: column '{flags[column][6:]}' row {row} of the {split} data holds "
                    f"{values.iat[row, column]!r}, allowed: 0 or 1 (1: the label applies)"
                )
            rows = [
                [name[6:] for name, on in zip(flags, row) if on] for row in values.itertuples(index=False)
            ]
        else:
            rows = [
                self.labels_of(value, data.label_separator, columns["label"][0], split, row)
                for row, value in enumerate(frame["label"])
            ]
        found["texts_without_label"] = sum(not row for row in rows)
        kept = {name: frame[name] for name in ("text", "pair") if name in frame}
        return pd.DataFrame({**kept, "label": [JOINED.join(sorted(set(row))) for row in rows]})

    @staticmethod
    def labels_of(value, separator: str, key: str, split: str, row: int) -> list[str]:
        if isinstance(value, (list, tuple, np.ndarray)):
            return [str(label).strip() for label in value if str(label).strip()]
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return []
        if isinstance(value, str):
            return [label.strip() for label in value.split(separator) if label.strip()]
        if isinstance(value, (int, np.integer)):
            return [str(value)]
        raise ConfigError(
            f"{key}: row {row} of the {split} data holds {type(value).__name__}, allowed: a list of "
            f"labels, or a string of labels separated by data.label_separator ('{separator}')"
        )

    def split_rows(self, labels, holdout, seed):
        # iterative stratification (Sechidis et al. 2011): every label, the rare ones too, in each split in its share
        from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

        rows = parsed(labels)
        hot = multi_hot(rows, sorted({label for row in rows for label in row}))
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=holdout, random_state=seed)
        kept, held = next(splitter.split(np.zeros(len(rows)), hot))
        return np.sort(kept), np.sort(held)

    def fold_strata(self, labels):
        return np.asarray(labels, dtype=np.int64)

    def shown_label(self, label):
        return SHOWN.join(parsed([label])[0]) or "(no label)"

    def label_report(self, distributions, labels, label_names):
        train = [n for n in distributions["train"].values() if n > 0]
        hot = {
            split: np.asarray(rows, dtype=np.int64).reshape(len(rows), len(label_names))
            for split, rows in labels.items()
        }
        per_text = {
            split: {str(k): int(n) for k, n in enumerate(np.bincount(x.sum(1)))} for split, x in hot.items()
        }
        return {
            "class_counts": distributions,
            "imbalance_ratio": max(train) / min(train),  # commonest / rarest label
            "labels_per_text": per_text,
            # texts of the training split holding both labels (the diagonal: each label's count)
            "co_occurrence": (hot["train"].T @ hot["train"]).tolist(),
        }

    def report_lines(self, report):
        """How many labels a training text holds, and which labels come together most."""
        lines = [
            "  labels per training text: "
            + ", ".join(f"{k}: {n}" for k, n in report["labels_per_text"]["train"].items())
        ]
        names, together = report["label_names"], np.array(report["co_occurrence"])
        pairs = sorted(
            (
                (together[i, j], names[i], names[j])
                for i in range(len(names))
                for j in range(i + 1, len(names))
                if together[i, j]
            ),
            reverse=True,
        )[:3]
        if pairs:
            lines.append("  most frequent pairs: " + ", ".join(f"{a} + {b} {n}" for n, a, b in pairs))
        return lines

    def config_problems(self, cfg):
        # class weights keep a meaning: each label's weight on its positive examples
        single = [setting for setting in class_settings(cfg) if setting[0] != "training.class_weights"]
        problems = settings_away_from_defaults(single, self.name, "it acts on one class per text")
        if cfg.data.label_columns and cfg.data.label_column:
            problems.append(
                f"data.label_column: got {cfg.data.label_column!r}, allowed: null with data.label_columns "
                "(the labels come from those columns)"
            )
        return problems

    def encode_labels(self, labels, hub_names, column):
        rows = {split: parsed(values) for split, values in labels.items()}
        seen = sorted({label for row in rows["train"] for label in row})
        numbered = hub_names is not None and all(label.isdigit() for row in rows["train"] for label in row)
        names = list(hub_names) if numbered else seen
        if len(seen) < 2:
            raise ConfigError(
                f"data: the training data holds {len(seen)} label(s) ({', '.join(seen) or 'none'}); "
                "multi_label needs at least 2"
            )
        if numbered:
            rows = {
                split: [[names[int(label)] for label in row] for row in values]
                for split, values in rows.items()
            }
        encoded = {}
        for split, values in rows.items():
            unseen = sorted({label for row in values for label in row} - set(names))
            if unseen:
                raise ConfigError(
                    f"data: the {split} split has labels that training never saw: {', '.join(unseen[:10])}"
                )
            encoded[split] = multi_hot(values, names).tolist()
        return names, encoded

    def label_distribution(self, labels, label_names):
        counts = np.asarray(labels, dtype=np.int64).reshape(-1, len(label_names)).sum(0)
        return {name: int(n) for name, n in zip(label_names, counts)}

    # ---- the model, its loss and its decisions

    def model_kwargs(self, label_names):
        # the problem type makes an exported model's pipeline apply a sigmoid per label, not a softmax
        return {**label_maps(label_names), "problem_type": "multi_label_classification"}

    def collate_labels(self, labels, width):
        return torch.tensor(labels, dtype=torch.float32)

    def loss(self, outputs, labels):
        # per text, the negative log-likelihood of its label set: the labels' binary losses summed
        return F.binary_cross_entropy_with_logits(outputs.logits.float(), labels, reduction="sum")

    def training_loss(self, t, train_labels, label_names):
        if t.class_weights is None:
            return self.loss
        if t.class_weights == "balanced":  # each label's positives weigh as much as its negatives
            positives = np.asarray(train_labels).sum(0)
            weight = torch.tensor(
                (len(train_labels) - positives) / np.maximum(positives, 1), dtype=torch.float32
            )
        else:
            weight = class_weights(t.class_weights, train_labels, label_names)

        def loss(outputs, labels):
            logits = outputs.logits.float()
            return F.binary_cross_entropy_with_logits(
                logits, labels, pos_weight=weight.to(logits.device), reduction="sum"
            )

        return loss

    def calibration_loss(self, logits, truth):
        return F.binary_cross_entropy_with_logits(
            logits, torch.as_tensor(np.asarray(truth), dtype=logits.dtype)
        )

    def prediction_values(self, outputs, attention_mask):
        return outputs.logits.float()

    def predict(self, values):
        return (expit(np.asarray(values)) >= self.thresholds).astype(np.int64)

    def output_check(self, truth, values, label_names):
        found = commonest_prediction(
            self.predict(values), truth, output_spread(expit(np.asarray(values)), outcomes_per_column=True)
        )
        chosen = [name for name, on in zip(label_names, found["prediction"]) if on]
        return {**found, "prediction": SHOWN.join(chosen) or "(no label)"}

    def decide(self, truth, values, label_names, setting):
        truth, p = np.asarray(truth), expit(np.asarray(values))
        thresholds = (
            [best_f1_threshold(p[:, j], truth[:, j]) for j in range(len(label_names))]
            if setting == "tuned"
            else [float(setting)] * len(label_names)
        )
        return {"setting": setting, "thresholds": dict(zip(label_names, thresholds))}

    def decided(self, decision):
        return self if decision is None else MultiLabel(list(decision["thresholds"].values()))

    def describe_decision(self, decision):
        return (
            "label thresholds "
            + ", ".join(f"{k} {v:.3f}" for k, v in decision["thresholds"].items())
            + "; validation {} {:.4f} at 0.5, {:.4f} at them".format(
                self.metric(self.main_metric).label, *decision["validation"][self.main_metric]
            )
        )

    # ---- results

    def decode(self, values, label_names, top_k, text):
        p = expit(values)
        thresholds = np.broadcast_to(self.thresholds, p.shape)
        given = [i for i in np.argsort(-p, kind="stable") if p[i] >= thresholds[i]]
        row = {
            "predicted_labels": SHOWN.join(label_names[i] for i in given),
            "probabilities": SHOWN.join(f"{p[i]:.4f}" for i in given),
        }
        if top_k > 1:
            for rank, label in enumerate(np.argsort(-p, kind="stable")[:top_k], 1):
                row[f"top_{rank}_label"], row[f"top_{rank}_probability"] = label_names[label], float(p[label])
        return row

    def format_prediction(self, row):
        given = (
            list(zip(row["predicted_labels"].split(SHOWN), row["probabilities"].split(SHOWN)))
            if row["predicted_labels"]
            else []
        )
        text = ", ".join(f"{label} ({p})" for label, p in given) or "no label reaches its threshold"
        ranked = [
            (row[f"top_{k}_label"], row[f"top_{k}_probability"]) for k in range(1, (len(row) - 2) // 2 + 1)
        ]
        return text + ("; top: " + ", ".join(f"{label} {p:.3f}" for label, p in ranked) if ranked else "")

    def baseline(self, train_labels, test_labels, label_names):
        # every label's training frequency as its probability for every text; thresholds tuned as a model's are
        # give each label to every text (for a constant score, the best F1 is always giving the label)
        frequency = np.clip(np.asarray(train_labels).mean(0), 1e-6, 1 - 1e-6)
        logits = np.tile(np.log(frequency / (1 - frequency)), (len(test_labels), 1))
        return {
            "label": "every label for every text",
            **MultiLabel([0.0] * len(label_names)).scores(test_labels, logits, label_names),
        }

    def test_report(self, truth, values, label_names):
        truth = np.asarray(truth)
        predictions = self.predict(values)
        return {
            **self.scores(truth, values, label_names),
            "per_class": per_class_report(truth, predictions, label_names),
            "labels_per_text": {
                "true": float(truth.sum(1).mean()),
                "predicted": float(predictions.sum(1).mean()),
            },
            "calibration": calibration_bins(truth, values),
        }

    def example_statistics(self, truth, predictions, label_names):
        # columns: exact set | the text's F1 | true positives, predicted, true (summed over labels) | predicted
        # per label | true per label | true positives per label
        truth, predictions = np.asarray(truth, dtype=np.float32), np.asarray(predictions, dtype=np.float32)
        hits = truth * predictions
        tp, predicted, actual = hits.sum(1), predictions.sum(1), truth.sum(1)
        text_f1 = np.divide(2 * tp, predicted + actual, out=np.ones_like(tp), where=predicted + actual > 0)
        exact = (truth == predictions).all(1).astype(np.float32)
        return np.concatenate(
            [np.stack([exact, text_f1, tp, predicted, actual], 1), predictions, truth, hits], axis=1
        )

    def metrics_from_sums(self, sums, counts, label_names):
        k = len(label_names)
        predicted, actual, hits = (sums[:, 5 + i * k : 5 + (i + 1) * k] for i in range(3))
        f1 = np.divide(2 * hits, predicted + actual, out=np.zeros_like(hits), where=predicted + actual > 0)
        micro = sums[:, 3] + sums[:, 4]
        return {
            "subset_accuracy": sums[:, 0] / counts,
            "samples_f1": sums[:, 1] / counts,
            "micro_f1": np.divide(2 * sums[:, 2], micro, out=np.zeros_like(micro), where=micro > 0),
            "macro_f1": f1.mean(1),
        }

    # ---- words for the report and the model card

    def describe_labels(self, label_names):
        return f"{len(label_names)} labels, any number per text"

    def card_usage(self, pairs):
        return [
            "import json",
            "",
            f'thresholds = json.load(open(f"{{FOLDER}}/{THRESHOLDS}"))  # each label\'s, tuned on validation',
            'tag = pipeline("text-classification", model=FOLDER, top_k=None, function_to_apply="sigmoid")',
            f"scores = tag([{pipeline_input(pairs)}], truncation=True)[0]  # every label's probability",
            'labels = [s["label"] for s in scores if s["score"] >= thresholds[s["label"]]]',
        ]

    def exported_decision(self, decision):
        rule = (
            "each label's own, tuned on validation to maximise its F1"
            if decision["setting"] == "tuned"
            else "one for every label"
        )
        thresholds = ", ".join(f"{name} {t:.3f}" for name, t in decision["thresholds"].items())
        line = (
            f"- Decision: a label is given where its probability reaches its threshold ({rule}; `{THRESHOLDS}` in "
            f"this folder): {thresholds}."
        )
        return {THRESHOLDS: decision["thresholds"]}, [line]

    def card_limit(self, label_names, distribution):
        return (
            f"It knows only these labels: {', '.join(label_names)}. A text gets each label whose probability "
            "reaches that label's threshold: any number of them, or none."
        )


def calibration_bins(truth: np.ndarray, logits: np.ndarray) -> dict[str, list]:
    """The reliability bins of every label's probability on every text, against whether the label applies."""
    return reliability_bins(expit(np.asarray(logits)).ravel(), np.asarray(truth).ravel() == 1)
