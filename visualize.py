"""Plots and a report from the result files alone (never a model):

    python visualize.py [--output-dir outputs] [--dataset NAME]

reads outputs/results/all_results.json (the runs of the latest `main.py` experiment, named in
experiment.json beside it; with --dataset, every completed run on that data set) and writes into
outputs/plots/ the plots that have data, then outputs/report.html: one self-contained page that opens
with the verdict, then the tables, each plot with what to look for in it, and how to reproduce it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from records.results import search_records, select_runs
from records.shared import DamagedFile
from reporting.data_report import read_report
from reporting.figures import Figures
from reporting.page import write_report
from reporting.plots import caption, draw
from reporting.summary import summarize, task_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot the results of main.py and write a report.")
    parser.add_argument("--output-dir", default="outputs", help="the config's output.dir (default: outputs)")
    parser.add_argument(
        "--dataset", help="plot every run on this data set (default: the latest experiment's runs)"
    )
    args = parser.parse_args(argv)
    try:
        return visualize(Path(args.output_dir), args.dataset)
    except DamagedFile as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def visualize(output: Path, dataset: str | None) -> int:
    runs, experiment = select_runs(output, dataset)
    if not any(r["status"] == "completed" for r in runs):
        print(
            f"error: no completed runs to plot in {output / 'results' / 'all_results.json'}"
            + (f" on data set '{dataset}'" if dataset else "; run python main.py first"),
            file=sys.stderr,
        )
        return 2
    completed = [r for r in runs if r["status"] == "completed"]
    metric = experiment["config"]["training"]["early_stopping"]["metric"] if experiment else None
    trials, grid = search_records(output, experiment)
    summary = summarize(runs, metric or task_of(completed).default_metric, trials)
    plots = output / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    figures = Figures(
        runs, summary, plots, read_report(output / "results", completed[0]["dataset"]["fingerprint"]), grid
    )
    drawn, skipped = draw(figures)
    write_report(
        output / "report.html",
        summary,
        runs,
        experiment,
        [(plots / name, caption(name)) for name in drawn],
        skipped,
        figures.data_report,
    )
    print(
        f"{len(figures.runs)} run(s) on '{figures.dataset}': wrote {len(drawn)} plot(s) into {plots}/: {', '.join(drawn)}"
    )
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    print(f"report: {output / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
