"""Plots from the results file alone (never a model):

    python visualize.py [--output-dir outputs] [--dataset NAME]

writes outputs/plots/convergence_train_loss.png, convergence_val_loss.png, performance_comparison.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from utils import read_results  # noqa: E402

plt.rcParams.update({"font.size": 11, "axes.titlesize": 13, "figure.dpi": 120})


def run_label(run: dict, runs: list[dict]) -> str:
    """The strategy name, plus the run id's hash where one strategy has several runs."""
    same = [r for r in runs if r["strategy"] == run["strategy"]]
    return run["strategy"] if len(same) == 1 else f"{run['strategy']} ({run['run_id'].rsplit('-', 1)[-1][:6]})"


def plot_convergence(runs: list[dict], key: str, ylabel: str, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for run in runs:
        epochs = [h["epoch"] for h in run["history"]]
        ax.plot(epochs, [h[key] for h in run["history"]], marker="o", label=run_label(run, runs))
        if key == "val_loss" and run.get("best_epoch"):
            best = next(h for h in run["history"] if h["epoch"] == run["best_epoch"])
            ax.scatter([best["epoch"]], [best[key]], s=140, facecolors="none", edgecolors="black", zorder=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(title="strategy" if key != "val_loss" else "strategy (circle: best epoch)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_performance(runs: list[dict], baseline: dict | None, title: str, path: Path) -> None:
    labels = [run_label(r, runs) for r in runs]
    metrics = [("accuracy", "test accuracy"), ("macro_f1", "test macro-F1")]
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(runs) + 2), 5.2))
    for offset, (key, name) in zip((-width / 2, width / 2), metrics):
        xs = [i + offset for i in range(len(runs))]
        values = [r["test"][key] for r in runs]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8, padding=2)
    if baseline:
        ax.axhline(baseline["accuracy"], color="gray", linestyle="--", linewidth=1,
                   label=f"majority-class accuracy ({baseline['accuracy']:.3f})")
    ax.set_xticks(range(len(runs)), [f"{label}\n{r['trainable_pct']:.3g}% trainable" for label, r in zip(labels, runs)],
                  fontsize=9)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("score (0 to 1)")
    ax.set_title(title)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot the results of main.py.")
    parser.add_argument("--output-dir", default="outputs", help="the config's output.dir (default: outputs)")
    parser.add_argument("--dataset", help="data set name to plot (default: that of the latest run)")
    args = parser.parse_args(argv)
    output = Path(args.output_dir)
    results_path = output / "results" / "all_results.json"
    completed = [r for r in read_results(results_path) if r["status"] == "completed"]
    if not completed:
        print(f"error: no completed runs in {results_path}; run python main.py first", file=sys.stderr)
        return 2
    dataset = args.dataset or max(completed, key=lambda r: r["finished_at"])["dataset"]["name"]
    runs = [r for r in completed if r["dataset"]["name"] == dataset]
    if not runs:
        print(f"error: no completed runs on data set '{dataset}' in {results_path}", file=sys.stderr)
        return 2
    plots = output / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    model = ", ".join(sorted({r["model"] for r in runs}))
    plot_convergence(runs, "train_loss", "mean training loss (cross-entropy)",
                     f"Training loss per epoch: {dataset}, {model}", plots / "convergence_train_loss.png")
    plot_convergence(runs, "val_loss", "validation loss (cross-entropy)",
                     f"Validation loss per epoch: {dataset}, {model}", plots / "convergence_val_loss.png")
    plot_performance(runs, runs[-1]["dataset"].get("majority_baseline"),
                     f"Test scores at the best validation epoch: {dataset}", plots / "performance_comparison.png")
    print(f"{len(runs)} run(s) on '{dataset}' plotted into {plots}/: convergence_train_loss.png, "
          "convergence_val_loss.png, performance_comparison.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
