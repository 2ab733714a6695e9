"""The config sections of the strategies (strategies.<name> in the YAML), each with the checks of its own
settings; the defaults of every strategy's keys live here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from schema.checks import list_problem, problem, varied_keys
from tasks import TASKS, Need

# Each field's docstring (the string under it) is its help text: docs/config.md is generated from them.

# Keys that shape the experiment (which runs exist), not a single run: they never enter a run's settings.
GRID_KEYS = ("enabled", "learning_rates", "rank_values")


@dataclass
class StrategyConfig:
    enabled: bool = True
    """Run this strategy."""
    learning_rate: float | None = None
    """Replaces training.learning_rate for this strategy; null: training.learning_rate."""
    learning_rates: list[float] | None = None
    """One run per rate, replacing ablation.learning_rates for this strategy."""

    def recorded(self) -> dict[str, Any]:
        """One run's settings as its record and its key hold them: every key but those that shape the experiment."""
        return {key: value for key, value in asdict(self).items() if key not in GRID_KEYS}

    def problems(self, key: str, cfg) -> list[str]:
        """The strategy's own settings that are out of range (`key`: its section, strategies.<name>)."""
        return problem(
            self.learning_rate is None or self.learning_rate > 0,
            f"{key}.learning_rate",
            self.learning_rate,
            "a number > 0, or null",
        ) + list_problem(self.learning_rates, f"{key}.learning_rates", lambda v: v > 0, "numbers > 0")


def adapter_problems(adapter, key: str) -> list[str]:
    """Rank, alpha and target modules of a low-rank adapter (LoRA, LoHa, LoKr)."""
    return (
        problem(adapter.rank >= 1, f"{key}.rank", adapter.rank, "an integer >= 1")
        + problem(adapter.alpha >= 1, f"{key}.alpha", adapter.alpha, "an integer >= 1")
        + problem(
            len(adapter.target_modules) > 0,
            f"{key}.target_modules",
            adapter.target_modules,
            "a non-empty list of module names, e.g. [query, value]",
        )
    )


@dataclass
class LoraConfig(StrategyConfig):
    learning_rate: float | None = 5e-4
    rank: int = 8
    """Adapter rank: more capacity, more parameters."""
    rank_values: list[int] | None = None
    """One run per rank, replacing `rank`."""
    alpha: int = 16
    """Scale of the update (alpha / rank)."""
    dropout: float = 0.1
    """Dropout on the adapter's input."""
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    """Names of the linear layers that get adapters."""

    def problems(self, key, cfg):
        return (
            super().problems(key, cfg)
            + adapter_problems(self, key)
            + problem(0 <= self.dropout < 1, f"{key}.dropout", self.dropout, "0 <= dropout < 1")
            + list_problem(self.rank_values, f"{key}.rank_values", lambda v: v >= 1, "integers >= 1")
        )


@dataclass
class PromptTuningConfig(StrategyConfig):
    learning_rate: float | None = 3e-2
    num_virtual_tokens: int = 20
    """Trainable vectors put before the input; max_length + this must fit the model's positions."""
    init_text: str | None = None
    """Text to initialise the virtual tokens from (e.g. "Classify the customer question:"); null: random."""

    def problems(self, key, cfg):
        return super().problems(key, cfg) + problem(
            self.num_virtual_tokens >= 1,
            f"{key}.num_virtual_tokens",
            self.num_virtual_tokens,
            "an integer >= 1",
        )


@dataclass
class PartialFreezingConfig(StrategyConfig):
    enabled: bool = False
    """Off unless a config turns it on, so that configs written before it existed keep their runs."""
    trainable_layers: int = 2
    """How many of the top encoder layers train (with the pooler and head); 0 to the model's layer count."""

    def problems(self, key, cfg):
        return super().problems(key, cfg) + problem(
            self.trainable_layers >= 0, f"{key}.trainable_layers", self.trainable_layers, "an integer >= 0"
        )


@dataclass
class GradualUnfreezingConfig(StrategyConfig):
    enabled: bool = False
    """Off unless a config turns it on, like the other strategies added after the first six."""
    head_epochs: int = 1
    """Epochs in which the head trains alone, before the encoder starts to."""
    layers_per_epoch: int = 1
    """Encoder layers unfrozen per epoch after those, from the top; 0: all at once."""

    def problems(self, key, cfg):
        return (
            super().problems(key, cfg)
            + problem(self.head_epochs >= 0, f"{key}.head_epochs", self.head_epochs, "an integer >= 0")
            + problem(
                self.layers_per_epoch >= 0,
                f"{key}.layers_per_epoch",
                self.layers_per_epoch,
                "an integer >= 0 (0: all layers at once)",
            )
        )


@dataclass
class BottleneckAdapterConfig(StrategyConfig):
    enabled: bool = False
    """Off unless a config turns it on, like the other strategies added after the first six."""
    learning_rate: float | None = 1e-3
    reduction_factor: int = 16
    """Hidden size / adapter size (MiniLM's 384 / 16 = 24 units)."""
    placement: Literal["houlsby", "pfeiffer"] = "houlsby"
    """After each layer's attention and feed-forward outputs (houlsby), or after the feed-forward output only (pfeiffer)."""
    activation: Literal["relu", "gelu"] = "relu"
    """Between the down- and up-projection."""

    def problems(self, key, cfg):
        return super().problems(key, cfg) + problem(
            self.reduction_factor >= 1, f"{key}.reduction_factor", self.reduction_factor, "an integer >= 1"
        )


@dataclass
class IA3Config(StrategyConfig):
    enabled: bool = False
    """Off unless a config turns it on, like the other adapters added after the first six strategies."""
    learning_rate: float | None = 3e-3
    target_modules: list[str] | None = None
    """Linear layers whose outputs get rescaled; null: PEFT's choice for the architecture (BERT: key, value and the feed-forward output)."""
    feedforward_modules: list[str] | None = None
    """Which of them are feed-forward layers (rescaled on their input); null: PEFT's choice."""

    def problems(self, key, cfg):
        return (
            super().problems(key, cfg)
            + problem(
                self.target_modules is None or len(self.target_modules) > 0,
                f"{key}.target_modules",
                self.target_modules,
                "a non-empty list of module names, or null",
            )
            + problem(
                self.feedforward_modules is None
                or set(self.feedforward_modules) <= set(self.target_modules or []),
                f"{key}.feedforward_modules",
                self.feedforward_modules,
                f"null, or some of {key}.target_modules (which must then be set)",
            )
        )


@dataclass
class LohaLokrConfig(StrategyConfig):
    enabled: bool = False
    """Off unless a config turns it on, like the other adapters added after the first six strategies."""
    learning_rate: float | None = 1e-3
    rank: int = 8
    """Rank of the low-rank factors."""
    alpha: int = 16
    """Scale of the update (alpha / rank)."""
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    """Names of the linear layers that get adapters."""

    def problems(self, key, cfg):
        return super().problems(key, cfg) + adapter_problems(self, key)


@dataclass
class FrozenEncoderConfig(StrategyConfig):
    enabled: bool = False
    learning_rate: float | None = 3e-1
    cache_features: bool = True
    """Compute what the frozen encoder gives each text once (dropout off) and train the head on that, reused by every epoch, seed and rate of the process; false: run the encoder every epoch. Needs a head that is one module reading one vector per text (BERT's own, or model.head linear or mlp); other models train uncached, with a log line."""
    classifier: Literal["head", "logistic_regression"] = "head"
    """`head`: train the head with the loop (its epochs, rate, early stopping); `logistic_regression`: fit scikit-learn's on the features (standardised), its C chosen on validation, and write it into the head (a one-layer head: the model's own, or model.head.type linear)."""

    def problems(self, key, cfg):
        found = super().problems(key, cfg)
        if (
            self.classifier == "logistic_regression"
            and cfg.data.task in TASKS
            and TASKS[cfg.data.task].lacks(Need.CLASS_PER_TEXT)
        ):
            found += problem(
                False,
                f"{key}.classifier",
                self.classifier,
                f"head with data.task: {cfg.data.task} (it applies to classes)",
            )
        if not varied_keys(cfg) & {"model.head.type", f"{key}.classifier"}:
            found += problem(
                self.classifier == "head" or cfg.model.head.type != "mlp",
                f"{key}.classifier",
                self.classifier,
                "head with model.head.type: mlp (logistic regression stands in for one linear layer)",
            )
        return found


@dataclass
class SetFitConfig(StrategyConfig):
    enabled: bool = False
    learning_rate: float | None = 2e-5
    """The encoder's rate in contrastive training (SetFit's `body_learning_rate`); the head is fitted, not trained at a rate."""
    num_iterations: int = 20
    """Pairs drawn per training text: this many with a text of the same label and this many with another label."""
    num_epochs: int = 1
    """Passes over the pairs."""
    batch_size: int = 16
    """Pairs per step of contrastive training."""

    def problems(self, key, cfg):
        return super().problems(key, cfg) + [
            p
            for name in ("num_iterations", "num_epochs", "batch_size")
            for p in problem(
                getattr(self, name) >= 1, f"{key}.{name}", getattr(self, name), "an integer >= 1"
            )
        ]


@dataclass
class StrategiesConfig:
    full: StrategyConfig = field(default_factory=StrategyConfig)
    """Every weight trains."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters on the attention projections (PEFT); the head trains too."""
    bitfit: StrategyConfig = field(default_factory=lambda: StrategyConfig(learning_rate=1e-3))
    """Only the bias terms and the head train."""
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    """Trainable virtual tokens before the input (PEFT); the encoder stays frozen, the head trains."""
    partial_freezing: PartialFreezingConfig = field(default_factory=PartialFreezingConfig)
    """The top encoder layers, the pooler and the head train; embeddings and lower layers stay frozen."""
    frozen_encoder: FrozenEncoderConfig = field(default_factory=FrozenEncoderConfig)
    """Only the head trains (off by default, like partial_freezing): what tuning the encoder adds is measured against it."""
    gradual_unfreezing: GradualUnfreezingConfig = field(default_factory=GradualUnfreezingConfig)
    """The head first, then the encoder from the top, layer by layer, epoch by epoch (ULMFiT's schedule)."""
    bottleneck_adapter: BottleneckAdapterConfig = field(default_factory=BottleneckAdapterConfig)
    """Small bottleneck modules after each layer's attention and/or feed-forward output (written here: PEFT has none); adapters, LayerNorms and head train."""
    ia3: IA3Config = field(default_factory=IA3Config)
    """Learned vectors rescaling keys, values and the feed-forward output (PEFT IA3); the head trains too."""
    loha: LohaLokrConfig = field(default_factory=LohaLokrConfig)
    """Low-rank Hadamard-product adapters on the target projections (PEFT LoHa); the head trains too."""
    lokr: LohaLokrConfig = field(default_factory=LohaLokrConfig)
    """Kronecker-product adapters on the target projections (PEFT LoKr); the head trains too."""
    setfit: SetFitConfig = field(default_factory=SetFitConfig)
    """SetFit (off by default): contrastive fine-tuning of the encoder on pairs of texts, then a logistic-regression head; made for few examples per class."""
