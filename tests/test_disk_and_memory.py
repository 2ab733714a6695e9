"""What stays on disk after a run (output.keep_checkpoints, PEFT runs saving only what they train), and the
retry with a halved batch when the GPU runs out of memory."""

import json
import logging
import shutil
import threading

import pytest
import torch

import experiment.one_run as one_run
import main
import trainer
from records.checkpoints import load_weights


def run_main(config, *overrides) -> tuple[int, list[dict]]:
    status = main.main(["--config", str(config), *overrides])
    folder = config.parent / "outputs"
    return status, json.loads((folder / "results" / "all_results.json").read_text())["runs"]


def checkpoint_files(config, record) -> set[str]:
    run_dir = config.parent / "outputs" / "checkpoints" / record["strategy"] / record["run_id"]
    return {p.name for p in run_dir.iterdir() if p.suffix in (".pt", ".safetensors")}


@pytest.mark.parametrize(
    "keep, expected",
    [
        ("best_and_last", {"best.safetensors", "last.pt"}),
        ("all", {"best.safetensors", "last.pt", "epoch_1.safetensors", "epoch_2.safetensors"}),
        ("none", set()),
    ],
)
def test_keep_checkpoints(write_config, keep, expected):
    config = write_config(output={"keep_checkpoints": keep})
    status, [record] = run_main(config, "--strategy", "bitfit")
    assert status == 0 and record["status"] == "completed"
    assert checkpoint_files(config, record) == expected


def test_peft_checkpoints_hold_only_the_adapter_and_the_head(write_config):
    config = write_config()
    status, records = run_main(config, "--strategy", "lora", "--strategy", "full", "training.num_epochs=1")
    assert status == 0
    by_strategy = {r["strategy"]: r for r in records}
    folder = config.parent / "outputs" / "checkpoints"
    saved = {
        s: load_weights(folder / s / r["run_id"] / "best.safetensors")[0] for s, r in by_strategy.items()
    }
    assert saved["lora"] and all("lora_" in name or "classifier" in name for name in saved["lora"])
    assert sum(t.numel() for t in saved["lora"].values()) == by_strategy["lora"]["trainable_params"]
    assert sum(t.numel() for t in saved["full"].values()) == by_strategy["full"]["total_params"]


def train_fitting_batches_up_to(largest: int, batch_sizes: list[int]):
    """one_run.train as on a GPU where batches above `largest` run out of memory; each batch size tried is noted."""
    real_train = one_run.train

    def train(model, encoded, job, accelerator):
        batch_sizes.append(job.cfg.training.batch_size)
        if job.cfg.training.batch_size > largest:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(model, encoded, job, accelerator)

    return train


def test_out_of_memory_retries_with_half_the_batch_and_twice_the_accumulation(
    write_config, monkeypatch, caplog
):
    batch_sizes = []
    monkeypatch.setattr(one_run, "train", train_fitting_batches_up_to(4, batch_sizes))
    status, [record] = run_main(write_config(), "--strategy", "bitfit", "training.batch_size=16")
    assert status == 0 and record["status"] == "completed"
    assert batch_sizes == [16, 8, 4]
    assert record["oom_retries"] == [
        {"batch_size": 8, "gradient_accumulation_steps": 2},
        {"batch_size": 4, "gradient_accumulation_steps": 4},
    ]
    assert (
        record["hyperparameters"]["batch_size"],
        record["hyperparameters"]["gradient_accumulation_steps"],
    ) == (4, 4)
    assert (
        "out of GPU memory; retrying from the start with batch size 4 and 4 accumulation steps" in caplog.text
    )


def test_out_of_memory_at_batch_size_one_fails_the_run(write_config, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(one_run, "train", out_of_memory)
    status, [record] = run_main(write_config(), "--strategy", "bitfit", "training.batch_size=1")
    assert status == 1 and record["status"] == "failed" and record["error"].startswith("OutOfMemoryError")


def test_a_run_interrupted_after_an_out_of_memory_retry_resumes_as_that_retry(
    write_config, monkeypatch, caplog
):
    real_evaluate, batch_sizes = trainer.validation_scores, []
    monkeypatch.setattr(one_run, "train", train_fitting_batches_up_to(4, batch_sizes))
    settings = [
        "--strategy",
        "bitfit",
        "training.batch_size=16",
        "training.num_epochs=3",
        "training.early_stopping.enabled=false",
    ]
    config = write_config()
    status, [expected] = run_main(config, *settings)
    assert status == 0 and batch_sizes == [16, 8, 4]
    shutil.rmtree(config.parent / "outputs")

    validations = []

    def evaluate_then_stop(*args, **kwargs):
        validations.append(1)
        # Ctrl-C during epoch 2's validation: epoch 1's checkpoint is at batch size 4
        if len(validations) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    with monkeypatch.context() as interrupted:
        interrupted.setattr(trainer, "validation_scores", evaluate_then_stop)
        assert main.main(["--config", str(config), *settings]) == 130
    assert not [
        t for t in threading.enumerate() if "_sample" in t.name
    ]  # the run's memory sampler stopped too
    batch_sizes.clear()
    caplog.clear()
    caplog.set_level(logging.INFO)
    status, [resumed] = run_main(config, *settings, "--resume")
    assert status == 0 and resumed["status"] == "completed"
    # the retry goes on from its checkpoint
    assert batch_sizes == [4] and "1 epochs and 0 batches done" in caplog.text
    assert resumed["oom_retries"] == expected["oom_retries"]
    assert resumed["hyperparameters"] == expected["hyperparameters"]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in expected["history"]
    ]
    assert resumed["test_predictions"] == expected["test_predictions"]
