"""`gather`: shards run into their own folders come together into one summary; runs of another experiment
are refused with their reason; a run present in two folders is kept once. And a database URL's password is
never shown."""

from __future__ import annotations

import json
import logging

import pytest

import main
from config import load_config
from records.results import read_results, results_file, stored_records
from utils import atomic_write_json

STRATEGIES = ["--strategy", "bitfit", "--strategy", "lora"]


@pytest.fixture
def shards(write_config, tmp_path):
    """A grid of two runs, each shard run into its own output folder: (config, folder of shard 0, of shard 1)."""
    config = write_config(training={"num_epochs": 1})
    folders = [tmp_path / f"machine{k}" for k in (0, 1)]
    for k, folder in enumerate(folders):
        assert (
            main.main(["--config", str(config), *STRATEGIES, "--shard", f"{k}/2", f"output.dir={folder}"])
            == 0
        )
        assert len(read_results(results_file(folder))) == 1  # its share only: the summary waits for the other
    return config, *folders


def test_shards_in_their_own_folders_are_gathered_into_one_summary(shards, caplog):
    config, mine, theirs = shards
    caplog.set_level(logging.INFO, logger="bertlab")
    assert main.main(["gather", str(theirs), "--config", str(config), *STRATEGIES, f"output.dir={mine}"]) == 0
    records = read_results(results_file(mine))
    assert sorted(r["strategy"] for r in records) == ["bitfit", "lora"]
    gathered = next(
        r for r in records if r["run_id"] in {t["run_id"] for t in read_results(results_file(theirs))}
    )
    assert (mine / "checkpoints" / gathered["strategy"] / gathered["run_id"] / "record.json").is_file()
    assert (mine / "results" / "verdict.json").is_file()
    assert f"gather {theirs}: 1 run(s) gathered, 0 already here" in caplog.text

    caplog.clear()  # again: nothing new, the one copy kept
    assert main.main(["gather", str(theirs), "--config", str(config), *STRATEGIES, f"output.dir={mine}"]) == 0
    assert f"gather {theirs}: 0 run(s) gathered, 1 already here" in caplog.text
    assert len(read_results(results_file(mine))) == 2


def test_runs_of_another_experiment_or_other_versions_are_refused_with_their_reason(
    shards, write_config, caplog, tmp_path
):
    config, mine, theirs = shards
    other = tmp_path / "other"  # the same strategies trained for two epochs: another plan
    assert (
        main.main(["--config", str(config), *STRATEGIES, "training.num_epochs=2", f"output.dir={other}"]) == 0
    )
    results = results_file(theirs)
    [record] = stored_records(results)
    atomic_write_json(results, {"runs": [{**record, "versions": {**record["versions"], "torch": "1.0.0"}}]})
    caplog.set_level(logging.INFO, logger="bertlab")
    assert (
        main.main(
            ["gather", str(theirs), str(other), "--config", str(config), *STRATEGIES, f"output.dir={mine}"]
        )
        == 1
    )  # the other shard's run is still missing
    assert (
        f"gather {theirs}: 0 run(s) gathered, 0 already here; 1 refused: run with other library versions "
        "(torch 1.0.0 here "
    ) in caplog.text
    assert (
        f"gather {other}: 0 run(s) gathered, 0 already here; 2 refused: not a run of this config's plan "
        "(its worker's config differs at training.num_epochs)"
    ) in caplog.text
    assert len(read_results(results_file(mine))) == 1


def test_gather_needs_a_workers_folder(shards, tmp_path, capsys):
    config, mine, _ = shards
    assert (
        main.main(["gather", str(tmp_path / "nowhere"), "--config", str(config), f"output.dir={mine}"]) == 2
    )
    assert "no results there" in capsys.readouterr().err
    assert main.main(["gather", str(mine), "--config", str(config), f"output.dir={mine}"]) == 2
    assert "that is this experiment's own output.dir" in capsys.readouterr().err


def test_a_database_url_is_checked_wherever_it_comes_from_and_its_password_never_shown(
    write_config, tmp_path, capsys, monkeypatch
):
    config = write_config(search={"method": "optuna", "storage": "mysql://me:hunter2@db/studies"})
    assert main.main(["--config", str(config), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert (
        "search.storage: got 'mysql://me:***@db/studies', allowed: a database URL such as postgresql://"
        in error
    )
    assert "hunter2" not in error
    monkeypatch.setenv("BERTLAB_SEARCH_STORAGE", "mysql://me:hunter2@db/studies")
    assert main.main(["--config", str(write_config(search={"method": "optuna"})), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert "the environment variable BERTLAB_SEARCH_STORAGE: got 'mysql://me:***@db/studies'" in error
    assert "hunter2" not in error
    assert main.main(["--config", str(write_config()), "--dry-run"]) == 0  # no search: the variable is unused
    saved = load_config(write_config(search={"storage": "postgresql://me:hunter2@db/studies"})).as_saved()
    assert saved["search"]["storage"] == "postgresql://me:***@db/studies"
    assert "hunter2" not in json.dumps(saved)
