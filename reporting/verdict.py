"""Which strategy to use, said in words from the summary alone: the best on validation, which strategies the
paired test cannot separate from it, the cheapest of those, and what evidence is missing. Test scores are
reported and tested, never used to choose."""

from __future__ import annotations

import statistics
from typing import Callable, NamedTuple

from config import short_key
from schema.search import describe_range
from tasks import TASKS, Task

# A 95% interval wider than ±5 points (on a 0-1 score) can hide a difference most users would act on, so
# "within noise" then means "not measured well enough" rather than "the same".
RESOLUTION_LIMIT = 0.05
# Costs within this share of each other count as the same: a tenth is less than anyone chooses a strategy on.
COST_TOLERANCE = 0.10
SEEDS_TO_SUGGEST = "training.seeds: [0, 1, 2]"
SIGNIFICANCE = 0.05
# Below this many validation examples the choice rests on few rows: a score near 0.85 measured on 500 examples
# moves by about ±0.03 (95%) with which examples were drawn, as much as strategies usually differ by, so a
# strategy a point or two behind can win on luck. Cross-validation then lets every training example serve once.
SMALL_VALIDATION = 500
FOLDS_TO_SUGGEST = 5


def configuration_label(row: dict) -> str:
    """A configuration in words: its strategy and the grid values that set it apart ("lora (rank=8)")."""
    extra = [f"{k}={v}" for k, v in row["varied"].items()]
    return row["strategy"] + (f" ({', '.join(extra)})" if extra else "")


def deciding_metric(summary: dict, task: Task) -> str:
    """The compared test metric that decides "within noise": the one selection uses, or the task's default
    when selection uses the loss."""
    bare = summary["metric"].removeprefix("val_")
    if bare in task.compared_metrics:
        return bare
    default = task.default_metric.removeprefix("val_")
    return default if default in task.compared_metrics else task.compared_metrics[0]


def best_of(items: list[dict], score: Callable[[dict], float], metric: str, task: Task) -> dict:
    """The item with the best score for `metric` (the first among equals)."""
    best = items[0]
    for item in items[1:]:
        if task.is_better(metric, score(item), score(best)):
            best = item
    return best


def headline_rows(rows: list[dict]) -> tuple[list[dict], int | None]:
    """The chosen configurations that stand for each strategy: those on the full training data, or in a
    few-shot-only experiment those with the most examples per class (returned too; None otherwise)."""
    chosen = [r for r in rows if r["chosen"]]
    full_data = [r for r in chosen if r["shots_per_class"] is None]
    if full_data:
        return full_data, None
    largest = max((r["shots_per_class"] for r in chosen), default=None)
    return [r for r in chosen if r["shots_per_class"] == largest], largest


def against_winner(
    comparisons: list[dict], winner: str, other: str, shots: int | None, name: str
) -> dict | None:
    """The paired comparison of `other` with `winner` on metric `name`, as other - winner."""
    for comparison in comparisons:
        if comparison["shots_per_class"] != shots or {comparison["a"], comparison["b"]} != {winner, other}:
            continue
        sign = 1 if comparison["a"] == other else -1
        result = comparison[name]
        low, high = sorted((sign * result["low"], sign * result["high"]))
        return {
            "difference": sign * result["difference"],
            "low": low,
            "high": high,
            "p_value": result["p_value"],
            "per_run": [sign * d for d in result.get("per_run", [])],
            "paired_runs": comparison["paired_runs"],
        }
    return None


def standing(test: dict, higher_is_better: bool) -> tuple[str, bool]:
    """ "behind", "ahead" or "within noise" of the winner, and whether a separation on the pooled test split
    failed to hold in every paired seed (then it counts as within noise: another seed could reverse it).
    Separated means the 95% interval excludes zero and p < 0.05: the percentile interval and the p-value can
    disagree near the edge, and a verdict should not call "clearly behind" what its own p calls noise."""
    gain_low, gain_high = (test["low"], test["high"]) if higher_is_better else (-test["high"], -test["low"])
    if (gain_high >= 0 and gain_low <= 0) or test["p_value"] >= SIGNIFICANCE:
        return "within noise", False
    direction = 1 if gain_low > 0 else -1
    sign = 1 if higher_is_better else -1
    if any(sign * d * direction <= 0 for d in test["per_run"]):
        return "within noise", True
    return ("ahead" if direction > 0 else "behind"), False


def cost_ratios(row: dict, winner: dict) -> dict[str, float | None]:
    """Trainable parameters, training compute and memory as multiples of the winner's (None: not counted, as
    in records made before costs were counted). Only costs that the same data and config always give decide:
    the measured training time and resident memory move with the machine's load, and are only shown."""

    def ratio(value, reference):
        return value / reference if value is not None and reference else None

    def mean(row: dict, key: str):
        return (row.get(key) or {}).get("mean")

    return {
        "params": ratio(row["trainable_params"], winner["trainable_params"]),
        "compute": ratio(mean(row, "train_flops"), mean(winner, "train_flops")),
        "memory": ratio(mean(row, "memory_mb"), mean(winner, "memory_mb")),
    }


def cheaper_everywhere(costs: dict[str, float | None]) -> bool:
    """No measured cost above the winner's (within COST_TOLERANCE), and one clearly below it."""
    measured = [c for c in costs.values() if c is not None]
    return (
        bool(measured)
        and all(c <= 1 + COST_TOLERANCE for c in measured)
        and any(c < 1 - COST_TOLERANCE for c in measured)
    )


def decide(summary: dict) -> dict:
    """The verdict as numbers: its kind ("single", "undecided" or "decided"), the winner on validation, each
    other strategy's standing against it with its costs, the recommendation and what evidence is missing."""
    task = TASKS[summary["task"]]
    name = deciding_metric(summary, task)
    slot, shots = headline_rows(summary["rows"])
    ran = dict.fromkeys(r["strategy"] for r in summary["rows"] if r["shots_per_class"] == shots)
    not_compared = [s for s in ran if s not in {r["strategy"] for r in slot}]
    searched = summary.get("search") or []
    if not slot:
        return {"kind": "none", "metric": name, "not_compared": not_compared, "searched": searched}
    best = best_per_slot(summary, task)
    winner = next(r for r in best if r["shots_per_class"] == shots)
    standings, uncompared = standings_against(winner, slot, summary["comparisons"], name, task)
    tied = [s for s in standings if s["status"] == "within noise"]
    cheaper = sorted(
        (s for s in tied if cheaper_everywhere(s["costs"])),
        key=lambda s: (s["costs"]["params"] or 1, s["costs"]["memory"] or 1),
    )
    kind, resolution = verdict_kind(standings)
    return {
        "kind": kind,
        "metric": name,
        "selection_metric": summary["metric"],
        "shots_per_class": shots,
        "winner": winner_entry(winner, name),
        "recommended": cheaper[0]["strategy"] if cheaper else winner["strategy"],
        "recommended_config_id": cheaper[0]["config_id"] if cheaper else winner["config_id"],
        "standings": standings,
        "not_compared": not_compared + uncompared,
        "resolution": resolution,
        "validation_ties": [
            configuration_label(r)
            for r in slot
            if r is not winner and r["validation"]["mean"] == winner["validation"]["mean"]
        ],
        "seeds": min([winner["runs"] - winner["failed"]] + [s["test"]["paired_runs"] for s in standings]),
        "collapsed": collapsed_rows(summary, slot),
        "test_examples": summary.get("test_examples"),
        "validation_examples": summary.get("validation_examples"),
        "folds": summary.get("folds"),
        "other_slots": [
            {
                "shots_per_class": r["shots_per_class"],
                "label": configuration_label(r),
                "test": r["test"][name],
            }
            for r in best
            if r is not winner
        ],
        "searched": [{key: s[key] for key in SEARCH_FACTS} for s in searched],
    }


# What the verdict keeps of each strategy's search
SEARCH_FACTS = ("strategy", "space", "trials", "completed", "pruned", "failed", "best", "at_edge")


def standings_against(
    winner: dict, slot: list[dict], comparisons: list[dict], name: str, task: Task
) -> tuple[list[dict], list[str]]:
    """Each other configuration of the winner's slot against it on test (`name`): its status, whether that
    depends on the seed, the paired test and the cost ratios; and the strategies with no paired test."""
    standings, uncompared = [], []
    for row in slot:
        if row is winner:
            continue
        test = against_winner(
            comparisons, winner["strategy"], row["strategy"], winner["shots_per_class"], name
        )
        if test is None:
            uncompared.append(row["strategy"])
            continue
        status, seed_dependent = standing(test, task.metric(name).higher_is_better)
        standings.append(
            {
                "strategy": row["strategy"],
                "label": configuration_label(row),
                "config_id": row["config_id"],
                "status": status,
                "seed_dependent": seed_dependent,
                "test": test,
                "costs": cost_ratios(row, winner),
            }
        )
    return standings, uncompared


def verdict_kind(standings: list[dict]) -> tuple[str, float | None]:
    """ "single" (nothing to compare), "undecided" (every other within noise, and the tests too coarse to tell
    a RESOLUTION_LIMIT difference) or "decided"; with the tests' median half-width."""
    widths = [(s["test"]["high"] - s["test"]["low"]) / 2 for s in standings]
    resolution = statistics.median(widths) if widths else None
    if not standings:
        return "single", resolution
    separated = any(s["status"] != "within noise" for s in standings)
    return ("undecided" if not separated and resolution > RESOLUTION_LIMIT else "decided"), resolution


def winner_entry(winner: dict, name: str) -> dict:
    return {
        "strategy": winner["strategy"],
        "label": configuration_label(winner),
        "config_id": winner["config_id"],
        "validation": winner["validation"],
        "test": winner["test"][name],
        "interval": (winner.get("test_interval") or {}).get(name),
        "runs": winner["runs"] - winner["failed"],
    }


def collapsed_rows(summary: dict, slot: list[dict]) -> list[dict]:
    """The compared configurations some of whose runs collapsed (one prediction for every text, or outputs that
    barely vary with it): their standing says little about their strategy."""
    found = {d["config_id"]: d for d in summary.get("diagnostics", []) if d["kind"] == "collapse"}
    return [
        {
            "label": configuration_label(r),
            "runs": found[r["config_id"]]["runs"],
            "of": found[r["config_id"]]["of"],
        }
        for r in slot
        if r["config_id"] in found
    ]


def best_per_slot(summary: dict, task: Task) -> list[dict]:
    """The best chosen configuration on validation for each few-shot size, the full data last; the first in
    the config among equals."""
    chosen = [r for r in summary["rows"] if r["chosen"]]
    slots = sorted({r["shots_per_class"] for r in chosen}, key=lambda s: (s is None, s or 0))
    return [
        best_of(
            [r for r in chosen if r["shots_per_class"] == slot],
            lambda r: r["validation"]["mean"],
            summary["metric"],
            task,
        )
        for slot in slots
    ]


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def format_share(ratio: float) -> str:
    """A share of another's parameters: "0.33%", "16.3%", "80%"; from ten times as many, a multiple: "300×"."""
    percent = 100 * ratio
    if ratio >= 10:
        return f"{ratio:.0f}×"
    return f"{percent:.2f}%" if percent < 1 else f"{percent:.1f}%" if percent < 10 else f"{percent:.0f}%"


def describe_costs(costs: dict[str, float | None], whose: str = "its") -> str:
    """ "0.33% of its trainable parameters, 0.62× its training compute and 0.40× its memory"."""
    parts = []
    if costs["params"] is not None:
        share = format_share(costs["params"])
        parts.append(f"{share}{'' if share.endswith('×') else ' of'} {whose} trainable parameters")
    if costs["compute"] is not None:
        parts.append(f"{costs['compute']:.2f}× {whose} training compute")
    if costs["memory"] is not None:
        parts.append(f"{costs['memory']:.2f}× {whose} memory")
    if not parts:
        return "no cost measured"
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def signed(value: float) -> str:
    """+0.0123, and +0.0000 rather than -0.0000 for a value that rounds to zero from below."""
    return f"{round(value, 4) + 0.0:+.4f}"


def describe_difference(test: dict) -> str:
    return f"Δ {signed(test['difference'])} [{signed(test['low'])}, {signed(test['high'])}], {format_p(test['p_value'])}"


def runs_named(runs: int, folds: dict | None) -> str:
    """What a configuration's runs are: "3 seeds", "5 folds", "10 runs (5 folds × 2 seeds)"."""
    if not folds:
        return f"{runs} seeds"
    cut = f"{folds['folds']} folds" + (f" × {folds['repeats']} repeats" if folds["repeats"] > 1 else "")
    per_seed = folds["folds"] * folds["repeats"]
    if runs == per_seed:
        return cut
    seeds = runs // per_seed
    return f"{runs} runs ({cut}{f' × {seeds} seeds' if runs == seeds * per_seed else ', some failed'})"


def describe_score(winner: dict, task: Task, name: str, folds: dict | None = None) -> str:
    """ "test macro-F1 0.9756 (95% interval 0.9520-0.9901 over test examples; ± 0.0040 over 3 seeds)"."""
    text = f"test {task.metric(name).label} {winner['test']['mean']:.4f}"
    spread = []
    if winner["interval"]:
        spread.append(
            f"95% interval {winner['interval']['low']:.4f}–{winner['interval']['high']:.4f} over test examples"
        )
    if winner["test"]["std"] is not None:
        spread.append(f"± {winner['test']['std']:.4f} over {runs_named(winner['runs'], folds)}")
    return text + (f" ({'; '.join(spread)})" if spread else "")


class Reading(NamedTuple):
    """What the sentences of a verdict share: the metric, the winner, how it was chosen, the others by status."""

    name: str  # the metric compared on test
    label: str  # how it is named
    winner: dict
    best: str  # the winner's label
    selection: str  # what chose it, with its value
    scope: str  # how much training data, when the experiment varies it
    folds: dict | None
    by_status: dict[str, list[dict]]
    recommended: dict | None  # the cheaper strategy within noise of the winner, if one is


def describe(verdict: dict, task: Task) -> list[str]:
    """The verdict in plain sentences, the recommendation first and the numbers behind it after."""
    if verdict["kind"] == "none":
        return ["No configuration completed, so there is no verdict: see the failed runs."] + describe_search(
            verdict.get("searched") or []
        )
    reading = read(verdict, task)
    return (
        headline(verdict, task, reading)
        + details(verdict, task, reading)
        + describe_search(verdict.get("searched") or [])
        + to_know_more(verdict)
    )


def read(verdict: dict, task: Task) -> Reading:
    """What the verdict's sentences share, read from it once."""
    name, winner = verdict["metric"], verdict["winner"]
    best, label = winner["label"], task.metric(name).label
    folds = verdict.get("folds")
    selection = f"{task.label(verdict['selection_metric'])} {winner['validation']['mean']:.4f}" + (
        f" (the mean over {folds['folds']} folds)" if folds else ""
    )
    scope = (
        f" (with {verdict['shots_per_class']} examples per class, the most this experiment trained on)"
        if verdict["shots_per_class"] is not None
        else ""
    )
    by_status = {
        status: [s for s in verdict["standings"] if s["status"] == status]
        for status in ("within noise", "behind", "ahead")
    }
    recommended = next(
        (s for s in by_status["within noise"] if s["strategy"] == verdict["recommended"]), None
    )
    return Reading(name, label, winner, best, selection, scope, folds, by_status, recommended)


def headline(verdict: dict, task: Task, reading: Reading) -> list[str]:
    """Which strategy to use, and why, in a sentence or two."""
    name, label, winner, best, selection, scope, folds, by_status, recommended = reading
    lines = []
    if verdict["kind"] == "single":
        lines.append(
            f"Only {best} completed{scope}, so there is nothing to compare it with: "
            f"{describe_score(winner, task, name, folds)}."
        )
    elif verdict["kind"] == "undecided":
        lines.append(
            f"These results cannot tell the strategies apart yet{scope}: every difference from {best}, the best "
            f"on {selection}, is within noise on test {label}, whose 95% intervals are about "
            f"±{verdict['resolution']:.3f} wide."
        )
        if recommended:
            whose = f"{best}'s"
            lines.append(
                f"If you must choose now, {recommended['label']} costs least among them, with "
                f"{describe_costs(recommended['costs'], whose)}."
            )
    elif recommended:
        lines.append(
            f"Use {recommended['label']}{scope}: it is within noise of {best}, the best on validation, on test "
            f"{label} ({describe_difference(recommended['test'])}) with {describe_costs(recommended['costs'])}."
        )
    elif by_status["within noise"]:
        lines.append(
            f"Use {best}{scope}: it is the best on {selection}; "
            f"{', '.join(s['label'] for s in by_status['within noise'])} "
            f"{'is' if len(by_status['within noise']) == 1 else 'are'} within noise of it on test {label}, "
            f"but none costs less on every measure."
        )
    elif by_status["ahead"]:  # test disagrees with validation: the headline must not call the rest behind
        ahead = [s["label"] for s in by_status["ahead"]]
        lines.append(
            f"Use {best}{scope}: it is the best on {selection}, though {', '.join(ahead)} "
            f"{'scores' if len(ahead) == 1 else 'score'} higher on test {label} (below)"
            + ("; every other strategy is clearly behind it." if by_status["behind"] else ".")
        )
    else:
        lines.append(
            f"Use {best}{scope}: it is the best on {selection}, and every other strategy is clearly behind "
            f"it on test {label}."
        )
    return lines


def details(verdict: dict, task: Task, reading: Reading) -> list[str]:
    """The numbers behind the headline: the winner's scores, the others within noise, behind and ahead, the
    runs that learned little, and what was not compared."""
    name, label, winner, best, selection, scope, folds, by_status, recommended = reading
    lines = []
    if verdict["kind"] != "single":
        lines.append(f"{best}: {selection}, {describe_score(winner, task, name, folds)}.")
    also = [s for s in by_status["within noise"] if s is not recommended]
    if also:
        lines.append(
            f"{'Also w' if recommended else 'W'}ithin noise of {best} on test {label}: {ties(also, folds)}."
        )
    if by_status["behind"]:
        lines.append(
            f"Clearly behind {best}: "
            + "; ".join(f"{s['label']} ({describe_difference(s['test'])})" for s in by_status["behind"])
            + "."
        )
    for s in by_status["ahead"]:
        lines.append(
            f"{s['label']} scored higher than {best} on test {label} ({describe_difference(s['test'])}) although "
            f"{best} was better on validation. Test never chooses here, but the disagreement suggests the "
            f"validation split{examples(verdict['validation_examples'])} is too small to choose reliably: "
            + (
                "run more seeds or fold repeats (data.fold_repeats)."
                if folds
                else f"cross-validate (data.folds={FOLDS_TO_SUGGEST}), enlarge it (data.validation_size) or run "
                "more seeds."
            )
        )
    for row in verdict.get("collapsed", []):
        runs = "its run" if row["of"] == 1 else f"{row['runs']} of its {row['of']} runs"
        lines.append(
            f"{row['label']}: {runs} learned little from the text (one prediction for nearly every text, or "
            "outputs that barely vary with it), so its place here is no verdict on the strategy: see the "
            "diagnostics for the likely causes (the head, the learning rate, too few steps)."
        )
    if verdict["not_compared"]:
        lines.append(
            f"Not compared: {', '.join(verdict['not_compared'])} (no completed run paired with {best}'s)."
        )
    if verdict["other_slots"]:
        lines.append(
            "With other amounts of training data, the best on validation (test "
            + label
            + "): "
            + "; ".join(
                ("all examples" if o["shots_per_class"] is None else f"{o['shots_per_class']} per class")
                + f": {o['label']} ({o['test']['mean']:.4f})"
                for o in verdict["other_slots"]
            )
            + "."
        )
    return lines


def ties(standings: list[dict], folds: dict | None) -> str:
    """Configurations within noise of the winner: each with its difference, whether every paired run agrees,
    and its costs."""
    unpaired = f"; separated on the pooled test split but not in every {'paired run' if folds else 'seed'}"
    return "; ".join(
        f"{s['label']} ({describe_difference(s['test'])}{unpaired if s['seed_dependent'] else ''}; "
        f"{describe_costs(s['costs'])})"
        for s in standings
    )


def describe_search(searched: list[dict]) -> list[str]:
    """Which strategies were searched, over what, how their trials ended, and which best settings sit at the
    edge of their range (so that the range should be widened)."""
    if not searched:
        return []
    parts = []
    for s in searched:
        ranges = ", ".join(f"{short_key(k)} {describe_range(v)}" for k, v in s["space"].items())
        ended = ", ".join(f"{s[k]} {k}" for k in ("pruned", "failed") if s[k])
        best = s["best"] and ", ".join(
            f"{short_key(k)} {v:.3g}" if isinstance(v, float) else f"{short_key(k)} {v}"
            for k, v in s["best"]["settings"].items()
        )
        parts.append(
            f"{s['strategy']} over {ranges} ({s['trials']} trials{'; ' + ended if ended else ''}): "
            + (f"best {best}" if best else "no trial completed")
        )
    lines = [
        "Each strategy's settings were searched on validation, then the best confirmed: "
        + "; ".join(parts)
        + "."
    ]
    for s in searched:
        for key, edge in s["at_edge"].items():
            lines.append(
                f"{s['strategy']}'s best {short_key(key)} ({s['best']['settings'][key]:.3g}) sits at the {edge} "
                f"edge of its range ({describe_range(s['space'][key])}): the best may lie beyond it; widen "
                f"search.space.{key} and search again."
            )
    return lines


def examples(count: int | None) -> str:
    return f" ({count:,} examples)" if count else ""


def to_know_more(verdict: dict) -> list[str]:
    """What to run when the evidence is thin: more seeds, a larger validation or test split."""
    notes = []
    if verdict["validation_ties"]:
        tied = ", ".join([verdict["winner"]["label"], *verdict["validation_ties"]])
        notes.append(
            f"{tied} tie on validation ({verdict['winner']['validation']['mean']:.4f}); "
            f"{verdict['winner']['label']} is the reference because it comes first in the config. "
            + (
                "More seeds or fold repeats (data.fold_repeats) would separate them."
                if verdict.get("folds")
                else "A larger validation split (data.validation_size) or more seeds would separate them."
            )
        )
    if verdict["kind"] != "single" and verdict["seeds"] < 2:
        notes.append(
            "Each configuration ran with one seed, so how far the ranking moves with the seed is unknown: "
            f"run three or more ({SEEDS_TO_SUGGEST})."
        )
    notes += folds_note(verdict)
    if verdict["resolution"] is not None and verdict["resolution"] > RESOLUTION_LIMIT:
        notes.append(
            f"On this test split{examples(verdict['test_examples'])} the 95% intervals are about "
            f"±{verdict['resolution']:.3f} wide, so smaller differences cannot be seen: a larger test split "
            "(data.test_size, or a larger test file) narrows them."
        )
    return notes


def folds_note(verdict: dict) -> list[str]:
    """Cross-validation, suggested when the choice rested on a small validation split or a tie, with its cost."""
    count = verdict["validation_examples"]
    small = bool(count) and count < SMALL_VALIDATION
    if verdict.get("folds") or verdict["kind"] == "single" or not (small or verdict["validation_ties"]):
        return []
    swing = (
        f", where a score of 0.85 moves by about ±{1.96 * (0.85 * 0.15 / count) ** 0.5:.2f} (95%) with which "
        "examples were drawn"
        if small
        else ""
    )
    return [
        f"The choice rests on {f'{count:,}' if count else 'its'} validation examples{swing}: cross-validation "
        f"lets every training example serve once for the choice. data.folds={FOLDS_TO_SUGGEST} trains every "
        f"configuration once per fold, {FOLDS_TO_SUGGEST}× this experiment's training (docs/verdict.md)."
    ]
