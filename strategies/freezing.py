"""The strategies that choose which pre-trained weights train and leave the model as it is: full fine-tuning,
BitFit, partial freezing, gradual unfreezing, and the frozen encoder (a linear probe, on cached features or
fitted by logistic regression)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from schema.strategies import GradualUnfreezingConfig, PartialFreezingConfig
from strategies.base import Settings, Strategy, encoder_layer_count, model_part, rates, train_only
from strategies.probe import fit_logistic_regression, on_cached_features
from tasks import Task


def full(model: PreTrainedModel, settings: Settings, task: Task) -> torch.nn.Module:
    """Every weight trains."""
    return model


def bitfit(model: PreTrainedModel, settings: Settings, task: Task) -> torch.nn.Module:
    """Only bias terms (BitFit, Ben Zaken et al. 2022) and the task head train."""
    return train_only(model, lambda name: name.endswith(".bias"))


def frozen_encoder(model: PreTrainedModel, settings: Settings, task: Task) -> torch.nn.Module:
    """Only the task head trains, on top of the pre-trained encoder as it is: what fine-tuning adds is
    measured against this. With `cache_features` it trains on the encoder's outputs computed once (its
    feature_view); with `classifier: logistic_regression` scikit-learn fits the head (its fit)."""
    return train_only(model, lambda name: False)


def partial_freezing(model: PreTrainedModel, settings: PartialFreezingConfig, task: Task) -> torch.nn.Module:
    """The top `trainable_layers` encoder layers train, with what sits above them (the pooler) and the head;
    the embeddings and the layers below stay as pre-trained."""
    first_trainable = encoder_layer_count(model) - settings.trainable_layers
    encoder = model.base_model_prefix + "."

    def encoder_trains(name: str) -> bool:
        part, layer = model_part(name, encoder)
        return layer >= first_trainable if layer is not None else part == "above the layers"

    return train_only(model, encoder_trains)


def unfreezing_starts(
    model: torch.nn.Module, settings: GradualUnfreezingConfig
) -> dict[str, tuple[str, int]]:
    """Each parameter's part of the model and the epoch (from 0) it starts to train in under gradual unfreezing:
    the head at once, then the encoder from the top, `layers_per_epoch` layers an epoch after `head_epochs`
    (0: all at once), the pooler with the top layer and the embeddings with the lowest."""
    layers = encoder_layer_count(
        model, "strategies.gradual_unfreezing", "use full, or another strategy, with it"
    )
    head_epochs, step = settings.head_epochs, settings.layers_per_epoch or layers
    encoder = model.base_model_prefix + "."

    def part_and_start(name: str) -> tuple[str, int]:
        part, layer = model_part(name, encoder)
        if part == "head":
            return part, 0
        below_top = layers - 1 - layer if layer is not None else layers - 1 if part == "embeddings" else 0
        return part, head_epochs + below_top // step

    return {name: part_and_start(name) for name, _ in model.named_parameters()}


def gradual_unfreezing(model: PreTrainedModel, settings: Settings, task: Task) -> torch.nn.Module:
    """The head alone for `head_epochs` epochs, then the encoder from the top (after ULMFiT, Howard and Ruder
    2018). Every weight is trainable for the optimizer and the checkpoints; before each epoch, what has not
    started yet is frozen (unfreeze_for_epoch)."""
    # a model whose layers cannot be told apart fails here, before training
    unfreezing_starts(model, settings)
    for param in model.parameters():
        param.requires_grad = True
    return model


def unfreeze_for_epoch(model: torch.nn.Module, settings: GradualUnfreezingConfig, epoch: int) -> None:
    starts = unfreezing_starts(model, settings)
    for name, param in model.named_parameters():
        param.requires_grad = epoch >= starts[name][1]


def unfreezing_schedule(model: torch.nn.Module, settings: GradualUnfreezingConfig) -> list[dict]:
    """When each part starts to train, epochs counted from 1, for the record."""
    parts = sorted(dict(unfreezing_starts(model, settings).values()).items(), key=lambda item: item[1])
    return [{"part": part, "epoch": start + 1} for part, start in parts]


def too_many_layers(model_config, settings: Settings) -> str | None:
    """partial_freezing.trainable_layers beyond the layers the model has."""
    layers, trainable = getattr(model_config, "num_hidden_layers", None), settings.trainable_layers
    if layers is not None and trainable > layers:
        return (
            f"strategies.partial_freezing.trainable_layers: got {trainable}, allowed: 0 to {layers} "
            "(the model's encoder layers)"
        )
    return None


# Training examples per second relative to full fine-tuning, measured on the demo data with 2 CPU cores (full
# 80, bitfit 154, partial freezing 219, frozen encoder 321 examples/s). On a GPU they lie closer together,
# which only makes the shards' shares a little less even.
FULL = Strategy("full", full, space=rates(1e-5, 1e-3))
BITFIT = Strategy("bitfit", bitfit, relative_cost=0.52, space=rates(1e-4, 3e-2))
PARTIAL_FREEZING = Strategy(
    "partial_freezing",
    partial_freezing,
    relative_cost=0.37,
    space=rates(1e-5, 1e-3),
    model_problems=lambda settings, model_config: too_many_layers(model_config, settings),
)
GRADUAL_UNFREEZING = Strategy(
    "gradual_unfreezing",
    gradual_unfreezing,
    before_epoch=unfreeze_for_epoch,
    schedule=unfreezing_schedule,
    space=rates(1e-5, 1e-3),
)
FROZEN_ENCODER = Strategy(
    "frozen_encoder",
    frozen_encoder,
    relative_cost=0.25,
    space=rates(3e-3, 1.0),
    fit=lambda settings: fit_logistic_regression if settings.classifier == "logistic_regression" else None,
    feature_view=lambda settings: on_cached_features if settings.cache_features else None,
    passes=lambda settings, epochs: 1 if settings.classifier == "logistic_regression" else epochs,
)
