"""The plots every experiment can have, drawn when its records hold what they need: the data's classes and
token lengths, losses per epoch, test scores, few-shot curves, ablations over a grid key, score against cost."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from reporting.data_report import DATA_REPORT
from reporting.figures import Figures, NothingToDraw, slanted_if_long
from reporting.verdict import configuration_label


def class_distribution(f: Figures) -> list[str]:
    if f.data_report is None:
        raise NothingToDraw(f"needs the data report ({DATA_REPORT}); main.py writes it")
    if "class_counts" not in f.data_report:
        raise NothingToDraw(
            "the labels are not one class per text: the report's data section gives them per split"
        )
    counts = f.data_report["class_counts"]
    names = sorted(counts["train"], key=lambda name: (-counts["train"][name], name))
    words = f.task.label_counts  # label sets: a text counts once for each label it has
    noun, counted, kind = f"{words.unit.capitalize()}s", words.counted, words.kind
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
        ax.set_xlabel(f"{len(names)} {kind}s, most frequent first")
    ax.set_ylabel(counted)
    ax.set_title(
        f"{noun} per {kind} and split: {f.dataset}\n(imbalance ratio "
        f"{f.data_report['imbalance_ratio']:.1f}: largest / smallest training {kind})"
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title=f"split ({words.total})", fontsize=9, title_fontsize=9)
    return [f.save(fig, "class_distribution.png")]


def length_distribution(f: Figures) -> list[str]:
    if f.data_report is None:
        raise NothingToDraw(f"needs the data report ({DATA_REPORT}); main.py writes it")
    lengths = f.data_report["token_lengths"]
    edges = np.array(lengths["histogram_edges"])
    beyond = lengths.get("beyond_max_length", "truncated")  # reports made before it said so were truncations
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for split in ("train", "validation", "test"):
        counts = np.array(lengths[split]["histogram"])
        ax.stairs(
            counts / max(counts.sum(), 1),
            edges,
            label=f"{split} (median {lengths[split]['median']:.0f}, "
            f"{100 * lengths[split]['truncated_share']:.1f}% {beyond})",
        )
    ax.axvline(
        lengths["max_length"],
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"max_length {lengths['max_length']}: longer texts are "
        f"{'cut' if beyond == 'truncated' else 'read in windows'}",
    )
    ax.set_xlabel(f"tokens per text ({lengths['model']} tokenizer, special tokens included)")
    ax.set_ylabel("share of the split's texts")
    ax.set_title(f"Text lengths in tokens: {f.dataset}")
    ax.grid(alpha=0.3)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.4)  # room above the bars for the legend
    ax.legend(fontsize=9, loc="upper left")
    return [f.save(fig, "length_distribution.png")]


def convergence(f: Figures, key: str, ylabel: str, name: str) -> list[str]:
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in f.headline:
        runs = f.runs_of(row)
        # evaluations (after epochs, and inside them with training.eval_every_steps)
        epochs = sorted({h["epoch"] for r in runs for h in r["history"]})
        # early stopping ends runs at different epochs: each epoch averages the runs that reached it
        values = [[h[key] for r in runs for h in r["history"] if h["epoch"] == e] for e in epochs]
        mean = np.array([np.mean(v) for v in values])
        std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
        fitted = all(r.get("optimizer_steps") == 0 for r in runs)  # a head fitted in one go: one point
        (line,) = ax.plot(
            epochs,
            mean,
            marker="o",
            label=f"{configuration_label(row)}, {len(runs)} run(s)"
            + (", fitted, not trained by epoch" if fitted else ""),
        )
        if len(runs) > 1:
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel[0].upper() + ylabel[1:]} per epoch\n{f.dataset}, {f.model}{f.headline_note}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(title="chosen setting per strategy (band: ±1 std over runs)", fontsize=9, title_fontsize=9)
    return [f.save(fig, name)]


def performance(f: Figures) -> list[str]:
    rows = f.headline
    fig, ax = plt.subplots(figsize=(max(7, 1.9 * len(rows) + 2), 5.4))
    # scores, where higher is better (errors are on the scale of the labels, and read the other way)
    metrics = [m for m in f.metrics_of(rows) if m.higher_is_better]
    width = 0.76 / len(metrics)
    for i, metric in enumerate(metrics):
        means = [r["test"][metric.name]["mean"] for r in rows]
        stds = [r["test"][metric.name]["std"] or 0.0 for r in rows]
        offset = (i - (len(metrics) - 1) / 2) * width
        bars = ax.bar(
            [j + offset for j in range(len(rows))],
            means,
            width,
            yerr=stds,
            capsize=4,
            label=f"test {metric.label}",
        )
        ax.bar_label(bars, labels=[f"{m:.3f}" for m in means], fontsize=8, padding=3)
    baseline = f.runs[0]["dataset"].get("majority_baseline")
    if baseline:
        first = metrics[0]
        ax.axhline(
            baseline[first.name],
            color="gray",
            linestyle="--",
            linewidth=1,
            label=f"{f.task.baseline_label} {first.label} ({baseline[first.name]:.3f})",
        )
    runs = [r["test"][metrics[0].name]["n"] for r in rows]
    ax.set_xticks(range(len(rows)), [f"{r['strategy']}\n{n} run(s)" for r, n in zip(rows, runs)], fontsize=9)
    lowest = min(r["test"][m.name]["mean"] for r in rows for m in metrics)
    ax.set_ylim(min(0, lowest - 0.1), 1.15)  # a correlation may be negative
    ax.set_ylabel("score (at most 1)")
    ax.set_title(f"Test scores of each strategy's chosen setting\n{f.dataset}, {f.model}{f.headline_note}")
    ax.legend(
        fontsize=9,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=3,
        frameon=False,
        title="error bars: ±1 std over runs; setting chosen on validation",
        title_fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    return [f.save(fig, "performance_comparison.png")]


def few_shot(f: Figures) -> list[str]:
    rows = [r for r in f.rows if r["chosen"] and r["shots_per_class"] is not None]
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    if len({r["shots_per_class"] for r in rows}) < 2:
        raise NothingToDraw("needs few-shot runs at two or more shot counts (few_shot.enabled: true)")
    metrics = f.metrics_of(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.8), squeeze=False)
    axes = axes[0]
    for ax, metric in zip(axes, metrics):
        name = f"test {metric.label}"
        for strategy in strategies:
            points = sorted(
                (r for r in rows if r["strategy"] == strategy), key=lambda r: r["shots_per_class"]
            )
            shots = [r["shots_per_class"] for r in points]
            mean = np.array([r["test"][metric.name]["mean"] for r in points])
            std = np.array([r["test"][metric.name]["std"] or 0.0 for r in points])
            (line,) = ax.plot(shots, mean, marker="o", label=strategy)
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
    fig.suptitle(f"Few-shot learning curves: {f.dataset}, {f.model}; full validation and test splits")
    return [f.save(fig, "few_shot_learning.png")]


def ablation(f: Figures, key: str, strategies: list[str], xlabel: str, name: str, title: str) -> list[str]:
    """Validation and test scores against one grid key, other grid values held at the chosen ones."""
    series = {}
    for chosen in (r for r in f.headline if r["strategy"] in strategies):
        others = {k: v for k, v in chosen["varied"].items() if k != key}
        points = [
            r
            for r in f.rows
            if r["strategy"] == chosen["strategy"]
            and key in r["varied"]
            and r["shots_per_class"] == chosen["shots_per_class"]
            and r["validation"]["mean"] is not None
            and all(r["varied"].get(k) == v for k, v in others.items())
        ]
        if len(points) >= 2:
            series[chosen["strategy"]] = (sorted(points, key=lambda r: r["varied"][key]), chosen)
    if not series:
        raise NothingToDraw(f"needs two or more values of {key} for a strategy")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    main = f.task.main_metric
    panels = [
        (lambda r: r["validation"], f.task.label(f.metric) + " (chooses)"),
        (lambda r: r["test"][main], f.task.label(f"test_{main}") + " (reported)"),
    ]
    for ax, (column, ylabel) in zip(axes, panels):
        for strategy, (points, chosen) in series.items():
            xs = [r["varied"][key] for r in points]
            ax.errorbar(
                xs,
                [column(r)["mean"] for r in points],
                yerr=[column(r)["std"] or 0.0 for r in points],
                marker="o",
                capsize=4,
                label=strategy,
            )
            ax.scatter(
                [chosen["varied"][key]], [column(chosen)["mean"]], marker="*", s=260, color="black", zorder=3
            )
        ax.set_xscale("log", base=10 if key == "learning_rate" else 2)
        if key != "learning_rate":
            values = sorted({r["varied"][key] for points, _ in series.values() for r in points})
            ax.set_xticks(values, [str(v) for v in values])
            ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(title="strategy (star: chosen; bars: ±1 std)", fontsize=9, title_fontsize=9)
    fig.suptitle(f"{title}: {f.dataset}, {f.model}{f.headline_note}")
    return [f.save(fig, name)]


def efficiency(f: Figures) -> list[str]:
    rows = f.headline
    if len(rows) < 2:
        raise NothingToDraw("needs two or more strategies")
    main = f.task.main_metric
    # the verdict's counted compute where every row has it (records made before it: the measured time)
    counted = all((row.get("train_flops") or {}).get("mean") for row in rows)
    cost = (
        ("train_flops", "training compute per run (TFLOP, counted)", 1e-12, "training compute")
        if counted
        else ("train_time_s", "training time per run (s, measured)", 1.0, "training time")
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, (column, xlabel, log) in zip(
        axes, [("trainable_params", "trainable parameters (log scale)", True), (cost[0], cost[1], False)]
    ):
        for row in rows:
            x = row[column] if column == "trainable_params" else row[column]["mean"] * cost[2]
            xerr = None if column == "trainable_params" else (row[column]["std"] or 0.0) * cost[2]
            score = row["test"][main]
            ax.errorbar(
                [x],
                [score["mean"]],
                xerr=xerr,
                yerr=score["std"] or 0.0,
                marker="o",
                markersize=8,
                capsize=4,
                linestyle="none",
                label=row["strategy"],
            )
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{f.task.label('test_' + main)} (0 to 1)")
        ax.grid(alpha=0.3)
    axes[0].set_title("score against size of the update")
    axes[1].set_title(f"score against {cost[3]}")
    axes[1].legend(title="chosen setting per strategy", fontsize=9, title_fontsize=9)
    fig.suptitle(
        f"What each strategy gives for what it costs: {f.dataset}, {f.model}{f.headline_note} "
        "(up and left is better)"
    )
    return [f.save(fig, "efficiency.png")]


def best_so_far(f: Figures, attempts: list[tuple[float, float | None]]) -> list[tuple[float, float]]:
    """(training seconds spent so far, best validation score so far) after each of `attempts`, (seconds, score or
    None), in order; none before the first score."""
    spent, best, points = 0.0, None, []
    for seconds, score in attempts:
        spent += seconds
        if score is not None and (best is None or f.task.is_better(f.metric, score, best)):
            best = score
        if best is not None:
            points.append((spent, best))
    return points


def search_progress(f: Figures) -> list[str]:
    """Per searched strategy, the best validation score so far against the training seconds spent: the search's
    trials in order (pruned ones cost less), beside the grid's runs of that strategy on the same data."""
    searched = f.summary.get("search") or []
    if not searched:
        raise NothingToDraw("no search in this experiment (search.method: optuna)")
    fig, ax = plt.subplots(figsize=(8.5, 5.4))
    for study in searched:
        line = None
        # a pruned trial's best so far was never confirmed: it adds time, not a score
        points = best_so_far(
            f,
            [
                (row["train_time_s"] or 0.0, row["validation"] if row["status"] == "completed" else None)
                for row in study["trial_rows"]
            ],
        )
        if points:
            (line,) = ax.step(
                *zip(*points),
                where="post",
                marker="o",
                markersize=4,
                label=f"{study['strategy']}: search, {study['trials']} trials ({study['pruned']} pruned)",
            )
        grid = sorted(
            (r for r in f.grid_runs if r["strategy"] == study["strategy"]), key=lambda r: r["finished_at"]
        )
        if grid:
            points = best_so_far(f, [(run["train_time_s"], run["best_metric"]) for run in grid])
            ax.step(
                *zip(*points),
                where="post",
                linestyle="--",
                marker="s",
                markersize=4,
                color=line.get_color() if line else None,
                label=f"{study['strategy']}: grid, {len(grid)} runs",
            )
    ax.set_xlabel("training time spent (s, cumulative)")
    ax.set_ylabel(f"best {f.task.label(f.metric)} so far")
    ax.set_title(f"Search progress: best validation score against training time\n{f.dataset}, {f.model}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    return [f.save(fig, "search_progress.png")]
