"""Every plot in one registry: a plain function (Figures -> the files it wrote), what to look for in it, and
whether only the tasks that name it draw it (Task.plots); draw() runs those that apply and says why any were
not drawn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reporting.experiment_plots import (
    ablation,
    class_distribution,
    convergence,
    efficiency,
    few_shot,
    length_distribution,
    performance,
    search_progress,
)
from reporting.figures import Figures, NothingToDraw
from reporting.task_plots import (
    calibration,
    confusion_matrices,
    label_co_occurrence,
    per_class_f1,
    predicted_vs_true,
)


@dataclass(frozen=True)
class Plot:
    draw: Callable[[Figures], list[str]]  # writes its files into the plots folder and returns their names
    caption: str  # what to look for in it, under it in the report
    task_own: bool = False  # drawn only for a task that names it among its plots (it reads classes, numbers)


def losses(key: str, what: str) -> Callable[[Figures], list[str]]:
    return lambda f: convergence(f, key, f"{what} ({f.task.loss_label})", f"convergence_{key}.png")


# File names start with the registry's key (a plot per strategy adds the strategy's name).
PLOTS: dict[str, Plot] = {
    "class_distribution": Plot(
        class_distribution,
        "Bars of very different heights mean imbalanced classes: judge by "
        "macro-F1 and the worst class's F1, not by accuracy alone.",
    ),
    "length_distribution": Plot(
        length_distribution,
        "Texts right of the max_length line are cut off; if many are, "
        "raise model.max_length (or set it to auto).",
    ),
    "convergence_train_loss": Plot(
        losses("train_loss", "training loss"),
        "Training loss should fall and level off; "
        "still falling at the last epoch means more epochs may help.",
    ),
    "convergence_val_loss": Plot(
        losses("val_loss", "validation loss"),
        "Validation loss rising while training loss "
        "falls is over-fitting; early stopping keeps the best epoch.",
    ),
    "performance_comparison": Plot(
        performance,
        "Each strategy's chosen setting on test; bars close together may not "
        "differ at all: the verdict's paired test says which do.",
    ),
    "few_shot_learning": Plot(
        few_shot,
        "How each strategy's score grows with examples per class: where curves cross, "
        "the better choice depends on how much labelled data you have.",
    ),
    "lr_ablation": Plot(
        lambda f: ablation(
            f,
            "learning_rate",
            [r["strategy"] for r in f.headline],
            "peak learning rate (log scale)",
            "lr_ablation.png",
            "Learning-rate ablation",
        ),
        "Validation score against learning rate (the star is the chosen one): a best rate at the edge "
        "of the range means a better one may lie beyond it.",
    ),
    "lora_rank_ablation": Plot(
        lambda f: ablation(
            f, "rank", ["lora"], "LoRA rank (log scale)", "lora_rank_ablation.png", "LoRA rank ablation"
        ),
        "Whether a larger LoRA rank buys any score: a flat line means the smallest rank is enough.",
    ),
    "search_progress": Plot(
        search_progress,
        "How fast each strategy's search found its best setting: a line still "
        "rising at its last trial means more trials may help; beside a dashed grid line, the "
        "search should reach the grid's best for less training time.",
    ),
    "efficiency": Plot(
        efficiency, "Score against cost: strategies towards the top left give the most for the least."
    ),
    "confusion_matrix": Plot(
        confusion_matrices,
        "Off-diagonal cells are the mistakes: which classes this strategy confuses with which.",
        task_own=True,
    ),
    "predicted_vs_true": Plot(
        predicted_vs_true,
        "Points on the diagonal are exact; a cloud flatter than the diagonal "
        "means predictions pulled towards the mean, a band of points at one height a model that "
        "says the same for all.",
        task_own=True,
    ),
    "per_class_f1": Plot(
        per_class_f1,
        "A class low under every strategy is hard in the data itself; low under one "
        "strategy only, it is that strategy's weakness.",
        task_own=True,
    ),
    "calibration": Plot(
        calibration,
        "Points on the diagonal mean the stated probability comes true as often as it "
        "says; below it, the model is over-confident.",
        task_own=True,
    ),
    "label_co_occurrence": Plot(
        label_co_occurrence,
        "Labels that often come together are hard to tell apart and "
        "learnt together; a label mostly alone is easier to judge by itself.",
        task_own=True,
    ),
}


def caption(file_name: str) -> str:
    """What to look for in a plot file, by the registry key its name starts with (the longest that fits)."""
    stem = Path(file_name).stem
    return next(PLOTS[key].caption for key in sorted(PLOTS, key=len, reverse=True) if stem.startswith(key))


def draw(figures: Figures) -> tuple[list[str], dict[str, str]]:
    """Every plot that applies to the experiment's task: the files written, and why the others were not."""
    drawn, skipped = [], {}
    for key, plot in PLOTS.items():
        if plot.task_own and key not in figures.task.plots:
            continue
        try:
            drawn += plot.draw(figures)
        except NothingToDraw as reason:
            skipped[f"{key}.png"] = str(reason)
    return drawn, skipped
