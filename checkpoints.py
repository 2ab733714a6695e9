"""Checkpoints: what a run writes so that it can resume exactly (last.pt) and keep its best weights
(best.pt, epoch_N.pt), each one dict of plain types written to a temporary file and renamed."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from utils import ConfigError, atomic_open


def trainable_weights(model, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """Frozen weights are not saved: they are reloaded from the pre-trained model."""
    return {name: p.detach().cpu().clone() for name, p in accelerator.unwrap_model(model).named_parameters()
            if p.requires_grad}


def save(path: Path, payload: dict) -> None:
    with atomic_open(path) as f:  # straight into the file: no second copy in memory
        torch.save(payload, f)


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, accelerator: Accelerator, state: dict,
                    run_key: dict) -> None:
    """Everything a resumed run needs: trainable weights, optimizer, scheduler, grad scaler, the loop's state
    and the random number generators."""
    save(run_dir / "last.pt", {
        "run_key": run_key, "trainable": trainable_weights(model, accelerator),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        "state": state,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    })


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, accelerator: Accelerator,
                    run_key: dict) -> tuple[dict, dict | None]:
    """Restore everything save_checkpoint wrote, returning the loop's state and the best weights so far;
    refuse a checkpoint made under another config."""
    checkpoint = torch.load(run_dir / "last.pt", weights_only=False)
    differing = _differing_keys(checkpoint["run_key"], run_key)
    if differing:
        raise ConfigError(f"checkpoint {run_dir / 'last.pt'} was made with a different config "
                          f"({', '.join(differing)}); it cannot be resumed. Run without --resume to start over")
    accelerator.unwrap_model(model).load_state_dict(checkpoint["trainable"], strict=False)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint["scaler"] is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    best_path = run_dir / "best.pt"
    best = torch.load(best_path, weights_only=False)["trainable"] if best_path.exists() else None
    return checkpoint["state"], best


def saved_run_key(run_dir: Path) -> dict | None:
    """The run key `last.pt` was written under (None without one), read without loading its tensors."""
    path = run_dir / "last.pt"
    return torch.load(path, weights_only=False, mmap=True)["run_key"] if path.exists() else None


def _differing_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _differing_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []
