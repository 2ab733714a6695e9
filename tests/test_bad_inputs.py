"""Every user mistake through the command line: exit status 2 and one line saying what is wrong and what is
allowed, never a traceback. The cases run main.main in this process; a fresh `python main.py` process checks
the same for a mistake (so that anything printed at import counts too) and shows the traceback with --debug."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import ROOT, labelled_rows
from strategies import STRATEGIES


def fresh_process(*argv, env: dict | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *map(str, argv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return result.returncode, result.stderr


@pytest.fixture
def cli(main_here):
    """main.main in this process: its exit status and what it wrote to stderr (with its log lines)."""

    def run(*argv) -> tuple[int, str]:
        result = main_here(*argv)
        return result.returncode, result.stderr

    return run


def write_rows(path, rows) -> str:
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def write_file(path, content: str | bytes) -> str:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


# Each case: overrides (or a function of tmp_path giving them) and the pattern of the one-line message.
CONFIG_MISTAKES = {
    "unknown key, with a suggestion": (
        ["training.learning_rte=1e-4"],
        "unknown key 'training.learning_rte'; did you mean 'training.learning_rate'?",
    ),
    "unknown section": (["trainng.seed=1"], "unknown key section 'trainng'; did you mean 'training'?"),
    "wrong type": (["training.batch_size=abc"], "training.batch_size: expected an integer, got 'abc'"),
    "negative learning rate": (
        ["training.learning_rate=-1e-5"],
        "training.learning_rate: got -1e-05, allowed: a number > 0",
    ),
    "zero learning rate": (["training.learning_rate=0"], "training.learning_rate: got 0"),
    "batch size 0": (["training.batch_size=0"], "training.batch_size: got 0, allowed: an integer >= 1"),
    "split ratios that leave no training data": (
        ["data.validation_size=0.5", "data.test_size=0.5"],
        "data.validation_size + data.test_size: got 1.0, allowed: a sum below 1",
    ),
    "LoRA rank 0": (["strategies.lora.rank=0"], "strategies.lora.rank: got 0, allowed: an integer >= 1"),
    "patience below 1": (["training.early_stopping.patience=0"], "training.early_stopping.patience: got 0"),
    "unknown strategy in the config": (
        ["strategies.adapterz.enabled=true"],
        "unknown strategy 'adapterz'; known strategies: bitfit, bottleneck_adapter, frozen_encoder, full, gradual_unfreezing, ia3, loha, lokr, lora, partial_freezing, prompt_tuning, setfit",
    ),
    "no strategy enabled": ([f"strategies.{s}.enabled=false" for s in STRATEGIES], "no strategy enabled"),
    "both data.name and data.path": (["data.name=ag_news"], "set exactly one of data.name"),
    "neither data.name nor data.path": (["data.path=null"], "set exactly one of data.name"),
    "a typo in a sweep key": (
        ["sweep={training.batchsize: [8, 16]}"],
        "sweep: the run with training.batchsize=8: unknown key 'training.batchsize'; did you mean 'training.batch_size'?",
    ),
    "a bad value inside a sweep": (["sweep={training.batch_size: [8, 0]}"], "training.batch_size: got 0"),
    "a learning rate list with a bad rate": (
        ["ablation.learning_rates=[1e-4, -1]"],
        "ablation.learning_rates",
    ),
    "max_length beyond the model's positions": (["model.max_length=500"], "model.max_length"),
    "a model folder that does not exist": (
        lambda tmp: [f"model.name={tmp / 'no-such-model'}"],
        "no-such-model' does not exist or holds no model",
    ),
}

DATA_MISTAKES = {
    "missing data file": (lambda tmp: str(tmp / "nope.csv"), "does not exist"),
    "empty data file": (lambda tmp: write_file(tmp / "empty.csv", ""), "empty.csv' is empty (0 bytes)"),
    "header without rows": (lambda tmp: write_file(tmp / "header.csv", "text,label\n"), "header.csv"),
    "unknown file format": (
        lambda tmp: write_file(tmp / "rows.xlsx", "x"),
        "allowed formats: .csv, .tsv, .json, .jsonl, .parquet",
    ),
    "a folder named like a file": (
        lambda tmp: (tmp / "folder.csv").mkdir() or str(tmp / "folder.csv"),
        "folder.csv",
    ),
    "missing text column, listing the columns": (
        lambda tmp: write_rows(
            tmp / "q.csv", [{"question": r["text"], "label": r["label"]} for r in labelled_rows(20)]
        ),
        "data.text_column: column 'text' not in the train data; columns: question, label",
    ),
    "missing label column": (
        lambda tmp: write_rows(
            tmp / "t.csv", [{"text": r["text"], "team": r["label"]} for r in labelled_rows(20)]
        ),
        "data.label_column: column 'label' not in the train data; columns: text, team",
    ),
    "every text empty": (
        lambda tmp: write_rows(
            tmp / "blank.csv", [{"text": " ", "label": r["label"]} for r in labelled_rows(20)]
        ),
        "data: the train split has no rows with both text and a label",
    ),
    "a single class": (
        lambda tmp: write_rows(tmp / "one.csv", [{**r, "label": "refund"} for r in labelled_rows(20)]),
        "single class ('refund')",
    ),
    "non-UTF-8 bytes": (
        lambda tmp: write_file(tmp / "latin1.csv", "text,label\ncaf\xe9 late,x\n".encode("latin-1")),
        "is not UTF-8 text",
    ),
    "malformed JSON lines": (
        lambda tmp: write_file(tmp / "rows.jsonl", '{"text": "a", "label": "x"}\n{"text": \n'),
        "rows.jsonl",
    ),
}


def assert_one_line_error(status: int, stderr: str, expected: str) -> None:
    assert status == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], stderr


@pytest.mark.parametrize("case", list(CONFIG_MISTAKES))
def test_config_mistake(case, write_config, tmp_path, cli):
    overrides, expected = CONFIG_MISTAKES[case]
    overrides = overrides(tmp_path) if callable(overrides) else overrides
    assert_one_line_error(*cli("--config", write_config(), *overrides), expected)


@pytest.mark.parametrize("case", list(DATA_MISTAKES))
def test_data_mistake(case, write_config, tmp_path, cli):
    make_path, expected = DATA_MISTAKES[case]
    assert_one_line_error(*cli("--config", write_config(), f"data.path={make_path(tmp_path)}"), expected)


def test_hub_model_that_cannot_be_reached(write_config, cli, monkeypatch):
    # HF_HUB_OFFLINE: what a machine without network sees, minus the retries
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_one_line_error(
        *cli("--config", write_config(), "model.name=nobody-here/no-such-model"),
        "If it is a Hub id, the Hub may be unreachable: use a local folder or the bundled model",
    )


def test_label_in_test_that_training_never_saw(write_config, tmp_path, cli):
    rows = labelled_rows(per_class=20)
    folder = tmp_path / "splits"
    folder.mkdir()
    write_rows(folder / "train.csv", rows)
    write_rows(folder / "test.csv", [{"text": "my card is lost", "label": "card_lost"}] + rows[:5])
    assert_one_line_error(
        *cli("--config", write_config(), f"data.path={folder}"),
        "the test split has labels that training never saw: card_lost",
    )


@pytest.mark.parametrize(
    "content, expected",
    [
        ("", "is empty"),
        ("training:\n  batch_size: 8\n  seeds: [1, 2\n", "YAML syntax error at line"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_broken_config_file(content, expected, tmp_path, cli):
    path = tmp_path / "config.yaml"
    path.write_text(content)
    assert_one_line_error(*cli("--config", path), expected)


def test_missing_config_file(tmp_path, cli):
    assert_one_line_error(*cli("--config", tmp_path / "nope.yaml"), "not found")


def test_unknown_key_in_the_file_itself(write_config, tmp_path, cli):
    path = write_config()
    config = yaml.safe_load(path.read_text())
    config["training"]["epochs"] = 3
    path.write_text(yaml.safe_dump(config))
    assert_one_line_error(*cli("--config", path), "unknown key 'training.epochs'; did you mean")


def test_unknown_strategy_on_the_command_line(write_config, cli):
    status, stderr = cli("--config", write_config(), "--strategy", "adapterz")
    assert status == 2 and "Traceback" not in stderr
    assert "invalid choice: 'adapterz'" in stderr and "bitfit" in stderr


def test_a_mistake_in_a_fresh_process_is_one_line_and_debug_shows_the_traceback(write_config):
    mistake = ["--config", write_config(), "training.batch_size=0"]
    status, stderr = fresh_process(*mistake)
    assert_one_line_error(status, stderr, "training.batch_size: got 0, allowed: an integer >= 1")
    assert len(stderr.strip().splitlines()) == 1  # nothing else: no warning printed at import
    status, stderr = fresh_process(*mistake, "--debug")
    assert status != 0 and "Traceback" in stderr and "ConfigError: " in stderr
