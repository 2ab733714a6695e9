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

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from report import best_run, summarize, task_of, write_report  # noqa: E402
from verdict import configuration_label, headline_rows  # noqa: E402
from data_report import DATA_REPORT, read_report  # noqa: E402
from results import select_runs  # noqa: E402

plt.rcParams.update({"font.size": 11, "axes.titlesize": 13, "figure.dpi": 120})


def slanted_if_long(names: list[str]) -> dict:
    """Tick label settings for class names: slanted when they would run into each other level."""
    crowded = len(names) > 6 or max(len(name) for name in names) > 9
    return {"rotation": 30, "ha": "right"} if crowded else {}


# What to look for in each plot, by file name (a task's plots per strategy share their prefix's caption).
CAPTIONS = {
    "class_distribution": "Bars of very different heights mean imbalanced classes: judge by macro-F1 and the worst "
                          "class's F1, not by accuracy alone.",
    "length_distribution": "Texts right of the max_length line are cut off; if many are, raise model.max_length "
                           "(or set it to auto).",
    "convergence_train_loss": "Training loss should fall and level off; still falling at the last epoch means more "
                              "epochs may help.",
    "convergence_val_loss": "Validation loss rising while training loss falls is over-fitting; early stopping keeps "
                            "the best epoch.",
    "performance_comparison": "Each strategy's chosen setting on test; bars close together may not differ at all: "
                              "the verdict's paired test says which do.",
    "few_shot_learning": "How each strategy's score grows with examples per class: where curves cross, the better "
                         "choice depends on how much labelled data you have.",
    "lr_ablation": "Validation score against learning rate (the star is the chosen one): a best rate at the edge of "
                   "the range means a better one may lie beyond it.",
    "lora_rank_ablation": "Whether a larger LoRA rank buys any score: a flat line means the smallest rank is enough.",
    "efficiency": "Score against cost: strategies towards the top left give the most for the least.",
    "confusion_matrix": "Off-diagonal cells are the mistakes: which classes this strategy confuses with which.",
    "per_class_f1": "A class low under every strategy is hard in the data itself; low under one strategy only, it is "
                    "that strategy's weakness.",
    "calibration": "Points on the diagonal mean the stated confidence matches the accuracy; below it, the model is "
                   "over-confident.",
    "predicted_vs_true": "Points on the diagonal are exact; a cloud flatter than the diagonal means predictions pulled "
                         "towards the mean, a band of points at one height a model that says the same for all.",
}


def caption(file_name: str) -> str:
    stem = Path(file_name).stem
    return next(text for prefix, text in sorted(CAPTIONS.items(), key=lambda item: -len(item[0]))
                if stem.startswith(prefix))


class Plotter:
    """The plots of one experiment. Each method returns None when drawn, or why it was skipped."""

    def __init__(self, runs: list[dict], summary: dict, folder: Path, data_report: dict | None = None):
        self.runs = [r for r in runs if r["status"] == "completed"]
        self.task = task_of(self.runs)
        self.summary, self.folder = summary, folder
        self.rows = summary["rows"]
        self.metric = summary["metric"]
        self.dataset = self.runs[0]["dataset"]["name"]
        self.model = ", ".join(sorted({r["model"] for r in self.runs}))
        self.headline, largest = headline_rows(self.rows)
        self.headline_note = "" if largest is None else f", {largest} examples per class"
        self.data_report = data_report

    def metrics_of(self, rows: list[dict]) -> list:
        """The summary metrics every row has (records made before a metric existed lack it)."""
        return [m for m in self.task.summary_metrics() if all(r["test"][m.name]["mean"] is not None for r in rows)]

    def runs_of(self, row: dict) -> list[dict]:
        return [r for r in self.runs if r.get("config_id", r["run_id"]) == row["config_id"]]

    def save(self, fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(self.folder / name)
        plt.close(fig)

    def class_distribution(self) -> str | None:
        if self.data_report is None:
            return f"needs the data report ({DATA_REPORT}); main.py writes it"
        if "class_counts" not in self.data_report:
            return "the labels are not one class per text: the report's data section gives them per split"
        counts = self.data_report["class_counts"]
        names = sorted(counts["train"], key=lambda name: (-counts["train"][name], name))
        fig, ax = plt.subplots(figsize=(min(4 + 0.55 * len(names), 24), 5))
        bottom = np.zeros(len(names))
        for split in ("train", "validation", "test"):
            values = np.array([counts[split][name] for name in names])
            ax.bar(range(len(names)), values, bottom=bottom, label=f"{split} ({values.sum():,})")
            bottom += values
        if len(names) <= 30:
            ax.set_xticks(range(len(names)), names, **slanted_if_long(names))
        else:
            ax.set_xticks([])
            ax.set_xlabel(f"{len(names)} classes, most frequent first")
        ax.set_ylabel("examples")
        ax.set_title(f"Examples per class and split: {self.dataset}\n(imbalance ratio {self.data_report['imbalance_ratio']:.1f}: "
                     "largest / smallest training class)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(title="split (examples)", fontsize=9, title_fontsize=9)
        self.save(fig, "class_distribution.png")
        return None

    def length_distribution(self) -> str | None:
        if self.data_report is None:
            return f"needs the data report ({DATA_REPORT}); main.py writes it"
        lengths = self.data_report["token_lengths"]
        edges = np.array(lengths["histogram_edges"])
        beyond = lengths.get("beyond_max_length", "truncated")  # reports made before it said so were truncations
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for split in ("train", "validation", "test"):
            counts = np.array(lengths[split]["histogram"])
            ax.stairs(counts / max(counts.sum(), 1), edges, label=f"{split} (median {lengths[split]['median']:.0f}, "
                      f"{100 * lengths[split]['truncated_share']:.1f}% {beyond})")
        ax.axvline(lengths["max_length"], color="black", linestyle="--", linewidth=1,
                   label=f"max_length {lengths['max_length']}: longer texts are "
                         f"{'cut' if beyond == 'truncated' else 'read in windows'}")
        ax.set_xlabel(f"tokens per text ({lengths['model']} tokenizer, special tokens included)")
        ax.set_ylabel("share of the split's texts")
        ax.set_title(f"Text lengths in tokens: {self.dataset}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        self.save(fig, "length_distribution.png")
        return None

    def convergence(self, key: str, ylabel: str, name: str) -> str | None:
        fig, ax = plt.subplots(figsize=(8, 5))
        for row in self.headline:
            runs = self.runs_of(row)
            epochs = range(1, max(len(r["history"]) for r in runs) + 1)
            # early stopping ends runs at different epochs: each epoch averages the runs that reached it
            values = [[h[key] for r in runs for h in r["history"] if h["epoch"] == e] for e in epochs]
            mean = np.array([np.mean(v) for v in values])
            std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
            fitted = all(r.get("optimizer_steps") == 0 for r in runs)  # a head fitted in one go: one point
            line, = ax.plot(list(epochs), mean, marker="o", label=f"{configuration_label(row)}, {len(runs)} run(s)"
                            + (", fitted, not trained by epoch" if fitted else ""))
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
        fig, ax = plt.subplots(figsize=(max(7, 1.9 * len(rows) + 2), 5.4))
        # scores, where higher is better (errors are on the scale of the labels, and read the other way)
        metrics = [m for m in self.metrics_of(rows) if m.higher_is_better]
        width = 0.76 / len(metrics)
        for i, metric in enumerate(metrics):
            means = [r["test"][metric.name]["mean"] for r in rows]
            stds = [r["test"][metric.name]["std"] or 0.0 for r in rows]
            offset = (i - (len(metrics) - 1) / 2) * width
            bars = ax.bar([j + offset for j in range(len(rows))], means, width, yerr=stds, capsize=4,
                          label=f"test {metric.label}")
            ax.bar_label(bars, labels=[f"{m:.3f}" for m in means], fontsize=8, padding=3)
        baseline = self.runs[0]["dataset"].get("majority_baseline")
        if baseline:
            first = metrics[0]
            ax.axhline(baseline[first.name], color="gray", linestyle="--", linewidth=1,
                       label=f"{self.task.baseline_label} {first.label} ({baseline[first.name]:.3f})")
        runs = [r["test"][metrics[0].name]["n"] for r in rows]
        ax.set_xticks(range(len(rows)), [f"{r['strategy']}\n{n} run(s)" for r, n in zip(rows, runs)], fontsize=9)
        lowest = min(r["test"][m.name]["mean"] for r in rows for m in metrics)
        ax.set_ylim(min(0, lowest - 0.1), 1.15)  # a correlation may be negative
        ax.set_ylabel("score (at most 1)")
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
        metrics = self.metrics_of(rows)
        fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.8), squeeze=False)
        axes = axes[0]
        for ax, metric in zip(axes, metrics):
            name = f"test {metric.label}"
            for strategy in strategies:
                points = sorted((r for r in rows if r["strategy"] == strategy), key=lambda r: r["shots_per_class"])
                shots = [r["shots_per_class"] for r in points]
                mean = np.array([r["test"][metric.name]["mean"] for r in points])
                std = np.array([r["test"][metric.name]["std"] or 0.0 for r in points])
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
        axes[-1].legend(title="strategy (band: ±1 std over draws and seeds)", fontsize=9, title_fontsize=9)
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
        main = self.task.main_metric
        panels = [(lambda r: r["validation"], self.task.label(self.metric) + " (chooses)"),
                  (lambda r: r["test"][main], self.task.label(f"test_{main}") + " (reported)")]
        for ax, (column, ylabel) in zip(axes, panels):
            for strategy, (points, chosen) in series.items():
                xs = [r["varied"][key] for r in points]
                ax.errorbar(xs, [column(r)["mean"] for r in points], yerr=[column(r)["std"] or 0.0 for r in points],
                            marker="o", capsize=4, label=strategy)
                ax.scatter([chosen["varied"][key]], [column(chosen)["mean"]], marker="*", s=260, color="black",
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
        main = self.task.main_metric
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        for ax, (column, xlabel, log) in zip(axes, [("trainable_params", "trainable parameters (log scale)", True),
                                                     ("train_time_s", "training time per run (s)", False)]):
            for row in rows:
                x = row[column] if column == "trainable_params" else row[column]["mean"]
                xerr = None if column == "trainable_params" else (row[column]["std"] or 0.0)
                score = row["test"][main]
                ax.errorbar([x], [score["mean"]], xerr=xerr, yerr=score["std"] or 0.0,
                            marker="o", markersize=8, capsize=4, linestyle="none", label=row["strategy"])
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{self.task.label('test_' + main)} (0 to 1)")
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
        for row in self.headline:
            runs = [r for r in self.runs_of(row) if "test_labels" in r]
            if not runs:
                continue
            run = best_run(runs, self.metric, self.task)
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

    def predicted_vs_true(self) -> list[str]:
        """One panel per strategy: the test predictions of its best run (highest validation score) against the truth."""
        rows = [(row, best_run(runs, self.metric, self.task)) for row in self.headline
                if (runs := [r for r in self.runs_of(row) if "test_labels" in r])]
        if not rows:
            return []
        columns = min(len(rows), 3)
        lines = -(-len(rows) // columns)
        fig, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 4.6 * lines + 0.6), squeeze=False)
        truth_all = np.concatenate([run["test_labels"] for _, run in rows])
        predicted_all = np.concatenate([run["test_predictions"] for _, run in rows])
        low, high = min(truth_all.min(), predicted_all.min()), max(truth_all.max(), predicted_all.max())
        margin = 0.04 * (high - low or 1)
        name = rows[0][1]["dataset"]["label_names"][0]
        for ax, (row, run) in zip(axes.flat, rows):
            ax.scatter(run["test_labels"], run["test_predictions"], s=10, alpha=0.5)
            ax.plot([low, high], [low, high], color="gray", linestyle="--", linewidth=1, label="exact")
            ax.set_xlim(low - margin, high + margin)
            ax.set_ylim(low - margin, high + margin)
            ax.set_aspect("equal")
            test = run["test"]
            ax.set_title(f"{row['strategy']}: Spearman {test['spearman']:.3f}, RMSE {test['rmse']:.3f}", fontsize=10)
            ax.set_xlabel(f"true {name}")
            ax.set_ylabel(f"predicted {name}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="upper left")
        for ax in list(axes.flat)[len(rows):]:
            ax.axis("off")
        fig.suptitle(f"Predicted against true on test (each strategy's best run)\n{self.dataset}, {self.model}"
                     f"{self.headline_note}")
        self.save(fig, "predicted_vs_true.png")
        return ["predicted_vs_true.png"]

    def per_class_f1(self) -> list[str]:
        """Mean test F1 of every class (or entity type) under every configuration, rarest first."""
        rows = [r for r in self.rows if r["shots_per_class"] == self.headline[0]["shots_per_class"]
                and r["validation"]["mean"] is not None]
        if not rows or not all("per_class" in r["test"] for run in rows for r in self.runs_of(run)):
            return []
        first = self.runs_of(rows[0])[0]
        counts, counted, kind = first["dataset"]["label_distribution"]["train"], "training examples", "class"
        if not set(first["test"]["per_class"]) <= set(counts):  # entity types, counted in test; tags in training
            counts = {name: c["support"] for name, c in first["test"]["per_class"].items()}
            counted, kind = "test entities", "entity type"
        names = sorted(counts, key=lambda name: (counts[name], name))
        f1 = np.array([[np.mean([r["test"]["per_class"][name]["f1"] for r in self.runs_of(row)]) for name in names]
                       for row in rows])
        fig, ax = plt.subplots(figsize=(min(5 + 0.8 * len(names), 24), 2.2 + 0.45 * len(rows)))
        image = ax.imshow(f1, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        if len(names) <= 20:
            for i in range(len(rows)):
                for j in range(len(names)):
                    ax.text(j, i, f"{f1[i, j]:.2f}", ha="center", va="center", fontsize=9)
            ax.set_xticks(range(len(names)), [f"{name}\n({counts[name]})" for name in names], fontsize=9,
                          **slanted_if_long(names))
        else:
            ax.set_xlabel(f"{kind}s, rarest first")
        ax.set_yticks(range(len(rows)), [f"{configuration_label(r)}{' *' if r['chosen'] else ''}" for r in rows], fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="test F1")
        ax.set_title(f"Test F1 per {kind}, rarest first: {self.dataset}, {self.model}{self.headline_note}\n"
                     f"(mean over runs; in brackets: {counted}; * chosen setting)", fontsize=10)
        self.save(fig, "per_class_f1.png")
        return ["per_class_f1.png"]

    def calibration(self) -> list[str]:
        """Reliability diagram: per confidence bin, how often the chosen setting of each strategy was right
        (bins pooled over its runs); on the diagonal, confidence means what it says."""
        fig, (ax, counts_ax) = plt.subplots(2, 1, figsize=(7, 7.5), height_ratios=[3, 1], sharex=True)
        drawn = False
        for row in self.headline:
            runs = [r for r in self.runs_of(row) if "calibration" in r["test"]]
            if not runs:
                continue
            count = np.sum([r["test"]["calibration"]["count"] for r in runs], axis=0)
            bins = len(count)
            sums = {key: np.sum([[(v or 0.0) * n for v, n in zip(r["test"]["calibration"][key], r["test"]["calibration"]["count"])]
                                 for r in runs], axis=0) for key in ("confidence", "accuracy")}
            filled = count > 0
            confidence, accuracy = sums["confidence"][filled] / count[filled], sums["accuracy"][filled] / count[filled]
            ece = np.mean([r["test"]["ece"] for r in runs])
            line, = ax.plot(confidence, accuracy, linewidth=1, alpha=0.6,
                            label=f"{row['strategy']} (ECE {ece:.3f}, {len(runs)} run(s))")
            # a bin of one or two predictions says little: the marker's area shows how many the point rests on
            ax.scatter(confidence, accuracy, s=12 + 300 * count[filled] / count.sum(), color=line.get_color(), zorder=3)
            centres = (np.arange(bins) + 0.5) / bins
            counts_ax.plot(centres[filled], count[filled] / count.sum(), marker=".", color=line.get_color())
            drawn = True
        if not drawn:
            plt.close(fig)
            return []
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
        ax.set_ylabel("accuracy in the bin")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="lower right", title="marker area: share of predictions in the bin", title_fontsize=9)
        ax.set_title(f"Calibration on test: is a prediction made with confidence p right p of the time?\n"
                     f"{self.dataset}, {self.model}{self.headline_note}", fontsize=11)
        counts_ax.set_xlabel("confidence: the predicted class's probability (bins of 1/15)")
        counts_ax.set_ylabel("share of\npredictions")
        counts_ax.set_xlim(0, 1)
        counts_ax.grid(alpha=0.3)
        self.save(fig, "calibration.png")
        return ["calibration.png"]


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
    completed = [r for r in runs if r["status"] == "completed"]
    metric = experiment["config"]["training"]["early_stopping"]["metric"] if experiment else None
    summary = summarize(runs, metric or task_of(completed).default_metric)
    plots = output / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plotter = Plotter(runs, summary, plots, read_report(output / "results", completed[0]["dataset"]["fingerprint"]))
    attempts = {
        "class_distribution.png": plotter.class_distribution,
        "length_distribution.png": plotter.length_distribution,
        "convergence_train_loss.png": lambda: plotter.convergence(
            "train_loss", f"training loss ({plotter.task.loss_label})", "convergence_train_loss.png"),
        "convergence_val_loss.png": lambda: plotter.convergence(
            "val_loss", f"validation loss ({plotter.task.loss_label})", "convergence_val_loss.png"),
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
    for task_plot in plotter.task.plots:  # the task's own plots, each returning the files it wrote
        drawn += getattr(plotter, task_plot)()
    write_report(output / "report.html", summary, runs, experiment, [(plots / name, caption(name)) for name in drawn],
                 skipped, plotter.data_report)
    print(f"{len(plotter.runs)} run(s) on '{plotter.dataset}': wrote {len(drawn)} plot(s) into {plots}/: {', '.join(drawn)}")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    print(f"report: {output / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
