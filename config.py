"""The config: its typed schema (the only home of defaults), loading with overrides, validation that
gathers every problem into one error, and the experiment grid that lists in it expand into."""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tasks import TASKS
from schema.search import SearchConfig, range_values, shown_url
from schema.strategies import GRID_KEYS, StrategiesConfig, StrategyConfig
from schema.checks import Problems, list_problem, varied_keys
from schema.typed_yaml import apply_override, build, read_yaml, set_dotted
from utils import ConfigError

# Each field's docstring (the string under it) is its help text: docs/config.md is generated from them.


@dataclass
class HeadConfig:
    type: Literal["auto", "model", "linear", "mlp"] = "auto"
    """`auto`: the head that reads what the model was trained to give: `linear` for a sentence-transformers model (its folder's pooling config says how it pools; the bundled MiniLM is one), else `model`. `model`: the model's own classification head (BERT: its pre-trained pooler on the first token, then one linear layer); `linear`: one linear layer on the pooled features; `mlp`: Dense(`hidden_size`), activation, dropout, then the linear layer. `linear` and `mlp` train and are saved under every strategy, but export cannot write them as a Hugging Face folder."""
    pooling: Literal["auto", "cls", "mean"] = "auto"
    """What a `linear` or `mlp` head reads: the first token's last hidden state (`cls`) or the mean over the text's tokens (`mean`); `auto`: how a sentence-transformers model pools (the bundled MiniLM: `mean`), else `cls`."""
    hidden_size: int = 512
    """Width of the `mlp` head's hidden layer."""
    dropout: float = 0.1
    """Dropout before the head's last linear layer (`linear`: on the pooled features)."""
    activation: Literal["relu", "gelu"] = "relu"
    """The `mlp` head's activation."""


@dataclass
class ModelConfig:
    name: str = "minilm"
    """Hub id (`bert-base-uncased`), local folder, or `minilm`: MiniLM-L6-H384, bundled through pip."""
    max_length: int | Literal["auto"] = 128
    """Tokens kept per text; longer texts are truncated. Time and memory grow with it. `auto`: the training split's 95th-percentile length rounded up to a multiple of 8, within the model's limit (the log and the data report say what it picked)."""
    dropout: float | None = None
    """Hidden and attention dropout; null keeps the model's own (0.1 for BERT)."""
    head: HeadConfig = field(default_factory=HeadConfig)
    """The classification head on the encoder."""
    init_from: str | None = None
    """Start from an earlier run's trained weights (a run id in output.dir, or a run folder; adapters merged) instead of the pre-trained model: fine-tune on a related larger data set first. Its head is kept when its labels are this data's, else a fresh one trains."""


@dataclass
class AugmentConfig:
    enabled: bool = False
    """Add perturbed copies of training texts (training split only; validation and test never change)."""
    copies: int = 1
    """Perturbed copies added per augmented text."""
    probability: float = 0.1
    """Share of a text's words each copy changes: that many random swaps or insertions (at least one), or each word deleted with this probability."""
    minority_only: bool = True
    """Augment only the classes with fewer training rows than the mean per class; false: every class."""


@dataclass
class DataConfig:
    task: str = "classification"
    """What is predicted: `classification` (one label per text or pair, from a fixed set), `regression` (one number per text or pair, e.g. a similarity score) or `token_classification` (one tag per word, e.g. named entities), `multi_label` (any number of labels per text, from a fixed set: tags) or `question_answering` (the span of a context that answers a question)."""
    name: str | None = None
    """A Hub data set (`ag_news`, `imdb`, `banking77`, `trec`, `emotion` with known columns, or any Hub id); exactly one of `name` and `path`."""
    path: str | None = None
    """A CSV/TSV/JSON/JSONL/Parquet file, or a folder with train/validation/test files."""
    text_column: str | None = None
    """Column holding the text; null: the known Hub data set's, else `text`."""
    text_pair_column: str | None = None
    """Column holding each example's second text, for sentence pairs (entailment, paraphrase, similarity): the two are encoded together, with token type ids, cut longest first to max_length; null: single texts."""
    label_column: str | None = None
    """Column holding the label (classification: strings or integers; regression: numbers; multi_label: a list, or a string split on `label_separator`); null: the known Hub data set's, else `label`."""
    label_separator: str = "|"
    """multi_label: what separates a text's labels in a string column (CSV, TSV): `billing|account`; an empty cell means no label applies."""
    label_columns: list[str] | None = None
    """multi_label: one 0/1 column per label instead of a label column (the column names are the labels)."""
    tokens_column: str | None = None
    """token_classification: the column holding each sentence's words (a list); null: `tokens`. CoNLL column files (.conll, .txt) give `tokens` and `ner_tags`."""
    tags_column: str | None = None
    """token_classification: the column holding each word's tag (a list of strings such as B-PER, or of integers named by the Hub data set's ClassLabel or `tag_names`); null: `ner_tags`."""
    tag_names: list[str] | None = None
    """token_classification: the names of integer tags, in order; null: the Hub data set's, or the tags are strings."""
    doc_stride: int | None = None
    """question_answering: tokens that consecutive windows of a long context share, so an answer cut by one window is whole in the next; null: a third of model.max_length (Hugging Face's QA example reads 384 tokens with 128 shared)."""
    train_size: int | None = None
    """Cap on training rows, sampled per class (regression: at random); null keeps all."""
    validation_size: float = 0.1
    """Share of train held out for validation when the source has no validation split."""
    test_size: float = 0.2
    """Share of train held out for test when the source has no test split."""
    seed: int = 42
    """Seeds the splits, the folds and the `train_size` sample: the same seed gives the same splits."""
    folds: int | None = None
    """Cross-validation: the training data (train with the validation split, given or carved) cut into this many folds, stratified by label, a repeated text (a QA context) in one fold; every configuration trains once per fold with that fold held out for early stopping and selection, and is chosen on its mean over folds; test is in no fold. null: one validation split."""
    fold_repeats: int = 1
    """With `folds`: cut the folds this many times, each time anew (repeated K-fold: K x repeats runs per configuration and seed)."""
    drop_duplicates: bool = True
    """Keep one copy of a text repeated within a split (case and whitespace ignored); a text repeated with different labels is dropped and reported. false: keep every row (still counted in the data report)."""
    remove_leakage: bool = True
    """Remove from validation the texts also in train, and from test those also in train or validation. false: keep them (still counted in the data report)."""
    clean_given_test: bool = False
    """A test split the data gives (a test file, a Hub test split; not carved here) is scored whole, as published results on it are, and its rows that no earlier split holds are scored apart as `test_unseen`; true: drop its repeats and its texts also in train or validation, like a carved split's."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Word-level augmentation of training texts (random swap, deletion, and insertion of a word from the same class's texts), seeded by the run's seed."""


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    """Stop when the metric stops improving; the best epoch's weights are kept either way."""
    patience: int = 2
    """Epochs without improvement before stopping."""
    metric: str | None = None
    """Validation metric that chooses the best epoch and setting: `val_loss` or `val_<metric>` of the task; null: the task's own (`val_macro_f1` for classification)."""


@dataclass
class TrainingConfig:
    batch_size: int = 32
    """Examples per forward pass."""
    learning_rate: float = 5e-5
    """Peak rate (linear warm-up, then linear decay to 0); a strategy's own `learning_rate` replaces it."""
    num_epochs: int = 3
    """Upper bound; early stopping may end sooner."""
    weight_decay: float = 0.01
    """AdamW decay, never on biases and LayerNorm weights."""
    warmup_ratio: float = 0.1
    """Share of optimizer steps with a linearly rising rate."""
    gradient_accumulation_steps: int = 1
    """Effective batch = batch_size x this."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping threshold (after unscaling); null turns clipping off."""
    fp16: bool = True
    """Mixed precision on CUDA GPUs; ignored with a warning on CPUs, where half-precision matmul is far slower."""
    bf16: bool = False
    """bfloat16 mixed precision on GPUs that support it (Ampere and later; no loss scaling needed), instead of fp16: set fp16: false with it; ignored with a warning elsewhere."""
    eval_batch_size: int = 128
    """Rows per evaluation batch at most (no gradients, so larger batches fit)."""
    eval_batch_tokens: int | None = None
    """Padded tokens per evaluation batch at most; null: 512 on a CPU (fastest there), no limit on a GPU."""
    eval_every_steps: int | None = None
    """Also validate every N optimizer steps inside an epoch (early stopping then counts evaluations, and a search prunes sooner); null: after each epoch only."""
    checkpoint_every_steps: int | None = None
    """Also checkpoint every N optimizer steps inside an epoch (long epochs); null: after each epoch only."""
    compile: bool = False
    """torch.compile each encoder layer: a compilation per run first; measured to pay only on long GPU runs."""
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    """The loss training minimises, under every strategy; the validation loss stays plain cross-entropy, so runs with different losses compare."""
    class_weights: Literal["balanced"] | list[float] | dict[str, float] | None = None
    """Weight of each class in the training loss: `balanced` (n / (classes x count), from the run's own training rows), a list in label order, or {label: weight}; null: all 1."""
    focal_gamma: float = 2.0
    """Focal loss's exponent: how much well-classified examples are down-weighted (0 gives cross-entropy); the class weights act as its alpha."""
    calibration: Literal["none", "temperature"] = "none"
    """`temperature`: after training, fit one temperature on the validation logits (the one that minimises their negative log-likelihood) and fold it into the head's last linear layer, so that the run's probabilities, predict's and an export's, mean what they say; test is reported after it and, as `test_uncalibrated`, before. Classification (its decisions do not change) and multi_label (its thresholds are tuned on the calibrated probabilities)."""
    decision_threshold: Literal["tuned"] | float = "tuned"
    """multi_label: the probability from which a label is given. `tuned`: each label's own, chosen on validation to maximise that label's F1 after training (and calibration), then used by test, predict and export; or one number for every label."""
    label_smoothing: float = 0.0
    """Share of each target spread evenly over all classes (cross-entropy only)."""
    sampler: Literal["random", "oversample", "undersample"] = "random"
    """Training rows per epoch: each once; every class drawn up to the largest class's count; or a fresh subset of every class at the smallest's (validation and test never change)."""
    head_learning_rate: float | None = None
    """The task head's learning rate, under every strategy; null: the run's rate."""
    layer_lr_decay: float | None = None
    """Layer-wise rate decay: the top encoder layer trains at the run's rate, each layer below at this times the one above, the embeddings at this to the power of the layer count; null: every part at the run's rate."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    """When to stop, judged on validation."""
    seed: int = 42
    """Head initialisation, dropout and batch order."""
    seeds: list[int] | None = None
    """One run per seed, replacing `seed`."""


@dataclass
class AblationConfig:
    learning_rates: list[float] | None = None
    """Every strategy at each rate, unless it has its own `learning_rates`."""


@dataclass
class FewShotConfig:
    enabled: bool = False
    """Train every configuration on k examples per class (validation and test stay whole)."""
    shots_per_class: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    """The values of k."""
    repeats: int = 3
    """Draws of each k-shot sample, each with its own seed."""


@dataclass
class OutputConfig:
    dir: str = "outputs"
    """Where results/, checkpoints/, plots/ and report.html go."""
    keep_checkpoints: Literal["best_and_last", "all", "none"] = "best_and_last"
    """What stays once a run ends: the best weights and the last state, also every epoch's weights, or none (a run in progress always keeps last.pt for --resume)."""
    trackers: list[str] = field(default_factory=list)
    """Experiment trackers that log each run's settings and per-epoch metrics, through Accelerate: tensorboard (into <dir>/trackers/), mlflow, wandb, ...; each needs its package installed."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The pre-trained encoder."""
    data: DataConfig = field(default_factory=DataConfig)
    """What to train and test on, and how it is split."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """The loop's settings, shared by every strategy."""
    strategies: StrategiesConfig = field(default_factory=StrategiesConfig)
    """The ways of fine-tuning to compare; each has `enabled` and may set its own `learning_rate`."""
    ablation: AblationConfig = field(default_factory=AblationConfig)
    """Learning rates tried for every strategy."""
    sweep: dict[str, list] = field(default_factory=dict)
    """Dotted key -> list of values; the runs form a grid (a `strategies.<name>.` key varies only that strategy)."""
    variants: dict[str, dict] = field(default_factory=dict)
    """Named settings compared side by side, each a mapping of dotted keys to one value: `{plain: {}, weighted: {training.class_weights: balanced}, focal: {training.loss: focal}}`. Crossed with the sweep; the summary names each run's variant."""
    few_shot: FewShotConfig = field(default_factory=FewShotConfig)
    """Learning curves over examples per class."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """How each strategy's settings are chosen: the grid of the lists above, or a pruned Optuna search."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """Where results go and what stays on disk."""

    def as_saved(self) -> dict[str, Any]:
        """The config as files keep it: a database URL's password left out."""
        saved = dataclasses.asdict(self)
        if self.search.storage:
            saved["search"]["storage"] = shown_url(self.search.storage)
        return saved


STRATEGY_NAMES = tuple(f.name for f in dataclasses.fields(StrategiesConfig))


def short_key(dotted: str) -> str:
    """`strategies.lora.rank` -> `rank`: the strategy is already in the row. Other keys stay whole."""
    return dotted.split(".", 2)[2] if dotted.startswith("strategies.") else dotted


def strategy_settings(cfg: Config, strategy: str) -> StrategyConfig:
    """The strategy's own config section for one run, with the learning rate it will really use."""
    section = getattr(cfg.strategies, strategy)
    return dataclasses.replace(section, learning_rate=section.learning_rate or cfg.training.learning_rate)


# ----------------------------------------------------------------------------------------------
# Loading: every problem is collected, then raised once as a ConfigError.


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply `section.key=value` overrides, type-check and validate it."""
    raw = read_yaml(Path(path))
    for override in overrides:
        apply_override(raw, override)
    cfg, problems = _validated(raw)
    if not problems:
        problems = _grid_problems(cfg)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return cfg


def _validated(raw: dict) -> tuple[Config, list[str]]:
    """The typed config and its problems; a null early-stopping metric becomes the task's own."""
    problems: list[str] = []
    cfg = build(Config, raw, "", problems)
    if not problems:
        problems = _rule_problems(cfg)
    if not problems and cfg.training.early_stopping.metric is None:
        cfg.training.early_stopping.metric = TASKS[cfg.data.task].default_metric
    return cfg, problems


def _rule_problems(cfg: Config) -> list[str]:
    """Ranges and cross-field rules, checked once the types are right: each section's, then the task's, the
    strategies' and the experiment's."""
    problems = Problems(model_problems(cfg) + data_problems(cfg) + training_problems(cfg))
    require = problems.require

    d, t = cfg.data, cfg.training
    require(
        not (d.augment.enabled and d.text_pair_column),
        "data.augment.enabled",
        d.augment.enabled,
        "false with data.text_pair_column (augmentation perturbs single texts)",
    )
    if d.task in TASKS:
        problems += TASKS[d.task].problems(cfg)
        choices = TASKS[d.task].selection_metrics()
        require(
            t.early_stopping.metric in (None, *choices),
            "training.early_stopping.metric",
            t.early_stopping.metric,
            f"{', '.join(choices)} (validation metrics of {d.task}), or null",
        )
    for strategy in STRATEGY_NAMES:
        problems += getattr(cfg.strategies, strategy).problems(f"strategies.{strategy}", cfg)
    problems += list_problem(t.seeds, "training.seeds", lambda v: True, "integers")
    for name in cfg.output.trackers:
        problems += tracker_problems(name)
    problems += list_problem(
        cfg.ablation.learning_rates, "ablation.learning_rates", lambda v: v > 0, "numbers > 0"
    )
    few = cfg.few_shot
    problems += list_problem(
        few.shots_per_class, "few_shot.shots_per_class", lambda v: v >= 1, "integers >= 1"
    )
    require(few.repeats >= 1, "few_shot.repeats", few.repeats, "an integer >= 1")
    problems += cfg.search.problems()
    return problems


def model_problems(cfg: Config) -> list[str]:
    """The model section's ranges."""
    problems = Problems()
    require = problems.require

    m = cfg.model
    require(
        m.max_length == "auto" or m.max_length >= 8,
        "model.max_length",
        m.max_length,
        "an integer >= 8, or auto",
    )
    require(m.dropout is None or 0 <= m.dropout < 1, "model.dropout", m.dropout, "0 <= dropout < 1, or null")
    require(m.head.hidden_size >= 1, "model.head.hidden_size", m.head.hidden_size, "an integer >= 1")
    require(0 <= m.head.dropout < 1, "model.head.dropout", m.head.dropout, "0 <= dropout < 1")
    # rules across keys a grid varies are checked on each run's config (expand_grid), not on the file's
    if not varied_keys(cfg) & {"model.head.type", "model.head.pooling"}:
        require(
            m.head.type != "model" or m.head.pooling in ("auto", "cls"),
            "model.head.pooling",
            m.head.pooling,
            "auto or cls with model.head.type: model (the model's own head pools as it was "
            "built to); set type linear or mlp",
        )
    return problems


def data_problems(cfg: Config) -> list[str]:
    """The data section's ranges and rules."""
    problems = Problems()
    require = problems.require

    d = cfg.data
    require(d.task in TASKS, "data.task", d.task, ", ".join(TASKS))
    if (d.name is None) == (d.path is None):
        problems.append(
            "data: set exactly one of data.name (a Hub data set) and data.path (a local "
            f"file or folder); got name={d.name!r}, path={d.path!r}"
        )
    require(
        d.label_separator.strip() != "",
        "data.label_separator",
        d.label_separator,
        "a string with a character other than white space (what separates a text's labels)",
    )
    require(
        d.train_size is None or d.train_size >= 2, "data.train_size", d.train_size, "an integer >= 2, or null"
    )
    require(0 < d.validation_size < 1, "data.validation_size", d.validation_size, "0 < share < 1")
    require(
        d.folds is None or d.folds >= 2,
        "data.folds",
        d.folds,
        "an integer >= 2 (each fold held out once), or null for one validation split",
    )
    require(d.fold_repeats >= 1, "data.fold_repeats", d.fold_repeats, "an integer >= 1")
    require(
        d.fold_repeats == 1 or d.folds is not None,
        "data.fold_repeats",
        d.fold_repeats,
        "1 unless data.folds is set (it repeats the folds)",
    )
    require(d.augment.copies >= 1, "data.augment.copies", d.augment.copies, "an integer >= 1")
    require(
        0 < d.augment.probability <= 0.5,
        "data.augment.probability",
        d.augment.probability,
        "0 < share <= 0.5",
    )
    require(0 < d.test_size < 1, "data.test_size", d.test_size, "0 < share < 1")
    require(
        d.validation_size + d.test_size < 1,
        "data.validation_size + data.test_size",
        d.validation_size + d.test_size,
        "a sum below 1, so that training rows remain",
    )
    return problems


def training_problems(cfg: Config) -> list[str]:
    """The training section's ranges and rules."""
    t, optional = cfg.training, lambda value, holds: value is None or holds(value)
    # (key, whether its value is allowed, what is allowed)
    rules = [
        ("batch_size", t.batch_size >= 1, "an integer >= 1"),
        ("eval_batch_size", t.eval_batch_size >= 1, "an integer >= 1"),
        ("eval_batch_tokens", optional(t.eval_batch_tokens, lambda n: n >= 1), "an integer >= 1, or null"),
        ("eval_every_steps", optional(t.eval_every_steps, lambda n: n >= 1), "an integer >= 1, or null"),
        (
            "checkpoint_every_steps",
            optional(t.checkpoint_every_steps, lambda n: n >= 1),
            "an integer >= 1, or null",
        ),
        (
            "bf16",
            not (t.fp16 and t.bf16),
            "false while training.fp16 is true (on by default): set training.fp16: false to use bf16",
        ),
        ("learning_rate", t.learning_rate > 0, "a number > 0"),
        ("head_learning_rate", optional(t.head_learning_rate, lambda r: r > 0), "a number > 0, or null"),
        (
            "layer_lr_decay",
            optional(t.layer_lr_decay, lambda d: 0 < d <= 1),
            "0 < decay <= 1 (e.g. 0.8), or null",
        ),
        ("num_epochs", t.num_epochs >= 1, "an integer >= 1"),
        ("weight_decay", t.weight_decay >= 0, "a number >= 0"),
        ("warmup_ratio", 0 <= t.warmup_ratio < 1, "0 <= ratio < 1"),
        ("gradient_accumulation_steps", t.gradient_accumulation_steps >= 1, "an integer >= 1"),
        (
            "max_grad_norm",
            optional(t.max_grad_norm, lambda n: n > 0),
            "a number > 0, or null to turn clipping off",
        ),
        ("focal_gamma", t.focal_gamma >= 0, "a number >= 0"),
        (
            "decision_threshold",
            t.decision_threshold == "tuned" or 0 < t.decision_threshold < 1,
            "tuned, or a probability between 0 and 1",
        ),
        ("label_smoothing", 0 <= t.label_smoothing < 1, "0 <= share < 1"),
        (
            "label_smoothing",
            t.loss == "cross_entropy" or t.label_smoothing == 0,
            "0 with training.loss: focal (label smoothing applies to cross-entropy)",
        ),
        (
            "class_weights",
            class_weights_allowed(t.class_weights),
            "balanced, a non-empty list of numbers > 0 in label order, {label: number > 0}, or null",
        ),
        ("early_stopping.patience", t.early_stopping.patience >= 1, "an integer >= 1"),
    ]
    problems = Problems()
    for key, allowed, what in rules:
        value = functools.reduce(getattr, key.split("."), t)
        problems.require(allowed, f"training.{key}", value, what)
    return problems


def class_weights_allowed(weights) -> bool:
    values = weights.values() if isinstance(weights, dict) else weights if isinstance(weights, list) else []
    return all(w > 0 for w in values) and weights not in ([], {})


def tracker_problems(name: str) -> list[str]:
    """Why Accelerate cannot log to tracker `name` here (nothing when it can)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    if name not in LOGGER_TYPE_TO_CLASS:
        return [f"output.trackers: got {name!r}, allowed: {', '.join(LOGGER_TYPE_TO_CLASS)}"]
    if name not in {str(tracker) for tracker in get_available_trackers()}:
        return [f"output.trackers: {name!r} needs its package, which is not installed: pip install {name}"]
    return []


# ----------------------------------------------------------------------------------------------
# The experiment grid: every list in the config (rates, ranks, sweep values, seeds) multiplies the runs.

# Keys a sweep may not vary, and why.
NOT_SWEEPABLE = {
    "training.fp16": "mixed precision is one setting per process",
    "training.bf16": "mixed precision is one setting per process",
    "training.seed": "list seeds in training.seeds",
    "training.seeds": "list seeds in training.seeds",
    "output.dir": "one experiment writes into one folder",
    "data.task": "one experiment predicts one thing",
    "data.folds": "every configuration already trains once per fold",
    "data.fold_repeats": "every configuration already trains once per fold",
}


def grid_axes(cfg: Config, strategy: str) -> dict[str, list]:
    """The dotted keys this strategy's runs vary, and their values (seeds and few-shot draws aside)."""
    own = getattr(cfg.strategies, strategy)
    axes: dict[str, list] = {"variant": list(cfg.variants)} if cfg.variants else {}
    rates = own.learning_rates or cfg.ablation.learning_rates
    if rates:
        axes[f"strategies.{strategy}.learning_rate"] = rates
    if getattr(own, "rank_values", None):
        axes[f"strategies.{strategy}.rank"] = own.rank_values
    for key, values in cfg.sweep.items():
        if not key.startswith("strategies.") or key.startswith(f"strategies.{strategy}."):
            axes[key] = values
    return axes


def expand_grid(cfg: Config, strategy: str) -> list[tuple[dict[str, Any], Config]]:
    """One (varied values, single-run config) per point of the strategy's grid, seeds not yet applied.

    Each point is rebuilt and validated with the same schema and rules as a config file."""
    axes = grid_axes(cfg, strategy)
    points = []
    for values in itertools.product(*axes.values()):
        settings = {}
        for key, value in zip(axes, values):
            settings.update(cfg.variants[value] if key == "variant" else {key: value})
        point, problems = single_run_config(cfg, settings)
        if problems:
            setting = ", ".join(f"{k}={v}" for k, v in zip(axes, values))
            raise ConfigError(f"the run with {setting}: " + "; ".join(problems))
        points.append((dict(zip(axes, values)), point))
    return points


def single_run_config(cfg: Config, settings: dict[str, Any]) -> tuple[Config, list[str]]:
    """The config of one run: `cfg` without its lists (grid, search), with `settings` (dotted keys) set, rebuilt
    and validated with the same schema and rules as a config file; and its problems."""
    raw = dataclasses.asdict(cfg)
    raw.update(sweep={}, variants={}, ablation={}, few_shot={"enabled": False}, search={})
    for section in raw["strategies"].values():
        section.update(learning_rates=None, **({"rank_values": None} if "rank_values" in section else {}))
    raw = copy.deepcopy(raw)
    for dotted, value in settings.items():
        set_dotted(raw, dotted, value)
    return _validated(raw)


def _grid_problems(cfg: Config) -> list[str]:
    problems = []
    varied = [(f"sweep.{key}", key) for key in cfg.sweep]
    varied += [(f"variants.{name}.{key}", key) for name, settings in cfg.variants.items() for key in settings]
    for where, key in varied:
        if (
            key in NOT_SWEEPABLE
            or key.split(".")[0] in ("sweep", "variants", "ablation", "few_shot")
            or key.rsplit(".", 1)[-1] in GRID_KEYS
        ):
            why = NOT_SWEEPABLE.get(key, "it shapes the experiment itself")
            problems.append(
                f"{where}: cannot be {'swept' if where.startswith('sweep.') else 'set in a variant'} ({why})"
            )
        elif where.startswith("variants.") and key in cfg.sweep:
            problems.append(f"{where}: also swept in sweep.{key}; vary it in one place")
    for strategy in STRATEGY_NAMES:
        own = getattr(cfg.strategies, strategy)
        for key, list_key in (
            (f"strategies.{strategy}.learning_rate", "learning_rates"),
            (f"strategies.{strategy}.rank", "rank_values"),
        ):
            if key in cfg.sweep and getattr(own, list_key, None):
                problems.append(f"sweep.{key}: also given as strategies.{strategy}.{list_key}; keep one")
    problems += _search_problems(cfg)
    if problems:
        return problems
    for strategy in STRATEGY_NAMES:
        try:
            expand_grid(cfg, strategy)
        except ConfigError as err:
            where = " and ".join(
                name for name, used in (("sweep", cfg.sweep), ("variants", cfg.variants)) if used
            )
            problems.append(f"{where or 'grid'}: {err}")
    return list(dict.fromkeys(problems))  # the same mistake shows once, not once per strategy


# Why a key cannot be searched, beyond those a sweep may not vary.
NOT_SEARCHABLE = {
    "training.learning_rate": "each strategy searches its own rate: strategies.<name>.learning_rate (in every "
    "strategy's default space already)",
}


def _search_problems(cfg: Config) -> list[str]:
    """A search that the config's own lists would multiply, and searched keys or ranges that no run accepts."""
    search = cfg.search
    if search.method == "grid":
        return (
            ["search.space: set with search.method: grid, which ignores it; set search.method: optuna"]
            if search.space
            else []
        )
    problems = []
    lists = [
        ("sweep", bool(cfg.sweep)),
        ("variants", bool(cfg.variants)),
        ("ablation.learning_rates", bool(cfg.ablation.learning_rates)),
        ("few_shot.enabled", cfg.few_shot.enabled),
    ]
    lists += [
        (f"strategies.{name}.{key}", bool(getattr(getattr(cfg.strategies, name), key, None)))
        for name in STRATEGY_NAMES
        for key in ("learning_rates", "rank_values")
    ]
    problems += [
        f"{key}: set with search.method: optuna, which chooses each strategy's settings itself; put the "
        "keys it varies in search.space (ranges or lists of choices), or use search.method: grid"
        for key, used in lists
        if used
    ]
    for key, spec in search.space.items():
        why = NOT_SEARCHABLE.get(key) or NOT_SWEEPABLE.get(key)
        if why is None and (
            key.split(".")[0] in ("sweep", "variants", "ablation", "few_shot", "search")
            or key.rsplit(".", 1)[-1] in GRID_KEYS
        ):
            why = "it shapes the experiment itself"
        if why:
            problems.append(f"search.space.{key}: cannot be searched ({why})")
            continue
        for value in range_values(spec):
            _, found = single_run_config(cfg, {key: value})
            problems += [f"search.space.{key}: {found[0]}"] if found else []
            if found:
                break
    return problems


def file_settings(path: str | Path) -> dict[str, Any]:
    """The keys a config file sets, by dotted name, each with its value, where it differs from the default (the
    grid's lists and maps left out)."""
    defaults = dataclasses.asdict(Config())

    def leaves(raw: dict, default: dict, prefix: str) -> dict[str, Any]:
        found = {}
        for key, value in raw.items():
            dotted, standard = f"{prefix}{key}", default.get(key) if isinstance(default, dict) else None
            if isinstance(value, dict) and isinstance(standard, dict) and standard:
                found.update(leaves(value, standard, dotted + "."))
            elif value != standard:
                found[dotted] = value
        return found

    raw = read_yaml(Path(path))
    return {
        key: value
        for key, value in leaves(raw, defaults, "").items()
        if key.split(".")[0] not in ("sweep", "variants")
    }
