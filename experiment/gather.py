"""Bringing the runs that workers wrote to other output folders (other machines' shards, a search's workers)
into this one, after checking that each belongs to this experiment: its plan, its data, its library versions."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from packaging.version import Version

from records.measure import library_versions
from records.results import read_results, results_file, run_folder, save_record, untested_trial
from records.shared import read_json
from utils import ConfigError
from records.shape import RunRecord

logger = logging.getLogger("bertlab")

# Settings that say where a worker wrote and met the others, not what it ran: they may differ between workers.
WHERE_KEYS = ("output.", "search.storage")


def gather(
    folders: list[Path], output_dir: Path, planned: set[str], studies: set[str], config: dict
) -> list[str]:
    """Copy into output_dir the records (and run folders) of `folders` that are runs of this plan (`planned`
    ids, or trials of its `studies`), run with the same library versions; a run already completed here keeps
    its copy. Returns a line for each folder: what was gathered, what was already here, what was refused, why."""
    results_path = results_file(output_dir)
    ours = {record["run_id"]: record for record in read_results(results_path)}
    versions = comparable(library_versions())
    lines = []
    for folder in folders:
        theirs = results_file(folder)
        if folder.resolve() == output_dir.resolve():
            raise ConfigError(f"gather {folder}: that is this experiment's own output.dir")
        if not theirs.is_file():
            raise ConfigError(
                f"gather {folder}: no results there ({theirs} is missing): name the output.dir of a "
                "worker of this experiment"
            )
        their_config = (read_json(theirs.with_name("experiment.json")) or {}).get("config")
        differing = differences(config, their_config) if their_config else []
        other_plan = "not a run of this config's plan" + (
            f" (its worker's config differs at {', '.join(differing[:4])})"
            if differing
            else " (its data or its settings differ)"
        )
        gathered, present, refused = 0, 0, {}
        for record in read_results(theirs):
            reason = refusal(record, planned, studies, versions, other_plan)
            if reason:
                refused[reason] = refused.get(reason, 0) + 1
            elif record["run_id"] in ours and kept_here(ours[record["run_id"]], record):
                present += 1
            else:
                copy_run(folder, output_dir, record)
                save_record(results_path, record)
                ours[record["run_id"]] = record
                gathered += 1
        lines.append(
            f"gather {folder}: {gathered} run(s) gathered, {present} already here"
            + "".join(f"; {count} refused: {reason}" for reason, count in refused.items())
        )
    return lines


def refusal(
    record: RunRecord, planned: set[str], studies: set[str], versions: dict[str, str], other_plan: str
) -> str | None:
    """Why a record is no run of this experiment (None when it is one): `other_plan` when it is not one of its
    runs, or the library versions that differ."""
    trial = record.get("trial") or {}
    if record["run_id"] not in planned and trial.get("study") not in studies:
        return other_plan
    theirs = comparable(record["versions"])
    differing = [
        f"{name} {theirs.get(name)} here {version}"
        for name, version in versions.items()
        if theirs.get(name) != version
    ]
    return f"run with other library versions ({', '.join(differing)})" if differing else None


def kept_here(ours: dict, theirs: dict) -> bool:
    """Whether this folder's copy of a run stays: it has ended (completed, tested where the other is)."""
    if ours["status"] != "completed":
        return theirs["status"] != "completed"
    return untested_trial(theirs) or not untested_trial(ours)


def copy_run(folder: Path, output_dir: Path, record: RunRecord) -> None:
    """The run's folder (its weights, when kept, and its own record), so that predict and export can use it."""
    source = run_folder(folder, record["strategy"], record["run_id"])
    target = run_folder(output_dir, record["strategy"], record["run_id"])
    if source.is_dir():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)


def comparable(versions: dict[str, str]) -> dict[str, str]:
    """Library versions as they bear on results: Python's minor version, each library's public version (a build
    for CUDA or for the CPU gives the same numbers where the device is the same)."""
    shown = {}
    for name, version in versions.items():
        try:
            parsed = Version(version)
        except ValueError:
            shown[name] = version
            continue
        shown[name] = f"{parsed.major}.{parsed.minor}" if name == "python" else parsed.public
    return shown


def differences(ours: dict, theirs: dict, prefix: str = "") -> list[str]:
    """The dotted keys where two saved configs differ, settings of where a worker wrote aside."""
    keys = []
    for key in sorted(set(ours) | set(theirs)):
        dotted = f"{prefix}{key}"
        if dotted.startswith(WHERE_KEYS):
            continue
        mine, other = ours.get(key), theirs.get(key)
        if (
            isinstance(mine, dict)
            and isinstance(other, dict)
            and not dotted.startswith(("sweep", "variants"))
        ):
            keys += differences(mine, other, f"{dotted}.")
        elif mine != other:
            keys.append(dotted)
    return keys
