"""Measurements a run records about itself: peak memory, where its time went, the device and the
library versions."""

from __future__ import annotations

import ctypes
import gc
import platform
import threading
import time
from contextlib import contextmanager, suppress

import psutil
import torch

# resident memory is read this often on a CPU: a peak shorter than this can slip by
MEMORY_SAMPLE_SECONDS = 0.01


class PeakMemory:
    """The peak memory of one run, from here to `stop()`, and what it measures. On a GPU: the CUDA allocator's
    peak. On a CPU: how far this process's resident set rose above its level at the start, sampled every
    MEMORY_SAMPLE_SECONDS. Memory freed before the start is handed back to the system first, or a run could
    reuse what the previous run freed and seem to need nothing."""

    def __init__(self, device: torch.device):
        gc.collect()  # the previous run's model and optimizer must not count towards this run's peak
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        with suppress(OSError, AttributeError):  # glibc only; elsewhere the allocator keeps what it keeps
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.sampling = True
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self) -> None:
        while self.sampling:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(MEMORY_SAMPLE_SECONDS)

    def stop(self) -> tuple[float, str]:
        """Megabytes, and the name of the measure."""
        if self.cuda:
            return round(torch.cuda.max_memory_allocated() / 2**20, 1), "cuda_max_allocated"
        self.sampling = False
        self.sampler.join()
        return round((self.peak - self.start) / 2**20, 1), "rss_rise_during_run"


@contextmanager
def stopwatch(totals: dict[str, float], key: str):
    """Add the seconds spent inside the block to totals[key]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        totals[key] += time.perf_counter() - start


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "accelerate", "datasets", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
