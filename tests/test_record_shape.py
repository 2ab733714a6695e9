"""A run's record has a declared shape (records/shape.py): every run writes it, and a departure is found."""

from __future__ import annotations

import ast
import json
import typing

import pytest

import main
from records.shape import RecordShapeError, RunRecord, shape_problems


def planned(**changes) -> dict:
    """A record as a run plans it, before training."""
    record = {
        "schema_version": 3,
        "run_id": "lora-1",
        "config_id": "lora-c",
        "strategy": "lora",
        "status": "running",
        "varied": {},
        "few_shot": None,
        "fold": {"folds": 5, "repeat": 0, "index": 2},
        "trial": None,
        "model": "minilm",
        "task": "classification",
        "dataset": {
            "name": "d",
            "fingerprint": "f",
            "sizes": {"train": 10},
            "num_labels": 2,
            "label_names": ["a", "b"],
            "label_distribution": {"train": {"a": 5, "b": 5}},
            "majority_baseline": {"label": "a", "macro_f1": 0.33},
            "augmented_train_rows": 0,
            "report": "data_report.json#f",
        },
        "seed": 0,
        "hyperparameters": {"learning_rate": 1e-3},
        "device": "cpu",
        "mixed_precision": "no",
        "num_processes": 1,
        "versions": {"torch": "2"},
        "started_at": "now",
    }
    return {**record, **changes}


def test_a_planned_record_has_the_declared_shape_and_departures_are_named():
    assert shape_problems(planned()) == []
    assert shape_problems(planned(surprise=1)) == ["record: surprise is not declared in RunRecord"]
    missing = planned()
    del missing["seed"]
    assert shape_problems(missing) == ["record: lacks seed"]
    assert shape_problems(planned(status="done")) == [
        "record.status: 'done' is none of ['running', 'completed', 'pruned', 'failed']"
    ]
    assert shape_problems(planned(seed=True)) == ["record.seed: bool where int is declared"]
    wrong_fold = planned(fold={"folds": 5, "repeat": 0, "index": "2"})
    assert shape_problems(wrong_fold) == ["record.fold.index: str where int is declared"]


def test_history_entries_hold_the_tasks_validation_scores_beside_the_declared_keys():
    entry = {"epoch": 1, "step": 7, "train_loss": 0.5, "val_loss": 0.4, "val_macro_f1": 0.9, "seconds": 1.0}
    assert shape_problems(planned(history=[entry])) == []
    assert shape_problems(planned(history=[{**entry, "note": "x"}])) == [
        "record.history[0]: note is not declared in Evaluation"
    ]
    assert shape_problems(planned(history=[{**entry, "step": 7.5}])) == [
        "record.history[0].step: float where int is declared"
    ]


def test_a_record_that_departs_from_its_shape_is_kept_and_stops_the_experiment(
    write_config, tmp_path, monkeypatch
):
    from experiment import one_run

    written = one_run.new_record
    monkeypatch.setattr(
        one_run, "new_record", lambda job, accelerator: {**written(job, accelerator), "extra": 1}
    )
    with pytest.raises(RecordShapeError, match="extra is not declared"):
        main.main(["--config", str(write_config()), "--strategy", "frozen_encoder"])
    records = json.loads((tmp_path / "outputs" / "results" / "all_results.json").read_text())["runs"]
    assert [r["extra"] for r in records] == [1]


def keys_read_off_records(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    """The keys the source reads off a variable named `record` (subscripts and .get), with where."""
    found: dict[str, set[str]] = {}
    for name, tree in modules.items():
        for node in ast.walk(tree):
            key = None
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id == "record"
            ):
                key = node.slice
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "record"
                and node.args
            ):
                key = node.args[0]
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                found.setdefault(key.value, set()).add(name)
    return found


def test_every_key_the_source_reads_off_a_record_is_declared():
    from test_layout import project_modules

    read = keys_read_off_records(project_modules())
    assert len(read) > 20  # the readers are found at all
    declared = typing.get_type_hints(RunRecord)
    assert {key: where for key, where in read.items() if key not in declared} == {}
    typo = {"reporting.extra": ast.parse("def f(record):\n    return record.get('tset')\n")}
    assert keys_read_off_records(typo) == {"tset": {"reporting.extra"}}
