"""Plots and a report from the result files alone (never a model):

    python visualize.py [--output-dir outputs] [--dataset NAME]

reads outputs/results/all_results.json (the runs of the latest `main.py` experiment, named in
experiment.json beside it; with --dataset, every completed run on that data set) and writes into
outputs/plots/ the plots that have data, then outputs/report.html with the config, the summary,
the paired comparisons and every plot embedded, to send as one file.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from utils import COMPARISON_NOTE, read_results, summarize, summary_tables, validation_score  # noqa: E402

plt.rcParams.update({"font.size": 11, "axes.titlesize": 13, "figure.dpi": 120})
METRIC_NAMES = {"val_loss": "validation loss", "val_accuracy": "validation accuracy",
                "val_macro_f1": "validation macro-F1"}


class Plotter:
    """The plots of one experiment. Each method returns None when drawn, or why it was skipped."""

    def __init__(self, runs: list[dict], summary: dict, folder: Path):
        self.runs = [r for r in runs if r["status"] == "completed"]
        self.summary, self.folder = summary, folder
        self.rows = summary["rows"]
        self.metric = summary["metric"]
        self.dataset = self.runs[0]["dataset"]["name"]
        self.model = ", ".join(sorted({r["model"] for r in self.runs}))
        chosen = [r for r in self.rows if r["chosen"]]
        # Headline plots use the full training set; a few-shot-only experiment, its largest k.
        full_data = [r for r in chosen if r["shots_per_class"] is None]
        largest = max((r["shots_per_class"] for r in chosen if r["shots_per_class"]), default=None)
        self.headline = full_data or [r for r in chosen if r["shots_per_class"] == largest]
        self.headline_note = "" if full_data else f", {largest} examples per class"

    def runs_of(self, row: dict) -> list[dict]:
        return [r for r in self.runs if r.get("config_id", r["run_id"]) == row["config_id"]]

    def label(self, row: dict) -> str:
        extra = [f"{k}={v}" for k, v in row["varied"].items()]
        return row["strategy"] + (f" ({', '.join(extra)})" if extra else "")

    def save(self, fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(self.folder / name)
        plt.close(fig)

    def convergence(self, key: str, ylabel: str, name: str) -> str | None:
        fig, ax = plt.subplots(figsize=(8, 5))
        for row in self.headline:
            runs = self.runs_of(row)
            epochs = range(1, max(len(r["history"]) for r in runs) + 1)
            # early stopping ends runs at different epochs: each epoch averages the runs that reached it
            values = [[h[key] for r in runs for h in r["history"] if h["epoch"] == e] for e in epochs]
            mean = np.array([np.mean(v) for v in values])
            std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
            line, = ax.plot(list(epochs), mean, marker="o", label=f"{self.label(row)}, {len(runs)} run(s)")
            if len(runs) > 1:
                ax.fill_between(list(epochs), mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel[0].upper() + ylabel[1:]} per epoch\n{self.dataset}, {self.model}{self.headline_note}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(title="chosen setting per strategy (band: ±1 std over runs)", fontsize=9, title_fontsize=9)
        self.save(fig, name)
        return None

    def performance(self) -> str | None:
        rows = self.headline
        width = 0.38
        fig, ax = plt.subplots(figsize=(max(7, 1.9 * len(rows) + 2), 5.4))
        for offset, (key, name) in zip((-width / 2, width / 2),
                                       [("test_accuracy", "test accuracy"), ("test_macro_f1", "test macro-F1")]):
            means = [r[key]["mean"] for r in rows]
            stds = [r[key]["std"] or 0.0 for r in rows]
            bars = ax.bar([i + offset for i in range(len(rows))], means, width, yerr=stds, capsize=4, label=name)
            ax.bar_label(bars, labels=[f"{m:.3f}" for m in means], fontsize=8, padding=3)
        baseline = self.runs[0]["dataset"].get("majority_baseline")
        if baseline:
            ax.axhline(baseline["accuracy"], color="gray", linestyle="--", linewidth=1,
                       label=f"majority-class accuracy ({baseline['accuracy']:.3f})")
        ax.set_xticks(range(len(rows)), [f"{r['strategy']}\n{r['test_accuracy']['n']} run(s)" for r in rows], fontsize=9)
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("score (0 to 1)")
        ax.set_title(f"Test scores of each strategy's chosen setting\n{self.dataset}, {self.model}{self.headline_note}")
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False,
                  title="error bars: ±1 std over runs; setting chosen on validation", title_fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        self.save(fig, "performance_comparison.png")
        return None

    def few_shot(self) -> str | None:
        rows = [r for r in self.rows if r["chosen"] and r["shots_per_class"] is not None]
        strategies = list(dict.fromkeys(r["strategy"] for r in rows))
        if len({r["shots_per_class"] for r in rows}) < 2:
            return "needs few-shot runs at two or more shot counts (few_shot.enabled: true)"
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        for ax, (key, name) in zip(axes, [("test_accuracy", "test accuracy"), ("test_macro_f1", "test macro-F1")]):
            for strategy in strategies:
                points = sorted((r for r in rows if r["strategy"] == strategy), key=lambda r: r["shots_per_class"])
                shots = [r["shots_per_class"] for r in points]
                mean = np.array([r[key]["mean"] for r in points])
                std = np.array([r[key]["std"] or 0.0 for r in points])
                line, = ax.plot(shots, mean, marker="o", label=strategy)
                ax.fill_between(shots, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            all_shots = sorted({r["shots_per_class"] for r in rows})
            ax.set_xscale("log", base=2)
            ax.set_xticks(all_shots, [str(k) for k in all_shots])
            ax.minorticks_off()
            ax.set_xlabel("training examples per class (log scale)")
            ax.set_ylabel(f"{name} (0 to 1)")
            ax.set_title(name)
            ax.grid(alpha=0.3)
        axes[1].legend(title="strategy (band: ±1 std over draws and seeds)", fontsize=9, title_fontsize=9)
        fig.suptitle(f"Few-shot learning curves: {self.dataset}, {self.model}; full validation and test splits")
        self.save(fig, "few_shot_learning.png")
        return None

    def ablation(self, key: str, strategies: list[str], xlabel: str, name: str, title: str) -> str | None:
        """Validation and test scores against one grid key, other grid values held at the chosen ones."""
        series = {}
        for chosen in (r for r in self.headline if r["strategy"] in strategies):
            others = {k: v for k, v in chosen["varied"].items() if k != key}
            points = [r for r in self.rows if r["strategy"] == chosen["strategy"] and key in r["varied"]
                      and r["shots_per_class"] == chosen["shots_per_class"] and r["validation"]["mean"] is not None
                      and all(r["varied"].get(k) == v for k, v in others.items())]
            if len(points) >= 2:
                series[chosen["strategy"]] = (sorted(points, key=lambda r: r["varied"][key]), chosen)
        if not series:
            return f"needs two or more values of {key} for a strategy"
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        panels = [("validation", METRIC_NAMES[self.metric] + " (chooses)"), ("test_macro_f1", "test macro-F1 (reported)")]
        for ax, (column, ylabel) in zip(axes, panels):
            for strategy, (points, chosen) in series.items():
                xs = [r["varied"][key] for r in points]
                ax.errorbar(xs, [r[column]["mean"] for r in points], yerr=[r[column]["std"] or 0.0 for r in points],
                            marker="o", capsize=4, label=strategy)
                ax.scatter([chosen["varied"][key]], [chosen[column]["mean"]], marker="*", s=260, color="black",
                           zorder=3)
            ax.set_xscale("log", base=10 if key == "learning_rate" else 2)
            if key != "learning_rate":
                values = sorted({r["varied"][key] for points, _ in series.values() for r in points})
                ax.set_xticks(values, [str(v) for v in values])
                ax.minorticks_off()
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0].legend(title="strategy (star: chosen; bars: ±1 std)", fontsize=9, title_fontsize=9)
        fig.suptitle(f"{title}: {self.dataset}, {self.model}{self.headline_note}")
        self.save(fig, name)
        return None

    def efficiency(self) -> str | None:
        rows = self.headline
        if len(rows) < 2:
            return "needs two or more strategies"
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        for ax, (column, xlabel, log) in zip(axes, [("trainable_params", "trainable parameters (log scale)", True),
                                                     ("train_time_s", "training time per run (s)", False)]):
            for row in rows:
                x = row[column] if column == "trainable_params" else row[column]["mean"]
                xerr = None if column == "trainable_params" else (row[column]["std"] or 0.0)
                ax.errorbar([x], [row["test_macro_f1"]["mean"]], xerr=xerr, yerr=row["test_macro_f1"]["std"] or 0.0,
                            marker="o", markersize=8, capsize=4, linestyle="none", label=row["strategy"])
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test macro-F1 (0 to 1)")
            ax.grid(alpha=0.3)
        axes[0].set_title("score against size of the update")
        axes[1].set_title("score against training time")
        axes[1].legend(title="chosen setting per strategy", fontsize=9, title_fontsize=9)
        fig.suptitle(f"What each strategy gives for what it costs: {self.dataset}, {self.model}{self.headline_note} "
                     "(up and left is better)")
        self.save(fig, "efficiency.png")
        return None

    def confusion_matrices(self) -> list[str]:
        """One per strategy: the test predictions of its best run (highest validation score)."""
        written = []
        lower_is_better = self.metric == "val_loss"
        for row in self.headline:
            runs = [r for r in self.runs_of(row) if "test_labels" in r]
            if not runs:
                continue
            run = sorted(runs, key=lambda r: validation_score(r, self.metric), reverse=not lower_is_better)[0]
            names = run["dataset"]["label_names"]
            counts = np.zeros((len(names), len(names)), dtype=int)
            np.add.at(counts, (run["test_labels"], run["test_predictions"]), 1)
            share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
            size = min(4 + 0.45 * len(names), 22)
            fig, ax = plt.subplots(figsize=(size + 1.5, size))
            image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
            if len(names) <= 20:
                for i in range(len(names)):
                    for j in range(len(names)):
                        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=9,
                                color="white" if share[i, j] > 0.6 else "black")
                ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
                ax.set_yticks(range(len(names)), names)
            ax.set_xlabel("predicted class")
            ax.set_ylabel("true class")
            fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class's test examples")
            ax.set_title(f"Confusion on test: {row['strategy']}, best run {run['run_id']}\n"
                         f"(numbers: test examples; accuracy {run['test']['accuracy']:.3f})", fontsize=11)
            name = f"confusion_matrix_{row['strategy']}.png"
            self.save(fig, name)
            written.append(name)
        return written


def select_runs(output: Path, dataset: str | None) -> tuple[list[dict], dict | None]:
    """The latest experiment's runs (experiment.json), or every run on `dataset`."""
    results = output / "results"
    records = read_results(results / "all_results.json")
    experiment_path = results / "experiment.json"
    experiment = json.loads(experiment_path.read_text()) if experiment_path.is_file() else None
    if dataset is None and experiment is not None:
        wanted = set(experiment["run_ids"])
        return [r for r in records if r["run_id"] in wanted], experiment
    completed = [r for r in records if r["status"] == "completed"]
    if dataset is None and completed:
        dataset = max(completed, key=lambda r: r["finished_at"])["dataset"]["name"]
    return [r for r in records if r["dataset"]["name"] == dataset], None


def write_report(path: Path, summary: dict, runs: list[dict], experiment: dict | None, images: list[Path],
                 skipped: dict[str, str]) -> None:
    """One HTML file with everything embedded, so it can be sent to a colleague as it is."""
    completed = [r for r in runs if r["status"] == "completed"]
    header, table, comparison_header, comparisons = summary_tables(summary)

    def html_table(head: list[str], body: list[list[str]]) -> str:
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
        return f"<table><thead><tr>{cells}</tr></thead><tbody>{rows}</tbody></table>"

    dataset = completed[0]["dataset"]
    baseline = dataset.get("majority_baseline") or {}
    failed = [r for r in runs if r["status"] != "completed"]
    parts = [
        f"<h1>bertlab report: {html.escape(dataset['name'])}</h1>",
        f"<p>{len(completed)} completed run(s), {len(failed)} failed; model {html.escape(completed[0]['model'])}; "
        f"data fingerprint {dataset['fingerprint']}; split sizes {html.escape(json.dumps(dataset['sizes']))}; "
        f"device {html.escape(completed[0].get('device', '?'))}; versions "
        f"{html.escape(', '.join(f'{k} {v}' for k, v in completed[0]['versions'].items()))}.</p>",
        "<h2>Configurations</h2>", html_table(header, table),
        f"<p>Mean ± standard deviation over runs (seeds and few-shot draws). The chosen setting of each strategy has the best mean "
        f"{METRIC_NAMES[summary['metric']]}; test scores are only reported, never used to choose. Majority-class "
        f"baseline on test: accuracy {baseline.get('accuracy', float('nan')):.4f}, macro-F1 "
        f"{baseline.get('macro_f1', float('nan')):.4f}.</p>",
    ]
    if summary["memory_note"]:
        parts.append(f"<p>{html.escape(summary['memory_note'])}</p>")
    if comparisons:
        parts += ["<h2>Paired comparisons of the chosen settings</h2>", html_table(comparison_header, comparisons),
                  f"<p>{html.escape(COMPARISON_NOTE)}</p>"]
    if failed:
        parts += ["<h2>Failed runs</h2>", html_table(["run", "error"], [[r["run_id"], r.get("error", "")] for r in failed])]
    parts.append("<h2>Plots</h2>")
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode()
        parts.append(f"<h3>{image.name}</h3><img alt='{image.name}' src='data:image/png;base64,{data}'>")
    if skipped:
        parts.append("<p>Not drawn: " + "; ".join(f"{html.escape(k)} ({html.escape(v)})" for k, v in skipped.items())
                     + ".</p>")
    if experiment:
        parts += [f"<h2>Config</h2><p>From {html.escape(experiment['config_file'])}, command: "
                  f"<code>{html.escape(experiment['command'])}</code></p>",
                  f"<pre>{html.escape(yaml.safe_dump(experiment['config'], sort_keys=False))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}"
             "pre{background:#f7f7f7;padding:1em;font-size:12px}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>bertlab report</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot the results of main.py and write a report.")
    parser.add_argument("--output-dir", default="outputs", help="the config's output.dir (default: outputs)")
    parser.add_argument("--dataset", help="plot every run on this data set (default: the latest experiment's runs)")
    args = parser.parse_args(argv)
    output = Path(args.output_dir)
    runs, experiment = select_runs(output, args.dataset)
    if not any(r["status"] == "completed" for r in runs):
        print(f"error: no completed runs to plot in {output / 'results' / 'all_results.json'}"
              + (f" on data set '{args.dataset}'" if args.dataset else "; run python main.py first"), file=sys.stderr)
        return 2
    metric = experiment["config"]["training"]["early_stopping"]["metric"] if experiment else "val_macro_f1"
    summary = summarize(runs, metric)
    plots = output / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plotter = Plotter(runs, summary, plots)
    attempts = {
        "convergence_train_loss.png": lambda: plotter.convergence("train_loss", "training loss (cross-entropy)",
                                                                  "convergence_train_loss.png"),
        "convergence_val_loss.png": lambda: plotter.convergence("val_loss", "validation loss (cross-entropy)",
                                                                "convergence_val_loss.png"),
        "performance_comparison.png": plotter.performance,
        "few_shot_learning.png": plotter.few_shot,
        "lr_ablation.png": lambda: plotter.ablation("learning_rate", [r["strategy"] for r in plotter.headline],
                                                    "peak learning rate (log scale)", "lr_ablation.png",
                                                    "Learning-rate ablation"),
        "lora_rank_ablation.png": lambda: plotter.ablation("rank", ["lora"], "LoRA rank (log scale)",
                                                           "lora_rank_ablation.png", "LoRA rank ablation"),
        "efficiency.png": plotter.efficiency,
    }
    drawn, skipped = [], {}
    for name, draw in attempts.items():
        reason = draw()
        if reason:
            skipped[name] = reason
        else:
            drawn.append(name)
    drawn += plotter.confusion_matrices()
    write_report(output / "report.html", summary, runs, experiment, [plots / name for name in drawn], skipped)
    print(f"{len(plotter.runs)} run(s) on '{plotter.dataset}': wrote {len(drawn)} plot(s) into {plots}/: {', '.join(drawn)}")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    print(f"report: {output / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
