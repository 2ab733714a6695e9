"""A task is a file: a task written and registered here, in this test alone (star ratings, read as numbers and
judged by their mean absolute error), trains, is compared, plotted, reported, predicted with and exported
without a change to any file outside this one."""

import json

import pandas as pd
import pytest

import main
import visualize
from conftest import labelled_rows
from tasks import TASKS
from tasks.regression import REGRESSION_METRICS, Regression


class StarRatings(Regression):
    """One to five stars a text, predicted as a number; judged by how far off it is (lower is better)."""

    name = "star_ratings"
    metrics = tuple(m for m in REGRESSION_METRICS if m.name in ("mae", "spearman"))
    default_metric = "val_mae"
    main_metric = "mae"
    compared_metrics = ("mae",)
    plots = ("predicted_vs_true",)

    def describe_labels(self, label_names):
        return "stars from 1 to 5"


@pytest.fixture
def star_ratings(monkeypatch, tmp_path):
    monkeypatch.setitem(TASKS, StarRatings.name, StarRatings())
    stars = {label: number for number, label in enumerate(sorted({r["label"] for r in labelled_rows(1)}), 1)}
    path = tmp_path / "ratings.csv"
    pd.DataFrame(
        [{"text": r["text"], "label": stars[r["label"]]} for r in labelled_rows(per_class=15)]
    ).to_csv(path, index=False)
    return path


def test_a_task_written_in_a_test_runs_end_to_end(star_ratings, write_config, tmp_path, capsys):
    out = tmp_path / "out"
    base = [
        "--config",
        str(write_config()),
        f"data.path={star_ratings}",
        "data.task=star_ratings",
        f"output.dir={out}",
    ]
    assert (
        main.main([*base, "--strategy", "bitfit", "--strategy", "lora", "training.learning_rate=1e-3"]) == 0
    )
    records = json.loads((out / "results" / "all_results.json").read_text())["runs"]
    assert {r["task"] for r in records} == {"star_ratings"} and all(
        r["status"] == "completed" for r in records
    )
    for record in records:
        assert set(record["test"]) == {"loss", "mae", "spearman"}
        assert record["best_metric"] == min(h["val_mae"] for h in record["history"])  # lower is better
    verdict = json.loads((out / "results" / "verdict.json").read_text())
    assert verdict["metric"] == "mae" and verdict["recommended"] in ("bitfit", "lora")
    capsys.readouterr()

    assert visualize.main(["--output-dir", str(out)]) == 0
    assert (out / "plots" / "predicted_vs_true.png").exists() and not list(
        (out / "plots").glob("calibration*")
    )
    assert "stars from 1 to 5" in (out / "report.html").read_text()
    assert main.main(["predict", *base, "--text", "refund my money please"]) == 0
    assert "'refund my money please': label " in capsys.readouterr().out
    assert main.main(["export", *base, "--out", str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "README.md").is_file()
