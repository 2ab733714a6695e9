"""The JSON files an output folder shares between runs and commands (the results, experiment.json, the data
report, the verdict): read and written whole; one that cannot be read is reported in one line and kept as it
is, never written over, until `python main.py --repair` sets it aside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from utils import ConfigError, atomic_write_bytes, atomic_write_json


class DamagedFile(ConfigError):
    """A shared file that cannot be read: a user's problem to see (exit status 2), not a traceback."""

    def __init__(self, path: Path, what: str, remedy: str | None = None):
        output = path.parent.parent if path.parent.name == "results" else path.parent
        remedy = remedy or (
            f"python main.py --repair output.dir={output} rebuilds the results from the run folders "
            "and sets damaged files aside"
        )
        super().__init__(f"{path}: {what}; it is kept as it is. {remedy}")


STATUSES = ("running", "completed", "failed", "pruned")
SEARCH_FOLDER = (
    "search"  # under output.dir: the journal of a search's studies, their locks and the trials' leases
)
JOURNAL = "journal.log"  # the studies' Optuna journal in it


def record_problem(record: Any) -> str | None:
    """What makes a run record unusable by every reader: it must be a mapping with a run id and a status."""
    if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
        return "holds no run record (a mapping with a run_id)"
    if record.get("status") not in STATUSES:
        return f"holds run {record['run_id'][:60]!r} without a status ({', '.join(STATUSES)})"
    return None


def results_problem(contents: Any) -> str | None:
    runs = contents.get("runs") if isinstance(contents, dict) else None
    if not isinstance(runs, list):
        return "holds no list of run records under 'runs'"
    return next((problem for problem in map(record_problem, runs) if problem), None)


def mapping_of_mappings(contents: Any) -> str | None:
    if not isinstance(contents, dict) or not all(isinstance(v, dict) for v in contents.values()):
        return "holds no mapping of data fingerprints to reports"
    return None


def experiment_problem(contents: Any) -> str | None:
    run_ids = contents.get("run_ids") if isinstance(contents, dict) else None
    if not isinstance(run_ids, list) or not all(isinstance(r, str) for r in run_ids):
        return "holds no experiment (a mapping with a list of run_ids)"
    return None


# The shape each shared file must have, by name, checked by read_json for every reader.
SHAPES = {
    "all_results.json": results_problem,
    "record.json": record_problem,
    "experiment.json": experiment_problem,
    "data_report.json": mapping_of_mappings,
    "verdict.json": lambda contents: None if isinstance(contents, dict) else "holds no verdict (a mapping)",
}


def read_json(path: Path, remedy: str | None = None) -> Any | None:
    """A shared file's contents, checked for its shape (SHAPES); None when it does not exist."""
    if not path.is_file():
        return None
    try:
        contents = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DamagedFile(path, f"not UTF-8 text (byte {err.start})", remedy) from None
    except json.JSONDecodeError as err:
        raise DamagedFile(
            path, f"cannot be read as JSON ({err.msg} at line {err.lineno}, column {err.colno})", remedy
        ) from None
    except OSError as err:
        raise DamagedFile(path, f"cannot be read ({err.strerror or type(err).__name__})", remedy) from None
    problem = SHAPES.get(path.name, lambda _: None)(contents)
    if problem:
        raise DamagedFile(path, problem, remedy)
    return contents


def write_json(path: Path, contents: Any) -> None:
    """Write a shared file whole, unless the one there cannot be read: that one is kept for --repair."""
    read_json(path)
    atomic_write_json(path, contents)


def journal_lines(path: Path) -> tuple[list[bytes], int | None, bool]:
    """An Optuna journal's complete operations (one JSON object a line), the number of the first line that is
    not one (None when all are), and whether the file ends inside an operation (a writer killed mid-line)."""
    lines = path.read_bytes().split(b"\n")
    partial = lines.pop() != b""  # the text after the last newline: empty in a journal written whole
    for number, line in enumerate(lines, 1):
        try:
            if not isinstance(json.loads(line), dict):
                return lines[: number - 1], number, partial
        except ValueError:
            return lines[: number - 1], number, partial
    return lines, None, partial


def journal_problem(path: Path) -> str | None:
    """Why a search journal cannot be appended to safely (the next operation would join a broken one)."""
    if not path.is_file():
        return None
    complete, bad, partial = journal_lines(path)
    if bad is not None:
        return f"line {bad} is not a complete operation ({len(complete)} complete ones before it)"
    if partial:
        return f"it ends inside an operation, after {len(complete)} complete ones (a writer was stopped mid-line)"
    return None


def mend_journal(path: Path, stamp: str) -> str | None:
    """Keep a damaged journal's complete operations before its first broken line, setting the original aside as
    <name>.damaged-<stamp>; what was done, or None for a journal that needs nothing."""
    problem = journal_problem(path)
    if problem is None:
        return None
    complete, bad, _ = journal_lines(path)
    total = path.read_bytes().count(b"\n") + 1
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    path.rename(aside)
    atomic_write_bytes(path, b"".join(line + b"\n" for line in complete))
    lost = total - len(complete)
    return (
        f"{path}: {problem}; kept its {len(complete)} complete operation(s), dropped {lost} line(s) from line "
        f"{bad or len(complete) + 1} on (the original is set aside as {aside.name})"
    )
