"""Result records on disk: outputs/results/all_results.json (one record per run, safe with several
writers) and experiment.json (which runs the latest experiment planned, and its config)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from filelock import FileLock

from utils import atomic_write_json


RUN_RECORD = "record.json"  # a copy of the run's record in its checkpoint folder, so the folder stands alone


def results_file(output_dir: str | Path) -> Path:
    return Path(output_dir) / "results" / "all_results.json"


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return json.loads(path.read_text())["runs"]


def save_record(path: Path, record: dict) -> None:
    """Replace this run's record and keep every other, even with another process writing too."""
    with FileLock(path.with_name(path.name + ".lock")):
        runs = [r for r in read_results(path) if r["run_id"] != record["run_id"]]
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
