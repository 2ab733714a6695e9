"""The command line, end to end, into tmp_path: in a process of its own where the process is what is
tested (every strategy then the plots, a kill and a resume), else main.main in this one."""

import json
import re
import subprocess
import sys

from records.checkpoints import load_weights
from conftest import ROOT
from strategies import STRATEGIES
from tasks import TASKS

RECORD_KEYS = {
    "run_id",
    "strategy",
    "status",
    "hyperparameters",
    "model",
    "dataset",
    "seed",
    "trainable_params",
    "total_params",
    "trainable_pct",
    "history",
    "best_epoch",
    "stop_reason",
    "test",
    "train_time_s",
    "train_samples_per_s",
    "validation_time_s",
    "checkpoint_time_s",
    "run_time_s",
    "peak_memory_mb",
    "versions",
}
HISTORY_KEYS = {"epoch", "step", "train_loss", "val_loss", "lr", "seconds"} | {
    f"val_{m.name}" for m in TASKS["classification"].metrics
}


def main_py(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=cwd, capture_output=True, text=True
    )


def results(tmp_path) -> list[dict]:
    return json.loads((tmp_path / "outputs" / "results" / "all_results.json").read_text())["runs"]


def test_all_strategies_end_to_end_then_plots(write_config, tmp_path):
    # the strategies that are off unless a config turns them on, turned on
    config = write_config(
        strategies={
            "prompt_tuning": {"num_virtual_tokens": 4},
            "partial_freezing": {"enabled": True},
            "frozen_encoder": {"enabled": True},
            "ia3": {"enabled": True},
            "gradual_unfreezing": {"enabled": True},
            "bottleneck_adapter": {"enabled": True},
            "loha": {"enabled": True},
            "lokr": {"enabled": True},
            "setfit": {"enabled": True, "num_iterations": 2},
        }
    )
    result = main_py("--config", config)
    assert result.returncode == 0, result.stderr
    runs = results(tmp_path)
    assert [r["strategy"] for r in runs] == list(STRATEGIES)
    for run in runs:
        assert RECORD_KEYS <= set(run) and run["status"] == "completed"
        assert [set(h) for h in run["history"]] == [HISTORY_KEYS] * len(run["history"])
        assert set(run["test"]) >= {
            "accuracy",
            "macro_f1",
            "weighted_f1",
            "ece",
            "worst_class",
            "per_class",
            "confusion_matrix",
            "calibration",
        }
        assert set(run["test"]["per_class"]) == {"delivery", "login", "refund"}
        assert run["dataset"]["sizes"] == {"train": 54, "validation": 18, "test": 18}
        assert len(run["test_predictions"]) == 18
        assert run["hyperparameters"]["seed"] == run["seed"] == 42
        run_dir = tmp_path / "outputs" / "checkpoints" / run["strategy"] / run["run_id"]
        # a fitted head (setfit) has nothing to resume
        resumable = {"last.pt"} if run["optimizer_steps"] else set()
        assert {p.name for p in run_dir.iterdir()} == {
            "config.yaml",
            "record.json",
            "best.safetensors",
        } | resumable
        parts = run["train_time_s"] + run["validation_time_s"] + run["checkpoint_time_s"]
        assert run["checkpoint_time_s"] >= 0 and run["validation_time_s"] > 0 and parts < run["run_time_s"]
    # a head-only checkpoint may take under 5 ms: rounded to 0
    assert max(r["checkpoint_time_s"] for r in runs) > 0
    assert {r["run_id"] for r in runs} == {
        r["run_id"] for r in runs if r["run_id"].startswith(r["strategy"] + "-")
    }
    assert "majority-class baseline on test" in result.stdout

    plotted = subprocess.run(
        [sys.executable, str(ROOT / "visualize.py"), "--output-dir", tmp_path / "outputs"],
        capture_output=True,
        text=True,
    )
    assert plotted.returncode == 0, plotted.stderr
    for name in ("convergence_train_loss.png", "convergence_val_loss.png", "performance_comparison.png"):
        png = (tmp_path / "outputs" / "plots" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_one_strategy_with_an_override_keeps_the_other_records(write_config, tmp_path, main_here):
    config = write_config()
    assert main_here("--config", config, "--strategy", "bitfit", "training.num_epochs=1").returncode == 0
    # overrides may stand before and after the options
    assert (
        main_here(
            "training.num_epochs=1", "--config", config, "--strategy", "lora", "training.seed=42"
        ).returncode
        == 0
    )
    runs = results(tmp_path)
    assert [r["strategy"] for r in runs] == ["bitfit", "lora"]
    assert [len(r["history"]) for r in runs] == [1, 1]


def test_a_failing_strategy_is_recorded_and_the_others_complete(write_config, tmp_path, main_here):
    # an absurd rate makes the loss NaN within the first epoch
    config = write_config(strategies={"full": {"learning_rate": 1e30}, "prompt_tuning": {"enabled": False}})
    result = main_here("--config", config, "training.num_epochs=1")
    assert result.returncode == 1
    by_strategy = {r["strategy"]: r for r in results(tmp_path)}
    assert set(by_strategy) == {"full", "lora", "bitfit"}
    assert by_strategy["full"]["status"] == "failed"
    assert by_strategy["full"]["error"].startswith(
        "TrainingFailed: training loss became nan or infinite at optimizer step"
    )
    assert by_strategy["lora"]["status"] == by_strategy["bitfit"]["status"] == "completed"
    assert "1 run(s) failed" in result.stderr


def test_lora_target_module_missing_from_the_model_is_a_config_error(write_config, main_here):
    result = main_here(
        "--config", write_config(), "--strategy", "lora", "strategies.lora.target_modules=[qkv]"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "strategies.lora.target_modules: qkv not in " in result.stderr
        and "its linear layers are: " in result.stderr
    )


def test_completed_runs_are_reused_also_with_resume(write_config, tmp_path, main_here):
    config = write_config()
    assert main_here("--config", config, "--strategy", "bitfit", "training.num_epochs=1").returncode == 0
    first = results(tmp_path)[0]
    again = main_here("--config", config, "--strategy", "bitfit", "training.num_epochs=1", "--resume")
    assert again.returncode == 0 and "1 already completed (reused" in again.stderr
    assert results(tmp_path) == [first]


def test_a_data_mistake_is_one_line_with_exit_status_2(write_config, tmp_path, main_here):
    result = main_here("--config", write_config(), "data.label_column=team")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: data.label_column: column 'team' not in the train data; columns: text, label"]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(write_config, tmp_path):
    import os
    import signal
    import time

    import torch

    # 54 rows in batches of 2: 27 steps per epoch, a checkpoint every 4 steps. The killed process gets a
    # sitecustomize that sleeps 30 ms per batch, only so that the kill reliably lands mid-training.
    settings = [
        "--strategy",
        "full",
        "training.batch_size=2",
        "training.num_epochs=3",
        "training.checkpoint_every_steps=4",
        "training.early_stopping.enabled=false",
    ]
    config = write_config()
    straight = main_py("--config", config, *settings, f"output.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr

    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import sys, time\nsys.path.insert(0, %r)\nimport trainer\nreal = trainer.collate\n"
        "trainer.collate = lambda *a, **k: (time.sleep(0.03), real(*a, **k))[1]\n" % str(ROOT)
    )
    killed_dir = tmp_path / "killed"
    command = [
        sys.executable,
        str(ROOT / "main.py"),
        "--config",
        str(config),
        *settings,
        f"output.dir={killed_dir}",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(slow)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = None
    deadline = time.time() + 120
    while process.poll() is None and time.time() < deadline:
        found = list((killed_dir / "checkpoints").glob("full/*/last.pt"))
        if found:
            state = torch.load(found[0], weights_only=True)["state"]
            if state["epoch"] >= 1 and state["batches_done"] > 0:  # inside the second epoch
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                saved = state
                break
        time.sleep(0.05)
    assert saved is not None, "the run ended before it could be killed mid-epoch"
    assert not (killed_dir / "results" / "all_results.json").exists()  # nothing recorded for the killed run

    resumed = main_py("--config", config, *settings, f"output.dir={killed_dir}", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    # it really continued from a mid-epoch checkpoint (the one read above, or one written just before the kill)
    epochs, batches = map(
        int, re.search(r"resumed from .*: (\d+) epochs and (\d+) batches done", resumed.stderr).groups()
    )
    assert (epochs, batches) >= (saved["epoch"], saved["batches_done"]) and batches > 0
    [expected] = json.loads((tmp_path / "straight" / "results" / "all_results.json").read_text())["runs"]
    [actual] = json.loads((killed_dir / "results" / "all_results.json").read_text())["runs"]
    assert actual["run_id"] == expected["run_id"]
    for key in ("test", "test_predictions", "best_epoch", "stop_reason", "optimizer_steps"):
        assert actual[key] == expected[key], key
    without_seconds = [
        [{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]] for r in (actual, expected)
    ]
    assert without_seconds[0] == without_seconds[1]
    weights = [
        load_weights(folder / "checkpoints" / "full" / expected["run_id"] / "best.safetensors")[0]
        for folder in (tmp_path / "straight", killed_dir)
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
