"""The plots that apply to some tasks only (the registry in reporting/plots.py says which): each strategy's
confusion matrix, predicted against true values, F1 per class or entity type, the reliability diagram, and which
labels come together."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from reporting.figures import Figures, NothingToDraw, slanted_if_long
from reporting.summary import best_run
from reporting.verdict import configuration_label

NO_PREDICTIONS = "needs the test predictions of a run (records keep them)"


def confusion_matrices(f: Figures) -> list[str]:
    """One per strategy: the test predictions of its best run (highest validation score)."""
    written = []
    for row in f.headline:
        runs = [r for r in f.runs_of(row) if "test_labels" in r]
        if not runs:
            continue
        run = best_run(runs, f.metric, f.task)
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
                    ax.text(
                        j,
                        i,
                        str(counts[i, j]),
                        ha="center",
                        va="center",
                        fontsize=9,
                        color="white" if share[i, j] > 0.6 else "black",
                    )
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
            ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class's test examples")
        main = f.task.metric(f.task.main_metric)
        ax.set_title(
            f"Confusion on test: {row['strategy']}, best run {run['run_id']}\n"
            f"(numbers: test examples; {main.label} {run['test'][main.name]:.3f})",
            fontsize=11,
        )
        name = f"confusion_matrix_{row['strategy']}.png"
        written.append(f.save(fig, name))
    if not written:
        raise NothingToDraw(NO_PREDICTIONS)
    return written


def predicted_vs_true(f: Figures) -> list[str]:
    """One panel per strategy: the test predictions of its best run (highest validation score) against the truth."""
    rows = [
        (row, best_run(runs, f.metric, f.task))
        for row in f.headline
        if (runs := [r for r in f.runs_of(row) if "test_labels" in r])
    ]
    if not rows:
        raise NothingToDraw(NO_PREDICTIONS)
    columns = min(len(rows), 3)
    lines = -(-len(rows) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 4.6 * lines + 0.6), squeeze=False)
    truth_all = np.concatenate([run["test_labels"] for _, run in rows])
    predicted_all = np.concatenate([run["test_predictions"] for _, run in rows])
    low, high = min(truth_all.min(), predicted_all.min()), max(truth_all.max(), predicted_all.max())
    margin = 0.04 * (high - low or 1)
    name = rows[0][1]["dataset"]["label_names"][0]
    # the title's scores: the task's main one, and its first error (lower is better)
    main = f.task.metric(f.task.main_metric)
    error = next(m for m in f.task.summary_metrics() if not m.higher_is_better)
    for ax, (row, run) in zip(axes.flat, rows):
        ax.scatter(run["test_labels"], run["test_predictions"], s=10, alpha=0.5)
        ax.plot([low, high], [low, high], color="gray", linestyle="--", linewidth=1, label="exact")
        ax.set_xlim(low - margin, high + margin)
        ax.set_ylim(low - margin, high + margin)
        ax.set_aspect("equal")
        test = run["test"]
        ax.set_title(
            f"{row['strategy']}: " + ", ".join(f"{m.label} {test[m.name]:.3f}" for m in (main, error)),
            fontsize=10,
        )
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.suptitle(
        f"Predicted against true on test (each strategy's best run)\n{f.dataset}, {f.model}{f.headline_note}"
    )
    return [f.save(fig, "predicted_vs_true.png")]


def per_class_f1(f: Figures) -> list[str]:
    """Mean test F1 of every class (or entity type) under every configuration, rarest first."""
    rows = [
        r
        for r in f.rows
        if r["shots_per_class"] == f.headline[0]["shots_per_class"] and r["validation"]["mean"] is not None
    ]
    if not rows or not all("per_class" in r["test"] for run in rows for r in f.runs_of(run)):
        raise NothingToDraw("needs the test scores per class of every configuration's runs")
    first = f.runs_of(rows[0])[0]
    words = f.task.label_counts
    counts, counted, kind = (
        first["dataset"]["label_distribution"]["train"],
        f"training {words.counted}",
        words.kind,
    )
    if not set(first["test"]["per_class"]) <= set(counts):  # entity types, counted in test; tags in training
        counts = {name: c["support"] for name, c in first["test"]["per_class"].items()}
        counted, kind = "test entities", "entity type"
    names = sorted(counts, key=lambda name: (counts[name], name))
    f1 = np.array(
        [
            [np.mean([r["test"]["per_class"][name]["f1"] for r in f.runs_of(row)]) for name in names]
            for row in rows
        ]
    )
    fig, ax = plt.subplots(figsize=(min(5 + 0.8 * len(names), 24), 2.2 + 0.45 * len(rows)))
    image = ax.imshow(f1, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    if len(names) <= 20:
        for i in range(len(rows)):
            for j in range(len(names)):
                ax.text(j, i, f"{f1[i, j]:.2f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(
            range(len(names)),
            [f"{name}\n({counts[name]})" for name in names],
            fontsize=9,
            **slanted_if_long(names),
        )
    else:
        ax.set_xlabel(f"{kind}s, rarest first")
    ax.set_yticks(
        range(len(rows)), [f"{configuration_label(r)}{' *' if r['chosen'] else ''}" for r in rows], fontsize=9
    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="test F1")
    ax.set_title(
        f"Test F1 per {kind}, rarest first: {f.dataset}, {f.model}{f.headline_note}\n"
        f"(mean over runs; in brackets: {counted}; * chosen setting)",
        fontsize=10,
    )
    return [f.save(fig, "per_class_f1.png")]


def pooled_bins(bins: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability bins of several runs pooled: each bin's count, and its mean confidence and accuracy over
    every prediction in it (the filled bins only)."""
    count = np.sum([b["count"] for b in bins], axis=0)
    filled = count > 0
    mean = {
        part: np.sum([[(v or 0.0) * n for v, n in zip(b[part], b["count"])] for b in bins], axis=0)[filled]
        / count[filled]
        for part in ("confidence", "accuracy")
    }
    return count, mean["confidence"], mean["accuracy"]


def reliability_axes(f: Figures, ax, counts_ax) -> None:
    """The reliability diagram's diagonal, axes, legend and title, and its counts panel's."""
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
    stated, outcome = f.task.reliability_axes
    ax.set_ylabel(outcome)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    # beside the diagram, so that no curve hides behind it however many strategies there are
    ax.legend(
        fontsize=9,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        title="marker area: share of predictions in the bin",
        title_fontsize=9,
    )
    ax.set_title(
        f"Calibration on test: does what is stated with probability p come true p of the time?\n"
        f"{f.dataset}, {f.model}{f.headline_note}",
        fontsize=11,
    )
    counts_ax.set_xlabel(f"{stated} (bins of 1/15)")
    counts_ax.set_ylabel("share of\npredictions")
    counts_ax.set_xlim(0, 1)
    counts_ax.grid(alpha=0.3)


def calibration(f: Figures) -> list[str]:
    """Reliability diagram: per confidence bin, how often the chosen setting of each strategy was right
    (bins pooled over its runs); on the diagonal, confidence means what it says."""
    fig, (ax, counts_ax) = plt.subplots(2, 1, figsize=(11.5, 7.5), height_ratios=[3, 1], sharex=True)
    drawn = False
    for row in f.headline:
        runs = [r for r in f.runs_of(row) if "calibration" in r["test"]]
        if not runs:
            continue
        # with training.calibration, the same runs before the temperature, dashed
        reports = [("test", "", "-")] + (
            [("test_uncalibrated", ", before calibration", "--")]
            if all(r.get("test_uncalibrated") for r in runs)
            else []
        )
        color = None
        for key, note, style in reports:
            count, confidence, accuracy = pooled_bins([r[key]["calibration"] for r in runs])
            filled = count > 0
            ece = np.mean([r[key]["ece"] for r in runs])
            (line,) = ax.plot(
                confidence,
                accuracy,
                linewidth=1,
                alpha=0.6,
                linestyle=style,
                color=color,
                label=f"{row['strategy']}{note} (ECE {ece:.3f}, {len(runs)} run(s))",
            )
            color = line.get_color()
            # a bin of one or two predictions says little: the marker's area shows how many the point rests on
            ax.scatter(
                confidence,
                accuracy,
                s=12 + 300 * count[filled] / count.sum(),
                color=color,
                zorder=3,
                marker="o" if style == "-" else "x",
            )
            if style == "-":
                centres = (np.arange(len(count)) + 0.5) / len(count)
                counts_ax.plot(centres[filled], count[filled] / count.sum(), marker=".", color=color)
        drawn = True
    if not drawn:
        plt.close(fig)
        raise NothingToDraw("needs the test calibration bins of a run")
    reliability_axes(f, ax, counts_ax)
    return [f.save(fig, "calibration.png")]


def label_co_occurrence(f: Figures) -> list[str]:
    """Which labels the training texts hold together (the share of each label's texts that also hold another),
    and how many labels a text holds, per split: from the data report."""
    report = f.data_report or {}
    if "co_occurrence" not in report:
        raise NothingToDraw("needs the data report of label sets (data.task: multi_label); main.py writes it")
    names, together = report["label_names"], np.array(report["co_occurrence"])
    share = together / np.maximum(np.diag(together)[:, None], 1)
    size = min(4 + 0.5 * len(names), 20)
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(size + 5.5, size), width_ratios=[size, 4.5])
    image = ax.imshow(np.where(np.eye(len(names), dtype=bool), np.nan, share), cmap="Purples", vmin=0, vmax=1)
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(
                    j,
                    i,
                    str(together[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if i != j and share[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("also holds this label")
    ax.set_ylabel("texts with this label")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the row label's training texts")
    ax.set_title(
        "Labels together in training\n(numbers: texts with both; diagonal: texts with the label)", fontsize=10
    )
    per_text = report["labels_per_text"]
    widest = max(len(counts) for counts in per_text.values())
    for offset, (split, counts) in enumerate(per_text.items()):
        total = sum(counts.values())
        shares = [counts.get(str(k), 0) / total for k in range(widest)]
        bars.bar(
            np.arange(widest) + (offset - 1) * 0.27, shares, width=0.27, label=f"{split} ({total:,} texts)"
        )
    bars.set_xticks(range(widest))
    bars.set_xlabel("labels per text")
    bars.set_ylabel("share of the split's texts")
    bars.legend(fontsize=8)
    bars.grid(axis="y", alpha=0.3)
    bars.set_title("Labels per text", fontsize=10)
    fig.suptitle(f"Label sets: {f.dataset}", fontsize=11)
    return [f.save(fig, "label_co_occurrence.png")]
