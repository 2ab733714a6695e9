"""One key switches the task, with the shipped config: its settings at their defaults are not pinned, a
question's windows share a stride derived from max_length, strategies that do not apply are skipped with one
line (named with --strategy, still refused), and the run's log says which of the config's own settings still
apply to other data."""

from __future__ import annotations

import json
import logging

import pytest
from transformers import AutoTokenizer

import main
from conftest import ROOT
from tasks import TASKS
from test_question_answering import squad_articles


@pytest.fixture
def squad_path(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad_articles(20)))
    return path


def shipped(tiny_model_dir, tmp_path, *overrides) -> list[str]:
    """The shipped config.yaml on the tiny model, into tmp_path."""
    return [
        "--config",
        str(ROOT / "config.yaml"),
        f"model.name={tiny_model_dir}",
        f"output.dir={tmp_path / 'out'}",
        *overrides,
    ]


def test_the_shipped_config_switches_to_question_answering_with_one_key(
    tiny_model_dir, tmp_path, squad_path, caplog
):
    caplog.set_level(logging.INFO)
    argv = shipped(
        tiny_model_dir,
        tmp_path,
        "data.task=question_answering",
        f"data.path={squad_path}",
        "training.num_epochs=1",
    )
    assert main.main(argv) == 0
    runs = json.loads((tmp_path / "out" / "results" / "all_results.json").read_text())["runs"]
    assert sorted(r["strategy"] for r in runs) == [
        "bitfit",
        "frozen_encoder",
        "full",
        "lora",
        "partial_freezing",
    ]
    assert all(r["status"] == "completed" and r["task"] == "question_answering" for r in runs)
    skipped = [r.message for r in caplog.records if "does not apply" in r.message]
    assert skipped == [
        "strategy prompt_tuning is enabled but does not apply to data.task: question_answering (its "
        "virtual tokens shift every token's position, and question_answering reads its answer's start and end "
        "off token positions): skipped"
    ]
    [own] = [r.message for r in caplog.records if "was written for its own data" in r.message]
    assert "training.learning_rate=0.0001" in own and "strategies.lora.learning_rate=0.003" in own
    assert "training.num_epochs" not in own and "max_length" not in own  # overridden here; adapts to the data
    assert "prompt_tuning" not in own  # it does not run


def test_a_strategy_named_on_the_command_line_is_still_refused(tiny_model_dir, tmp_path, squad_path, capsys):
    argv = shipped(tiny_model_dir, tmp_path, "data.task=question_answering", f"data.path={squad_path}")
    assert main.main([*argv, "--strategy", "prompt_tuning"]) == 2
    assert "strategy prompt_tuning does not apply to data.task: question_answering" in capsys.readouterr().err


def test_the_config_files_own_settings_are_not_told_for_its_own_data(tiny_model_dir, tmp_path, caplog):
    assert main.main([*shipped(tiny_model_dir, tmp_path), "--dry-run"]) == 0
    assert not [r for r in caplog.records if "was written for its own data" in r.message]


def test_without_a_stride_windows_share_a_third_of_max_length(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    context = " ".join(["my", "parcel", "is", "where", "the", "box", "is"] * 6)
    windows = (
        TASKS["question_answering"].tokenize(tokenizer, ["where is the parcel"], [context], 18, None).windows
    )
    starts = [next(o[0] for o in w["offsets"] if o) for w in windows]
    ends = [max(o[1] for o in w["offsets"] if o) for w in windows]
    # 18 tokens less the question's 4 and 3 special tokens: 11 of context per window, 6 (= 18 // 3) shared
    shared = [len(context[start:end].split()) for start, end in zip(starts[1:], ends[:-1])]
    assert len(windows) > 2 and shared[:-1] == [6] * (len(shared) - 1)
