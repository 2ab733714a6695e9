"""Reading YAML into typed dataclasses: every key checked against the class's fields (unknown ones get a
suggestion), every value against its annotation, and every problem collected as one line naming the dotted
key, the value and what is allowed. Of bertlab's own schema (config.py) it knows only that the keys under
`strategies.` name strategies, so that a typo there lists the known ones."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from utils import ConfigError, shown


# What a config may hold once its aliases are expanded, and how deep it may nest: far above any real config,
# far below what takes noticeable time or memory (a few hundred bytes of nested aliases expand to billions).
MAX_NODES = 100_000
MAX_DEPTH = 40


class StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (the last would silently win, or a whole section
    vanish) and a document that nests too deep or expands past MAX_NODES through its aliases."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {shown(key)} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def expanded_size(node, depth: int = 0, sizes: dict | None = None) -> int:
    """How many nodes the composed document holds with every alias expanded, counted without expanding them
    (a node reached again through an alias is counted from memory)."""
    sizes = {} if sizes is None else sizes
    if depth > MAX_DEPTH:
        raise yaml.YAMLError(f"nests deeper than {MAX_DEPTH} levels")
    if id(node) in sizes:
        return sizes[id(node)]
    children = (
        [item for pair in node.value for item in pair]
        if isinstance(node, yaml.MappingNode)
        else node.value
        if isinstance(node, yaml.SequenceNode)
        else []
    )
    size = 1 + sum(expanded_size(child, depth + 1, sizes) for child in children)
    if size > MAX_NODES:
        raise yaml.YAMLError(f"expands to more than {MAX_NODES:,} values through its aliases")
    sizes[id(node)] = size
    return size


def load_yaml_text(text: str):
    """The YAML value of `text`, read by StrictLoader after checking its expanded size and depth."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node)
        return loader.construct_document(node)
    except RecursionError:
        raise yaml.YAMLError(f"nests deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        raw = load_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        kind = (
            "YAML syntax error"
            if isinstance(err, yaml.MarkedYAMLError)
            and not isinstance(err, yaml.constructor.ConstructorError)
            else "YAML error"
        )
        raise ConfigError(f"{path}: {kind}{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; start from the shipped config.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {shown(override)} is not of the form section.key=value")
    # YAML's block markers: on a command line they mean the characters
    if text.strip().startswith(("|", ">")):
        value = text
    else:
        try:
            value = load_yaml_text(text)
        except yaml.YAMLError as err:
            if "nests deeper" in str(err) or "expands to more" in str(err):
                raise ConfigError(f"{key}: the value {err}") from None
            value = text
    set_dotted(raw, key, value)


def set_dotted(raw: dict, key: str, value) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def build(cls, raw: dict, prefix: str, problems: list[str], defaults=None):
    """`defaults` overridden by `raw`: a section named in the YAML starts from its field's own default (bitfit's
    rate is 1e-3 also in a config that only says `bitfit: {enabled: true}`), not from its class's."""
    defaults = cls() if defaults is None else defaults
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
                values[name] = build(tp, value, dotted + ".", problems, getattr(defaults, name))
            else:
                problems.append(f"{dotted}: expected a section (a mapping), got {shown(value)}")
            continue
        ok, converted = _convert(value, tp)
        if ok:
            values[name] = converted
        else:
            problems.append(f"{dotted}: expected {type_name(tp)}, got {shown(value)}")
    return dataclasses.replace(defaults, **values)


def _unknown_key_message(prefix: str, key: str, allowed: list[str]) -> str:
    if prefix == "strategies.":
        key = key if len(key) <= 60 else f"{key[:60]}..."
        return f"unknown strategy '{key}'; known strategies: {', '.join(sorted(allowed))}"
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
    key = key if len(key) <= 60 else f"{key[:60]}... ({len(key):,} characters)"
    where = f"'{prefix}{key}'" if prefix else f"section '{key}'"
    return f"unknown key {where}; {hint}"


def _convert(value, tp) -> tuple[bool, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        for option in (a for a in args if a is not type(None)):  # the first type the value fits
            ok, converted = _convert(value, option)
            if ok:
                return True, converted
        return False, value
    if origin is Literal:
        return value in args, value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        items = [_convert(item, args[0]) for item in value] if args else [(True, item) for item in value]
        return all(ok for ok, _ in items), [item for _, item in items]
    if origin is dict and args[1] in (
        list,
        dict,
    ):  # sweep and variants: typed later, key by key, with the grid
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, args[1]) and (v or args[1] is dict) for k, v in value.items()
        )
        return ok, value
    if tp in (dict, list):  # search.space: a range or choices, typed later, key by key
        return isinstance(value, tp), value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return False, value
        items = {k: _convert(v, args[1]) for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:  # a finite number: .inf and .nan mean nothing as a rate, a weight or a size
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                return False, value
            return math.isfinite(number), number
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return math.isfinite(value), float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported config type {tp}")


def type_name(tp) -> str:
    """How a field's type reads in an error message and in docs/config.md."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {type_name(args[0])}"
    if origin is dict and args[1] is list:
        return "a mapping of dotted keys to non-empty lists, e.g. {training.batch_size: [16, 32]}"
    if origin is dict and args[1] is dict:
        return (
            "a mapping of names to settings, e.g. {plain: {}, weighted: {training.class_weights: balanced}}"
        )
    if origin is dict and args[1] == dict | list:
        return "a mapping of dotted keys to {low, high, log} or a list of choices, e.g. {strategies.lora.rank: [4, 8]}"
    if origin is dict:
        return f"a mapping from names to {type_name(args[1]).removeprefix('a ').removeprefix('an ')}s"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[tp]
