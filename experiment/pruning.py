"""When a search's trials are judged and which go on: no trial before a quarter of its budget, then Optuna's
median pruner after every evaluation, or successive halving at its rungs."""

from __future__ import annotations

from experiment.search_workers import left_by_stopped_workers

REDUCTION = 3  # successive halving: the best third of the trials at a rung go on


def grace_steps(budget: int) -> int:
    """The optimizer steps before any trial is judged: a quarter of the budget. In its first epochs a good
    setting often still sits at the majority class (the rate warms up), and pruning there lost the best rates."""
    return max(1, budget // 4)


def rung_steps(budget: int) -> list[int]:
    """Successive halving's rungs: a quarter of the budget, then REDUCTION times more, while short of its end."""
    rungs = [grace_steps(budget)]
    while rungs[-1] * REDUCTION < budget:
        rungs.append(rungs[-1] * REDUCTION)
    return rungs


def make_pruner(name: str, budget: int):
    """The median pruner of Optuna's, judging no trial before grace_steps; Optuna's none otherwise (successive
    halving judges its rounds at their rungs: kept_at_rung)."""
    import optuna

    if name == "median":  # two finished trials before it judges: searches here are a few trials each
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=grace_steps(budget))
    return optuna.pruners.NopPruner()


def score_at(trial, rung: int) -> float | None:
    """What a trial reported at its first evaluation at or past a rung (None if it never got there)."""
    steps = [step for step in trial.intermediate_values if step >= rung]
    return trial.intermediate_values[min(steps)] if steps else None


def kept_at_rung(trials: list, score: float, rung: int, maximizes: bool) -> bool:
    """Successive halving's rule: whether a trial's score at a rung (a study's score: higher is better if it
    `maximizes`) is among the best third (at least one) of the scores there of the study's `trials` that reached
    it, its own round's included. Optuna's pruner cannot be asked this: it judges a trial against those judged
    before it, so in a round the first judged always went on, and judged best first, a later round's trial had
    to beat the earlier rounds' best (on the demo data that stopped IA3's second-best trial of eight, near the
    rate the grid found best)."""
    # a trial a killed worker left runs again: its scores count once, the new trial's
    left = left_by_stopped_workers(trials)
    scores = [score_at(trial, rung) for trial in trials if trial.number not in left]
    scores = sorted((s for s in scores if s is not None), reverse=maximizes)
    bar = scores[max(1, len(scores) // REDUCTION) - 1]
    return score >= bar if maximizes else score <= bar
