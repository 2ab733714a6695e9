"""Small helpers that several modules share: the user-mistake exception, seeding, stable hashes, which
process of a launch this is, and file writes that never leave half a file behind."""

from __future__ import annotations

import contextlib
import errno
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


def shown(value, limit: int = 60) -> str:
    """A value as an error line shows it: its repr, cut to `limit` characters (a line never carries a whole
    file's worth of a value)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


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


class WriteError(ConfigError):
    """A file this program must write cannot be: a full disk, a read-only or missing place, a file where a
    folder should be. One line naming the path and why."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(
            f"cannot write {path}: {err.strerror or type(err).__name__}"
            + (
                "; free some space and run the same command again (finished runs are kept)"
                if err.errno == errno.ENOSPC
                else ""
            )
        )


def writable_folder(path: Path, key: str) -> Path:
    """`path` as a folder this program can write into (made if missing), or one line saying why it cannot be."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: '{path}' is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"{key}: cannot make the folder '{path}': {err.strerror or type(err).__name__}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: the folder '{path}' is not writable")
    return path


@contextlib.contextmanager
def atomic_open(path: Path):
    """A binary file that appears at `path` only once fully written (temporary file, fsync, rename),
    so readers and resumed runs never see half a file. Only the main process of a launch writes: the
    others compute the same results, and what they write here is dropped."""
    if not is_main_process():
        with open(os.devnull, "wb") as sink:
            yield sink
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise WriteError(path, err) from None
    try:
        # mkstemp makes files private; results are shared like any file written
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, ConfigError):
            raise WriteError(path, err) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
