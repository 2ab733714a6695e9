"""Regression: one number per text or pair (a similarity or a rating), scored by its correlation with the truth
and its error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import peft
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from transformers import AutoModelForSequenceClassification

from tasks.base import Metric, Task, class_settings, label_maps, pipeline_input, settings_away_from_defaults
from utils import ConfigError


def correlation(truth: np.ndarray, predicted: np.ndarray, ranked: bool = False) -> float:
    """Pearson's correlation (Spearman's with `ranked`: Pearson's of the ranks, ties at their mean rank); 0 when
    either side is constant, where correlation is undefined (a model predicting one value relates to nothing)."""
    x, y = (
        (rankdata(predicted), rankdata(truth))
        if ranked
        else (np.asarray(predicted, float), np.asarray(truth, float))
    )
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


REGRESSION_METRICS = (
    Metric("spearman", "Spearman correlation", lambda t, p, _: correlation(t, p, ranked=True)),
    Metric("pearson", "Pearson correlation", lambda t, p, _: correlation(t, p)),
    Metric("rmse", "RMSE", lambda t, p, _: float(np.sqrt(np.mean((p - t) ** 2))), higher_is_better=False),
    Metric("mae", "MAE", lambda t, p, _: float(np.mean(np.abs(p - t))), higher_is_better=False),
    Metric(
        "mse", "MSE", lambda t, p, _: float(np.mean((p - t) ** 2)), higher_is_better=False, in_summary=False
    ),
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

    def config_problems(self, cfg):
        return settings_away_from_defaults(class_settings(cfg), "regression", "it applies to classes")

    def describe_labels(self, label_names):
        return f"'{label_names[0]}' predicted"

    def card_usage(self, pairs):
        return [
            'score = pipeline("text-classification", model=FOLDER)',
            f'score([{pipeline_input(pairs)}], truncation=True, function_to_apply="none")  # the number itself: no '
            "softmax on one output",
        ]

    def card_limit(self, label_names, distribution):
        train = distribution["train"]
        return (
            f"It learned {label_names[0]} from values between {train['min']:.3f} and {train['max']:.3f}; outside "
            "that range its predictions are guesses."
        )

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
            bad = numbers.isna() | ~np.isfinite(numbers.astype(float))
            if bad.any():
                raise ConfigError(
                    f"data.label_column: regression needs finite numbers, and the {split} split's "
                    f"'{column}' holds '{values[bad].iloc[0]}'"
                )
            encoded[split] = numbers.astype(float).tolist()
        if np.std(encoded["train"]) == 0:
            raise ConfigError(
                f"data: every training label is {encoded['train'][0]}; regression needs labels that vary"
            )
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
        return {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        }

    def prediction_values(self, outputs, attention_mask):
        return outputs.logits.float().squeeze(-1)

    def decode(self, values, label_names, top_k, text):
        return {f"predicted_{label_names[0]}": float(values)}

    def format_prediction(self, row):
        ((name, value),) = row.items()
        return f"{name.removeprefix('predicted_')} {value:.3f}"

    def baseline(self, train_labels, test_labels, label_names):
        mean = float(np.mean(train_labels))
        return {
            "label": f"{mean:.3f}",
            **self.scores(test_labels, np.full(len(test_labels), mean), label_names),
        }

    def test_report(self, truth, values, label_names):
        return self.scores(truth, values, label_names)

    def example_statistics(self, truth, predictions, label_names):
        # columns: x, y, x², y², xy for Pearson; the same over ranks (ranked once, over the whole split) for
        # Spearman; squared and absolute error
        x, y = np.asarray(predictions, float), np.asarray(truth, float)
        rx, ry = rankdata(x), rankdata(y)
        return np.stack(
            [x, y, x * x, y * y, x * y, rx, ry, rx * rx, ry * ry, rx * ry, (x - y) ** 2, np.abs(x - y)], 1
        )

    def metrics_from_sums(self, sums, counts, label_names):
        def pearson(sx, sy, sxx, syy, sxy):
            covariance, vx, vy = counts * sxy - sx * sy, counts * sxx - sx**2, counts * syy - sy**2
            scale = np.sqrt(np.maximum(vx * vy, 0))
            return np.divide(covariance, scale, out=np.zeros_like(covariance), where=scale > 0)

        mse = sums[:, 10] / counts
        return {
            "pearson": pearson(*sums[:, 0:5].T),
            "spearman": pearson(*sums[:, 5:10].T),
            "rmse": np.sqrt(mse),
            "mae": sums[:, 11] / counts,
        }
