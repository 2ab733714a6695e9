"""Costs counted rather than timed: a training step's operations match the textbook count for full fine-tuning,
strategies that train less count less, the frozen encoder's feature pass counts once, counting changes nothing
in the run, and the record carries costs that the verdict decides on."""

from __future__ import annotations

import pytest
import torch

from conftest import prepared
from experiment.costs import MEASURED_ROWS, step_costs, total_costs
from model import build_model
from tasks import TASKS
from trainer import make_accelerator
from utils import set_seed


@pytest.fixture(scope="module")
def minilm(tmp_path_factory, tiny_model_dir):
    """The bundled MiniLM on the small data set, tokenized: the model whose step the count is checked on."""
    import pandas as pd

    from conftest import labelled_rows, small_config

    folder = tmp_path_factory.mktemp("costs")
    pd.DataFrame(labelled_rows(per_class=10)).to_csv(folder / "tickets.csv", index=False)
    config = small_config(folder, tiny_model_dir, folder / "tickets.csv")
    return prepared(config, ["model.name=minilm", "model.max_length=16"])


def costs_of(strategy: str, minilm) -> tuple[dict, torch.nn.Module]:
    cfg, data, encoded = minilm
    set_seed(0)
    model = build_model(cfg, strategy, data.label_names)
    return step_costs(
        model, model, encoded, encoded, TASKS["classification"], make_accelerator(False, False)
    ), model


def test_a_full_fine_tuning_step_counts_six_operations_per_weight_and_token(minilm):
    costs, model = costs_of("full", minilm)
    _, _, encoded = minilm
    tokens = max(len(ids) for ids in encoded.ids["train"][:MEASURED_ROWS])  # the counted rows, padded alike
    weights = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)
    expected = 6 * weights * tokens
    assert costs["train_step_flops_per_example"] == pytest.approx(expected, rel=0.15)
    assert costs["inference_flops_per_example"] == pytest.approx(expected / 3, rel=0.15)


def test_strategies_that_train_less_count_less_and_predict_alike(minilm):
    full, _ = costs_of("full", minilm)
    for strategy in ("lora", "bitfit"):
        costs, _ = costs_of(strategy, minilm)
        assert costs["train_step_flops_per_example"] < 0.8 * full["train_step_flops_per_example"]
        parts = costs["memory_parts_bytes"]
        assert parts["gradients"] < 0.05 * full["memory_parts_bytes"]["gradients"]
        assert parts["optimizer"] == 2 * parts["gradients"]
        assert costs["inference_flops_per_example"] == pytest.approx(
            full["inference_flops_per_example"], rel=0.05
        )


def test_counting_a_step_leaves_the_weights_the_gradients_and_the_random_generators_as_they_were(minilm):
    cfg, data, encoded = minilm
    set_seed(0)
    model = build_model(cfg, "full", data.label_names)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    rng = torch.get_rng_state()
    step_costs(model, model, encoded, encoded, TASKS["classification"], make_accelerator(False, False))
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert all(torch.equal(before[name], p) and p.grad is None for name, p in model.named_parameters())


def test_the_frozen_encoders_feature_pass_counts_once_and_its_head_steps_cost_little():
    step = {
        "train_step_flops_per_example": 10.0,
        "inference_flops_per_example": 1000.0,
        "memory_parts_bytes": {
            "weights": 2**20,
            "gradients": 0,
            "optimizer": 0,
            "activations_per_example": 0,
        },
    }
    once = total_costs(step, batch_size=32, examples_trained=8 * 500, featurized=500)
    # eight epochs of the head, one pass of the encoder
    assert once["train_flops"] == 8 * 500 * 10 + 500 * 1000
    assert once["computed_memory_mb"] == 1.0


def test_a_run_records_costs_that_grow_with_its_epochs(write_config, tmp_path):
    import json

    import main

    out = tmp_path / "out"
    for epochs in (1, 2):
        assert (
            main.main(
                [
                    "--config",
                    str(write_config()),
                    "--strategy",
                    "bitfit",
                    "--strategy",
                    "frozen_encoder",
                    f"output.dir={out}",
                    f"training.num_epochs={epochs}",
                    "training.early_stopping.enabled=false",
                ]
            )
            == 0
        )
    runs = json.loads((out / "results" / "all_results.json").read_text())["runs"]
    by = {(r["strategy"], r["hyperparameters"]["num_epochs"]): r["costs"] for r in runs}
    assert by["bitfit", 2]["train_flops"] == pytest.approx(2 * by["bitfit", 1]["train_flops"], rel=1e-6)
    probe = by["frozen_encoder", 1]
    assert (
        probe["featurized_examples"] > 0
        and probe["train_flops"] > probe["inference_flops_per_example"] * probe["featurized_examples"]
    )
    assert all(c["computed_memory_mb"] > 0 for c in by.values())
