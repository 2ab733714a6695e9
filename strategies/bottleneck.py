"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer's placement), written here because PEFT has none: small
down- and up-projections after a layer's attention and feed-forward outputs, with the LayerNorms and head."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from schema.strategies import BottleneckAdapterConfig
from strategies.base import ACTIVATIONS, LAYER_INDEX, Strategy, rates, train_only
from tasks import Task
from utils import ConfigError


class Bottleneck(torch.nn.Module):
    """A bottleneck adapter: down-projection, activation, up-projection, added to its input. The up-projection
    starts at zero, so the model starts as the pre-trained one."""

    def __init__(self, size: int, reduction_factor: int, activation: str):
        super().__init__()
        self.down = torch.nn.Linear(size, max(1, size // reduction_factor))
        self.activation = ACTIVATIONS[activation]()
        self.up = torch.nn.Linear(self.down.out_features, size)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.activation(self.down(hidden)))


# The projections a bottleneck adapter follows, by layout: each layer's attention output and feed-forward
# output (BERT, RoBERTa, ELECTRA; DistilBERT), before the residual connection and LayerNorm.
ATTENTION_OUTPUTS = ("attention.output.dense", "attention.out_lin")
FEED_FORWARD_OUTPUTS = ("output.dense", "ffn.lin2")


def bottleneck_adapter(
    model: PreTrainedModel, settings: BottleneckAdapterConfig, task: Task
) -> torch.nn.Module:
    """Bottleneck adapters after each layer's attention and feed-forward outputs (houlsby), or after the
    feed-forward output only (pfeiffer); the adapters, the LayerNorms and the head train, the rest of the
    encoder stays frozen. Each adapter hangs under its projection (`...output.dense.adapter`) and runs as a
    forward hook on it, so the pre-trained weights keep their names."""
    wanted = (
        FEED_FORWARD_OUTPUTS if settings.placement == "pfeiffer" else ATTENTION_OUTPUTS + FEED_FORWARD_OUTPUTS
    )
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and LAYER_INDEX.search(name + ".")
        and any(name.endswith(t) for t in wanted)
        and not (settings.placement == "pfeiffer" and any(name.endswith(t) for t in ATTENTION_OUTPUTS))
    ]
    if not targets:
        raise ConfigError(
            f"strategies.bottleneck_adapter: '{model.name_or_path}' has none of the projections adapters "
            f"follow ({', '.join(ATTENTION_OUTPUTS + FEED_FORWARD_OUTPUTS)}); use lora or ia3 with it"
        )
    train_only(model, lambda name: "LayerNorm" in name or "layer_norm" in name)
    for _, projection in targets:
        projection.adapter = Bottleneck(
            projection.out_features, settings.reduction_factor, settings.activation
        )
        projection.register_forward_hook(lambda module, inputs, output: module.adapter(output))
    return model


BOTTLENECK_ADAPTER = Strategy(
    "bottleneck_adapter",
    bottleneck_adapter,
    space=rates(1e-4, 3e-2),
    export_refused=(
        "bottleneck adapters are not part of any Hugging Face model class, so the folder would load "
        "without them; use python main.py predict --run RUN (or Predictor.from_run)"
    ),
)
