"""Per-part learning rates: the head's own rate and layer-wise decay, under every kind of strategy, in the
optimizer that trains and in the record."""

import pytest

import main
from config import load_config
from model import build_model, part_learning_rates
from trainer import make_optimizer

RATE, HEAD, DECAY = 1e-3, 1e-2, 0.5


def rates_by_part(strategy: str, write_config) -> dict[str, set[float]]:
    model = build_model(load_config(write_config()), strategy, ["a", "b", "c"])
    parts: dict[str, set[float]] = {}
    for part, rate in part_learning_rates(model, RATE, HEAD, DECAY).values():
        parts.setdefault(part, set()).add(rate)
    return parts


def test_layer_decay_counts_down_from_the_top_layer_and_the_head_has_its_own_rate(write_config):
    # the tiny BERT has 2 layers: the top one at the run's rate, the embeddings two steps below it
    assert rates_by_part("full", write_config) == {
        "head": {HEAD},
        "above the layers": {RATE},
        "layer 1": {RATE},
        "layer 0": {RATE * DECAY},
        "embeddings": {RATE * DECAY**2},
    }
    # adapters inside the layers follow their layer; prompt tuning's virtual tokens keep the run's rate
    assert rates_by_part("lora", write_config) == {
        "head": {HEAD},
        "layer 1": {RATE},
        "layer 0": {RATE * DECAY},
    }
    assert rates_by_part("prompt_tuning", write_config) == {"head": {HEAD}, "prompt": {RATE}}
    assert rates_by_part("frozen_encoder", write_config) == {"head": {HEAD}}


def test_the_optimizer_trains_each_parameter_at_its_parts_rate(write_config):
    model = build_model(load_config(write_config()), "full", ["a", "b", "c"])
    parts = part_learning_rates(model, RATE, HEAD, DECAY)
    optimizer = make_optimizer(model, RATE, 0.01, {name: rate for name, (_, rate) in parts.items()})
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        assert rate_of[id(param)] == parts[name][1], name
        assert decay_of[id(param)] == (0.01 if param.dim() >= 2 else 0.0), name
    # without per-part rates: the decayed group, then the undecayed one, as before
    plain = make_optimizer(model, RATE, 0.01)
    assert [(g["lr"], g["weight_decay"]) for g in plain.param_groups] == [(RATE, 0.01), (RATE, 0.0)]


def test_a_run_records_its_parameter_groups_and_logs_the_runs_own_rate(write_config, tmp_path):
    import json

    config = write_config(
        training={
            "batch_size": 8,
            "num_epochs": 2,
            "eval_batch_size": 16,
            "warmup_ratio": 0.0,
            "head_learning_rate": HEAD,
            "layer_lr_decay": DECAY,
            "learning_rate": RATE,
        }
    )
    assert (
        main.main(["--config", str(config), "--strategy", "full", "training.early_stopping.enabled=false"])
        == 0
    )
    [record] = json.loads((tmp_path / "outputs" / "results" / "all_results.json").read_text())["runs"]
    groups = {g["part"]: g for g in record["parameter_groups"]}
    assert (
        groups["head"]["learning_rate"] == HEAD and groups["embeddings"]["learning_rate"] == RATE * DECAY**2
    )
    assert sum(g["parameters"] for g in groups.values()) == record["trainable_params"]
    # the history's rate is the run's own under the linear schedule, not the head's
    assert record["history"][0]["lr"] == pytest.approx(RATE / 2)


def test_per_part_rates_need_layers_it_can_tell_apart_and_valid_values(write_config, capsys):
    from transformers import AlbertConfig, AlbertForSequenceClassification
    from utils import ConfigError

    albert = AlbertForSequenceClassification(
        AlbertConfig(
            vocab_size=50,
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
        )
    )
    with pytest.raises(
        ConfigError,
        match=r"training\.layer_lr_decay: cannot tell the encoder layers .* set "
        r"training\.layer_lr_decay: null",
    ):
        part_learning_rates(albert, RATE, None, DECAY)
    assert {part for part, _ in part_learning_rates(albert, RATE, None, None).values()} == {"encoder", "head"}
    for override, allowed in (
        ("training.layer_lr_decay=1.5", "0 < decay <= 1"),
        ("training.head_learning_rate=0", "a number > 0, or null"),
    ):
        assert main.main(["--config", str(write_config()), override]) == 2
        assert allowed in capsys.readouterr().err
