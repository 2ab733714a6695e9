"""Experiment trackers (TensorBoard, MLflow, W&B, ... through Accelerate's tracker classes): each run's settings,
per-epoch metrics and test scores, logged while it trains, one tracker run per bertlab run."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class RunTrackers:
    """The trackers of one run. Accelerate's classes log on the main process only."""

    def __init__(self, names: list[str], run_id: str, folder: Path, settings: dict):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.trackers = []
        for name in names:
            kind = LOGGER_TYPE_TO_CLASS[name]
            tracker = kind(run_id, str(folder)) if kind.requires_logging_directory else kind(run_id)
            tracker.start()
            tracker.store_init_configuration(loggable(settings))
            self.trackers.append(tracker)

    def log(self, values: dict, step: int) -> None:
        numbers = {
            k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        for tracker in self.trackers:
            tracker.log(numbers, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def loggable(settings: dict) -> dict:
    """Settings as trackers take them: bool, str, int, float or None; lists and dicts as JSON text."""
    return {
        k: v if v is None or isinstance(v, (bool, str, int, float)) else json.dumps(v)
        for k, v in settings.items()
    }


@contextmanager
def run_trackers(names: list[str], run_id: str, folder: Path, settings: dict) -> Iterator[RunTrackers]:
    trackers = RunTrackers(names, run_id, folder, settings)
    try:
        yield trackers
    finally:
        trackers.finish()
