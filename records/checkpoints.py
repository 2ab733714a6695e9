"""Checkpoints: what a run writes so that it can resume exactly (last.pt) and be used afterwards
(best.safetensors, epoch_N.safetensors). Run folders are shared between people, so nothing here ever
unpickles code: weights are safetensors, and the resume state holds only tensors and plain data, loaded
with torch.load(weights_only=True). Every file is written to a temporary file and renamed."""

from __future__ import annotations

import json
import math
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from utils import ConfigError, atomic_open, atomic_write_bytes

BEST_WEIGHTS = "best.safetensors"
RESUME_STATE = "last.pt"
# What a resume state holds at least (save_checkpoint writes them).
RESUME_KEYS = {"run_key", "trainable", "optimizer", "scheduler", "scaler", "state", "rng"}


def epoch_weights(epoch: int) -> str:
    return f"epoch_{epoch}.safetensors"


def trainable_weights(model, accelerator: Accelerator, names: set[str]) -> dict[str, torch.Tensor]:
    """The weights named: those the strategy trains at some point. Frozen weights are not saved: they are
    reloaded from the pre-trained model."""
    return {
        name: p.detach().cpu().clone()
        for name, p in accelerator.unwrap_model(model).named_parameters()
        if name in names
    }


def save_weights(
    path: Path,
    weights: dict[str, torch.Tensor],
    run_key: dict,
    epoch: float,
    temperature: float | None = None,
) -> None:
    """Trainable weights as safetensors, with the run key, the epoch and any temperature folded into the head
    (training.calibration) in its metadata."""
    metadata = {"run_key": json.dumps(run_key, sort_keys=True, default=str), "epoch": str(epoch)}
    if temperature is not None:
        metadata["temperature"] = repr(temperature)
    atomic_write_bytes(
        path, safetensors_bytes({k: v.contiguous() for k, v in weights.items()}, metadata=metadata)
    )


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights of a safetensors file and its metadata (run key and epoch)."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            weights = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{path}: not readable as safetensors weights ({str(err)[:120]})") from None
    try:
        epoch = float(metadata.get("epoch", 0))  # an evaluation inside an epoch has a fractional one
        temperature = float(metadata["temperature"]) if "temperature" in metadata else None
        run_key = json.loads(metadata.get("run_key", "null"))
    except ValueError:
        raise ConfigError(
            f"{path}: its metadata (epoch, temperature, run key) is not what bertlab writes; train "
            "the run again (python main.py --force with its config)"
        ) from None
    if not (math.isfinite(epoch) and (temperature is None or math.isfinite(temperature) and temperature > 0)):
        raise ConfigError(f"{path}: its metadata holds an epoch or temperature that is not a finite number")
    return weights, {
        "run_key": run_key,
        "epoch": int(epoch) if epoch.is_integer() else epoch,
        "temperature": temperature,
    }


def drop_checkpoints(run_dir: Path) -> None:
    """Delete a run folder's weights and resume state (its config and record stay)."""
    for checkpoint in [*run_dir.glob("*.pt"), *run_dir.glob("*.safetensors")]:
        checkpoint.unlink(missing_ok=True)


@dataclass(frozen=True)
class InTraining:
    """What a checkpoint saves of a run in training besides the loop's state: the model's trainable weights
    (their names), the optimizer, the schedule and the accelerator (its grad scaler, its processes)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    accelerator: Accelerator
    trained: set[str]


def save_checkpoint(run_dir: Path, training: InTraining, state: dict, run_key: dict) -> None:
    """Everything a resumed run needs: trainable weights, optimizer, scheduler, grad scaler, the loop's state
    and the random number generators (of every process, under several), as tensors and plain data only.
    Every process calls it; the main process writes."""
    model, accelerator = training.model, training.accelerator
    rng = random_states()
    every_process = gather_object([rng]) if accelerator.num_processes > 1 else None
    with atomic_open(run_dir / RESUME_STATE) as f:  # straight into the file: no second copy in memory
        torch.save(
            {
                "run_key": run_key,
                "trainable": trainable_weights(model, accelerator, training.trained),
                "optimizer": training.optimizer.state_dict(),
                "scheduler": training.scheduler.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "state": state,
                "rng": rng,
                "rng_by_process": every_process,
            },
            f,
        )


def random_states() -> dict:
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def read_resume_state(path: Path, mmap: bool = False) -> dict:
    """last.pt, refusing anything but tensors and plain data: a pickled object could run code when loaded."""
    try:
        state = torch.load(path, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"{path} holds objects other than tensors and plain data, which could run code when "
            f"loaded, so it is refused ({str(err).splitlines()[0][:120]}). Delete the run folder "
            "and run again, or ask whoever wrote it for a checkpoint written by bertlab"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:  # torch reports a truncated or damaged archive this way
        raise ConfigError(
            f"{path}: not readable as a resume state ({str(err).splitlines()[0][:120]}); it is kept "
            "as it is. Run without --resume to train the run again from the start (which replaces "
            "it)"
        ) from None
    if not (
        isinstance(state, dict)
        and RESUME_KEYS <= set(state)
        and isinstance(state["trainable"], dict)
        and isinstance(state["state"], dict)
    ):
        raise ConfigError(
            f"{path}: not a resume state bertlab wrote (a mapping of {', '.join(sorted(RESUME_KEYS))}); "
            "it is kept as it is. Run with --force to train the run again from the start"
        )
    return state


def load_checkpoint(run_dir: Path, training: InTraining, run_key: dict) -> tuple[dict, dict | None]:
    """Restore everything save_checkpoint wrote, returning the loop's state and the best weights so far;
    refuse a checkpoint made under another config."""
    checkpoint = read_resume_state(run_dir / RESUME_STATE)
    differing = _differing_keys(checkpoint["run_key"], run_key)
    if differing:
        raise ConfigError(
            f"checkpoint {run_dir / RESUME_STATE} was made with a different config "
            f"({', '.join(differing)}); it cannot be resumed. Run without --resume to start over"
        )
    accelerator = training.accelerator
    try:
        accelerator.unwrap_model(training.model).load_state_dict(checkpoint["trainable"], strict=False)
        training.optimizer.load_state_dict(checkpoint["optimizer"])
        training.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"] is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(checkpoint["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{run_dir / RESUME_STATE}: does not fit the run's model or optimizer "
            f"({str(err).splitlines()[0][:120]}); run with --force to train it again"
        ) from None
    # each process continues its own generators; under another number of processes, the main one's
    by_process = checkpoint.get("rng_by_process")
    same_processes = by_process is not None and len(by_process) == accelerator.num_processes
    rng = by_process[accelerator.process_index] if same_processes else checkpoint["rng"]
    torch.set_rng_state(rng["torch"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    best_path = run_dir / BEST_WEIGHTS
    best = load_weights(best_path)[0] if best_path.exists() else None
    return checkpoint["state"], best


def saved_run_key(run_dir: Path) -> dict | None:
    """The run key `last.pt` was written under (None without one), read without loading its tensors."""
    path = run_dir / RESUME_STATE
    return read_resume_state(path, mmap=True)["run_key"] if path.exists() else None


def _differing_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            k
            for key in sorted(set(old) | set(new))
            for k in _differing_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [prefix.rstrip(".")] if old != new else []
