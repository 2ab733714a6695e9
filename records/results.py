"""Result records on disk: outputs/results/all_results.json (one record per run, safe with several
writers) and experiment.json (which runs the latest experiment planned, and its config)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from filelock import FileLock

from utils import atomic_write_json


RUN_RECORD = "record.json"  # a copy of the run's record in its checkpoint folder, so the folder stands alone

# The version of the record's layout that this code writes; upgrade() brings older records to it.
SCHEMA_VERSION = 2


def upgrade(record: dict) -> dict:
    """A record as this code's layout holds it: records from before version 2 (no `schema_version`) lack keys
    added since, which take the value they stood for then. Every reader of records goes through here."""
    if record.get("schema_version", 1) >= SCHEMA_VERSION:
        return record
    upgraded = {"task": "classification",  # before tasks, every run classified
                "config_id": record["run_id"],  # before configurations, each run was its own
                "varied": {}, "few_shot": None, "num_processes": 1,  # before several processes, every run had one
                **record, "schema_version": SCHEMA_VERSION}
    if upgraded["status"] == "completed":
        upgraded = {"init_from": None, "export_refused": None,  # a completed run's, when they did not exist
                    "peak_memory_measure": "process_peak_rss",  # before per-run measures: the lifetime peak
                    **upgraded}
    return upgraded


def read_record(path: Path) -> dict:
    """One run's record.json, upgraded."""
    return upgrade(json.loads(path.read_text()))


def results_file(output_dir: str | Path) -> Path:
    return Path(output_dir) / "results" / "all_results.json"


def stored_records(path: Path) -> list[dict]:
    """The records of a results file as they are stored."""
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def read_results(path: Path) -> list[dict]:
    """Every record of a results file, upgraded."""
    return [upgrade(record) for record in stored_records(path)]


def save_record(path: Path, record: dict) -> None:
    """Replace this run's record and keep every other as it is stored, even with another process writing too."""
    with FileLock(path.with_name(path.name + ".lock")):
        runs = [r for r in stored_records(path) if r["run_id"] != record["run_id"]]
        atomic_write_json(path, {"runs": runs + [record]})


def write_experiment(results_path: Path, **experiment) -> None:
    """experiment.json beside the results: the config file, command, config, strategies and run ids."""
    atomic_write_json(results_path.with_name("experiment.json"),
                      {**experiment, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def select_runs(output_dir: Path, dataset: str | None) -> tuple[list[dict], dict | None]:
    """The latest experiment's runs and its experiment.json, or (with `dataset`) every run on that data set."""
    path = results_file(output_dir)
    records = read_results(path)
    experiment_path = path.with_name("experiment.json")
    experiment = json.loads(experiment_path.read_text()) if experiment_path.is_file() else None
    if dataset is None and experiment is not None:
        wanted = set(experiment["run_ids"])
        return [r for r in records if r["run_id"] in wanted], experiment
    completed = [r for r in records if r["status"] == "completed"]
    if dataset is None and completed:
        dataset = max(completed, key=lambda r: r["finished_at"])["dataset"]["name"]
    return [r for r in records if r["dataset"]["name"] == dataset], None
