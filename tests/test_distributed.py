"""One run on two CPU processes (torchrun, gloo) against the same run on one: the same weights, metrics and
files, and every process stopping together on early stopping, a NaN in one of them, and resuming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

import main
from conftest import labelled_rows
from trainer import process_share

WORKER = Path(__file__).with_name("distributed_worker.py")
STRATEGIES = ["full", "lora", "gradual_unfreezing", "frozen_encoder"]


def launch(config: Path, *args: str) -> subprocess.CompletedProcess:
    """Two processes of tests/distributed_worker.py (python main.py) under torchrun; a hang fails the test."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(WORKER),
            "--config",
            str(config),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def records(output: Path) -> list[dict]:
    return json.loads((output / "results" / "all_results.json").read_text())["runs"]


def best_weights(output: Path, record: dict) -> dict[str, torch.Tensor]:
    return load_file(output / "checkpoints" / record["strategy"] / record["run_id"] / "best.safetensors")


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_model_dir) -> Path:
    """No dropout (the processes draw their masks for other examples than one process would), and sizes that
    leave a training batch of one example, so one process has no row of it (19 training examples in batches of 6),
    and evaluation batches that two processes share unevenly (7 examples in threes)."""
    folder = tmp_path_factory.mktemp("distributed")
    pd.DataFrame(labelled_rows(per_class=11)).to_csv(folder / "tickets.csv", index=False)
    path = folder / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name": str(tiny_model_dir), "max_length": 16, "dropout": 0.0},
                "data": {"path": str(folder / "tickets.csv"), "validation_size": 0.2, "test_size": 0.2},
                "training": {
                    "batch_size": 6,
                    "gradient_accumulation_steps": 2,
                    "num_epochs": 3,
                    "eval_batch_size": 3,
                    "learning_rate": 5e-3,
                    "early_stopping": {"enabled": False},
                },
                "strategies": {"lora": {"dropout": 0.0}},
                "output": {"dir": str(folder / "unused")},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def one_and_two(config) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The four strategies run on one process (in this one) and on two."""
    one, two = config.parent / "one", config.parent / "two"
    strategies = [arg for name in STRATEGIES for arg in ("--strategy", name)]
    assert main.main(["--config", str(config), *strategies, f"output.dir={one}"]) == 0
    launched = launch(config, *strategies, f"output.dir={two}")
    assert launched.returncode == 0, launched.stderr[-3000:]
    return one, two, launched


def test_a_process_without_rows_of_a_batch_computes_one_at_no_weight():
    assert process_share([4, 5, 6], 0, 2) == ([4, 5], 1.0)
    assert process_share([4, 5, 6], 1, 2) == ([6], 1.0)
    assert process_share([7], 0, 2) == ([7], 1.0)
    assert process_share([7], 1, 2) == ([7], 0.0)


def test_two_processes_train_the_weights_and_report_the_metrics_of_one(one_and_two):
    one, two, _ = one_and_two
    by_id = {r["run_id"]: r for r in records(two)}
    assert len(by_id) == len(records(two)) == len(STRATEGIES)  # one record per run, not one per process
    assert {
        split: records(two)[0]["dataset"]["sizes"][split] for split in ("train", "validation", "test")
    } == {"train": 19, "validation": 7, "test": 7}  # the sizes the config's docstring counts on
    for single in records(one):
        double = by_id[single["run_id"]]
        assert (single["num_processes"], double["num_processes"]) == (1, 2)
        assert single["status"] == double["status"] == "completed"
        weights, other = best_weights(one, single), best_weights(two, double)
        assert weights.keys() == other.keys()
        for name in weights:
            assert torch.allclose(weights[name], other[name], atol=1e-5), (single["strategy"], name)
        assert weights != {} and any(not torch.equal(w, 0 * w) for w in weights.values())
        for epoch, epoch_two in zip(single["history"], double["history"], strict=True):
            for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1"):
                assert epoch[key] == pytest.approx(epoch_two[key], abs=1e-5), (single["strategy"], key)
        assert double["test_predictions"] == single["test_predictions"]
        assert double["test"]["macro_f1"] == pytest.approx(single["test"]["macro_f1"], abs=1e-9)
        assert double["test"]["loss"] == pytest.approx(single["test"]["loss"], abs=1e-5)


def test_only_the_main_process_writes_and_speaks(one_and_two):
    one, two, launched = one_and_two
    for single in records(one):
        folder = two / "checkpoints" / single["strategy"] / single["run_id"]
        assert sorted(p.name for p in folder.iterdir()) == [
            "best.safetensors",
            "config.yaml",
            "last.pt",
            "record.json",
        ]
    assert not list(two.rglob("*.tmp"))
    assert launched.stdout.count("## Verdict") == 1
    assert launched.stderr.count("| train_loss") == 3 * len(STRATEGIES)  # each epoch logged once


def test_only_the_main_process_writes_files(tmp_path, monkeypatch):
    import utils

    monkeypatch.setattr(utils, "is_main_process", lambda: False)
    utils.atomic_write_json(tmp_path / "record.json", {"run_id": "x"})
    assert list(tmp_path.iterdir()) == []


def test_early_stopping_stops_both_processes(config):
    output = config.parent / "early"
    # at this rate nothing moves, so the validation metric does not improve after the first epoch
    launched = launch(
        config,
        "--strategy",
        "full",
        f"output.dir={output}",
        "training.learning_rate=1e-12",
        "training.early_stopping.enabled=true",
        "training.early_stopping.patience=1",
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    [record] = records(output)
    assert record["stop_reason"].startswith("early stopping") and len(record["history"]) == 2


def test_a_nan_in_one_process_fails_the_run_in_both(config):
    output = config.parent / "nan"
    launched = launch(config, "--nan-on-rank", "1", "--strategy", "full", f"output.dir={output}")
    assert launched.returncode != 0  # both ended; a hang would have timed out
    [record] = records(output)
    assert record["status"] == "failed"
    # the third batch is the first of the second optimizer step
    assert record["error"].startswith(
        "TrainingFailed: training loss became nan or infinite at optimizer step 2 (epoch 1, batch 3)"
    )


def test_a_run_killed_after_a_checkpoint_resumes_under_two_processes(config, one_and_two):
    one, _, _ = one_and_two
    output = config.parent / "killed"
    args = ["--strategy", "full", f"output.dir={output}", "training.checkpoint_every_steps=1"]
    killed = launch(config, "--die-after-first-checkpoint", *args)
    assert killed.returncode != 0
    [folder] = (output / "checkpoints" / "full").iterdir()
    assert (folder / "last.pt").exists() and not (output / "results" / "all_results.json").exists()
    resumed = launch(config, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    [record] = records(output)
    [reference] = [r for r in records(one) if r["strategy"] == "full"]
    assert record["run_id"] == reference["run_id"]
    weights, expected = best_weights(output, record), best_weights(one, reference)
    for name in expected:
        assert torch.allclose(weights[name], expected[name], atol=1e-5), name
    for key in ("train_loss", "val_loss"):  # the interrupted epoch's loss too, summed over both processes
        assert [e[key] for e in record["history"]] == pytest.approx(
            [e[key] for e in reference["history"]], abs=1e-5
        )
