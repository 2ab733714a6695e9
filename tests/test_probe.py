"""The cached linear probe: features computed once and reused, training on them exactly as on the frozen model,
and logistic regression written into the head so that the model predicts what scikit-learn fitted."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

import main
from conftest import prepared, settings_at
from config import strategy_settings
from model import build_model, pool
from strategies import STRATEGIES
from strategies.probe import C_VALUES, FEATURES, full_weights, head_of, on_cached_features, the_linear_layer
from tasks import probabilities
from test_strategies import tiny_distilbert
from trainer import TrainJob, evaluate, make_accelerator, train
from utils import ConfigError, set_seed

# dropout 0: the uncached run's encoder then gives the head what the cache holds, so both runs are the same run
EXACT = ["model.dropout=0", "training.num_epochs=3", "strategies.frozen_encoder.learning_rate=0.1"]


def trained_probe(write_config, tmp_path, overrides, cached: bool):
    cfg, data, encoded = prepared(write_config(), EXACT + overrides)
    set_seed(0)
    model = build_model(cfg, "frozen_encoder", data.label_names)
    accelerator = make_accelerator(False)
    view, inputs = model, encoded
    if cached:
        view, inputs, info = on_cached_features(model, encoded, cfg, accelerator)
        assert info["cached"]
    result = train(
        view,
        inputs,
        TrainJob(cfg, settings_at(cfg, "frozen_encoder", 0.1), tmp_path / f"run-{cached}", {}),
        accelerator,
    )
    return result, evaluate(view, inputs, "test", cfg.training, accelerator, cfg_task(cfg)), model


def cfg_task(cfg):
    from tasks import TASKS

    return TASKS[cfg.data.task]


@pytest.mark.parametrize(
    "head",
    [
        [],
        [
            "model.head.type=mlp",
            "model.head.pooling=mean",
            "model.head.hidden_size=8",
            "model.head.dropout=0",
        ],
    ],
)
def test_training_on_cached_features_is_training_on_the_frozen_model(head, write_config, tmp_path):
    FEATURES.clear()
    plain, plain_test, plain_model = trained_probe(write_config, tmp_path, head, cached=False)
    cached, cached_test, cached_model = trained_probe(write_config, tmp_path, head, cached=True)
    for a, b in zip(plain.history, cached.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    assert np.allclose(plain_test["values"], cached_test["values"], atol=1e-5)
    for (name, p), (_, q) in zip(plain_model.named_parameters(), cached_model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-5), name  # the head trained in place inside the full model


def test_features_are_the_pooled_encoder_output_computed_once_per_process(write_config, caplog):
    FEATURES.clear()
    cfg, data, encoded = prepared(write_config(), ["model.head.type=linear", "model.head.pooling=mean"])
    model = build_model(cfg, "frozen_encoder", data.label_names).eval()
    view, inputs, first = on_cached_features(model, encoded, cfg, make_accelerator(False))
    texts = {tuple(x) for split in encoded.ids.values() for x in split}
    assert first == {"cached": True, "computed": len(texts), "reused": 0, "seconds": first["seconds"]}
    row = encoded.ids["validation"][3]
    with torch.no_grad():
        hidden = model.bert(input_ids=torch.tensor([row], device=model.device)).last_hidden_state
    assert torch.allclose(
        view.features[inputs.ids["validation"][3][0]], pool(hidden, None, "mean")[0].cpu(), atol=1e-5
    )
    _, _, second = on_cached_features(model, encoded, cfg, make_accelerator(False))
    assert (second["computed"], second["reused"]) == (0, len(texts))


def test_the_head_is_found_only_where_it_is_one_module():
    assert head_of(tiny_distilbert()) is None  # pre_classifier and classifier: trains uncached
    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=3,
        )
    )
    assert head_of(bert) == ("classifier", bert.classifier)


def test_a_head_that_reads_every_token_trains_uncached(write_config):
    cfg, data, encoded = prepared(write_config())
    roberta = RobertaForSequenceClassification(
        RobertaConfig(
            vocab_size=100,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=3,
            pad_token_id=0,
            max_position_embeddings=40,
        )
    )
    for name, param in roberta.named_parameters():
        param.requires_grad = name.startswith("classifier.")
    view, inputs, info = on_cached_features(roberta, encoded, cfg, make_accelerator(False))
    assert info == {"cached": False} and view is roberta and inputs is encoded


@pytest.mark.parametrize("classes", [[0, 1], [0, 2, 3]])
def test_logistic_regression_becomes_logits_with_its_probabilities(classes):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = np.array(classes)[rng.integers(0, len(classes), 60)]
    fitted = LogisticRegression(C=1.0).fit(x, y)
    weight, bias = full_weights(fitted, 4)  # label 1 is absent from [0, 2, 3]: it is never predicted
    p = probabilities(x @ weight.T + bias)
    assert np.allclose(p[:, fitted.classes_], fitted.predict_proba(x), atol=1e-6)
    if 1 not in classes:
        assert (p[:, 1] < 1e-6).all()


def test_logistic_regression_is_written_into_the_head_with_c_chosen_on_validation(write_config, tmp_path):
    FEATURES.clear()
    cfg, data, encoded = prepared(
        write_config(),
        [
            "strategies.frozen_encoder.classifier=logistic_regression",
            "training.early_stopping.metric=val_loss",
        ],
    )
    model = build_model(cfg, "frozen_encoder", data.label_names)
    accelerator = make_accelerator(False)
    settings = strategy_settings(cfg, "frozen_encoder")
    view, inputs, _ = STRATEGIES["frozen_encoder"].feature_view(settings)(model, encoded, cfg, accelerator)
    result = STRATEGIES["frozen_encoder"].fit(settings)(
        view,
        inputs,
        TrainJob(cfg, settings_at(cfg, "frozen_encoder", 0.1), tmp_path / "run", {}),
        accelerator,
    )
    tried = result.extra["logistic_regression"]["tried"]
    assert [t["C"] for t in tried] == list(C_VALUES) and (tmp_path / "run" / "best.safetensors").exists()
    assert result.best_metric == min(t["val_loss"] for t in tried) == result.history[0]["val_loss"]
    # the full model (the encoder runs again) predicts what scikit-learn fitted at the chosen C
    features = {
        s: view.features[[row[0] for row in inputs.ids[s]]].double().cpu().numpy() for s in ("train", "test")
    }
    mean, std = features["train"].mean(0), features["train"].std(0) + 1e-6
    fitted = LogisticRegression(C=result.extra["logistic_regression"]["C"], max_iter=2000).fit(
        (features["train"] - mean) / std, encoded.labels["train"]
    )
    full = evaluate(model, encoded, "test", cfg.training, accelerator, cfg_task(cfg))
    # the tiny model's features spread by about 3e-4, so standardising them magnifies the encoder's rounding
    # (batches padded otherwise) some thousand times: 1e-3 still tells a wrongly folded solution apart
    assert np.allclose(
        probabilities(full["values"]), fitted.predict_proba((features["test"] - mean) / std), atol=1e-3
    )


def test_logistic_regression_needs_a_one_layer_head(write_config, capsys):
    assert (
        main.main(
            [
                "--config",
                str(write_config()),
                "--strategy",
                "frozen_encoder",
                "model.head.type=mlp",
                "strategies.frozen_encoder.classifier=logistic_regression",
            ]
        )
        == 2
    )
    assert (
        "strategies.frozen_encoder.classifier: got 'logistic_regression', allowed: head with model.head.type: mlp"
        in capsys.readouterr().err
    )
    distilbert = tiny_distilbert()
    with pytest.raises(ConfigError, match="fits one linear layer, and this head has 2 linear layers"):
        the_linear_layer(torch.nn.Sequential(distilbert.pre_classifier, distilbert.classifier))
