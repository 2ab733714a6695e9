"""Every strategy that serves a task completes a short run of it on the tiny model, and the rest are refused
before anything runs: the README's table of strategies by task, checked."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import main
from config import load_config
from strategies import STRATEGIES
from tasks import TASKS
from test_multi_label import tagged_rows, write_tagged
from test_question_answering import squad_articles
from test_regression_and_pairs import write_pairs
from test_token_classification import tagged_sentences


def task_data(task: str, folder) -> list[str]:
    """A small data file for the task and the overrides that read it."""
    if task == "regression":
        return [
            "data.task=regression",
            f"data.path={write_pairs(folder / 'pairs.csv')}",
            "data.text_column=question",
            "data.text_pair_column=other",
            "data.label_column=score",
        ]
    if task == "multi_label":
        return ["data.task=multi_label", *write_tagged(folder, tagged_rows(60), "separator")]
    if task == "token_classification":
        pd.DataFrame(tagged_sentences(40)).to_json(folder / "tags.jsonl", orient="records", lines=True)
        return ["data.task=token_classification", f"data.path={folder / 'tags.jsonl'}"]
    (folder / "squad.json").write_text(json.dumps(squad_articles(20)))
    return ["data.task=question_answering", f"data.path={folder / 'squad.json'}", "data.doc_stride=4"]


@pytest.mark.parametrize("task", ["multi_label", "regression", "token_classification", "question_answering"])
def test_every_strategy_that_serves_the_task_completes_it(task, write_config, tmp_path):
    overrides = task_data(task, tmp_path) + [
        f"output.dir={tmp_path / 'out'}",
        "training.num_epochs=1",
        "model.max_length=16",
    ]
    cfg = load_config(write_config(), overrides)
    served = [s for s in STRATEGIES if STRATEGIES[s].refuses(TASKS[task], cfg) is None]
    assert (
        main.main(
            ["--config", str(write_config()), *[a for s in served for a in ("--strategy", s)], *overrides]
        )
        == 0
    )
    records = json.loads((tmp_path / "out" / "results" / "all_results.json").read_text())["runs"]
    assert sorted(r["strategy"] for r in records) == sorted(served)
    assert all(r["status"] == "completed" and r["task"] == task for r in records)
    # what the collapse diagnostic reads: checked for tasks of classes, on validation at the best epoch
    checked = [r["validation_outputs"] for r in records]
    assert all((c is not None) == (task == "multi_label") for c in checked)
    if task == "multi_label":
        assert all(
            0 <= c["prediction_share"] <= 1
            and c["spread"] >= 0
            and c["examples"] == r["dataset"]["sizes"]["validation"]
            for c, r in zip(checked, records)
        )
    assert len(served) >= len(STRATEGIES) - 2  # SetFit and prompt tuning at most are refused
