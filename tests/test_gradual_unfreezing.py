"""Gradual unfreezing: the head alone first, then the encoder from the top, one layer an epoch; the best
epoch's weights (of every part, frozen at that epoch or not) are what the run ends with."""

import dataclasses

import torch

import trainer
from conftest import prepared
from config import strategy_settings
from model import build_model
from strategies import STRATEGIES
from trainer import TrainJob, make_accelerator, train
from utils import set_seed


def test_the_head_trains_alone_then_the_layers_from_the_top(write_config, tmp_path, monkeypatch):
    cfg, data, encoded = prepared(
        write_config(),
        [
            "training.num_epochs=3",
            "training.early_stopping.enabled=false",
            "training.warmup_ratio=0",
            "training.weight_decay=0",
        ],
    )
    set_seed(0)
    model = build_model(cfg, "gradual_unfreezing", data.label_names)
    settings = strategy_settings(cfg, "gradual_unfreezing")
    strategy = STRATEGIES["gradual_unfreezing"]
    assert strategy.schedule(model, settings) == [
        {"part": "head", "epoch": 1},
        {"part": "layer 1", "epoch": 2},
        {"part": "above the layers", "epoch": 2},
        {"part": "embeddings", "epoch": 3},
        {"part": "layer 0", "epoch": 3},
    ]
    snapshots = [{n: p.detach().cpu().clone() for n, p in model.named_parameters()}]
    scores = iter([0.9, 0.5, 0.4])  # the first epoch is the best: the run must end with its weights
    real_evaluate = trainer.validation_scores

    def snapshot(model, *args, **kwargs):
        snapshots.append({n: p.detach().cpu().clone() for n, p in model.named_parameters()})
        return {**real_evaluate(model, *args, **kwargs), "macro_f1": next(scores)}

    monkeypatch.setattr(trainer, "validation_scores", snapshot)
    job = TrainJob(
        cfg,
        dataclasses.replace(settings, learning_rate=3e-3),
        tmp_path / "run",
        {},
        before_epoch=lambda epoch: strategy.before_epoch(model, settings, epoch),
    )
    result = train(model, encoded, job, make_accelerator(False))

    def moved(epoch: int) -> set[str]:  # the parts whose weights changed in this epoch
        return {
            n.split(".")[0]
            if not n.startswith("bert.")
            else (
                "layer " + n.split(".")[3]
                if ".layer." in n
                else "embeddings"
                if ".embeddings." in n
                else "pooler"
            )
            for n in snapshots[0]
            if not torch.equal(snapshots[epoch][n], snapshots[epoch - 1][n])
        }

    assert moved(1) == {"classifier"}
    assert moved(2) == {"classifier", "layer 1", "pooler"}
    assert moved(3) == {"classifier", "layer 1", "pooler", "layer 0", "embeddings"}
    assert result.best_epoch == 1
    for name, param in model.named_parameters():  # every part restored to epoch 1, the encoder as pre-trained
        assert torch.equal(param.detach().cpu(), snapshots[1][name]), name
