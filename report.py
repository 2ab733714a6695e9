"""What the runs say together: mean and spread over seeds, the best setting of each strategy (chosen on
validation), paired bootstrap tests between strategies, and the tables built once as data and rendered to
Markdown, CSV and the HTML report."""

from __future__ import annotations

import base64
import csv
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
from utils import atomic_write_bytes

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


def best_of(items: list[dict], score: Callable[[dict], float], metric: str, task: Task) -> dict:
    """The item with the best score for `metric` (the first among equals)."""
    best = items[0]
    for item in items[1:]:
        if task.is_better(metric, score(item), score(best)):
            best = item
    return best


def best_run(runs: list[dict], metric: str, task: Task) -> dict:
    """The run with the best validation score."""
    return best_of(runs, lambda run: validation_score(run, metric), metric, task)


def headline_rows(rows: list[dict]) -> tuple[list[dict], int | None]:
    """The chosen configurations that stand for each strategy: those on the full training data, or in a
    few-shot-only experiment those with the most examples per class (returned too; None otherwise)."""
    chosen = [r for r in rows if r["chosen"]]
    full_data = [r for r in chosen if r["shots_per_class"] is None]
    if full_data:
        return full_data, None
    largest = max((r["shots_per_class"] for r in chosen), default=None)
    return [r for r in chosen if r["shots_per_class"] == largest], largest


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
            "trainable_params": first.get("trainable_params"),
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
    return {"task": task.name, "metric": metric, "rows": rows, "comparisons": comparisons,
            "variant_comparisons": variant_comparisons(rows, chosen, groups, task),
            "diagnostics": diagnostic_rows(groups, task), "memory_note": memory_note(runs)}


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


def configuration_label(row: dict) -> str:
    """A configuration in words: its strategy and the grid values that set it apart ("lora (rank=8)")."""
    extra = [f"{k}={v}" for k, v in row["varied"].items()]
    return row["strategy"] + (f" ({', '.join(extra)})" if extra else "")


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
    truth = np.asarray(pairs[0][0]["test_labels"])
    result = paired_bootstrap(task, truth, [np.asarray(a["test_predictions"]) for a, _ in pairs],
                              [np.asarray(b["test_predictions"]) for _, b in pairs], pairs[0][0]["dataset"]["num_labels"])
    return {"paired_runs": len(pairs), **result}


def paired_bootstrap(task: Task, truth, predictions_a: list, predictions_b: list, num_labels: int,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, dict[str, float]]:
    """Difference A - B in each of the task's compared metrics (mean over paired runs), its 95% percentile
    interval, and a two-sided p-value for "no difference" (the bootstrap distribution shifted to zero mean,
    as in Berg-Kirkpatrick et al. 2012). Test examples are resampled, the same ones for both sides, so the
    test sees the pairing: each resample weights the examples' statistics (task.example_statistics)."""
    truth = np.asarray(truth)
    n = len(truth)
    rng = np.random.default_rng(seed)
    sizes = [BOOTSTRAP_CHUNK] * (resamples // BOOTSTRAP_CHUNK) + ([resamples % BOOTSTRAP_CHUNK] if resamples % BOOTSTRAP_CHUNK else [])
    # how often each example is drawn, per weighting: the observed data first, then each resample
    weights = np.concatenate([np.ones((1, n), dtype=np.float32)]
                             + [rng.multinomial(n, np.full(n, 1 / n), size=size).astype(np.float32) for size in sizes])
    counts = weights.sum(1)

    def scores(predictions: list) -> dict[str, np.ndarray]:
        total = {name: 0.0 for name in task.compared_metrics}
        for pred in predictions:
            sums = weights @ task.example_statistics(truth, np.asarray(pred), num_labels)
            for name, values in task.metrics_from_sums(sums, counts, num_labels).items():
                total[name] = total[name] + values
        return {name: values / len(predictions) for name, values in total.items()}

    a, b = scores(predictions_a), scores(predictions_b)
    result = {}
    for name in task.compared_metrics:
        difference = a[name] - b[name]
        observed, resampled = float(difference[0]), difference[1:]
        extreme = np.sum(np.abs(resampled - resampled.mean()) >= abs(observed) - 1e-12)
        low, high = np.percentile(resampled, [2.5, 97.5])
        result[name] = {"difference": observed, "low": float(low), "high": float(high),
                        "p_value": float((extreme + 1) / (len(resampled) + 1))}
    return result


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
        columns.append(Column("shots/class", lambda r: {"shots_per_class": r["shots_per_class"]},
                              lambda r: str(r["shots_per_class"])))
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
        columns.append(Column("shots/class", lambda c: {"shots_per_class": c["shots_per_class"]},
                              lambda c: str(c["shots_per_class"])))
    columns.append(Column("paired runs", lambda c: {"paired_runs": c["paired_runs"]}, lambda c: str(c["paired_runs"])))
    for name in task.compared_metrics:
        columns += [Column(f"Δ {task.metric(name).label} [95% CI]",
                           lambda c, name=name: {f"{name}_{k}": c[name][k] for k in ("difference", "low", "high")},
                           lambda c, name=name: f"{c[name]['difference']:+.4f} [{c[name]['low']:+.4f}, {c[name]['high']:+.4f}]"),
                    Column("p", lambda c, name=name: {f"{name}_p_value": c[name]["p_value"]},
                           lambda c, name=name: f"{c[name]['p_value']:.4f}")]
    return columns


def markdown_table(columns: list[Column], items: list[dict]) -> list[str]:
    shown = [c for c in columns if c.title is not None]
    return (["| " + " | ".join(c.title for c in shown) + " |", "|" + "---|" * len(shown)]
            + ["| " + " | ".join(c.text(item) for c in shown) + " |" for item in items])


def html_table(columns: list[Column], items: list[dict]) -> str:
    shown = [c for c in columns if c.title is not None]
    head = "".join(f"<th>{html.escape(c.title)}</th>" for c in shown)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.text(item))}</td>" for c in shown) + "</tr>" for item in items)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def csv_table(columns: list[Column], items: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    values = [{k: v for c in columns for k, v in c.csv(item).items()} for item in items]
    header = list(dict.fromkeys(k for c in columns for k in c.csv(items[0]))) if items else []
    writer.writerow(header)
    writer.writerows([row.get(k) for k in header] for row in values)
    return buffer.getvalue().encode()


def describe_baseline(task: Task, baseline: dict) -> str:
    scores = ", ".join(f"{m.label} {baseline[m.name]:.4f}" for m in task.summary_metrics() if m.name in baseline)
    return f"{task.baseline_label} baseline on test: {scores}"


def summary_markdown(summary: dict) -> str:
    lines = ["## Configurations (mean ± standard deviation over runs: seeds and few-shot draws)", ""]
    lines += markdown_table(configuration_columns(summary), summary["rows"])
    lines += ["", f"The chosen setting of each strategy has the best mean {TASKS[summary['task']].label(summary['metric'])}; "
              "test scores are only reported, never used to choose."]
    if summary["memory_note"]:
        lines += ["", summary["memory_note"]]
    if summary["comparisons"]:
        lines += ["", "## Paired comparisons of the chosen settings", ""]
        lines += markdown_table(comparison_columns(summary), summary["comparisons"]) + ["", COMPARISON_NOTE]
    if summary["variant_comparisons"]:
        lines += ["", f"## {VARIANTS_TITLE}", ""]
        lines += markdown_table(comparison_columns(summary, "variant_comparisons"), summary["variant_comparisons"])
    if summary["diagnostics"]:
        lines += ["", "## Diagnostics", ""] + markdown_table(diagnostic_columns(), summary["diagnostics"])
    return "\n".join(lines)


def write_summary(summary: dict, folder: Path) -> None:
    """summary.md, summary.csv (one row per configuration) and comparisons.csv."""
    atomic_write_bytes(folder / "summary.csv", csv_table(configuration_columns(summary), summary["rows"]))
    atomic_write_bytes(folder / "comparisons.csv", csv_table(comparison_columns(summary), summary["comparisons"]))
    if summary["variant_comparisons"]:
        atomic_write_bytes(folder / "variant_comparisons.csv", csv_table(comparison_columns(summary, "variant_comparisons"),
                                                                         summary["variant_comparisons"]))
    atomic_write_bytes(folder / "summary.md", (summary_markdown(summary) + "\n").encode())


def data_section(report: dict) -> list[str]:
    """The data report as HTML: what cleaning found, token lengths, and the examples per class and split."""
    counts = report["class_counts"]
    columns = [Column("class", lambda name: {}, lambda name: name)]
    columns += [Column(split, lambda name: {}, lambda name, split=split: f"{counts[split][name]:,}") for split in counts]
    names = sorted(counts["train"], key=lambda name: -counts["train"][name])
    lines = "".join(f"<li>{html.escape(line.strip())}</li>" for line in describe_report(report))
    return ["<h2>Data</h2>", f"<ul>{lines}</ul>", html_table(columns, names)]


REPORT_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
                "table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;"
                "text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}"
                "pre{background:#f7f7f7;padding:1em;font-size:12px}")


def write_report(path: Path, summary: dict, runs: list[dict], experiment: dict | None, images: list[Path],
                 skipped: dict[str, str], data_report: dict | None = None) -> None:
    """One HTML file with everything embedded, so it can be sent to a colleague as it is."""
    task = TASKS[summary["task"]]
    completed = [r for r in runs if r["status"] == "completed"]
    failed = [r for r in runs if r["status"] != "completed"]
    dataset = completed[0]["dataset"]
    baseline = dataset.get("majority_baseline")
    parts = [
        f"<h1>bertlab report: {html.escape(dataset['name'])}</h1>",
        f"<p>{len(completed)} completed run(s), {len(failed)} failed; model {html.escape(completed[0]['model'])}; "
        f"data fingerprint {dataset['fingerprint']}; split sizes {html.escape(json.dumps(dataset['sizes']))}; "
        f"device {html.escape(completed[0].get('device', '?'))}; versions "
        f"{html.escape(', '.join(f'{k} {v}' for k, v in completed[0]['versions'].items()))}.</p>",
        *(data_section(data_report) if data_report else []),
        "<h2>Configurations</h2>", html_table(configuration_columns(summary), summary["rows"]),
        f"<p>Mean ± standard deviation over runs (seeds and few-shot draws). The chosen setting of each strategy has "
        f"the best mean {html.escape(task.label(summary['metric']))}; test scores are only reported, never used to choose."
        + (f" The {html.escape(describe_baseline(task, baseline))}." if baseline else "") + "</p>",
    ]
    if summary["memory_note"]:
        parts.append(f"<p>{html.escape(summary['memory_note'])}</p>")
    if summary["comparisons"]:
        parts += ["<h2>Paired comparisons of the chosen settings</h2>",
                  html_table(comparison_columns(summary), summary["comparisons"]), f"<p>{html.escape(COMPARISON_NOTE)}</p>"]
    if summary["variant_comparisons"]:
        parts += [f"<h2>{VARIANTS_TITLE}</h2>",
                  html_table(comparison_columns(summary, "variant_comparisons"), summary["variant_comparisons"])]
    if summary["diagnostics"]:
        parts += ["<h2>Diagnostics</h2>", html_table(diagnostic_columns(), summary["diagnostics"])]
    if failed:
        parts += ["<h2>Failed runs</h2>",
                  html_table([Column("run", lambda r: {}, lambda r: r["run_id"]),
                              Column("error", lambda r: {}, lambda r: r.get("error", ""))], failed)]
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
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>bertlab report</title>"
                    f"<style>{REPORT_STYLE}</style></head><body>{''.join(parts)}</body></html>\n", encoding="utf-8")
