"""The frozen encoder's two ways around the loop: heads trained on what the frozen encoder gives each text: those features computed once per process and reused
by every epoch, seed and rate (the cached linear probe), and a logistic regression fitted on them whose C is
chosen on validation and which is then written into the model's head, so the run predicts and exports as any
other."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from transformers.modeling_outputs import SequenceClassifierOutput

from records.checkpoints import BEST_WEIGHTS, save_weights, trainable_weights
from config import Config
from data import SPLITS, Encoded
from records.measure import stopwatch
from tasks import TASKS, probabilities
from trainer import TrainJob, TrainResult, inference
from utils import ConfigError

logger = logging.getLogger(__name__)

# The inverse regularisation strengths logistic regression tries; validation picks one.
C_VALUES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)

# Features by what produced them (model, starting run, head kind, pooling), then by the text's token ids.
FEATURES: dict[tuple, dict[tuple[int, ...], torch.Tensor]] = {}


def head_of(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """The one module beside the encoder that holds weights (the head), by name; None when there are several
    (DistilBERT's pre_classifier and classifier)."""
    if isinstance(model, CachedFeatures):
        return model.head_name, getattr(model, model.head_name)
    beside = [
        (name, child)
        for name, child in model.named_children()
        if child is not getattr(model, "base_model", None) and next(child.parameters(), None) is not None
    ]
    return beside[0] if len(beside) == 1 else None


def head_inputs(
    model: torch.nn.Module, head: torch.nn.Module, encoded: Encoded, split: str, cfg: Config, accelerator
) -> torch.Tensor:
    """Per row of the split, in order, what `head` receives from the rest of the model with dropout off."""
    model.to(accelerator.device)  # the loop has not placed it: features come before (or instead of) training
    captured = []

    def one_vector_per_text(outputs, attention_mask) -> torch.Tensor:
        features = captured.pop()
        if features.ndim != 2:  # RoBERTa's and ELECTRA's heads read every token's hidden state
            raise ValueError(
                f"the head reads {features.ndim - 1}-dimensional inputs per text, not one vector"
            )
        return features

    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].float()))
    try:
        reader = copy.copy(TASKS[cfg.data.task])  # the task, reading what its head is given instead
        reader.prediction_values = one_vector_per_text
        _, features = inference(model, encoded, split, cfg.training, accelerator, reader)
    finally:
        hook.remove()
    return torch.from_numpy(features)


class CachedFeatures(torch.nn.Module):
    """The head alone, on stored features: each text's input_ids start with its row in `features`. The head keeps
    its name from the full model, so the weights it saves load into that model."""

    def __init__(self, name: str, head: torch.nn.Module, features: torch.Tensor):
        super().__init__()
        self.head_name = name
        self.add_module(name, head)
        self.register_buffer("features", features, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask=None, **kwargs):
        return SequenceClassifierOutput(logits=getattr(self, self.head_name)(self.features[input_ids[:, 0]]))


def on_cached_features(
    model: torch.nn.Module, encoded: Encoded, cfg: Config, accelerator
) -> tuple[torch.nn.Module, Encoded, dict]:
    """The model's head on its features, and the splits as rows of those features, computing only the features of
    texts this process has not seen under the same encoder; with what it computed and reused, for the record.
    A model whose head is not one module reading one vector per text trains as it is."""
    found = head_of(model)
    if found is None:  # the strategy trains the head alone, so the head is all that is not cached
        logger.info(
            "cache_features: the head of '%s' is not one module beside the encoder; the encoder runs "
            "every epoch",
            model.name_or_path,
        )
        return model, encoded, {"cached": False}
    name, head = found
    m = cfg.model
    store = FEATURES.setdefault((m.name, m.init_from, m.head.type == "model", m.head.pooling), {})
    started = time.perf_counter()
    texts = {tuple(ids) for split in SPLITS for ids in encoded.ids[split]}
    missing = sorted(texts - store.keys())
    if missing:
        unlabelled = Encoded(
            ids={"rows": [list(ids) for ids in missing]},
            labels=None,
            pad_id=encoded.pad_id,
            label_names=encoded.label_names,
        )
        try:
            computed = head_inputs(model, head, unlabelled, "rows", cfg, accelerator)
        except ValueError as err:
            logger.info("cache_features: %s; the encoder runs every epoch", err)
            return model, encoded, {"cached": False}
        store.update(zip(missing, computed))
    rows, ids = [], {}
    for split in SPLITS:  # as long as the texts, so the batches (grouped by length) are the uncached run's
        ids[split] = [[len(rows) + i] + [0] * (len(x) - 1) for i, x in enumerate(encoded.ids[split])]
        rows += [store[tuple(x)] for x in encoded.ids[split]]
    seconds = time.perf_counter() - started
    logger.info(
        "cache_features: %d texts' features computed, %d reused (%.1fs)",
        len(missing),
        len(texts) - len(missing),
        seconds,
    )
    view = CachedFeatures(name, head, torch.stack(rows))
    return (
        view,
        dataclasses.replace(encoded, ids=ids),
        {
            "cached": True,
            "computed": len(missing),
            "reused": len(texts) - len(missing),
            "seconds": round(seconds, 2),
        },
    )


def the_linear_layer(head: torch.nn.Module) -> torch.nn.Linear:
    """The single linear layer of a head that logistic regression can stand in for."""
    layers = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    others = [
        m
        for m in head.modules()
        if next(m.parameters(recurse=False), None) is not None and not isinstance(m, torch.nn.Linear)
    ]
    if len(layers) != 1 or others:
        raise ConfigError(
            "classifier: logistic_regression fits one linear layer, and this head has "
            f"{len(layers)} linear layers{' and other weights' if others else ''}: "
            "use classifier: head, or model.head.type linear"
        )
    return layers[0]


def fit_logistic_regression(model, encoded: Encoded, job: TrainJob, accelerator) -> TrainResult:
    """Fit scikit-learn's logistic regression on the head's input features (standardised on the training split)
    at each C of C_VALUES, keep the C the validation metric of early stopping prefers, and write that solution
    into the head's linear layer. Its history has one entry."""
    cfg = job.cfg
    task, metric = TASKS[cfg.data.task], cfg.training.early_stopping.metric
    found = head_of(model)
    if found is None:
        raise ConfigError(
            f"classifier: logistic_regression needs the head of '{cfg.model.name}' to be one module "
            "beside the encoder; use classifier: head"
        )
    linear = the_linear_layer(found[1])
    spent = {"train": 0.0, "validation": 0.0, "checkpoint": 0.0}  # as the loop splits its time
    x = {}
    for split in ("train", "validation"):
        with stopwatch(spent, split):
            x[split] = head_inputs(model, found[1], encoded, split, cfg, accelerator).double().numpy()
    y = {split: np.asarray(encoded.labels[split]) for split in x}
    (scores, weight, bias, c, train_loss), tried = best_regression(x, y, encoded, task, metric, spent)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))
    seconds = spent["train"]
    entry = {"epoch": 1, "step": 0, "train_loss": train_loss, **scores, "lr": None, "seconds": seconds}
    # one evaluation, which is its end: a search judges it, but cannot pause or prune it
    if job.on_evaluation:
        job.on_evaluation([entry])
    trained = {name for name, param in model.named_parameters() if param.requires_grad}
    with stopwatch(spent, "checkpoint"):
        save_weights(
            job.run_dir / BEST_WEIGHTS, trainable_weights(model, accelerator, trained), job.run_key, 1
        )
    logger.info(
        "logistic regression: C=%g chosen on %s (%.4f) from %s | %.1fs",
        c,
        metric,
        scores[metric],
        ", ".join(f"{t['C']:g}: {t[metric]:.4f}" for t in tried),
        seconds,
    )
    return TrainResult(
        [entry],
        1,
        0,
        scores[metric],
        f"logistic regression: C={c:g} chosen on {metric} from {len(C_VALUES)} values",
        0,
        round(seconds, 2),
        round(len(y["train"]) / seconds, 2),
        round(spent["validation"], 2),
        round(spent["checkpoint"], 2),
        {"logistic_regression": {"C": c, "tried": tried}},
    )


def best_regression(x: dict, y: dict, encoded: Encoded, task, metric: str, spent: dict) -> tuple[tuple, list]:
    """Logistic regression at each C of C_VALUES on the training features standardised, scored on validation:
    the best (its validation scores, weight and bias on the features as they are, C, training loss), and each
    C's score of `metric`; the time each part takes added to `spent`."""
    mean, std = x["train"].mean(0), x["train"].std(0) + 1e-6
    best, tried = None, []
    for c in C_VALUES:
        with stopwatch(spent, "train"):
            fitted = LogisticRegression(C=c, max_iter=2000).fit((x["train"] - mean) / std, y["train"])
            weight, bias = full_weights(fitted, encoded.num_labels)
            # the same logits on unstandardised features
            weight, bias = weight / std, bias - (weight / std) @ mean
        with stopwatch(spent, "validation"):
            logits = {split: x[split] @ weight.T + bias for split in x}
            validation = task.scores(y["validation"], logits["validation"], encoded.label_names)
            scores = {
                "val_loss": mean_log_loss(logits["validation"], y["validation"], encoded.num_labels),
                **{f"val_{name}": value for name, value in validation.items()},
            }
        tried.append({"C": c, metric: scores[metric]})
        if best is None or task.is_better(metric, scores[metric], best[0][metric]):
            best = (scores, weight, bias, c, mean_log_loss(logits["train"], y["train"], encoded.num_labels))
    return best, tried


def full_weights(fitted: LogisticRegression, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """One row of weights and one bias per label, in label order, whose softmax is the fitted probabilities.
    scikit-learn keeps one row for two classes (the second's log-odds) and none for a label absent from training."""
    weight, bias = (
        np.zeros((num_labels, fitted.coef_.shape[1])),
        np.full(num_labels, -1e4),
    )  # absent: never predicted
    if len(fitted.classes_) == 2:
        weight[fitted.classes_] = np.stack([-fitted.coef_[0] / 2, fitted.coef_[0] / 2])
        bias[fitted.classes_] = [-fitted.intercept_[0] / 2, fitted.intercept_[0] / 2]
    else:
        weight[fitted.classes_], bias[fitted.classes_] = fitted.coef_, fitted.intercept_
    return weight, bias


def mean_log_loss(logits: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """The mean cross-entropy of logits, as the loop reports its losses (per example)."""
    return float(log_loss(labels, probabilities(logits), labels=range(num_labels)))
