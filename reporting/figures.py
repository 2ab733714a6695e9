"""What every plot reads: the completed runs of one experiment, its summary and data report, and where the
files go; a plot that lacks what it needs raises NothingToDraw with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from reporting.summary import task_of  # noqa: E402
from reporting.verdict import headline_rows  # noqa: E402
from tasks import Metric, Task  # noqa: E402
from records.shape import RunRecord

plt.rcParams.update({"font.size": 11, "axes.titlesize": 13, "figure.dpi": 120})


class NothingToDraw(Exception):
    """A plot the records cannot give: its message says what it needs."""


@dataclass
class Figures:
    """The plots of one experiment: its runs (completed ones only), summary, data report and plots folder."""

    runs: list[RunRecord]
    summary: dict
    folder: Path
    data_report: dict | None = None
    # a search's strategies run by the grid on the same data
    grid_runs: list[RunRecord] = field(default_factory=list)
    task: Task = field(init=False)

    def __post_init__(self):
        self.runs = [r for r in self.runs if r["status"] == "completed"]
        self.task = task_of(self.runs)
        self.rows, self.metric = self.summary["rows"], self.summary["metric"]
        self.dataset = self.runs[0]["dataset"]["name"]
        self.model = ", ".join(sorted({r["model"] for r in self.runs}))
        self.headline, largest = headline_rows(self.rows)
        self.headline_note = "" if largest is None else f", {largest} examples per class"

    def metrics_of(self, rows: list[dict]) -> list[Metric]:
        """The summary metrics every row has (records made before a metric existed lack it)."""
        return [
            m for m in self.task.summary_metrics() if all(r["test"][m.name]["mean"] is not None for r in rows)
        ]

    def runs_of(self, row: dict) -> list[RunRecord]:
        return [r for r in self.runs if r["config_id"] == row["config_id"]]

    def save(self, fig, name: str) -> str:
        """Write the figure as `name` into the plots folder; returns the name."""
        fig.tight_layout()
        fig.savefig(self.folder / name)
        plt.close(fig)
        return name


def slanted_if_long(names: list[str]) -> dict:
    """Tick label settings for class names: slanted when they would run into each other level."""
    crowded = len(names) > 6 or max(len(name) for name in names) > 9
    return {"rotation": 30, "ha": "right"} if crowded else {}
