"""What the runs say together: mean and spread over seeds, the best setting of each strategy (chosen on
validation), paired bootstrap tests between strategies, and the tables built once as data and rendered to
Markdown, CSV and the HTML report."""

from __future__ import annotations

import base64
import csv
import functools
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from data_report import describe_report
from diagnostics import diagnose
from tasks import TASKS, Task
from utils import atomic_write_bytes, atomic_write_json
from verdict import best_of, configuration_label, decide, describe, format_share, signed

BOOTSTRAP_RESAMPLES = 5000
BOOTSTRAP_CHUNK = 1000  # resamples drawn at a time, which bounds memory on large test splits

COMPARISON_NOTE = (
    "Δ = A − B on the same test examples, averaged over runs paired by seed (and few-shot draw); 95% interval "
    f"and p-value from a paired bootstrap over test examples ({BOOTSTRAP_RESAMPLES:,} resamples). They measure how "
    "much the difference depends on which test examples were drawn, not on the seed: read them beside the standard "
    "deviations above. Each p-value is for one comparison; among many, some fall below 0.05 by chance.")


VARIANTS_TITLE = "Each variant against the first (same strategy, its chosen rate and other settings)"


def task_of(runs: list[dict]) -> Task:
    """The task the records are about (records written before tasks existed are classification)."""
    return TASKS[runs[0].get("task", "classification")] if runs else TASKS["classification"]


def aggregate(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation and the half-width of a 95% t-interval for the mean."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = float(np.mean(values))
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = float(np.std(values, ddof=1))
    return {"n": n, "mean": mean, "std": std, "ci95": float(stats.t.ppf(0.975, n - 1) * std / n ** 0.5)}


def validation_score(run: dict, metric: str) -> float:
    """The selection metric at the run's best epoch (what early stopping kept)."""
    return next(h[metric] for h in run["history"] if h["epoch"] == run["best_epoch"])


def best_run(runs: list[dict], metric: str, task: Task) -> dict:
    """The run with the best validation score."""
    return best_of(runs, lambda run: validation_score(run, metric), metric, task)


def summarize(runs: list[dict], metric: str) -> dict:
    """One row per configuration (strategy + grid values + shots), the best configuration of each
    strategy chosen on the validation `metric`, and paired tests between the chosen ones."""
    task = task_of(runs)
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run.get("config_id", run["run_id"]), []).append(run)  # older records: one run each
    rows = []
    for config_id, group in groups.items():
        done = [r for r in group if r["status"] == "completed"]
        first = group[0]
        rows.append({
            "config_id": config_id, "strategy": first["strategy"], "varied": first.get("varied", {}),
            "shots_per_class": (first.get("few_shot") or {}).get("shots_per_class"),
            "learning_rate": first["hyperparameters"]["learning_rate"], "runs": len(group), "failed": len(group) - len(done),
            "validation": aggregate([validation_score(r, metric) for r in done]),
            # records made before a metric existed lack it: the mean is over those that have it
            "test": {m.name: aggregate([r["test"][m.name] for r in done if m.name in r["test"]]) for m in task.metrics},
            "trainable_params": first.get("trainable_params"), "export_refused": first.get("export_refused"),
            "train_time_s": aggregate([r["train_time_s"] for r in done]),
            "peak_memory_mb": aggregate([r["peak_memory_mb"] for r in done]),
            "chosen": False,
        })
    chosen = {}
    for row in rows:
        if row["validation"]["mean"] is None:
            continue
        slot = (row["strategy"], row["shots_per_class"])
        if slot not in chosen or task.is_better(metric, row["validation"]["mean"], chosen[slot]["validation"]["mean"]):
            chosen[slot] = row
    for row in chosen.values():
        row["chosen"] = True
        row["test_interval"] = test_interval(groups[row["config_id"]], task)
    slots = list(chosen)
    comparisons = []
    for i, (strategy_a, shots) in enumerate(slots):
        for strategy_b, shots_b in slots[i + 1:]:
            if shots_b != shots:
                continue
            comparison = compare_configurations(groups[chosen[strategy_a, shots]["config_id"]],
                                                groups[chosen[strategy_b, shots]["config_id"]], task)
            if comparison:
                comparisons.append({"a": strategy_a, "b": strategy_b, "shots_per_class": shots, **comparison})
    sizes = next((r["dataset"].get("sizes", {}) for r in runs if r["status"] == "completed"), {})
    summary = {"task": task.name, "metric": metric, "rows": rows, "comparisons": comparisons,
               "variant_comparisons": variant_comparisons(rows, chosen, groups, task),
               "diagnostics": diagnostic_rows(groups, task), "memory_note": memory_note(runs),
               "validation_examples": sizes.get("validation"), "test_examples": sizes.get("test")}
    return {**summary, "verdict": decide(summary)}


def test_interval(runs: list[dict], task: Task) -> dict | None:
    """The bootstrap interval of a configuration's test scores (None for records without test predictions)."""
    done = [r for r in runs if r["status"] == "completed" and "test_labels" in r]
    if not done:
        return None
    done = [r for r in done if r["test_labels"] == done[0]["test_labels"]]
    return score_interval(task, done[0]["test_labels"], [r["test_predictions"] for r in done],
                          done[0]["dataset"]["label_names"])


def variant_comparisons(rows: list[dict], chosen: dict, groups: dict[str, list[dict]], task: Task) -> list[dict]:
    """Within each strategy, every variant against the first one in the config (the reference, e.g. `plain`),
    the other grid values held at the strategy's chosen ones: paired like the comparisons between strategies."""
    comparisons = []
    for (strategy, shots), best in chosen.items():
        held = {k: v for k, v in best["varied"].items() if k != "variant"}
        peers = [r for r in rows if r["strategy"] == strategy and r["shots_per_class"] == shots and "variant" in r["varied"]
                 and {k: v for k, v in r["varied"].items() if k != "variant"} == held and r["validation"]["mean"] is not None]
        for row in peers[1:]:
            comparison = compare_configurations(groups[row["config_id"]], groups[peers[0]["config_id"]], task)
            if comparison:
                comparisons.append({"a": f"{strategy}: {row['varied']['variant']}",
                                    "b": f"{strategy}: {peers[0]['varied']['variant']}", "shots_per_class": shots,
                                    **comparison})
    return comparisons


def diagnostic_rows(groups: dict[str, list[dict]], task: Task) -> list[dict]:
    """The diagnostics of each configuration's runs, one row per kind: in how many runs it was found, the
    first such run's message and the next step. Records made before diagnostics existed are diagnosed here."""
    rows = []
    for config_id, group in groups.items():
        done = [r for r in group if r["status"] == "completed"]
        found: dict[str, list[dict]] = {}
        for run in done:
            for item in run["diagnostics"] if "diagnostics" in run else diagnose(run, task):
                found.setdefault(item["kind"], []).append(item)
        for kind, items in found.items():
            rows.append({"config_id": config_id, "configuration": configuration_label(
                {"strategy": group[0]["strategy"], "varied": group[0].get("varied", {})}), "kind": kind,
                "runs": len(items), "of": len(done), "message": items[0]["message"], "next_step": items[0]["next_step"]})
    return rows


def diagnostic_columns() -> list[Column]:
    return [Column("configuration", lambda d: {"config_id": d["config_id"]}, lambda d: d["configuration"]),
            Column("finding", lambda d: {"kind": d["kind"]}, lambda d: d["kind"]),
            Column("runs", lambda d: {"runs": d["runs"], "of": d["of"]}, lambda d: f"{d['runs']} of {d['of']}"),
            Column("what was seen (first such run)", lambda d: {"message": d["message"]}, lambda d: d["message"]),
            Column("next step", lambda d: {"next_step": d["next_step"]}, lambda d: d["next_step"])]


def memory_note(runs: list[dict]) -> str | None:
    """A warning when the peak memory column mixes measures: records from before per-run measurement on a
    CPU hold the process's lifetime peak, which is not comparable with a run's own rise."""
    measures = sorted({r.get("peak_memory_measure", "process_peak_rss") for r in runs if r["status"] == "completed"})
    if len(measures) < 2:
        return None
    note = f"Peak memory mixes measures ({', '.join(measures)}), which do not compare"
    if "process_peak_rss" in measures:
        note += ("; process_peak_rss is the process's lifetime peak, recorded before runs measured their own memory: "
                 "rerun those runs with --force to compare memory")
    return note + "."


def _pairing_key(run: dict) -> tuple:
    return run["seed"], (run.get("few_shot") or {}).get("draw")


def compare_configurations(runs_a: list[dict], runs_b: list[dict], task: Task) -> dict | None:
    """Paired bootstrap over test examples, pairing runs of the same seed (and few-shot draw)."""
    by_key = {_pairing_key(r): r for r in runs_b if r["status"] == "completed" and "test_labels" in r}
    pairs = [(r, by_key[_pairing_key(r)]) for r in runs_a
             if r["status"] == "completed" and "test_labels" in r and _pairing_key(r) in by_key
             and r["test_labels"] == by_key[_pairing_key(r)]["test_labels"]]
    if not pairs:
        return None
    truth = pairs[0][0]["test_labels"]  # as the task reads them: class ids, numbers, or tags per token
    result = paired_bootstrap(task, truth, [a["test_predictions"] for a, _ in pairs],
                              [b["test_predictions"] for _, b in pairs], pairs[0][0]["dataset"]["label_names"])
    return {"paired_runs": len(pairs), **result}


@functools.lru_cache(maxsize=2)
def resample_weights(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """How often each of n test examples is drawn, one row per weighting: the observed data first (all ones),
    then each bootstrap resample. Kept for the next call: every comparison and interval of a summary resamples
    the same test split (drawing them takes about a second for 3,000 examples), so the array is read-only."""
    rng = np.random.default_rng(seed)
    sizes = [BOOTSTRAP_CHUNK] * (resamples // BOOTSTRAP_CHUNK) + ([resamples % BOOTSTRAP_CHUNK] if resamples % BOOTSTRAP_CHUNK else [])
    weights = np.concatenate([np.ones((1, n), dtype=np.float32)]
                             + [rng.multinomial(n, np.full(n, 1 / n), size=size).astype(np.float32) for size in sizes])
    weights.setflags(write=False)
    return weights


def weighted_scores(task: Task, truth: np.ndarray, predictions: list, label_names: list[str],
                    weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each compared metric of each prediction set (rows) under each weighting of the test examples (columns),
    from the examples' statistics (task.example_statistics), so a resample costs one matrix product."""
    counts = weights.sum(1)
    per_run = [task.metrics_from_sums(weights @ task.example_statistics(truth, p, label_names), counts, label_names)
               for p in predictions]
    return {name: np.stack([scores[name] for scores in per_run]) for name in task.compared_metrics}


def paired_bootstrap(task: Task, truth, predictions_a: list, predictions_b: list, label_names: list[str],
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Difference A - B in each of the task's compared metrics (mean over paired runs), its 95% percentile
    interval, a two-sided p-value for "no difference" (the bootstrap distribution shifted to zero mean, as in
    Berg-Kirkpatrick et al. 2012), and the difference in each pair of runs. Test examples are resampled, the
    same ones for both sides, so the test sees the pairing."""
    weights = resample_weights(len(truth), resamples, seed)
    a = weighted_scores(task, truth, predictions_a, label_names, weights)
    b = weighted_scores(task, truth, predictions_b, label_names, weights)
    result = {}
    for name in task.compared_metrics:
        difference = a[name].mean(0) - b[name].mean(0)
        observed, resampled = float(difference[0]), difference[1:]
        extreme = np.sum(np.abs(resampled - resampled.mean()) >= abs(observed) - 1e-12)
        low, high = np.percentile(resampled, [2.5, 97.5])
        result[name] = {"difference": observed, "low": float(low), "high": float(high),
                        "p_value": float((extreme + 1) / (len(resampled) + 1)),
                        "per_run": [float(d) for d in a[name][:, 0] - b[name][:, 0]]}
    return result


def score_interval(task: Task, truth, predictions: list, label_names: list[str], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    """The 95% percentile interval of each compared metric (mean over the runs) over resampled test examples:
    how far the score could move with another test split drawn from the same data."""
    scores = weighted_scores(task, truth, predictions, label_names, resample_weights(len(truth), resamples, seed))
    intervals = {}
    for name, values in scores.items():
        low, high = np.percentile(values.mean(0)[1:], [2.5, 97.5])
        intervals[name] = {"low": float(low), "high": float(high)}
    return intervals


# ----------------------------------------------------------------------------------------------
# Tables: each column says once how it reads as text (Markdown, HTML, terminal) and which raw values it
# puts in the CSV.


@dataclass(frozen=True)
class Column:
    title: str | None  # None: the column is in the CSV only
    csv: Callable[[dict], dict[str, Any]]  # CSV column name -> raw value
    text: Callable[[dict], str] = str


def _mean_std(stats: dict, digits: int = 4) -> str:
    if stats["mean"] is None:
        return "-"
    text = f"{stats['mean']:.{digits}f}"
    return text + (f" ± {stats['std']:.{digits}f}" if stats["std"] is not None else "")


def _stat_column(title: str, name: str, get: Callable[[dict], dict], digits: int = 4) -> Column:
    return Column(title, lambda row: {f"{name}_{k}": get(row)[k] for k in ("mean", "std", "ci95")},
                  lambda row: _mean_std(get(row), digits))


def configuration_columns(summary: dict) -> list[Column]:
    task, rows = TASKS[summary["task"]], summary["rows"]
    varied = list(dict.fromkeys(k for row in rows for k in row["varied"] if k != "learning_rate"))
    columns = [Column(None, lambda r: {"config_id": r["config_id"]}),
               Column("strategy", lambda r: {"strategy": r["strategy"]}, lambda r: r["strategy"]),
               Column("learning rate", lambda r: {"learning_rate": r["learning_rate"]}, lambda r: f"{r['learning_rate']:.1e}"),
               Column(None, lambda r: {"varied": json.dumps(r["varied"])})]
    columns += [Column(k, lambda r: {}, lambda r, k=k: str(r["varied"].get(k, ""))) for k in varied]
    if any(row["shots_per_class"] is not None for row in rows):
        columns.append(Column("shots per class", lambda r: {"shots_per_class": r["shots_per_class"]},
                              lambda r: "all" if r["shots_per_class"] is None else str(r["shots_per_class"])))
    columns += [
        Column("runs", lambda r: {"runs": r["runs"], "failed": r["failed"]},
               lambda r: str(r["runs"]) + (f" ({r['failed']} failed)" if r["failed"] else "")),
        _stat_column(task.label(summary["metric"]), "validation", lambda r: r["validation"]),
        *[_stat_column(f"test {m.label}", f"test_{m.name}", lambda r, name=m.name: r["test"][name])
          for m in task.summary_metrics()],
        Column("trainable params", lambda r: {"trainable_params": r["trainable_params"]},
               lambda r: f"{r['trainable_params']:,}" if r["trainable_params"] else "-"),
        _stat_column("train time (s)", "train_time_s", lambda r: r["train_time_s"], 1),
        _stat_column("peak memory (MB)", "peak_memory_mb", lambda r: r["peak_memory_mb"], 0),
        Column("chosen", lambda r: {"chosen": r["chosen"]}, lambda r: "yes" if r["chosen"] else ""),
    ]
    return columns


def comparison_columns(summary: dict, key: str = "comparisons") -> list[Column]:
    task = TASKS[summary["task"]]
    columns = [Column("A vs B", lambda c: {"a": c["a"], "b": c["b"]}, lambda c: f"{c['a']} vs {c['b']}")]
    if any(c["shots_per_class"] is not None for c in summary[key]):
        columns.append(Column("shots per class", lambda c: {"shots_per_class": c["shots_per_class"]},
                              lambda c: "all" if c["shots_per_class"] is None else str(c["shots_per_class"])))
    columns.append(Column("paired runs", lambda c: {"paired_runs": c["paired_runs"]}, lambda c: str(c["paired_runs"])))
    for name in task.compared_metrics:
        columns += [Column(f"Δ {task.metric(name).label} [95% CI]",
                           lambda c, name=name: {f"{name}_{k}": c[name][k] for k in ("difference", "low", "high")},
                           lambda c, name=name: f"{signed(c[name]['difference'])} [{signed(c[name]['low'])}, {signed(c[name]['high'])}]"),
                    Column("p", lambda c, name=name: {f"{name}_p_value": c[name]["p_value"]},
                           lambda c, name=name: f"{c[name]['p_value']:.4f}")]
    return columns


def markdown_table(columns: list[Column], items: list[dict]) -> list[str]:
    shown = [c for c in columns if c.title is not None]
    return (["| " + " | ".join(c.title for c in shown) + " |", "|" + "---|" * len(shown)]
            + ["| " + " | ".join(c.text(item) for c in shown) + " |" for item in items])


def csv_table(columns: list[Column], items: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    values = [{k: v for c in columns for k, v in c.csv(item).items()} for item in items]
    header = list(dict.fromkeys(k for c in columns for k in c.csv(items[0]))) if items else []
    writer.writerow(header)
    writer.writerows([row.get(k) for k in header] for row in values)
    return buffer.getvalue().encode()


def winner_columns(summary: dict) -> list[Column]:
    """Each chosen strategy against the verdict's winner: the paired difference on the deciding metric and
    the costs as multiples of the winner's."""
    verdict = summary["verdict"]
    best, label = verdict["winner"]["strategy"], TASKS[summary["task"]].metric(verdict["metric"]).label

    def paired(s: dict) -> str:
        runs = s["test"]["per_run"]
        same = sum(1 for d in runs if d * s["test"]["difference"] > 0)
        return str(len(runs)) + (f" ({same} same sign)" if len(runs) > 1 else "")

    def ratio(key: str, text: Callable[[float], str]) -> Callable[[dict], str]:
        return lambda s: "-" if s["costs"][key] is None else text(s["costs"][key])

    return [Column("strategy", lambda s: {"strategy": s["strategy"], "config_id": s["config_id"]}, lambda s: s["label"]),
            Column(f"against {best}", lambda s: {"status": s["status"], "seed_dependent": s["seed_dependent"]},
                   lambda s: s["status"] + (" (sign varies by seed)" if s["seed_dependent"] else "")),
            Column(f"Δ test {label} [95% CI]", lambda s: {k: s["test"][k] for k in ("difference", "low", "high")},
                   lambda s: f"{signed(s['test']['difference'])} [{signed(s['test']['low'])}, {signed(s['test']['high'])}]"),
            Column("p", lambda s: {"p_value": s["test"]["p_value"]}, lambda s: f"{s['test']['p_value']:.4f}"),
            Column("paired runs", lambda s: {"paired_runs": s["test"]["paired_runs"]}, paired),
            Column(f"trainable params (share of {best}'s)", lambda s: {"params_ratio": s["costs"]["params"]},
                   ratio("params", format_share)),
            Column(f"train time (× {best}'s)", lambda s: {"time_ratio": s["costs"]["time"]}, ratio("time", lambda r: f"{r:.2f}×")),
            Column(f"peak memory (× {best}'s)", lambda s: {"memory_ratio": s["costs"]["memory"]},
                   ratio("memory", lambda r: f"{r:.2f}×"))]


def winner_title(summary: dict) -> str:
    return f"Against {summary['verdict']['winner']['strategy']}, the best on validation"


WINNER_NOTE = ("Δ = strategy − the best on validation, on the same test examples; within noise: the 95% interval holds "
               "zero, p ≥ 0.05, or the sign differs between paired seeds. The interval and p come from a paired bootstrap over "
               "test examples; the costs are multiples of the best's (time and memory within 10% count as equal).")


def describe_baseline(task: Task, baseline: dict) -> str:
    scores = ", ".join(f"{m.label} {baseline[m.name]:.4f}" for m in task.summary_metrics() if m.name in baseline)
    return f"{task.baseline_label} baseline on test: {scores}"


def verdict_lines(summary: dict) -> list[str]:
    return describe(summary["verdict"], TASKS[summary["task"]])


def summary_markdown(summary: dict, everything: bool = True) -> str:
    """The verdict, the configurations and each strategy against the winner; with `everything`, also every
    pair of strategies, the variants and the diagnostics (the terminal shows the short form)."""
    headline, *reasons = verdict_lines(summary)
    lines = ["## Verdict", "", f"**{headline}**", ""] + [f"- {line}" for line in reasons]
    lines += ["", "## Configurations (mean ± standard deviation over runs: seeds and few-shot draws)", ""]
    lines += markdown_table(configuration_columns(summary), summary["rows"])
    lines += ["", f"The chosen setting of each strategy has the best mean {TASKS[summary['task']].label(summary['metric'])}; "
              "test scores are only reported, never used to choose."]
    if summary["memory_note"]:
        lines += ["", summary["memory_note"]]
    if summary["verdict"].get("standings"):
        lines += ["", f"## {winner_title(summary)}", ""]
        lines += markdown_table(winner_columns(summary), summary["verdict"]["standings"]) + ["", WINNER_NOTE]
    if not everything:
        return "\n".join(lines)
    if summary["comparisons"]:
        lines += ["", f"## {PAIRS_TITLE}", ""]
        lines += markdown_table(comparison_columns(summary), summary["comparisons"]) + ["", COMPARISON_NOTE]
    if summary["variant_comparisons"]:
        lines += ["", f"## {VARIANTS_TITLE}", ""]
        lines += markdown_table(comparison_columns(summary, "variant_comparisons"), summary["variant_comparisons"])
    if summary["diagnostics"]:
        lines += ["", "## Diagnostics", ""] + markdown_table(diagnostic_columns(), summary["diagnostics"])
    return "\n".join(lines)


PAIRS_TITLE = "Every pair of chosen settings"


def terminal_summary(summary: dict, folder: Path) -> str:
    """What main.py prints at the end: the short summary and where the rest is."""
    rest = [f"all {len(summary['comparisons'])} pairs of strategies"] if summary["comparisons"] else []
    rest += ["the variants"] if summary["variant_comparisons"] else []
    rest += [f"{len(summary['diagnostics'])} diagnostic finding(s)"] if summary["diagnostics"] else []
    lines = [summary_markdown(summary, everything=False), "",
             f"Files: {folder / 'summary.md'}" + (f" adds {', '.join(rest)}" if rest else "")
             + "; summary.csv and comparisons.csv beside it; plots and report.html: python visualize.py"]
    if summary["verdict"]["kind"] != "none":
        recommended = next(r for r in summary["rows"] if r["config_id"] == summary["verdict"]["recommended_config_id"])
        lines.append('Use the recommended run: python main.py predict --run recommended --text "..." '
                     + ("(or export --run recommended --out DIR)" if not recommended.get("export_refused")
                        else "(export refuses it: its head is in no Hugging Face model class)"))
    return "\n".join(lines)


def write_summary(summary: dict, folder: Path) -> None:
    """summary.md, summary.csv (one row per configuration), comparisons.csv (every pair),
    winner_comparisons.csv (each strategy against the best) and verdict.json (the verdict, numbers and words)."""
    atomic_write_bytes(folder / "summary.csv", csv_table(configuration_columns(summary), summary["rows"]))
    atomic_write_bytes(folder / "comparisons.csv", csv_table(comparison_columns(summary), summary["comparisons"]))
    if summary["verdict"].get("standings"):
        atomic_write_bytes(folder / "winner_comparisons.csv",
                           csv_table(winner_columns(summary), summary["verdict"]["standings"]))
    if summary["variant_comparisons"]:
        atomic_write_bytes(folder / "variant_comparisons.csv", csv_table(comparison_columns(summary, "variant_comparisons"),
                                                                         summary["variant_comparisons"]))
    atomic_write_bytes(folder / "summary.md", (summary_markdown(summary) + "\n").encode())
    atomic_write_json(folder / "verdict.json", {**summary["verdict"], "sentences": verdict_lines(summary)})


# ----------------------------------------------------------------------------------------------
# The HTML report: one self-contained page, read top to bottom: the data, the verdict, the evidence, how to
# reproduce it.

REPORT_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:0 auto;padding:1.5em;color:#1d1d1f}
h1{font-size:1.7em;margin:.2em 0}h2{font-size:1.25em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555;margin:.2em 0 1em}
.verdict{background:#f2f7ff;border-left:5px solid #2f6fdb;padding:.8em 1.2em;margin:1em 0}
.verdict p{font-size:1.1em;font-weight:600;margin:.3em 0}.verdict ul{margin:.4em 0;padding-left:1.2em}
.scroll{overflow-x:auto;margin:.6em 0}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #d5d5d5;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr.chosen td{background:#e6f4e6}
figure{margin:1.2em 0;break-inside:avoid}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#333;font-size:14px;margin-top:.3em}figcaption code{color:#777}
details{margin:.8em 0}summary{cursor:pointer;font-weight:600}
pre{background:#f7f7f7;padding:1em;font-size:12px;overflow-x:auto;white-space:pre-wrap}
.note{color:#555;font-size:13px}.spread{color:#555;font-size:.9em}
@media (max-width:900px){body{padding:.5em;font-size:14px}table{font-size:12px}th,td{padding:3px}th{font-size:11px}}
@media print{body{max-width:none;padding:0}.scroll{overflow:visible}h2{break-after:avoid}}
"""


def cell(text: str) -> str:
    """A cell's text with a line break before a spread ("± 0.004") or an interval ("[-0.01, +0.02]"), which
    keeps numeric columns narrow enough for a laptop screen or a narrow window."""
    return html.escape(text).replace(" ± ", "<br><span class='spread'>±&nbsp;").replace(" [", "<br>[") + (
        "</span>" if " ± " in text else "")


def html_table(columns: list[Column], items: list[dict], row_class: Callable[[dict], str] | None = None) -> str:
    """A table inside a box that scrolls sideways if a window is still too narrow for it."""
    shown = [c for c in columns if c.title is not None]
    head = "".join(f"<th>{html.escape(c.title)}</th>" for c in shown)
    head = f"<thead><tr>{head}</tr></thead>" if any(c.title for c in shown) else ""
    body = "".join((f"<tr class='{row_class(item)}'>" if row_class and row_class(item) else "<tr>")
                   + "".join(f"<td>{cell(c.text(item))}</td>" for c in shown) + "</tr>" for item in items)
    return f"<div class='scroll'><table>{head}<tbody>{body}</tbody></table></div>"


def header_section(summary: dict, completed: list[dict], failed: list[dict], data_report: dict | None) -> list[str]:
    """The title, what was run, and the data: classes, split sizes and class balance."""
    dataset = completed[0]["dataset"]
    task = TASKS[summary["task"]]
    counts = (data_report or {}).get("class_counts")
    split_columns = [Column("split", lambda split: {}, lambda split: split),
                     Column("examples", lambda split: {}, lambda split: f"{dataset['sizes'][split]:,}")]
    if counts:
        split_columns += [Column("smallest class", lambda split: {}, lambda split: smallest_and_largest(counts[split])[0]),
                          Column("largest class", lambda split: {}, lambda split: smallest_and_largest(counts[split])[1])]
    finished = max(r.get("finished_at", "") for r in completed)[:10]
    labels = task.describe_labels(dataset["label_names"])
    parts = [f"<h1>Which fine-tuning strategy for {html.escape(dataset['name'])}?</h1>",
             f"<p class='meta'>{html.escape(task.name)} with {html.escape(labels)} · model "
             f"{html.escape(', '.join(sorted({r['model'] for r in completed})))} · {len(completed)} completed run(s)"
             + (f", {len(failed)} failed" if failed else "") + f" · {finished}</p>",
             html_table(split_columns, [split for split in ("train", "validation", "test") if split in dataset["sizes"]])]
    if counts:
        parts.append(f"<p class='note'>Class balance: the largest training class has {data_report['imbalance_ratio']:.1f}× "
                     "the examples of the smallest.</p>")
    if data_report:
        parts.append(f"<details><summary>Cleaning, token lengths{' and examples per class' if counts else ''}</summary>"
                     + "".join(data_section(data_report)) + "</details>")
    return parts


def smallest_and_largest(counts: dict[str, int]) -> tuple[str, str]:
    ordered = sorted(counts.items(), key=lambda item: item[1])
    return f"{ordered[0][0]} ({ordered[0][1]:,})", f"{ordered[-1][0]} ({ordered[-1][1]:,})"


def data_section(report: dict) -> list[str]:
    """The data report as HTML: what cleaning found, token lengths, and the examples per class and split."""
    lines = "".join(f"<li>{html.escape(line.strip())}</li>" for line in describe_report(report))
    counts = report.get("class_counts")
    if not counts:
        return [f"<ul>{lines}</ul>"]
    columns = [Column("class", lambda name: {}, lambda name: name)]
    columns += [Column(split, lambda name: {}, lambda name, split=split: f"{counts[split][name]:,}") for split in counts]
    names = sorted(counts["train"], key=lambda name: -counts["train"][name])
    return [f"<ul>{lines}</ul>", html_table(columns, names)]


def verdict_section(summary: dict) -> list[str]:
    headline, *reasons = verdict_lines(summary)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in reasons)
    return ["<section class='verdict'><h2>Verdict</h2>", f"<p>{html.escape(headline)}</p>",
            f"<ul>{items}</ul>" if items else "", "</section>"]


def figure(image: Path, caption: str) -> str:
    data = base64.b64encode(image.read_bytes()).decode()
    return (f"<figure><img alt='{html.escape(image.stem)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)} <code>{html.escape(image.name)}</code></figcaption></figure>")


def reproduce_section(completed: list[dict], experiment: dict | None) -> list[str]:
    """The command, the config as YAML, the versions, the data fingerprint and the device."""
    first = completed[0]
    facts = [("data fingerprint", first["dataset"]["fingerprint"]), ("device", first.get("device", "?")),
             *first["versions"].items()]
    parts = ["<h2>Reproduce</h2>"]
    if experiment:
        command = experiment["command"]
        command = f"python {command}" if command.startswith("main.py") else command
        parts.append(f"<p>The command, from the project folder: <code>{html.escape(command)}</code> "
                     f"(config file <code>{html.escape(experiment['config_file'])}</code>).</p>")
    parts.append(html_table([Column("", lambda f: {}, lambda f: f[0]), Column("", lambda f: {}, lambda f: str(f[1]))], facts))
    if experiment:
        parts.append("<details><summary>The config, as run</summary>"
                     f"<pre>{html.escape(yaml.safe_dump(experiment['config'], sort_keys=False))}</pre></details>")
    return parts


def write_report(path: Path, summary: dict, runs: list[dict], experiment: dict | None,
                 figures: list[tuple[Path, str]], skipped: dict[str, str], data_report: dict | None = None) -> None:
    """One HTML file with everything embedded (each plot with what to look for in it), so it can be sent to a
    colleague as it is."""
    task = TASKS[summary["task"]]
    completed = [r for r in runs if r["status"] == "completed"]
    failed = [r for r in runs if r["status"] != "completed"]
    baseline = completed[0]["dataset"].get("majority_baseline")
    parts = [*header_section(summary, completed, failed, data_report), *verdict_section(summary)]
    if summary["verdict"].get("standings"):
        parts += [f"<h2>{html.escape(winner_title(summary))}</h2>",
                  html_table(winner_columns(summary), summary["verdict"]["standings"]),
                  f"<p class='note'>{html.escape(WINNER_NOTE)}</p>"]
    parts += ["<h2>Configurations</h2>",
              html_table(configuration_columns(summary), summary["rows"], lambda r: "chosen" if r["chosen"] else ""),
              f"<p class='note'>Mean ± standard deviation over runs (seeds and few-shot draws). The chosen setting of each "
              f"strategy (highlighted) has the best mean {html.escape(task.label(summary['metric']))}; test scores are only "
              "reported, never used to choose." + (f" The {html.escape(describe_baseline(task, baseline))}." if baseline else "")
              + (f" {html.escape(summary['memory_note'])}" if summary["memory_note"] else "") + "</p>"]
    if summary["diagnostics"]:
        parts += ["<h2>Diagnostics</h2>", html_table(diagnostic_columns(), summary["diagnostics"])]
    if failed:
        parts += ["<h2>Failed runs</h2>",
                  html_table([Column("run", lambda r: {}, lambda r: r["run_id"]),
                              Column("error", lambda r: {}, lambda r: r.get("error", ""))], failed)]
    parts.append("<h2>Plots</h2>")
    parts += [figure(image, caption) for image, caption in figures]
    if skipped:
        parts.append("<p class='note'>Not drawn: " + "; ".join(f"{html.escape(k)} ({html.escape(v)})"
                                                               for k, v in skipped.items()) + ".</p>")
    if summary["comparisons"]:
        parts += [f"<details><summary>{PAIRS_TITLE} ({len(summary['comparisons'])})</summary>",
                  html_table(comparison_columns(summary), summary["comparisons"]),
                  f"<p class='note'>{html.escape(COMPARISON_NOTE)}</p></details>"]
    if summary["variant_comparisons"]:
        parts += [f"<h2>{VARIANTS_TITLE}</h2>",
                  html_table(comparison_columns(summary, "variant_comparisons"), summary["variant_comparisons"])]
    parts += reproduce_section(completed, experiment)
    title = html.escape(f"bertlab: {completed[0]['dataset']['name']}")
    path.write_text(f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
                    f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{title}</title>"
                    f"<style>{REPORT_STYLE}</style></head><body>{''.join(parts)}</body></html>\n", encoding="utf-8")
