"""Result records on disk: outputs/results/all_results.json (one record per run, safe with several
writers) and experiment.json (which runs the latest experiment planned, and its config)."""

from __future__ import annotations

import time
from pathlib import Path

from filelock import FileLock

from records.shared import JOURNAL, SEARCH_FOLDER, DamagedFile, mend_journal, read_json, write_json
from utils import atomic_write_json
from records.shape import RunRecord


RUN_RECORD = "record.json"  # a copy of the run's record in its checkpoint folder, so the folder stands alone

# The version of the record's layout that this code writes; upgrade() brings older records to it.
SCHEMA_VERSION = 3


def upgrade(record: dict) -> RunRecord:
    """A record as this code's layout holds it: older records lack keys added since, which take the value they
    stood for then (version 1 had no `schema_version`). Every reader of records goes through here."""
    version = record.get("schema_version", 1)
    if version >= SCHEMA_VERSION:
        return record
    upgraded = {**record, "schema_version": SCHEMA_VERSION}
    if version < 2:
        upgraded = {
            "task": "classification",  # before tasks, every run classified
            "config_id": record["run_id"],  # before configurations, each run was its own
            "varied": {},
            "few_shot": None,
            "num_processes": 1,  # before several processes, every run had one
            **upgraded,
        }
        if upgraded["status"] == "completed":
            upgraded = {
                "init_from": None,
                "export_refused": None,  # a completed run's, when they did not exist
                "peak_memory_measure": "process_peak_rss",  # before per-run measures: the lifetime peak
                **upgraded,
            }
    return {"fold": None, **upgraded}  # before cross-validation, every run had one validation split


RETRAIN = "train that run again (python main.py --force with its config)"


def stored_record(path: Path) -> dict:
    """One run's record.json as it is stored."""
    record = read_json(path, remedy=RETRAIN)
    if record is None:
        raise DamagedFile(path, "is missing", RETRAIN)
    return record


def read_record(path: Path) -> RunRecord:
    """One run's record.json, upgraded."""
    return upgrade(stored_record(path))


def results_file(output_dir: str | Path) -> Path:
    return Path(output_dir) / "results" / "all_results.json"


def run_folder(output_dir: str | Path, strategy: str, run_id: str) -> Path:
    """A run's own folder: its checkpoints, its config and its record."""
    return Path(output_dir) / "checkpoints" / strategy / run_id


def stored_records(path: Path) -> list[dict]:
    """The records of a results file as they are stored."""
    contents = read_json(path)
    return [] if contents is None else contents["runs"]


def read_results(path: Path) -> list[RunRecord]:
    """Every record of a results file, upgraded."""
    return [upgrade(record) for record in stored_records(path)]


def untested_trial(record: RunRecord) -> bool:
    """A search trial's record: validated only, so never summarised or compared (its confirmation is)."""
    return record.get("trial") is not None and "test" not in record


def save_record(path: Path, record: RunRecord) -> None:
    """Replace this run's record and keep every other as it is stored, even with another process writing too."""
    with FileLock(path.with_name(path.name + ".lock")):
        runs = [
            r for r in stored_records(path) if r["run_id"] != record["run_id"]
        ]  # a damaged file stops here
        atomic_write_json(path, {"runs": runs + [record]})


def write_experiment(results_path: Path, **experiment) -> None:
    """experiment.json beside the results: the config file, command, config, strategies and run ids."""
    write_json(
        results_path.with_name("experiment.json"),
        {**experiment, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    )


def select_runs(output_dir: Path, dataset: str | None) -> tuple[list[RunRecord], dict | None]:
    """The latest experiment's runs and its experiment.json, or (with `dataset`) every run on that data set."""
    path = results_file(output_dir)
    records = read_results(path)
    experiment_path = path.with_name("experiment.json")
    experiment = read_json(experiment_path)
    if dataset is None and experiment is not None:
        wanted = set(experiment["run_ids"])
        return [r for r in records if r["run_id"] in wanted], experiment
    records = [r for r in records if not untested_trial(r)]
    completed = [r for r in records if r["status"] == "completed"]
    if dataset is None and completed:
        dataset = max(completed, key=lambda r: r["finished_at"])["dataset"]["name"]
    return [r for r in records if r["dataset"]["name"] == dataset], None


def search_records(output_dir: Path, experiment: dict | None) -> tuple[list[RunRecord], list[RunRecord]]:
    """The trials of the experiment's search (none without one) and, beside them, the grid's completed runs of
    the searched strategies on the same data."""
    studies = set((experiment or {}).get("studies") or [])
    if not studies:
        return [], []
    records = read_results(results_file(output_dir))
    trials = [r for r in records if (r.get("trial") or {}).get("study") in studies]
    fingerprints = {r["dataset"]["fingerprint"] for r in trials}
    strategies = {r["strategy"] for r in trials}
    grid = [
        r
        for r in records
        if not r.get("trial")
        and r["status"] == "completed"
        and r["strategy"] in strategies
        and r["dataset"]["fingerprint"] in fingerprints
    ]
    return trials, grid


# The files beside the results that --repair checks: what it cannot rebuild, it sets aside for the next run
# to write anew.
SHARED_FILES = ("experiment.json", "data_report.json", "verdict.json")


def repair(output_dir: str | Path) -> list[str]:
    """Rebuild the results file from the run folders' records (each run keeps its own record.json), keeping a
    readable results file's records and adding those it lacks; a damaged shared file is first set aside
    beside itself as <name>.damaged-<time>. Returns what was done, a line each."""
    path = results_file(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock")):  # the lock saving a record takes: no record is lost
        done = repair_locked(Path(output_dir), path, time.strftime("%Y%m%d-%H%M%S"))
    mended = mend_journal(Path(output_dir) / SEARCH_FOLDER / JOURNAL, time.strftime("%Y%m%d-%H%M%S"))
    return done + ([mended] if mended else [])


def repair_locked(output_dir: Path, path: Path, stamp: str) -> list[str]:
    done, kept = [], []
    for shared in (path, *(path.with_name(name) for name in SHARED_FILES)):
        try:
            if shared == path:
                kept = stored_records(path)
            else:
                read_json(shared)
        except DamagedFile:
            aside = shared.with_name(f"{shared.name}.damaged-{stamp}")
            shared.rename(aside)
            done.append(f"{shared} could not be read: set aside as {aside.name}")
    known = {record["run_id"] for record in kept}
    recovered, unreadable = [], []
    for folder_record in sorted(Path(output_dir).glob(f"checkpoints/*/*/{RUN_RECORD}")):
        try:
            record = stored_record(folder_record)
        except DamagedFile:
            unreadable.append(str(folder_record))
            continue
        if record["run_id"] not in known:
            known.add(record["run_id"])
            recovered.append(record)
    recovered.sort(key=lambda record: record.get("finished_at") or record.get("started_at") or "")
    atomic_write_json(path, {"runs": kept + recovered})  # read above: readable, or set aside
    done.append(
        f"{path}: {len(kept) + len(recovered)} run(s): {len(kept)} kept from it, {len(recovered)} recovered "
        "from the run folders"
    )
    if unreadable:
        done.append(
            f"{len(unreadable)} run folder record(s) could not be read and were left out: "
            + ", ".join(unreadable[:5])
        )
    return done
