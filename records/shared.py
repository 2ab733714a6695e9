"""The JSON files an output folder shares between runs and commands (the results, experiment.json, the data
report, the verdict): read and written whole; one that cannot be read is reported in one line and kept as it
is, never written over, until `python main.py --repair` sets it aside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from utils import ConfigError, atomic_write_json


class DamagedFile(ConfigError):
    """A shared file that cannot be read: a user's problem to see (exit status 2), not a traceback."""

    def __init__(self, path: Path, what: str, remedy: str | None = None):
        output = path.parent.parent if path.parent.name == "results" else path.parent
        remedy = remedy or (f"python main.py --repair output.dir={output} rebuilds the results from the run folders "
                            "and sets damaged files aside")
        super().__init__(f"{path}: {what}; it is kept as it is. {remedy}")


def read_json(path: Path, remedy: str | None = None) -> Any | None:
    """A shared file's contents; None when it does not exist."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DamagedFile(path, f"not UTF-8 text (byte {err.start})", remedy) from None
    except json.JSONDecodeError as err:
        raise DamagedFile(path, f"cannot be read as JSON ({err.msg} at line {err.lineno}, column {err.colno})",
                          remedy) from None


def write_json(path: Path, contents: Any) -> None:
    """Write a shared file whole, unless the one there cannot be read: that one is kept for --repair."""
    read_json(path)
    atomic_write_json(path, contents)
