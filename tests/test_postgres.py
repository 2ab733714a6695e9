"""A search's studies in a real PostgreSQL server (started here on a loopback port, in a temporary folder) and
`gather`: two workers with their own output folders and one database search once, a killed worker's trial
runs again, and the gathered summary is the one a single worker writes."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

import experiment.search_workers
import main
from local_postgres import local_postgres
from records.results import read_results, results_file

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "not-to-be-written"  # the server trusts loopback connections: any password reaches it


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A function that creates a fresh database in a PostgreSQL server started for this module, and returns its
    URL, with a password that must never be written."""
    try:
        with local_postgres(tmp_path_factory.mktemp("postgres") / "data") as fresh_database:
            yield lambda: fresh_database(PASSWORD)
    except (ImportError, OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"no PostgreSQL server could be started here: {error}")


def search_config(write_config, folder: Path, **search):
    """The search of the tests: BitFit and LoRA, 6 trials each, in `folder`'s own output folder."""
    path = write_config(
        search={"method": "optuna", "trials": 6, "sampler_seed": 3, **search},
        training={"num_epochs": 2},
        output={"dir": str(folder)},
        strategies={"full": {"enabled": False}, "prompt_tuning": {"enabled": False}},
    )
    return path


def worker(config: Path, database: str, shard: str, folder: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--config",
            str(config),
            "--shard",
            shard,
            f"output.dir={folder}",
            *options,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", experiment.search_workers.STORAGE_VARIABLE: database},
    )


def chosen(folder: Path) -> list[tuple]:
    """Each confirmed configuration (its id names its settings) with its validation and test scores."""
    with (folder / "results" / "summary.csv").open() as table:
        return sorted(
            (row["config_id"], row["validation_mean"], row["test_macro_f1_mean"])
            for row in csv.DictReader(table)
        )


def test_postgres_two_workers_with_their_own_folders_search_once_and_gather_to_one_workers_summary(
    postgres, write_config, tmp_path, monkeypatch
):
    database = postgres()
    config = search_config(write_config, tmp_path / "one")
    started = time.monotonic()
    workers = [worker(config, database, f"{k}/2", tmp_path / f"worker{k}") for k in (0, 1)]
    logs = [process.communicate(timeout=600)[1] for process in workers]
    two_workers = time.monotonic() - started
    tails = "\n=====\n".join(log[-4000:] for log in logs)  # what a failure shows
    assert [process.returncode for process in workers] == [0, 0], tails
    started_trials = [
        match.groups() for log in logs for match in re.finditer(r"search (\w+): trial (\d+)/6", log)
    ]
    assert len(started_trials) == 12 and len(set(started_trials)) == 12, tails
    assert "the database postgresql://postgres:***@127.0.0.1" in logs[0]
    storage = experiment.search_workers.study_database(database)
    studies = optuna.get_all_study_summaries(storage)
    assert sorted(study.n_trials for study in studies) == [6, 6]
    for study in studies:
        trials = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
        assert len({t.user_attrs["run_id"] for t in trials}) == 6
    assert {
        t.user_attrs["worker"]["pid"]
        for s in studies
        for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
    } == {process.pid for process in workers}  # both worked

    gathered = tmp_path / "worker0"
    monkeypatch.setenv(experiment.search_workers.STORAGE_VARIABLE, database)
    assert (
        main.main(["gather", str(tmp_path / "worker1"), "--config", str(config), f"output.dir={gathered}"])
        == 0
    )
    records = read_results(results_file(gathered))
    assert len([r for r in records if r["trial"] and "test" not in r]) >= 10  # every trial but the confirmed

    single = tmp_path / "single"
    started = time.monotonic()
    alone = worker(config, postgres(), "0/1", single)
    log = alone.communicate(timeout=600)[1]
    one_worker = time.monotonic() - started
    assert alone.returncode == 0, log
    assert chosen(gathered) == chosen(single)
    ours, theirs = (json.loads((f / "results" / "verdict.json").read_text()) for f in (gathered, single))
    assert ours["recommended"] == theirs["recommended"]
    print(f"two workers {two_workers:.0f} s, one worker {one_worker:.0f} s")
    for written in [*gathered.rglob("*.json"), *gathered.rglob("*.yaml")]:
        assert PASSWORD not in written.read_text(errors="replace"), written


def test_postgres_a_killed_workers_trials_run_again_each_counted_once(
    postgres, write_config, tmp_path, monkeypatch
):
    """A worker on another machine (so no process here to look for) is killed mid-trial: once its heartbeats
    in the database are LEASE_GRACE old, the next worker fails its trials and runs each again, counted once."""
    database = postgres()
    config = search_config(write_config, tmp_path / "outputs", trials=3)
    killed = worker(config, database, "0/1", tmp_path / "killed", "--strategy", "bitfit")
    deadline = time.monotonic() + 300
    for line in killed.stderr:  # killed once it is training its first trial
        if ": trial 1/3" in line or time.monotonic() > deadline:
            break
    time.sleep(1)
    killed.kill()
    killed.communicate(timeout=60)
    storage = experiment.search_workers.study_database(database)
    [study] = [s for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith("bitfit")]
    left = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    assert [t.state for t in left] == [optuna.trial.TrialState.RUNNING] * 3  # its round claimed all three
    for trial in left:  # as if it had run elsewhere: only its heartbeats tell
        storage.set_trial_user_attr(trial._trial_id, "worker", {"host": "elsewhere", "pid": 1})
    monkeypatch.setattr(experiment.search_workers, "LEASE_GRACE", 3)
    monkeypatch.setattr(experiment.search_workers, "LEASE_SECONDS", 1)
    monkeypatch.setenv(experiment.search_workers.STORAGE_VARIABLE, database)
    time.sleep(3.5)
    place = experiment.search_workers.StudyPlace(tmp_path, database)
    found = optuna.load_study(study_name=study.study_name, storage=place.storage)
    experiment.search_workers.release_abandoned(
        SimpleNamespace(place=place, optuna_study=found, name="bitfit")
    )
    assert [t.state.name for t in found.get_trials()] == ["FAIL"] * 3 + ["WAITING"] * 3

    assert main.main(["--config", str(config), "--strategy", "bitfit"]) == 0
    trials = optuna.load_study(study_name=study.study_name, storage=place.storage).get_trials()
    rerun = experiment.search_workers.left_by_stopped_workers(trials)
    assert rerun == {0, 1, 2}
    counted = [t for t in trials if t.number not in rerun]
    assert len(counted) == 3 and all(t.state.is_finished() for t in counted)
    assert sorted(t.user_attrs["rerun_of"] for t in counted) == [0, 1, 2]
    trial_records = [r for r in read_results(results_file(tmp_path / "outputs")) if r["trial"]]
    assert {r["trial"]["number"] for r in trial_records} == {t.number for t in counted}
