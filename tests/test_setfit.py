"""SetFit: contrastive training moves every weight of the run's own encoder, then logistic regression fills the
head; setfit reads the texts the run's tokenizer kept."""

import pytest
import torch

from config import load_config, strategy_settings
from conftest import prepared, settings_at
from model import build_model, load_tokenizer
from strategies import STRATEGIES
from trainer import TrainJob, make_accelerator
from utils import ConfigError, set_seed


def test_setfit_tunes_the_whole_encoder_then_fits_a_linear_head_on_mean_pooling(write_config, tmp_path):
    cfg, data, encoded = prepared(
        write_config(), ["strategies.setfit.num_iterations=2", "strategies.setfit.learning_rate=1e-3"]
    )
    set_seed(0)
    model = build_model(cfg, "setfit", data.label_names)
    assert isinstance(model.classifier[-1], torch.nn.Linear) and model.text_pooling.how == "mean"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit = STRATEGIES["setfit"].fit(strategy_settings(cfg, "setfit"))
    job = TrainJob(cfg, settings_at(cfg, "setfit", 1e-3), tmp_path / "run", {})
    result = fit(model, encoded, job, make_accelerator(False))
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach().cpu(), before[n])]
    assert unchanged == []  # every encoder weight and the head
    assert result.extra["setfit"]["body_seconds"] > 0 and result.extra["logistic_regression"]["C"] > 0
    assert result.stop_reason.startswith("SetFit: contrastive body training, then logistic regression: C=")
    assert len(result.history) == 1 and result.best_metric == result.history[0]["val_macro_f1"]


def test_the_texts_setfit_reads_tokenize_back_to_the_runs_token_ids(write_config):
    cfg, data, encoded = prepared(write_config())
    tokenizer = load_tokenizer(cfg)
    texts = tokenizer.batch_decode(encoded.ids["train"], skip_special_tokens=True)
    again = tokenizer(texts, truncation=True, max_length=cfg.model.max_length)["input_ids"]
    assert again == encoded.ids["train"]


def test_an_mlp_head_is_refused_before_any_training(write_config):
    cfg = load_config(write_config(), ["model.head.type=mlp"])
    with pytest.raises(
        ConfigError, match="strategies.setfit: logistic regression fits its head, one linear layer"
    ):
        build_model(cfg, "setfit", ["a", "b", "c"])


def test_the_plan_counts_setfits_pairs_and_a_fitted_heads_single_pass(write_config):
    from experiment import passes, plan_runs

    cfg = load_config(
        write_config(),
        [
            "strategies.setfit.num_iterations=3",
            "strategies.setfit.num_epochs=2",
            "training.num_epochs=5",
            "strategies.frozen_encoder.classifier=logistic_regression",
        ],
    )
    runs = {run.strategy: run for run in plan_runs(cfg, ["setfit", "frozen_encoder", "lora"])}
    # each text in 2 x 3 pairs of two texts, twice over; logistic regression encodes each text once; the loop: epochs
    assert {name: passes(run) for name, run in runs.items()} == {"setfit": 24, "frozen_encoder": 1, "lora": 5}
