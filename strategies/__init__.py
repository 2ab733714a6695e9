"""The ways of fine-tuning, one declared record each (strategies.base.Strategy), in one registry: adding a
strategy is a function that wraps the model, its record, a line here and its config section in config.py."""

from strategies.base import Strategy
from strategies.bottleneck import BOTTLENECK_ADAPTER
from strategies.freezing import BITFIT, FROZEN_ENCODER, FULL, GRADUAL_UNFREEZING, PARTIAL_FREEZING
from strategies.peft_methods import IA3, LOHA, LOKR, LORA, PROMPT_TUNING
from strategies.setfit import SETFIT

# In the order the summary and the plots list them.
STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        FULL,
        LORA,
        BITFIT,
        PROMPT_TUNING,
        PARTIAL_FREEZING,
        FROZEN_ENCODER,
        GRADUAL_UNFREEZING,
        BOTTLENECK_ADAPTER,
        IA3,
        LOHA,
        LOKR,
        SETFIT,
    )
}

__all__ = ["STRATEGIES", "Strategy"]
