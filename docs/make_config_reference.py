"""Write docs/config.md, the config reference, from the schema in config.py (and the sections in
schema/strategies.py and schema/search.py): every key with its type, default and the docstring under its field. CI fails when the file is out of date:

    python docs/make_config_reference.py
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import config  # noqa: E402
import schema.search  # noqa: E402
import schema.strategies  # noqa: E402
from schema.typed_yaml import type_name  # noqa: E402

TARGET = ROOT / "docs" / "config.md"


def field_docs() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the string literal right under the field in the schema's modules."""
    docs = {}
    nodes = [
        node
        for module in (config, schema.strategies, schema.search)
        for node in ast.walk(ast.parse(inspect.getsource(module)))
    ]
    for node in nodes:
        if isinstance(node, ast.ClassDef):
            for statement, following in zip(node.body, node.body[1:]):
                if (
                    isinstance(statement, ast.AnnAssign)
                    and isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                ):
                    docs[node.name, statement.target.id] = " ".join(following.value.value.split())
    return docs


def help_text(cls: type, name: str, docs: dict) -> str:
    """The field's docstring, from the class that declares it or the nearest parent that documents it."""
    return next((docs[c.__name__, name] for c in cls.__mro__ if (c.__name__, name) in docs), "")


def default_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return (
            "`"
            + (str(value).replace("'", "") if value else ("[]" if isinstance(value, list) else "{}"))
            + "`"
        )
    return f"`{value}`"


def sections(instance, prefix: str, docs: dict, heading: str) -> list[str]:
    """A table of this section's plain keys, then one section per nested dataclass."""
    cls = type(instance)
    hints = typing.get_type_hints(cls)
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            nested.append((f.name, value))
            continue
        rows.append(
            f"| `{prefix}{f.name}` | {type_name(hints[f.name])} | {default_text(value)} | "
            f"{help_text(cls, f.name, docs)} |"
        )
    lines = []
    if rows:
        lines += [heading, "", "| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for name, value in nested:
        about = help_text(cls, name, docs)
        lines += sections(
            value, f"{prefix}{name}.", docs, f"## `{prefix}{name}`" + (f": {about}" if about else "")
        )
    return lines


def reference() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from the schema in `config.py` by `python docs/make_config_reference.py`; do not edit by hand.",
        "Every key is optional: a missing key takes the default below. Unknown keys, wrong types and values",
        "out of range stop the run at load with one line naming the key, the value and what is allowed.",
        "Any key can be overridden on the command line: `python main.py training.num_epochs=1`.",
        "",
    ]
    lines += sections(config.Config(), "", field_docs(), "## Top level")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    TARGET.write_text(reference(), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
