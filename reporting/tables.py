"""Tables built once as data (rows of cells with their column names) and rendered to Markdown, CSV and the
terminal: the configurations, the paired comparisons, each strategy against the winner, the diagnostics; and
the summary files main.py writes."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reporting.summary import COMPARISON_NOTE, VARIANTS_TITLE
from reporting.verdict import describe, format_share, signed
from tasks import TASKS, Metric, Task
from records.shared import write_json
from utils import atomic_write_bytes


# Each column says once how it reads as text (Markdown, HTML, terminal) and which raw values it puts in the CSV.
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
    return Column(
        title,
        lambda row: {f"{name}_{k}": get(row)[k] for k in ("mean", "std", "ci95")},
        lambda row: _mean_std(get(row), digits),
    )


EMPTY = {"mean": None, "std": None, "ci95": None}  # the statistics of a column a row has no value for


def scaled(stats: dict | None, factor: float) -> dict:
    """An aggregate's statistics in other units (EMPTY for a row without them)."""
    if not stats or stats["mean"] is None:
        return EMPTY
    return {k: None if stats[k] is None else stats[k] * factor for k in ("mean", "std", "ci95")}


def unseen_and_calibration_columns(rows: list[dict], main: Metric) -> list[Column]:
    """Beside a test split the data gave (scored whole), its main metric on the rows no earlier split holds;
    with training.calibration, what the temperature did to the test calibration error."""
    columns = []
    if any(r["test_unseen"] for r in rows):
        unseen = lambda r: (r["test_unseen"] or {}).get(main.name, EMPTY)
        columns.append(_stat_column(f"test {main.label}, unseen rows", f"test_unseen_{main.name}", unseen))
    if any(r.get("calibration") for r in rows):
        calibration = lambda key: lambda r: (r.get("calibration") or {}).get(key, EMPTY)
        columns += [
            _stat_column("test ECE, uncalibrated", "test_ece_uncalibrated", calibration("ece_uncalibrated")),
            _stat_column("test ECE, calibrated", "test_ece_calibrated", calibration("ece")),
            _stat_column("temperature", "temperature", calibration("temperature"), 2),
        ]
    return columns


def configuration_columns(summary: dict) -> list[Column]:
    task, rows = TASKS[summary["task"]], summary["rows"]
    main = task.metric(task.main_metric)
    varied = list(dict.fromkeys(k for row in rows for k in row["varied"] if k != "learning_rate"))
    columns = [
        Column(None, lambda r: {"config_id": r["config_id"]}),
        Column("strategy", lambda r: {"strategy": r["strategy"]}, lambda r: r["strategy"]),
        Column(
            "learning rate",
            lambda r: {"learning_rate": r["learning_rate"]},
            lambda r: f"{r['learning_rate']:.1e}",
        ),
        Column(None, lambda r: {"varied": json.dumps(r["varied"])}),
    ]
    columns += [Column(k, lambda r: {}, lambda r, k=k: str(r["varied"].get(k, ""))) for k in varied]
    if any(row["shots_per_class"] is not None for row in rows):
        columns.append(
            Column(
                "shots per class",
                lambda r: {"shots_per_class": r["shots_per_class"]},
                lambda r: "all" if r["shots_per_class"] is None else str(r["shots_per_class"]),
            )
        )
    columns += [
        Column(
            "runs",
            lambda r: {"runs": r["runs"], "failed": r["failed"]},
            lambda r: str(r["runs"]) + (f" ({r['failed']} failed)" if r["failed"] else ""),
        ),
        _stat_column(task.label(summary["metric"]), "validation", lambda r: r["validation"]),
        *[
            _stat_column(f"test {m.label}", f"test_{m.name}", lambda r, name=m.name: r["test"][name])
            for m in task.summary_metrics()
        ],
        *unseen_and_calibration_columns(rows, main),
        Column(
            "trainable params",
            lambda r: {"trainable_params": r["trainable_params"]},
            lambda r: f"{r['trainable_params']:,}" if r["trainable_params"] else "-",
        ),
        _stat_column(
            "train compute (TFLOP)", "train_tflops", lambda r: scaled(r.get("train_flops"), 1e-12), 1
        ),
        _stat_column("memory (MB)", "memory_mb", lambda r: r.get("memory_mb") or EMPTY, 0),
        # measured on this machine under its load: shown, never deciding
        _stat_column("train time (s, measured)", "train_time_s", lambda r: r["train_time_s"], 1),
        _stat_column("peak memory (MB, measured)", "peak_memory_mb", lambda r: r["peak_memory_mb"], 0),
        Column("chosen", lambda r: {"chosen": r["chosen"]}, lambda r: "yes" if r["chosen"] else ""),
    ]
    return columns


def comparison_columns(summary: dict, key: str = "comparisons") -> list[Column]:
    task = TASKS[summary["task"]]
    columns = [Column("A vs B", lambda c: {"a": c["a"], "b": c["b"]}, lambda c: f"{c['a']} vs {c['b']}")]
    if any(c["shots_per_class"] is not None for c in summary[key]):
        columns.append(
            Column(
                "shots per class",
                lambda c: {"shots_per_class": c["shots_per_class"]},
                lambda c: "all" if c["shots_per_class"] is None else str(c["shots_per_class"]),
            )
        )
    columns.append(
        Column("paired runs", lambda c: {"paired_runs": c["paired_runs"]}, lambda c: str(c["paired_runs"]))
    )
    for name in task.compared_metrics:
        columns += [
            Column(
                f"Δ {task.metric(name).label} [95% CI]",
                lambda c, name=name: {f"{name}_{k}": c[name][k] for k in ("difference", "low", "high")},
                lambda c, name=name: (
                    f"{signed(c[name]['difference'])} [{signed(c[name]['low'])}, {signed(c[name]['high'])}]"
                ),
            ),
            Column(
                "p",
                lambda c, name=name: {f"{name}_p_value": c[name]["p_value"]},
                lambda c, name=name: f"{c[name]['p_value']:.4f}",
            ),
        ]
    return columns


def markdown_table(columns: list[Column], items: list[dict]) -> list[str]:
    shown = [c for c in columns if c.title is not None]
    return ["| " + " | ".join(c.title for c in shown) + " |", "|" + "---|" * len(shown)] + [
        "| " + " | ".join(c.text(item) for c in shown) + " |" for item in items
    ]


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

    return [
        Column(
            "strategy",
            lambda s: {"strategy": s["strategy"], "config_id": s["config_id"]},
            lambda s: s["label"],
        ),
        Column(
            f"against {best}",
            lambda s: {"status": s["status"], "seed_dependent": s["seed_dependent"]},
            lambda s: s["status"] + (" (sign varies between paired runs)" if s["seed_dependent"] else ""),
        ),
        Column(
            f"Δ test {label} [95% CI]",
            lambda s: {k: s["test"][k] for k in ("difference", "low", "high")},
            lambda s: (
                f"{signed(s['test']['difference'])} [{signed(s['test']['low'])}, {signed(s['test']['high'])}]"
            ),
        ),
        Column("p", lambda s: {"p_value": s["test"]["p_value"]}, lambda s: f"{s['test']['p_value']:.4f}"),
        Column("paired runs", lambda s: {"paired_runs": s["test"]["paired_runs"]}, paired),
        Column(
            f"trainable params (share of {best}'s)",
            lambda s: {"params_ratio": s["costs"]["params"]},
            ratio("params", format_share),
        ),
        Column(
            f"train compute (× {best}'s)",
            lambda s: {"compute_ratio": s["costs"]["compute"]},
            ratio("compute", lambda r: f"{r:.2f}×"),
        ),
        Column(
            f"memory (× {best}'s)",
            lambda s: {"memory_ratio": s["costs"]["memory"]},
            ratio("memory", lambda r: f"{r:.2f}×"),
        ),
    ]


def winner_title(summary: dict) -> str:
    return f"Against {summary['verdict']['winner']['strategy']}, the best on validation"


WINNER_NOTE = (
    "Δ = strategy − the best on validation, on the same test examples; within noise: the 95% interval holds "
    "zero, p ≥ 0.05, or the sign differs between paired runs (seeds, folds). The interval and p come from a paired bootstrap over "
    "test examples; the costs, counted, are multiples of the best's (within 10% count as equal)."
)


def describe_baseline(task: Task, baseline: dict) -> str:
    scores = ", ".join(
        f"{m.label} {baseline[m.name]:.4f}" for m in task.summary_metrics() if m.name in baseline
    )
    return f"{task.baseline_label} baseline on test: {scores}"


def verdict_lines(summary: dict) -> list[str]:
    return describe(summary["verdict"], TASKS[summary["task"]])


def summary_markdown(summary: dict, everything: bool = True) -> str:
    """The verdict, the configurations and each strategy against the winner; with `everything`, also every
    pair of strategies, the variants and the diagnostics (the terminal shows the short form)."""
    headline, *reasons = verdict_lines(summary)
    lines = ["## Verdict", "", f"**{headline}**", ""] + [f"- {line}" for line in reasons]
    lines += [
        "",
        "## Configurations (mean ± standard deviation over runs: seeds, folds and few-shot draws)",
        "",
    ]
    lines += markdown_table(configuration_columns(summary), summary["rows"])
    lines += [
        "",
        f"The chosen setting of each strategy has the best mean {TASKS[summary['task']].label(summary['metric'])}; "
        "test scores are only reported, never used to choose.",
    ]
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
        lines += markdown_table(
            comparison_columns(summary, "variant_comparisons"), summary["variant_comparisons"]
        )
    if summary["diagnostics"]:
        lines += ["", "## Diagnostics", ""] + markdown_table(diagnostic_columns(), summary["diagnostics"])
    return "\n".join(lines)


PAIRS_TITLE = "Every pair of chosen settings"


def terminal_summary(summary: dict, folder: Path) -> str:
    """What main.py prints at the end: the short summary and where the rest is."""
    rest = [f"all {len(summary['comparisons'])} pairs of strategies"] if summary["comparisons"] else []
    rest += ["the variants"] if summary["variant_comparisons"] else []
    rest += [f"{len(summary['diagnostics'])} diagnostic finding(s)"] if summary["diagnostics"] else []
    lines = [
        summary_markdown(summary, everything=False),
        "",
        f"Files: {folder / 'summary.md'}"
        + (f" adds {', '.join(rest)}" if rest else "")
        + "; summary.csv and comparisons.csv beside it; plots and report.html: python visualize.py",
    ]
    if summary["verdict"]["kind"] != "none":
        recommended = next(
            r for r in summary["rows"] if r["config_id"] == summary["verdict"]["recommended_config_id"]
        )
        lines.append(
            'Use the recommended run: python main.py predict --run recommended --text "..." '
            + (
                "(or export --run recommended --out DIR)"
                if not recommended.get("export_refused")
                else "(export refuses it: its head is in no Hugging Face model class)"
            )
        )
        if summary.get("folds"):
            lines.append(
                "It is the fold's model that did best on its validation fold, trained without that fold: "
                "for a model trained on every training example, run the recommended setting without data.folds."
            )
    return "\n".join(lines)


def write_summary(summary: dict, folder: Path) -> None:
    """summary.md, summary.csv (one row per configuration), comparisons.csv (every pair),
    winner_comparisons.csv (each strategy against the best) and verdict.json (the verdict, numbers and words)."""
    atomic_write_bytes(folder / "summary.csv", csv_table(configuration_columns(summary), summary["rows"]))
    atomic_write_bytes(
        folder / "comparisons.csv", csv_table(comparison_columns(summary), summary["comparisons"])
    )
    if summary["verdict"].get("standings"):
        atomic_write_bytes(
            folder / "winner_comparisons.csv",
            csv_table(winner_columns(summary), summary["verdict"]["standings"]),
        )
    if summary["variant_comparisons"]:
        atomic_write_bytes(
            folder / "variant_comparisons.csv",
            csv_table(comparison_columns(summary, "variant_comparisons"), summary["variant_comparisons"]),
        )
    atomic_write_bytes(folder / "summary.md", (summary_markdown(summary) + "\n").encode())
    write_json(folder / "verdict.json", {**summary["verdict"], "sentences": verdict_lines(summary)})


def diagnostic_columns() -> list[Column]:
    return [
        Column("configuration", lambda d: {"config_id": d["config_id"]}, lambda d: d["configuration"]),
        Column("finding", lambda d: {"kind": d["kind"]}, lambda d: d["kind"]),
        Column("runs", lambda d: {"runs": d["runs"], "of": d["of"]}, lambda d: f"{d['runs']} of {d['of']}"),
        Column("what was seen (first such run)", lambda d: {"message": d["message"]}, lambda d: d["message"]),
        Column("next step", lambda d: {"next_step": d["next_step"]}, lambda d: d["next_step"]),
    ]
