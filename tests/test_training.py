import dataclasses
import math
import time

import pytest
import torch

import trainer
from records.checkpoints import load_weights
from conftest import prepared, settings_at
from records.measure import PeakMemory
from model import build_model
from tasks import TASKS
from trainer import Decision, RunPaused, TrainingFailed, TrainJob, make_accelerator, train
from utils import ConfigError, set_seed

NO_DROPOUT = ["model.dropout=0.0", "training.warmup_ratio=0", "training.num_epochs=1"]


def run(cfg, data, encoded, run_dir, strategy="full", resume=False, run_key=None):
    set_seed(cfg.training.seed)
    model = build_model(cfg, strategy, data.label_names)
    job = TrainJob(cfg, settings_at(cfg, strategy), run_dir, run_key or {"strategy": strategy}, resume)
    result = train(model, encoded, job, make_accelerator(False))
    return model, result


def assert_same_run(model_a, result_a, model_b, result_b):
    """Bit-identical weights and the same history, timings aside."""
    for (name, a), (_, b) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert torch.equal(a, b), name
    without_seconds = [
        [{k: v for k, v in h.items() if k != "seconds"} for h in r.history] for r in (result_a, result_b)
    ]
    assert without_seconds[0] == without_seconds[1]


def test_accumulating_two_batches_of_four_equals_one_batch_of_eight(write_config, tmp_path):
    overrides = NO_DROPOUT + ["data.train_size=8", "training.max_grad_norm=null"]
    cfg8, data, encoded = prepared(write_config(), overrides + ["training.batch_size=8"])
    cfg4, _, _ = prepared(
        write_config(), overrides + ["training.batch_size=4", "training.gradient_accumulation_steps=2"]
    )
    big, result8 = run(cfg8, data, encoded, tmp_path / "b8")
    small, result4 = run(cfg4, data, encoded, tmp_path / "b4")
    assert result8.optimizer_steps == result4.optimizer_steps == 1
    for (name, p8), (_, p4) in zip(big.named_parameters(), small.named_parameters()):
        torch.testing.assert_close(p4, p8, rtol=1e-5, atol=1e-6, msg=name)
    assert result4.history[0]["train_loss"] == pytest.approx(result8.history[0]["train_loss"], rel=1e-5)


def test_last_window_of_an_epoch_steps_even_when_incomplete(write_config, tmp_path):
    # 54 rows in batches of 8 = 7 batches; windows of 3 batches: steps after batches 3, 6 and 7
    cfg, data, encoded = prepared(
        write_config(), ["training.num_epochs=1", "training.gradient_accumulation_steps=3"]
    )
    assert run(cfg, data, encoded, tmp_path / "r")[1].optimizer_steps == 3


@pytest.mark.parametrize("strategy", ["full", "gradual_unfreezing"])
def test_interrupted_and_resumed_run_equals_uninterrupted(strategy, write_config, tmp_path, monkeypatch):
    # dropout stays on: the resumed run must also restore the random number generators
    cfg, data, encoded = prepared(
        write_config(), ["training.num_epochs=3", "training.early_stopping.enabled=false"]
    )
    straight, expected = run(cfg, data, encoded, tmp_path / "straight", strategy)

    real_evaluate, calls = trainer.validation_scores, []

    def evaluate_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # during epoch 2's validation: only epoch 1's checkpoint exists
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "validation_scores", evaluate_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, data, encoded, tmp_path / "interrupted", strategy)
    monkeypatch.setattr(trainer, "validation_scores", real_evaluate)
    torch.manual_seed(12345)  # a new process would start from other random state
    resumed, result = run(cfg, data, encoded, tmp_path / "interrupted", strategy, resume=True)

    assert_same_run(straight, expected, resumed, result)
    assert (result.best_epoch, result.stop_reason) == (expected.best_epoch, expected.stop_reason)


def test_a_run_paused_at_evaluations_and_resumed_equals_an_uninterrupted_one(write_config, tmp_path):
    # 7 optimizer steps an epoch, evaluated at steps 3 and 6 inside it and at its end
    cfg, data, encoded = prepared(
        write_config(),
        ["training.num_epochs=2", "training.early_stopping.enabled=false", "training.eval_every_steps=3"],
    )
    straight, expected = run(cfg, data, encoded, tmp_path / "straight")
    seen = []

    def pause_once_at_steps_3_and_7(history):  # inside an epoch, and at its end
        seen.append(history[-1]["step"])
        return Decision.PAUSE if seen.count(seen[-1]) == 1 and seen[-1] in (3, 7) else Decision.GO_ON

    pauses = 0
    while True:
        torch.manual_seed(pauses)  # a later process would start from other random state
        set_seed(cfg.training.seed)
        model = build_model(cfg, "full", data.label_names)
        try:
            job = TrainJob(
                cfg,
                settings_at(cfg, "full"),
                tmp_path / "paused",
                {"strategy": "full"},
                resume=pauses > 0,
                on_evaluation=pause_once_at_steps_3_and_7,
            )
            result = train(model, encoded, job, make_accelerator(False))
            break
        except RunPaused:
            pauses += 1
    assert pauses == 2
    assert seen == [3, 3, 6, 7, 7, 9, 12, 14]  # on resuming, the evaluation it paused at is handed over again
    assert_same_run(straight, expected, model, result)


def test_checkpoint_from_another_config_is_refused(write_config, tmp_path):
    cfg, data, encoded = prepared(write_config(), ["training.num_epochs=1"])
    run(cfg, data, encoded, tmp_path / "r", run_key={"training": {"learning_rate": 1e-4, "seed": 1}})
    with pytest.raises(ConfigError, match=r"different config \(training\.learning_rate\)"):
        run(
            cfg,
            data,
            encoded,
            tmp_path / "r",
            resume=True,
            run_key={"training": {"learning_rate": 2e-4, "seed": 1}},
        )


def test_early_stopping_stops_when_the_metric_stalls(write_config, tmp_path, monkeypatch):
    cfg, data, encoded = prepared(
        write_config(), ["training.num_epochs=10", "training.early_stopping.patience=2"]
    )
    scores = iter([0.5, 0.7, 0.69, 0.7, 0.9])  # best at epoch 2, then two epochs without improvement
    other_metrics = {m.name: 0.5 for m in TASKS["classification"].metrics}
    monkeypatch.setattr(
        trainer, "validation_scores", lambda *a, **k: {"loss": 1.0, **other_metrics, "macro_f1": next(scores)}
    )
    _, result = run(cfg, data, encoded, tmp_path / "r")
    assert len(result.history) == 4
    assert result.best_epoch == 2
    assert result.stop_reason.startswith("early stopping: val_macro_f1 did not improve for 2 epochs")


def test_best_epoch_weights_are_restored(write_config, tmp_path, monkeypatch):
    cfg, data, encoded = prepared(
        write_config(), ["training.num_epochs=3", "training.early_stopping.enabled=false"]
    )
    scores = iter([0.4, 0.9, 0.5])
    snapshots = []
    real_evaluate = trainer.validation_scores

    def record(model, *args, **kwargs):
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return {**real_evaluate(model, *args, **kwargs), "macro_f1": next(scores)}

    monkeypatch.setattr(trainer, "validation_scores", record)
    model, result = run(cfg, data, encoded, tmp_path / "r")
    assert result.best_epoch == 2 and len(result.history) == 3
    for name, param in model.named_parameters():
        assert torch.equal(param, snapshots[1][name]), name


def test_a_loss_that_is_no_longer_finite_fails_the_run_with_a_hint(write_config, tmp_path, monkeypatch):
    cfg, data, encoded = prepared(write_config(), ["training.num_epochs=1"])
    monkeypatch.setattr(
        TASKS["classification"], "loss", lambda *a, **k: torch.tensor(math.nan, requires_grad=True)
    )
    with pytest.raises(
        TrainingFailed,
        match=r"training loss became nan or infinite at optimizer step 1 \(epoch 1, batch 1\); try a lower learning rate",
    ):
        run(cfg, data, encoded, tmp_path / "r")


@pytest.mark.parametrize(
    "sampler, login_rows, batches_to_ctrl_c, strategy",
    [
        # 54 training rows in batches of 8: 7 steps per epoch; epoch 1 takes 7 training + 2 validation batches
        ("random", 30, 12, "full"),
        # 18 refund, 18 delivery and 4 login training rows, each class drawn up to 18: again 54 rows an epoch, with
        # the login rows repeated differently in each epoch; 13 validation rows make 1 batch
        ("oversample", 6, 11, "full"),
        # the head alone in epoch 1, the top layer from epoch 2: the resumed epoch must train what it trained
        ("random", 30, 12, "gradual_unfreezing"),
    ],
)
def test_ctrl_c_mid_epoch_checkpoints_and_resume_equals_uninterrupted(
    sampler, login_rows, batches_to_ctrl_c, strategy, write_config, tmp_path, monkeypatch
):
    import os
    import signal

    import pandas as pd

    from conftest import labelled_rows

    rows = labelled_rows(per_class=30)
    path = tmp_path / "imbalanced.csv"
    pd.DataFrame(
        [r for r in rows if r["label"] != "login"] + [r for r in rows if r["label"] == "login"][:login_rows]
    ).to_csv(path, index=False)
    # checkpoints every 2 steps inside epochs
    cfg, data, encoded = prepared(
        write_config(),
        [
            "training.num_epochs=2",
            "training.early_stopping.enabled=false",
            "training.checkpoint_every_steps=2",
            f"training.sampler={sampler}",
            f"data.path={path}",
        ],
    )
    straight, expected = run(cfg, data, encoded, tmp_path / "straight", strategy)

    real_collate, calls = trainer.collate, []

    def collate_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == batches_to_ctrl_c:  # epoch 2's third batch
            os.kill(os.getpid(), signal.SIGINT)
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(trainer, "collate", collate_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, data, encoded, tmp_path / "interrupted", strategy)
    monkeypatch.setattr(trainer, "collate", real_collate)
    saved = torch.load(tmp_path / "interrupted" / "last.pt", weights_only=True)["state"]
    assert (saved["epoch"], saved["batches_done"], saved["step"]) == (
        1,
        3,
        10,
    )  # stopped after the current step

    torch.manual_seed(12345)
    resumed, result = run(cfg, data, encoded, tmp_path / "interrupted", strategy, resume=True)
    assert_same_run(straight, expected, resumed, result)


def test_evaluation_gives_the_same_answers_however_it_is_batched(write_config, tmp_path):
    """Batches sorted by length and capped by tokens are an implementation detail: predictions come back
    in the split's order and the loss does not move."""
    # long enough, without early stopping, that the tiny model tells classes apart for every seed tried (0-5)
    overrides = [
        "training.learning_rate=3e-3",
        "training.num_epochs=10",
        "training.early_stopping.enabled=false",
    ]
    cfg, data, encoded = prepared(write_config(), overrides)
    model, _ = run(cfg, data, encoded, tmp_path / "r")
    model.eval()
    with torch.no_grad():  # the reference: each row alone, in the split's order, without the batching code
        logits = torch.cat(
            [
                model(input_ids=torch.tensor([ids], device=model.device)).logits.float().cpu()
                for ids in encoded.ids["test"]
            ]
        )
    labels = torch.tensor(encoded.labels["test"])
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert len(set(logits.argmax(-1).tolist())) > 1  # a model that always says one class would prove little
    for rows, tokens in [(1, None), (64, None), (64, 20), (3, 12)]:
        t = dataclasses.replace(cfg.training, eval_batch_size=rows, eval_batch_tokens=tokens)
        batched = trainer.evaluate(
            model, encoded, "test", t, make_accelerator(False), TASKS["classification"]
        )
        assert batched["predictions"].tolist() == logits.argmax(-1).tolist()
        assert batched["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_compiled_training_matches_eager_and_keeps_checkpoint_names(write_config, tmp_path):
    overrides = NO_DROPOUT + ["training.num_epochs=2"]
    cfg, data, encoded = prepared(write_config(), overrides)
    compiled_cfg, _, _ = prepared(write_config(), overrides + ["training.compile=true"])
    eager, eager_result = run(cfg, data, encoded, tmp_path / "eager")
    compiled, compiled_result = run(compiled_cfg, data, encoded, tmp_path / "compiled")
    assert any(
        type(m).__name__ == "BertLayer" and m._compiled_call_impl is not None for m in compiled.modules()
    )
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(eager_result.history, compiled_result.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_accuracy"] == a["val_accuracy"]
    names = {name for name, _ in eager.named_parameters()}
    for folder in ("eager", "compiled"):
        assert set(load_weights(tmp_path / folder / "best.safetensors")[0]) == names
        assert set(torch.load(tmp_path / folder / "last.pt", weights_only=True)["trainable"]) == names


def test_cpu_peak_memory_is_what_this_run_needed_not_the_process_peak():
    # 300 MB held and freed before: the process's lifetime peak stays high
    earlier_run = torch.ones(300 * 2**18)
    del earlier_run
    memory = PeakMemory(torch.device("cpu"))
    this_run = torch.ones(100 * 2**18)
    time.sleep(0.1)  # a few 10 ms samples while it is held
    del this_run
    megabytes, measure = memory.stop()
    assert measure == "rss_rise_during_run"
    assert 95 <= megabytes < 150


def test_training_time_leaves_out_mid_epoch_checkpoints(write_config, tmp_path, monkeypatch):
    """A clock that moves 1 ms per reading, and 100 s while a checkpoint is written: the epochs' seconds
    must not contain the checkpoints."""
    now = [0.0]

    def clock():
        now[0] += 0.001
        return now[0]

    real_save = trainer.save_checkpoint

    def slow_save(*args):
        real_save(*args)
        now[0] += 100.0

    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    monkeypatch.setattr(trainer, "save_checkpoint", slow_save)
    # 54 rows in batches of 8: 7 steps per epoch, 6 of them followed by a mid-epoch checkpoint
    cfg, data, encoded = prepared(
        write_config(), ["training.num_epochs=1", "training.checkpoint_every_steps=1"]
    )
    result = run(cfg, data, encoded, tmp_path / "r")[1]
    assert result.checkpoint_time_s >= 700  # 6 in the epoch and one at its end
    assert result.train_time_s < 1 and result.history[0]["seconds"] < 1


def test_validation_every_n_steps_inside_epochs_and_early_stopping_counts_evaluations(
    write_config, tmp_path, monkeypatch
):
    # 54 training rows in batches of 8: 7 optimizer steps an epoch; validated at every third step and at each end
    cfg, data, encoded = prepared(
        write_config(),
        ["training.num_epochs=2", "training.early_stopping.enabled=false", "training.eval_every_steps=3"],
    )
    _, result = run(cfg, data, encoded, tmp_path / "every")
    assert [h["step"] for h in result.history] == [3, 6, 7, 9, 12, 14]
    assert [h["epoch"] for h in result.history] == [0.429, 0.857, 1, 1.286, 1.714, 2]
    assert result.train_time_s == pytest.approx(sum(h["seconds"] for h in result.history), abs=0.02)
    best = max(result.history, key=lambda h: h["val_macro_f1"])
    assert (result.best_epoch, result.best_step) == (best["epoch"], best["step"])

    cfg, data, encoded = prepared(
        write_config(),
        ["training.num_epochs=5", "training.early_stopping.patience=2", "training.eval_every_steps=3"],
    )
    scores = iter([0.5, 0.7, 0.69, 0.7, 0.9])  # best at the second evaluation, then two without improvement
    other_metrics = {m.name: 0.5 for m in TASKS["classification"].metrics}
    monkeypatch.setattr(
        trainer, "validation_scores", lambda *a, **k: {"loss": 1.0, **other_metrics, "macro_f1": next(scores)}
    )
    _, result = run(cfg, data, encoded, tmp_path / "stops")
    assert [h["step"] for h in result.history] == [3, 6, 7, 9]  # stopped inside epoch 2
    assert (result.best_epoch, result.best_step, result.optimizer_steps) == (0.857, 6, 9)
    assert result.stop_reason.startswith("early stopping: val_macro_f1 did not improve for 2 evaluations")


def test_a_run_resumed_between_evaluations_inside_an_epoch_equals_uninterrupted(
    write_config, tmp_path, monkeypatch
):
    cfg, data, encoded = prepared(
        write_config(),
        [
            "training.num_epochs=2",
            "training.early_stopping.enabled=false",
            "training.eval_every_steps=3",
            "training.checkpoint_every_steps=3",
        ],
    )
    straight, expected = run(cfg, data, encoded, tmp_path / "straight")
    real_evaluate, calls = trainer.validation_scores, []

    def evaluate_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # step 12's evaluation: the last checkpoint is step 9's, after four evaluations
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "validation_scores", evaluate_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, data, encoded, tmp_path / "interrupted")
    monkeypatch.setattr(trainer, "validation_scores", real_evaluate)
    saved = torch.load(tmp_path / "interrupted" / "last.pt", weights_only=True)["state"]
    assert (saved["step"], saved["batches_done"], len(saved["history"])) == (9, 2, 4)
    torch.manual_seed(12345)
    resumed, result = run(cfg, data, encoded, tmp_path / "interrupted", resume=True)
    assert_same_run(straight, expected, resumed, result)
    assert (result.best_epoch, result.best_step) == (expected.best_epoch, expected.best_step)
