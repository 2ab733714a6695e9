import pytest
from transformers import BertConfig

from conftest import ROOT
from strategies import STRATEGIES
from config import Config, StrategiesConfig, load_config
from model import ModelPlan, check_against_model
from utils import ConfigError


def test_shipped_config_loads_with_the_six_demo_strategies_enabled():
    cfg = load_config(ROOT / "config.yaml")
    assert isinstance(cfg, Config)
    assert {name for name in STRATEGIES if getattr(cfg.strategies, name).enabled} == {
        "full",
        "lora",
        "bitfit",
        "prompt_tuning",
        "partial_freezing",
        "frozen_encoder",
    }
    assert cfg.data.path == "examples/support_tickets.csv" and cfg.data.name is None


def test_the_shipped_config_sets_no_key_to_its_default():
    from config import file_settings
    from schema.typed_yaml import read_yaml

    raw = read_yaml(ROOT / "config.yaml")
    leaves = lambda raw, prefix="": [
        k
        for key, value in raw.items()
        for k in (leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])
    ]
    assert sorted(file_settings(ROOT / "config.yaml")) == sorted(leaves(raw))
    assert file_settings(ROOT / "config.yaml")["model.max_length"] == "auto"


def test_strategies_added_later_stay_off_in_configs_written_before_them(write_config):
    cfg = load_config(write_config())  # names only prompt_tuning among the strategies
    enabled = {name for name in STRATEGIES if getattr(cfg.strategies, name).enabled}
    assert enabled == {"full", "lora", "bitfit", "prompt_tuning"}


def test_every_strategy_has_a_config_section_and_back():
    import dataclasses

    assert {f.name for f in dataclasses.fields(StrategiesConfig)} == set(STRATEGIES)


def test_overrides_are_typed_by_the_schema(write_config):
    cfg = load_config(
        write_config(),
        [
            "training.learning_rate=3e-5",
            "strategies.lora.target_modules=[query,key]",
            "training.fp16=false",
            "data.train_size=40",
        ],
    )
    assert cfg.training.learning_rate == pytest.approx(3e-5) and isinstance(cfg.training.learning_rate, float)
    assert cfg.strategies.lora.target_modules == ["query", "key"]
    assert cfg.training.fp16 is False and cfg.data.train_size == 40


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "training.learning_rte=1e-4",
            r"unknown key 'training\.learning_rte'; did you mean 'training\.learning_rate'\?",
        ),
        ("trainng.seed=1", r"unknown key section 'trainng'; did you mean 'training'\?"),
        (
            "strategies.adapterz.enabled=true",
            r"unknown strategy 'adapterz'; known strategies: bitfit, bottleneck_adapter, frozen_encoder, full, gradual_unfreezing, ia3, loha, lokr, lora, partial_freezing, prompt_tuning, setfit",
        ),
        ("training.batch_size=abc", r"training\.batch_size: expected an integer, got 'abc'"),
        ("training.batch_size=0", r"training\.batch_size: got 0, allowed: an integer >= 1"),
        ("training.learning_rate=-1e-5", r"training\.learning_rate: got -1e-05, allowed: a number > 0"),
        ("training.fp16=maybe", r"training\.fp16: expected true or false, got 'maybe'"),
        (
            "training.early_stopping.metric=test_accuracy",
            r"training\.early_stopping\.metric: got 'test_accuracy', allowed: "
            r"val_loss, val_accuracy, val_macro_f1, .*, val_ece \(validation metrics of classification\)",
        ),
        ("training.early_stopping.patience=0", r"training\.early_stopping\.patience: got 0"),
        ("strategies.lora.rank=0", r"strategies\.lora\.rank: got 0, allowed: an integer >= 1"),
        (
            "strategies.partial_freezing.trainable_layers=-1",
            r"strategies\.partial_freezing\.trainable_layers: got -1, allowed: an integer >= 0",
        ),
        (
            "training.class_weights=[0, 1, 1]",
            r"training\.class_weights: got \[0\.0, 1\.0, 1\.0\], allowed: balanced",
        ),
        (
            "training.class_weights=heavy",
            r"training\.class_weights: expected one of 'balanced' or a list of a finite number",
        ),
        ("training.loss=dice", r"training\.loss: expected one of 'cross_entropy', 'focal'"),
        ("training.focal_gamma=-1", r"training\.focal_gamma: got -1\.0, allowed: a number >= 0"),
        ("training.label_smoothing=1", r"training\.label_smoothing: got 1\.0, allowed: 0 <= share < 1"),
        (
            "training.eval_batch_tokens=0",
            r"training\.eval_batch_tokens: got 0, allowed: an integer >= 1, or null",
        ),
        (
            "data.validation_size=0.8",
            r"data\.validation_size \+ data\.test_size: got 1\.0, allowed: a sum below 1",
        ),
        ("data.name=ag_news", r"data: set exactly one of data\.name .* and data\.path"),
        ("training=5", r"training: expected a section \(a mapping\), got 5"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(write_config, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(), [override])


def test_all_problems_are_reported_at_once(write_config):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(), ["training.batch_size=0", "strategies.lora.rank=0"])
    assert "training.batch_size" in str(caught.value) and "strategies.lora.rank" in str(caught.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("training:\n  batch_size: 8\n  seed: [1, 2\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+"):
        load_config(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(tmp_path / "empty.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def plans(cfg, *strategies: str) -> list[ModelPlan]:
    return [ModelPlan.of(cfg, strategy) for strategy in strategies]


def test_prompt_tokens_and_max_length_must_fit_the_position_limit(write_config):
    cfg = load_config(
        write_config(), ["model.max_length=60", "strategies.prompt_tuning.num_virtual_tokens=10"]
    )
    with pytest.raises(
        ConfigError, match=r"num_virtual_tokens \+ model\.max_length: got 10 \+ 60, allowed: at most 64"
    ):
        check_against_model(BertConfig(max_position_embeddings=64), plans(cfg, "full", "prompt_tuning"))
    # without prompt tuning it fits
    check_against_model(BertConfig(max_position_embeddings=64), plans(cfg, "full"))


def test_partial_freezing_cannot_train_more_layers_than_the_model_has(write_config):
    cfg = load_config(write_config(), ["strategies.partial_freezing.trainable_layers=3"])
    with pytest.raises(ConfigError, match=r"partial_freezing\.trainable_layers: got 3, allowed: 0 to 2"):
        check_against_model(BertConfig(num_hidden_layers=2), plans(cfg, "partial_freezing"))
    check_against_model(BertConfig(num_hidden_layers=2), plans(cfg, "full"))
    check_against_model(BertConfig(num_hidden_layers=3), plans(cfg, "partial_freezing"))


def test_unloadable_model_names_the_key_and_the_offline_way_out(write_config, tmp_path):
    from model import load_model_config

    cfg = load_config(write_config(), [f"model.name={tmp_path / 'no-such-model'}"])
    with pytest.raises(
        ConfigError, match=r"model\.name: folder .* does not exist or holds no model.*the bundled model"
    ):
        load_model_config(cfg)


def test_a_strategy_section_keeps_its_own_defaults_for_the_keys_it_leaves_out(write_config):
    cfg = load_config(
        write_config(strategies={"bitfit": {"enabled": True}, "frozen_encoder": {"enabled": True}})
    )
    assert cfg.strategies.bitfit.learning_rate == 1e-3  # bitfit's default, not the class-wide null
    assert cfg.strategies.frozen_encoder.learning_rate == 0.3 and cfg.strategies.frozen_encoder.enabled


def test_config_reference_is_up_to_date():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_config_reference", ROOT / "docs" / "make_config_reference.py"
    )
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (ROOT / "docs" / "config.md").read_text(encoding="utf-8") == generator.reference(), (
        "docs/config.md is stale: run python docs/make_config_reference.py"
    )


def test_the_default_runs_keep_their_ids():
    """Run ids name cached results: a change to the run key or to how the demo data is split would silently
    retrain every user's runs. These are the ids the shipped config.yaml gave with max_length 64 (it now picks the
    length from the data): change one only with a change to what that run computes."""
    from data import load_data
    from experiment import plan_runs

    cfg = load_config(ROOT / "config.yaml", ["model.max_length=64"])
    fingerprint = load_data(cfg.data).fingerprint
    enabled = [s for s in STRATEGIES if getattr(cfg.strategies, s).enabled]
    ids = [run.run_id(fingerprint) for run in plan_runs(cfg, enabled)]
    # model.head.type auto gave the bundled MiniLM a linear head on the mean of its tokens: the ids moved once;
    # prompt tuning's once more when that head stopped pooling its virtual tokens
    assert ids == [
        "full-73538ab89e12",
        "lora-8de129866a62",
        "bitfit-ddbd678e7408",
        "prompt_tuning-0fdfd84d016f",
        "partial_freezing-03d124c12422",
        "frozen_encoder-7037f014f6f5",
    ]
    # and the model's own head, named, keeps the ids it had when it was the default
    own = load_config(
        ROOT / "config.yaml", ["model.max_length=64", "model.head.type=model", "model.head.pooling=cls"]
    )
    assert [run.run_id(fingerprint) for run in plan_runs(own, enabled)] == [
        "full-2a64a74d4222",
        "lora-e0222a88d682",
        "bitfit-3d600694f242",
        "prompt_tuning-f6b0d8450963",
        "partial_freezing-61b6ac221034",
        "frozen_encoder-a0e8f582f2ff",
    ]
