"""Two-stage fine-tuning: a run that starts from an earlier run's trained weights (adapters merged), keeping
its head when the labels agree and training a fresh one when they do not."""

import json

import pandas as pd
import pytest
import torch

import main
from config import load_config
from conftest import labelled_rows
from model import build_model, run_model


def records(folder) -> dict[str, dict]:
    runs = json.loads((folder / "outputs" / "results" / "all_results.json").read_text())["runs"]
    return {r["run_id"]: r for r in runs}


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory, tiny_model_dir):
    """A LoRA run on the ticket data: the run the second stage starts from."""
    folder = tmp_path_factory.mktemp("two-stage")
    pd.DataFrame(labelled_rows(per_class=30)).to_csv(folder / "tickets.csv", index=False)
    renamed = [{**row, "label": f"other_{row['label']}"} for row in labelled_rows(per_class=30, seed=1)]
    pd.DataFrame(renamed).to_csv(folder / "other.csv", index=False)
    config = folder / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"name": str(tiny_model_dir), "max_length": 16},
                "data": {"path": str(folder / "tickets.csv"), "validation_size": 0.2, "test_size": 0.2},
                "training": {"batch_size": 8, "num_epochs": 1, "eval_batch_size": 16, "learning_rate": 3e-3},
                "output": {"dir": str(folder / "outputs")},
            }
        )
    )
    assert main.main(["--config", str(config), "--strategy", "lora"]) == 0
    [source] = records(folder).values()
    return {"folder": folder, "config": config, "source": source}


def test_a_second_stage_starts_from_the_merged_weights_and_keeps_the_head_for_the_same_labels(first_stage):
    folder, source = first_stage["folder"], first_stage["source"]
    start = f"model.init_from={source['run_id']}"
    cfg = load_config(first_stage["config"], [start])
    _, _, trained = run_model(folder / "outputs" / "checkpoints" / "lora" / source["run_id"])
    merged = trained.merge_and_unload().state_dict()
    second = build_model(cfg, "full", source["dataset"]["label_names"]).state_dict()
    # encoder and head, as the first stage ended
    assert all(torch.equal(second[k], merged[k]) for k in merged)
    assert main.main(["--config", str(first_stage["config"]), "--strategy", "bitfit", start]) == 0
    [run] = [r for r in records(folder).values() if r["strategy"] == "bitfit"]
    assert run["init_from"] == {
        "run_id": source["run_id"],
        "head": "kept",
        "folder": str(folder / "outputs" / "checkpoints" / "lora" / source["run_id"]),
    }
    # the run id holds the source: without init_from the same settings are another run
    assert main.main(["--config", str(first_stage["config"]), "--strategy", "bitfit"]) == 0
    assert len([r for r in records(folder).values() if r["strategy"] == "bitfit"]) == 2


def test_other_labels_get_a_fresh_head_on_the_first_stages_encoder(first_stage):
    folder, source = first_stage["folder"], first_stage["source"]
    # a run folder works too
    folder_spec = str(folder / "outputs" / "checkpoints" / "lora" / source["run_id"])
    cfg = load_config(
        first_stage["config"], [f"model.init_from={folder_spec}", f"data.path={folder / 'other.csv'}"]
    )
    labels = ["other_" + name for name in source["dataset"]["label_names"]]
    _, _, trained = run_model(folder / "outputs" / "checkpoints" / "lora" / source["run_id"])
    merged = trained.merge_and_unload().state_dict()
    torch.manual_seed(0)
    second = build_model(cfg, "full", labels).state_dict()
    encoder = [k for k in merged if k.startswith("bert.")]
    assert encoder and all(torch.equal(second[k], merged[k]) for k in encoder)
    assert not torch.equal(second["classifier.weight"], merged["classifier.weight"])  # a fresh head
    assert (
        main.main(
            [
                "--config",
                str(first_stage["config"]),
                "--strategy",
                "full",
                f"model.init_from={folder_spec}",
                f"data.path={folder / 'other.csv'}",
            ]
        )
        == 0
    )
    [run] = [
        r
        for r in records(folder).values()
        if r["dataset"]["label_names"] == sorted(labels) or r["dataset"]["label_names"] == labels
    ]
    assert run["init_from"]["head"] == "re-initialised: the labels differ"


def test_another_kind_of_head_trains_fresh_on_the_first_stages_encoder(first_stage):
    folder, source = first_stage["folder"], first_stage["source"]
    cfg = load_config(
        first_stage["config"], [f"model.init_from={source['run_id']}", "model.head.type=linear"]
    )
    _, _, trained = run_model(folder / "outputs" / "checkpoints" / "lora" / source["run_id"])
    merged = trained.merge_and_unload().state_dict()
    second = build_model(cfg, "full", source["dataset"]["label_names"]).state_dict()
    layers = [k for k in merged if k.startswith("bert.") and ".pooler." not in k]
    assert (
        layers and all(torch.equal(second[k], merged[k]) for k in layers) and "classifier.1.weight" in second
    )
    assert (
        main.main(
            [
                "--config",
                str(first_stage["config"]),
                "--strategy",
                "frozen_encoder",
                f"model.init_from={source['run_id']}",
                "model.head.type=linear",
            ]
        )
        == 0
    )
    [run] = [r for r in records(folder).values() if r["strategy"] == "frozen_encoder"]
    assert run["init_from"]["head"] == "re-initialised: model.head differs"


def test_a_missing_or_unusable_source_run_is_a_config_error(first_stage, capsys):
    assert main.main(["--config", str(first_stage["config"]), "model.init_from=nope"]) == 2
    assert "model.init_from: got 'nope', allowed: the id of a run in" in capsys.readouterr().err
    assert (
        main.main(
            [
                "--config",
                str(first_stage["config"]),
                "--strategy",
                "prompt_tuning",
                "strategies.prompt_tuning.num_virtual_tokens=4",
            ]
        )
        == 0
    )
    prompt = next(r for r in records(first_stage["folder"]).values() if r["strategy"] == "prompt_tuning")
    assert (
        main.main(
            [
                "--config",
                str(first_stage["config"]),
                "--strategy",
                "full",
                f"model.init_from={prompt['run_id']}",
            ]
        )
        == 2
    )
    assert "is prompt tuning, whose virtual tokens are not weights of the model" in capsys.readouterr().err
