"""Small helpers that several modules share: the user-mistake exception, seeding, stable hashes, which
process of a launch this is, and file writes that never leave half a file behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class ConfigError(Exception):
    """A user mistake (config, command line or data): shown as one line, exit status 2."""


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stable_hash(obj, length: int = 12) -> str:
    """A short hash of JSON-able data that does not depend on dict order or the process."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def process_state():
    """Accelerate's view of this process: its rank among the processes of a launch (`accelerate launch`,
    `torchrun`) and their number. Without a GPU, such a launch communicates through gloo."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)


def is_main_process() -> bool:
    return process_state().is_main_process


@contextlib.contextmanager
def atomic_open(path: Path):
    """A binary file that appears at `path` only once fully written (temporary file, fsync, rename),
    so readers and resumed runs never see half a file. Only the main process of a launch writes: the
    others compute the same results, and what they write here is dropped."""
    if not is_main_process():
        with open(os.devnull, "wb") as sink:
            yield sink
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; results are shared like any file written
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
