"""Shared files that survive damage: a results, experiment, data-report or verdict file that cannot be read
stops main.py, visualize.py and predict with one line naming it and the repair command, and is never written
over; `main.py --repair` rebuilds the results from the run folders, setting the damaged file aside."""

from __future__ import annotations

import json
import shutil

import pytest

import main
import visualize
from records.results import read_results
from reporting.summary import summarize

# One epoch of two strategies: enough runs to summarise, quick on the tiny model.
RUNS = ["--strategy", "bitfit", "--strategy", "frozen_encoder", "training.num_epochs=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """An output folder of one finished experiment, copied afresh for each test."""
    import pandas as pd

    from conftest import labelled_rows, small_config

    folder = tmp_path_factory.mktemp("shared")
    pd.DataFrame(labelled_rows(per_class=30)).to_csv(folder / "tickets.csv", index=False)
    config = small_config(folder, tiny_model_dir, folder / "tickets.csv")
    assert main.main(["--config", str(config), *RUNS]) == 0
    return config


@pytest.fixture
def output(trained, tmp_path):
    """A copy of the trained output folder, and the arguments that point main.py at it."""
    shutil.copytree(trained.parent / "outputs", tmp_path / "outputs")
    return tmp_path / "outputs", ["--config", str(trained), f"output.dir={tmp_path / 'outputs'}"]


def summary_of(folder) -> dict:
    runs = read_results(folder / "results" / "all_results.json")
    return summarize(runs, "val_macro_f1")


def one_line_naming(err: str, path) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and str(path) in lines[0] and "python main.py --repair" in lines[0]


@pytest.mark.parametrize("name", ["all_results.json", "experiment.json", "data_report.json", "verdict.json"])
def test_a_damaged_shared_file_stops_a_run_in_one_line_and_is_kept(name, output, capsys):
    folder, args = output
    path = folder / "results" / name
    damaged = path.read_bytes()[:-40]  # truncated, as a full disk or a killed editor leaves it
    path.write_bytes(damaged)
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    assert main.main([*args, *RUNS]) == 2
    err = capsys.readouterr().err
    assert one_line_naming(err, path) and "cannot be read as JSON" in err
    assert {
        p.name: p.read_bytes() for p in path.parent.iterdir()
    } == before  # nothing written, the damage kept


def test_visualize_and_predict_say_the_same_of_a_damaged_results_file(output, capsys):
    folder, args = output
    path = folder / "results" / "all_results.json"
    path.write_text('{"runs": [')
    assert visualize.main(["--output-dir", str(folder)]) == 2
    assert one_line_naming(capsys.readouterr().err, path)
    assert main.main(["predict", *args, "--text", "my parcel is late"]) == 2
    assert one_line_naming(capsys.readouterr().err, path)
    path.write_text('{"records": []}')  # JSON, but not a results file
    assert main.main([*args, *RUNS]) == 2
    assert "holds no list of run records under 'runs'" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_repair_rebuilds_the_results_from_the_run_folders(damage, output, capsys):
    folder, args = output
    before = summary_of(folder)
    path = folder / "results" / "all_results.json"
    damaged = path.read_bytes()[:100]
    if damage == "truncate":
        path.write_bytes(damaged)
    else:
        path.unlink()
    assert main.main([*args, "--repair"]) == 0
    printed = capsys.readouterr().out
    assert "2 run(s): 0 kept from it, 2 recovered from the run folders" in printed
    assert summary_of(folder) == before
    aside = list(path.parent.glob("all_results.json.damaged-*"))
    if damage == "truncate":
        assert [p.read_bytes() for p in aside] == [
            damaged
        ] and "set aside as all_results.json.damaged-" in printed
    else:
        assert aside == []
    assert main.main([*args, *RUNS]) == 0  # every run is found completed again: nothing trains twice
    assert len(read_results(path)) == 2


def test_repair_keeps_a_readable_results_file_and_adds_what_it_lacks(output, capsys):
    folder, args = output
    path = folder / "results" / "all_results.json"
    runs = json.loads(path.read_text())["runs"]
    path.write_text(json.dumps({"runs": runs[:1]}))
    (folder / "results" / "verdict.json").write_text("{")
    assert main.main([*args, "--repair"]) == 0
    printed = capsys.readouterr().out
    assert "2 run(s): 1 kept from it, 1 recovered from the run folders" in printed
    assert "verdict.json could not be read: set aside as verdict.json.damaged-" in printed
    assert json.loads(path.read_text())["runs"] == runs
