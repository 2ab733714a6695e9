"""What a strategy is: one declared record (how it wraps the model, how it trains when not by the loop, what it
refuses, costs and exports), with the helpers that tell the parts of an encoder apart by parameter name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import PreTrainedModel

from schema.strategies import StrategyConfig
from tasks import Task
from utils import ConfigError

# A strategy's own config section (schema/strategies.py) for one run, with the learning rate it uses
Settings = StrategyConfig


def never(*args) -> None:
    return None


def rates(low: float, high: float) -> dict[str, dict]:
    """A search space of the learning rate alone, log-uniform from `low` to `high`."""
    return {"learning_rate": {"low": low, "high": high, "log": True}}


@dataclass(frozen=True)
class Strategy:
    """One way of fine-tuning. Only `wrap` is required; every other field says how it differs from full
    fine-tuning by the loop, and is read by the experiment, the loop's caller, export and config checks."""

    name: str
    wrap: Callable[[PreTrainedModel, Settings, Task], torch.nn.Module]
    """Decides what of the pre-trained model (with its task head) trains; returns the model to train."""
    fit: Callable[[Settings], Callable | None] = never
    """The function that trains a run instead of the loop (same arguments and result as trainer.train), or None."""
    feature_view: Callable[[Settings], Callable | None] = never
    """A function (model, encoded, cfg, accelerator) -> (module, encoded, features record) giving something cheaper
    to train than the whole model (the head on cached features), or None."""
    before_epoch: Callable[[torch.nn.Module, Settings, int], None] | None = None
    """Changes what trains from epoch to epoch (epochs from 0), or None."""
    schedule: Callable[[torch.nn.Module, Settings], list[dict]] = never
    """When each part of the model starts to train, for the record (None: all from the start)."""
    export_refused: str | None = None
    """Why export cannot write a standard Hugging Face folder for it (None: it can)."""
    refuses: Callable[[Task, Any], str | None] = never
    """Why it cannot serve a task under a config (cfg), or None."""
    one_process: bool = False
    """Trains on one process only (its stage runs a trainer of its own)."""
    relative_cost: float = 1.0
    """Training time per example relative to full fine-tuning (for sharing runs between shards)."""
    passes: Callable[[Settings, int], int] = lambda settings, epochs: epochs
    """How often a run encodes each training text, given the training epochs."""
    extra_positions: Callable[[Settings], tuple[str, int] | None] = never
    """Positions it takes beside the text's tokens, as (the config key that sets them, how many)."""
    model_problems: Callable[[Settings, Any], str | None] = never
    """What in its settings does not fit the model's own config (a transformers config), or None."""
    head: Callable[[Any], Any] = lambda head: head
    """The head (a HeadConfig) it trains under the configured one: most keep it."""
    space: dict[str, dict] = field(default_factory=lambda: rates(1e-5, 1e-3))
    """What a search (search.method: optuna) varies by default: its own keys (strategies.<name>.<key>) to ranges
    or lists of choices, as search.space writes them; at least the learning rate, over a range that suits it."""


def train_only(model: PreTrainedModel, encoder_trains: Callable[[str], bool]) -> PreTrainedModel:
    """The task head trains; an encoder parameter trains when `encoder_trains(its name)` says so."""
    encoder_prefix = model.base_model_prefix + "."
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(encoder_prefix) or encoder_trains(name)
    return model


# Where a parameter's encoder layer number is in its name: bert.encoder.layer.3., distilbert.transformer.layer.3.
LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")

# The activations a config may name (model.head.activation, strategies.bottleneck_adapter.activation).
ACTIVATIONS = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU}


def model_part(name: str, encoder_prefix: str) -> tuple[str, int | None]:
    """The part of the model a parameter belongs to, by its name, and its layer number: ("head", None) outside
    the encoder, ("layer N", N), ("embeddings", None) below the layers (with ELECTRA's embeddings_project), or
    ("above the layers", None): the pooler."""
    if not name.startswith(encoder_prefix):
        return "head", None
    layer = LAYER_INDEX.search(name)
    if layer:
        return f"layer {layer.group(1)}", int(layer.group(1))
    return ("embeddings" if ".embeddings" in name else "above the layers"), None


def encoder_layer_count(
    model: PreTrainedModel,
    key: str = "strategies.partial_freezing",
    instead: str = "use frozen_encoder, bitfit or a PEFT strategy with it",
) -> int:
    """The number of encoder layers, found in the parameter names and checked against the model's config, so a
    model laid out differently fails here (naming the config `key` that needed them) rather than freezing or
    scaling the wrong weights."""
    found = {int(m.group(1)) for name, _ in model.named_parameters() if (m := LAYER_INDEX.search(name))}
    expected = getattr(model.config, "num_hidden_layers", None)
    if not found or found != set(range(len(found))) or (expected is not None and len(found) != expected):
        raise ConfigError(
            f"{key}: cannot tell the encoder layers of '{model.name_or_path}' apart by their "
            f"parameter names; {instead}"
        )
    return len(found)
