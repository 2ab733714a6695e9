"""Temperature scaling (training.calibration: temperature): the fit, the fold into the head, and a run that
reports test before and after it, with weights that give the calibrated probabilities."""

import numpy as np
import pytest
import torch

import main
from config import load_config
from conftest import prepared
from model import build_model, fit_temperature, fold_temperature, run_model
from records.checkpoints import BEST_WEIGHTS, load_weights
from tasks import TASKS
from test_cli import results
from trainer import device_batch, evaluate, make_accelerator, model_inputs
from utils import ConfigError

CROSS_ENTROPY = TASKS["classification"].calibration_loss


def test_a_temperature_fitted_on_logits_scaled_by_a_known_factor_recovers_it():
    rng = np.random.default_rng(0)
    calibrated = rng.normal(0, 2, size=(5000, 5))
    probabilities = np.exp(calibrated) / np.exp(calibrated).sum(1, keepdims=True)
    labels = [rng.choice(5, p=p) for p in probabilities]  # drawn from the calibrated probabilities themselves
    assert fit_temperature(calibrated * 3.0, labels, CROSS_ENTROPY) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(calibrated / 2.0, labels, CROSS_ENTROPY) == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize(
    "strategy, head", [("full", "model"), ("full", "mlp"), ("lora", "model"), ("frozen_encoder", "linear")]
)
def test_folding_the_temperature_gives_the_probabilities_of_divided_logits(write_config, strategy, head):
    cfg, data, encoded = prepared(write_config(), [f"model.head.type={head}"])
    model = build_model(cfg, strategy, data.label_names)
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a fresh head's bias is zero, which dividing would leave as it is
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear) and layer.bias is not None:
                layer.bias.normal_()
    batch = model_inputs(
        device_batch(encoded, "validation", list(range(6)), make_accelerator(False), TASKS["classification"])
    )
    with torch.no_grad():
        before = model(**batch).logits
    folded = fold_temperature(model, batch, 2.5)
    with torch.no_grad():
        after = model(**batch).logits
    assert len(folded) == 2 and all(name.endswith((".weight", ".bias")) for name in folded)
    torch.testing.assert_close(after.softmax(-1), (before / 2.5).softmax(-1))


def test_a_calibrated_run_reports_test_before_and_after_and_saves_the_calibrated_head(write_config, tmp_path):
    config = write_config(training={"calibration": "temperature", "num_epochs": 4, "learning_rate": 3e-3})
    assert main.main(["--config", str(config), "--strategy", "full"]) == 0
    [record] = results(tmp_path)
    calibration, before, after = record["calibration"], record["test_uncalibrated"], record["test"]
    ece_before, ece_after = calibration["validation"]["ece"]
    loss_before, loss_after = calibration["validation"]["log_loss"]
    assert (
        calibration["temperature"] > 0 and loss_after <= loss_before + 1e-9 and ece_after <= ece_before + 1e-9
    )
    for name in ("accuracy", "macro_f1", "confusion_matrix"):  # a temperature changes no decision
        assert after[name] == before[name]
    assert after["log_loss"] != before["log_loss"]
    folder = tmp_path / "outputs" / "checkpoints" / "full" / record["run_id"]
    assert load_weights(folder / BEST_WEIGHTS)[1]["temperature"] == pytest.approx(calibration["temperature"])
    # the saved weights, as predict and export load them, give the calibrated scores
    _, cfg, model = run_model(folder)
    cfg, _, encoded = prepared(config, ["training.calibration=temperature"])
    scored = evaluate(model, encoded, "test", cfg.training, make_accelerator(False), TASKS["classification"])
    assert scored["ece"] == pytest.approx(after["ece"], abs=1e-6)
    assert scored["log_loss"] == pytest.approx(after["log_loss"], abs=1e-6)
    summary = (tmp_path / "outputs" / "results" / "summary.md").read_text()
    assert "test ECE, uncalibrated | test ECE, calibrated | temperature" in summary


def test_calibration_is_refused_for_a_task_without_classes(write_config):
    with pytest.raises(
        ConfigError, match="training.calibration: got 'temperature', allowed: none with data.task: regression"
    ):
        load_config(write_config(training={"calibration": "temperature"}, data={"task": "regression"}))
