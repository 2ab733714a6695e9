"""model.head: a linear or MLP head on the encoder's pooled hidden states, in place of the model's own."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from config import HeadConfig, load_config
from model import OWN_HEAD, build_model, pool, resolve_head, resolved_config, trained_pooling
from tasks import TASKS
from utils import ConfigError, set_seed


def test_mean_pooling_averages_the_real_tokens_only():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0]]))
    assert torch.equal(pool(hidden, None, "mean"), hidden.mean(1))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_a_head_reads_the_pooled_encoder_output_whatever_the_padding(pooling, write_config):
    cfg = load_config(
        write_config(), ["model.head.type=mlp", f"model.head.pooling={pooling}", "model.head.hidden_size=8"]
    )
    set_seed(0)
    model = build_model(cfg, "full", ["a", "b", "c"]).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        unpadded = model(input_ids=ids[:, :5], attention_mask=mask[:, :5]).logits
        hidden = model.bert(input_ids=ids[:, :5]).last_hidden_state
        expected = model.classifier(hidden[:, 0] if pooling == "cls" else hidden.mean(1))
    assert torch.allclose(padded, unpadded, atol=1e-5)
    assert torch.allclose(unpadded, expected, atol=1e-6)
    layers = [type(layer).__name__ for layer in model.classifier]
    assert layers == ["Linear", "ReLU", "Dropout", "Linear"] and model.classifier[0].out_features == 8
    assert model.bert.pooler is None


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_under_prompt_tuning_a_pooled_head_reads_the_text_and_not_the_virtual_tokens(pooling, write_config):
    cfg = load_config(write_config(), ["model.head.type=linear", f"model.head.pooling={pooling}"])
    model = build_model(cfg, "prompt_tuning", ["a", "b", "c"]).eval()
    seen = {}
    pooling_module = model.get_base_model().text_pooling
    pooling_module.register_forward_hook(
        lambda module, args, out: seen.update(hidden=args[0], mask=args[1], out=out)
    )
    ids, mask = torch.tensor([[2, 10, 11, 3, 0]]), torch.tensor([[1, 1, 1, 1, 0]])
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    virtual = cfg.strategies.prompt_tuning.num_virtual_tokens
    assert seen["hidden"].shape[1] == virtual + 5 and pooling_module.skip == virtual  # PEFT put them first
    assert torch.equal(seen["out"], pool(seen["hidden"][:, virtual:], seen["mask"][:, virtual:], pooling))


def test_a_linear_head_is_dropout_then_one_layer_at_the_models_initialisation(write_config):
    cfg = load_config(write_config(), ["model.head.type=linear", "model.head.dropout=0.3"])
    model = build_model(cfg, "frozen_encoder", ["a", "b", "c"])
    dropout, linear = model.classifier
    assert dropout.p == 0.3 and (linear.in_features, linear.out_features) == (32, 3)
    assert (
        torch.equal(linear.bias, torch.zeros(3)) and linear.weight.std() < 3 * model.config.initializer_range
    )


def test_head_settings_are_checked_at_load(write_config):
    with pytest.raises(
        ConfigError,
        match=r"model\.head\.pooling: got 'mean', allowed: auto or cls with model\.head\.type: "
        "model",
    ):
        load_config(write_config(), ["model.head.type=model", "model.head.pooling=mean"])
    with pytest.raises(
        ConfigError, match=r"model\.head\.type: expected one of 'auto', 'model', 'linear', 'mlp', got 'deep'"
    ):
        load_config(write_config(), ["model.head.type=deep"])
    with pytest.raises(ConfigError, match=r"model\.head\.hidden_size: got 0, allowed: an integer >= 1"):
        load_config(write_config(), ["model.head.type=mlp", "model.head.hidden_size=0"])


def test_a_grid_over_heads_is_checked_run_by_run(write_config):
    # the file's own head is the model's, with mean pooling: wrong alone, right for every run the sweep makes
    cfg = load_config(
        write_config(sweep={"model.head.type": ["linear", "mlp"]}),
        ["model.head.type=model", "model.head.pooling=mean"],
    )
    assert cfg.model.head.pooling == "mean"
    with pytest.raises(
        ConfigError, match=r"the run with model\.head\.type=model: model\.head\.pooling: got 'mean'"
    ):
        load_config(write_config(sweep={"model.head.type": ["model", "linear"]}), ["model.head.pooling=mean"])


def test_the_dry_run_counts_the_parameters_of_each_head(write_config, capsys):
    import main

    config = write_config(sweep={"model.head.type": ["linear", "mlp"]})
    assert (
        main.main(
            ["--config", str(config), "--strategy", "frozen_encoder", "model.head.hidden_size=8", "--dry-run"]
        )
        == 0
    )
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if "trainable of" in line]
    # the tiny BERT's hidden size is 32, with 3 labels: 32 x 3 + 3 for linear, 32 x 8 + 8 + 8 x 3 + 3 for the MLP
    assert [(line[1], line[2]) for line in lines] == [
        ("model.head.type=linear", "99"),
        ("model.head.type=mlp", "291"),
    ]


def sentence_transformers_folder(model_dir: Path, folder: Path, **modes) -> Path:
    """A copy of `model_dir` laid out as a sentence-transformers model whose Pooling module sets `modes`."""
    shutil.copytree(model_dir, folder)
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": False,
                **modes,
            }
        )
    )
    return folder


@pytest.mark.parametrize(
    "modes, expected",
    [
        ({"pooling_mode_mean_tokens": True}, ("linear", "mean")),
        ({"pooling_mode_cls_token": True}, ("linear", "cls")),
        ({"pooling_mode_max_tokens": True}, ("model", "cls")),  # no head here reads a max: the model's own
        ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, ("model", "cls")),
    ],
)
def test_the_default_head_reads_what_a_sentence_transformers_model_was_trained_to_give(
    modes, expected, write_config, tiny_model_dir, tmp_path
):
    folder = sentence_transformers_folder(tiny_model_dir, tmp_path / "st-model", **modes)
    cfg = load_config(write_config(), [f"model.name={folder}"])
    assert (cfg.model.head.type, cfg.model.head.pooling) == ("auto", "auto")
    head = resolved_config(cfg).model.head
    assert (head.type, head.pooling) == expected
    model = build_model(cfg, "bitfit", ["a", "b", "c"])
    assert hasattr(model, "text_pooling") == (expected[0] == "linear")
    if expected[0] == "linear":
        assert model.text_pooling.how == expected[1] and model.bert.pooler is None


def test_a_bert_checkpoint_and_a_per_token_task_keep_the_models_own_head(
    write_config, tiny_model_dir, tmp_path
):
    plain = resolved_config(load_config(write_config()))
    assert plain.model.head == OWN_HEAD
    folder = sentence_transformers_folder(
        tiny_model_dir, tmp_path / "st-model", pooling_mode_mean_tokens=True
    )
    tokens = resolved_config(
        load_config(write_config(), [f"model.name={folder}", "data.task=token_classification"])
    )
    assert tokens.model.head == OWN_HEAD
    # a pooling asked for by name gives a head that reads it, on any model
    asked = resolved_config(load_config(write_config(), ["model.head.pooling=mean"])).model.head
    assert (asked.type, asked.pooling) == ("linear", "mean")


def test_the_bundled_minilm_gets_a_linear_head_on_the_mean_of_its_tokens():
    assert trained_pooling("minilm") == "mean"
    head = resolve_head(HeadConfig(), "minilm", TASKS["classification"])
    assert (head.type, head.pooling, head.dropout) == ("linear", "mean", HeadConfig().dropout)


def test_runs_of_a_bert_checkpoint_keep_their_ids_under_the_auto_head(write_config, tmp_path):
    from experiment.plan import plan_runs

    auto = plan_runs(load_config(write_config()), ["full"])[0]
    own = plan_runs(
        load_config(write_config(), ["model.head.type=model", "model.head.pooling=cls"]), ["full"]
    )[0]
    linear = plan_runs(load_config(write_config(), ["model.head.type=linear"]), ["full"])[0]
    assert auto.run_id("data") == own.run_id("data") != linear.run_id("data")
    assert "head" not in auto.key("data")["model"]


def test_a_run_of_a_sentence_transformers_model_predicts_and_export_refuses_it_in_one_line(
    write_config, tiny_model_dir, tmp_path, capsys
):
    import main

    folder = sentence_transformers_folder(
        tiny_model_dir, tmp_path / "st-model", pooling_mode_mean_tokens=True
    )
    args = ["--config", str(write_config()), f"model.name={folder}"]
    assert main.main([*args, "--strategy", "bitfit", "training.num_epochs=1"]) == 0
    capsys.readouterr()
    assert main.main(["predict", *args, "--text", "my parcel is late"]) == 0
    assert main.main(["export", *args, "--out", str(tmp_path / "exported")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its model.head (linear) is not part of any Hugging Face model class" in err[0]
    assert "predict" in err[0] and not (tmp_path / "exported").exists()
