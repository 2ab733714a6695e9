"""Losses for imbalanced data: class weights, focal loss and label smoothing change what training minimises,
never the validation loss that runs are compared on."""

import math

import pytest
import torch
import torch.nn.functional as F

import main
from config import load_config
from conftest import prepared, settings_at
from experiment import plan_runs
from model import build_model
from tasks import TASKS
from tasks.classification import class_weights, focal_loss
from test_cli import results
from trainer import TrainJob, evaluate, make_accelerator, train
from utils import ConfigError, set_seed

CLASSIFICATION = TASKS["classification"]
NAMES = ["a", "b", "c"]


def test_balanced_weights_from_known_counts():
    weights = class_weights("balanced", [0] * 6 + [1] * 3 + [2], NAMES)  # n = 10, 3 classes
    assert weights.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    assert class_weights({"c": 4.0}, [0, 1, 2], NAMES).tolist() == [1.0, 1.0, 4.0]
    assert class_weights([1, 2, 3], [0, 1, 2], NAMES).tolist() == [1.0, 2.0, 3.0]
    assert class_weights(None, [0, 1, 2], NAMES) is None
    with pytest.raises(
        ConfigError, match=r"training\.class_weights: no label 'd' in the data; its labels: a, b, c"
    ):
        class_weights({"d": 2.0}, [0, 1, 2], NAMES)
    with pytest.raises(
        ConfigError, match=r"training\.class_weights: got 2 weights, allowed: one per label \(3: a, b, c\)"
    ):
        class_weights([1, 2], [0, 1, 2], NAMES)


def test_focal_loss_against_a_hand_computed_value_and_cross_entropy_at_gamma_0():
    logits, labels = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2])
    p = [math.exp(2) / (math.exp(2) + 2), 1 / (2 + math.e)]  # the true class's probability per row
    expected = sum(-((1 - q) ** 2) * math.log(q) for q in p)
    assert focal_loss(logits, labels, 2.0, None).item() == pytest.approx(expected, rel=1e-6)
    alpha = torch.tensor([0.5, 1.0, 3.0])
    assert focal_loss(logits, labels, 2.0, alpha).item() == pytest.approx(
        -0.5 * (1 - p[0]) ** 2 * math.log(p[0]) - 3.0 * (1 - p[1]) ** 2 * math.log(p[1]), rel=1e-6
    )
    assert focal_loss(logits, labels, 0.0, alpha).item() == pytest.approx(
        F.cross_entropy(logits, labels, weight=alpha, reduction="sum").item(), rel=1e-6
    )


def test_label_smoothing_is_refused_with_focal_loss(write_config):
    with pytest.raises(
        ConfigError, match=r"label_smoothing: got 0\.1, allowed: 0 with training\.loss: focal"
    ):
        load_config(write_config(), ["training.loss=focal", "training.label_smoothing=0.1"])


def test_a_sweep_over_losses_and_weights_keeps_the_plain_runs_ids(write_config):
    config = write_config(
        sweep={
            "training.class_weights": [None, "balanced", {"refund": 3.0}],
            "training.loss": ["cross_entropy", "focal"],
        }
    )
    runs = plan_runs(load_config(config), ["full"])
    assert len({run.run_id("fingerprint") for run in runs}) == 6
    [plain] = plan_runs(load_config(write_config()), ["full"])
    assert plain.run_id("fingerprint") in {run.run_id("fingerprint") for run in runs}  # null + cross_entropy
    assert "loss" not in plain.key("fingerprint")["training"]  # at its default: earlier ids stand


def test_weighted_training_leaves_the_validation_loss_plain(write_config, tmp_path):
    overrides = ["training.num_epochs=1", "training.class_weights={refund: 50.0}", "training.loss=focal"]
    cfg, data, encoded = prepared(write_config(), overrides)
    set_seed(0)
    model = build_model(cfg, "full", data.label_names)
    result = train(
        model,
        encoded,
        TrainJob(cfg, settings_at(cfg, "full"), tmp_path / "run", {}),
        make_accelerator(False),
    )
    plain = evaluate(model, encoded, "validation", cfg.training, make_accelerator(False), CLASSIFICATION)
    assert result.history[0]["val_loss"] == pytest.approx(plain["loss"], rel=1e-6)
    weighted = CLASSIFICATION.training_loss(cfg.training, encoded.labels["train"], data.label_names)
    assert weighted is not CLASSIFICATION.loss  # training really minimised the weighted focal loss


def test_an_experiment_compares_the_losses_side_by_side(write_config, tmp_path):
    config = write_config(
        sweep={"training.class_weights": [None, "balanced", {"refund": 3.0}]}, training={"num_epochs": 1}
    )
    assert main.main(["--config", str(config), "--strategy", "bitfit"]) == 0
    plain, balanced, heavier = [r["history"][0]["train_loss"] for r in results(tmp_path)]
    assert [str(r["varied"]["training.class_weights"]) for r in results(tmp_path)] == [
        "None",
        "balanced",
        "{'refund': 3.0}",
    ]
    assert balanced == plain  # the fixture's 18 training rows per class: balanced weights are all 1
    assert heavier != plain
    summary = (tmp_path / "outputs" / "results" / "summary.md").read_text()
    assert "training.class_weights" in summary and "balanced" in summary
