"""The HTML report: one self-contained page, read top to bottom: the data, the verdict, the evidence (tables
and each plot with what to look for in it), how to reproduce it."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Callable

import yaml

from reporting.data_report import describe_report
from reporting.summary import COMPARISON_NOTE, VARIANTS_TITLE
from reporting.tables import (
    PAIRS_TITLE,
    WINNER_NOTE,
    Column,
    comparison_columns,
    configuration_columns,
    describe_baseline,
    diagnostic_columns,
    verdict_lines,
    winner_columns,
    winner_title,
)
from config import short_key
from tasks import TASKS, Task
from records.shape import RunRecord

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
        "</span>" if " ± " in text else ""
    )


def html_table(
    columns: list[Column], items: list[dict], row_class: Callable[[dict], str] | None = None
) -> str:
    """A table inside a box that scrolls sideways if a window is still too narrow for it."""
    shown = [c for c in columns if c.title is not None]
    head = "".join(f"<th>{html.escape(c.title)}</th>" for c in shown)
    head = f"<thead><tr>{head}</tr></thead>" if any(c.title for c in shown) else ""
    body = "".join(
        (f"<tr class='{row_class(item)}'>" if row_class and row_class(item) else "<tr>")
        + "".join(f"<td>{cell(c.text(item))}</td>" for c in shown)
        + "</tr>"
        for item in items
    )
    return f"<div class='scroll'><table>{head}<tbody>{body}</tbody></table></div>"


def header_section(
    summary: dict, completed: list[RunRecord], failed: list[RunRecord], data_report: dict | None
) -> list[str]:
    """The title, what was run, and the data: classes, split sizes and class balance."""
    dataset = completed[0]["dataset"]
    task = TASKS[summary["task"]]
    counts = (data_report or {}).get("class_counts")
    folds = summary.get("folds")
    # with folds, a run's sizes are its fold's: the table shows the data as loaded, which the class counts describe
    sizes = data_report["sizes"] if folds and data_report else dataset["sizes"]
    split_columns = [
        Column("split", lambda split: {}, lambda split: split),
        Column("examples", lambda split: {}, lambda split: f"{sizes[split]:,}"),
    ]
    if counts:
        split_columns += [
            Column("smallest class", lambda split: {}, lambda split: smallest_and_largest(counts[split])[0]),
            Column("largest class", lambda split: {}, lambda split: smallest_and_largest(counts[split])[1]),
        ]
    finished = max(r.get("finished_at", "") for r in completed)[:10]
    labels = task.describe_labels(dataset["label_names"])
    parts = [
        f"<h1>Which fine-tuning strategy for {html.escape(dataset['name'])}?</h1>",
        f"<p class='meta'>{html.escape(task.name)} with {html.escape(labels)} · model "
        f"{html.escape(', '.join(sorted({r['model'] for r in completed})))} · {len(completed)} completed run(s)"
        + (f", {len(failed)} failed" if failed else "")
        + f" · {finished}</p>",
        html_table(split_columns, [split for split in ("train", "validation", "test") if split in sizes]),
    ]
    if folds:
        parts.append(
            f"<p class='note'>Cross-validation: train and validation together "
            f"({sizes['train'] + sizes['validation']:,} examples) cut into {folds['folds']} folds"
            + (f", {folds['repeats']} times" if folds["repeats"] > 1 else "")
            + "; each run chose on one "
            f"fold (about {dataset['sizes']['validation']:,} examples) and trained on the rest.</p>"
        )
    if counts:
        parts.append(
            f"<p class='note'>Class balance: the largest training class has {data_report['imbalance_ratio']:.1f}× "
            "the examples of the smallest.</p>"
        )
    if data_report:
        parts.append(
            f"<details><summary>Cleaning, token lengths{' and examples per class' if counts else ''}</summary>"
            + "".join(data_section(data_report, task))
            + "</details>"
        )
    return parts


def smallest_and_largest(counts: dict[str, int]) -> tuple[str, str]:
    ordered = sorted(counts.items(), key=lambda item: item[1])
    return f"{ordered[0][0]} ({ordered[0][1]:,})", f"{ordered[-1][0]} ({ordered[-1][1]:,})"


def data_section(report: dict, task: Task) -> list[str]:
    """The data report as HTML: what cleaning found, token lengths, and the examples per class and split."""
    lines = "".join(f"<li>{html.escape(line.strip())}</li>" for line in describe_report(report, task))
    counts = report.get("class_counts")
    if not counts:
        return [f"<ul>{lines}</ul>"]
    columns = [Column("class", lambda name: {}, lambda name: name)]
    columns += [
        Column(split, lambda name: {}, lambda name, split=split: f"{counts[split][name]:,}")
        for split in counts
    ]
    names = sorted(counts["train"], key=lambda name: -counts["train"][name])
    return [f"<ul>{lines}</ul>", html_table(columns, names)]


def verdict_section(summary: dict) -> list[str]:
    headline, *reasons = verdict_lines(summary)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in reasons)
    return [
        "<section class='verdict'><h2>Verdict</h2>",
        f"<p>{html.escape(headline)}</p>",
        f"<ul>{items}</ul>" if items else "",
        "</section>",
    ]


def search_section(summary: dict) -> list[str]:
    """Each searched strategy's trials (settings, validation score, how each ended), folded under the verdict."""
    searched = summary.get("search") or []
    if not searched:
        return []
    task = TASKS[summary["task"]]
    parts = [
        f"<details><summary>The search: every trial of {len(searched)} strateg{'y' if len(searched) == 1 else 'ies'}"
        "</summary>"
    ]
    for study in searched:
        columns = [
            Column("trial", lambda r: {}, lambda r: str(r["trial"])),
            *[
                Column(short_key(key), lambda r: {}, lambda r, key=key: setting_text(r["settings"][key]))
                for key in study["space"]
            ],
            Column(
                task.label(summary["metric"]),
                lambda r: {},
                lambda r: "-" if r["validation"] is None else f"{r['validation']:.4f}",
            ),
            Column("ended", lambda r: {}, trial_outcome),
            Column("train time (s)", lambda r: {}, lambda r: f"{r['train_time_s'] or 0:.1f}"),
        ]
        best = study["best"] and study["best"]["trial"]
        parts += [
            f"<h3>{html.escape(study['strategy'])}</h3>",
            html_table(
                columns, study["trial_rows"], lambda r, best=best: "chosen" if r["trial"] == best else ""
            ),
        ]
    parts.append(
        "<p class='note'>Each trial trains and validates through the same loop as every run (test is never "
        "computed); the highlighted one was confirmed. A pruned trial stopped early because its best score so "
        "far was behind the other trials' at the same step.</p></details>"
    )
    return parts


def setting_text(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_outcome(row: dict) -> str:
    if row["status"] == "pruned":
        return f"pruned at step {row['pruned_at']['step']} (epoch {row['pruned_at']['epoch']:g})"
    return row["status"]


def figure(image: Path, caption: str) -> str:
    data = base64.b64encode(image.read_bytes()).decode()
    return (
        f"<figure><img alt='{html.escape(image.stem)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(caption)} <code>{html.escape(image.name)}</code></figcaption></figure>"
    )


def reproduce_section(completed: list[RunRecord], experiment: dict | None) -> list[str]:
    """The command, the config as YAML, the versions, the data fingerprint and the device."""
    first = completed[0]
    facts = [
        ("data fingerprint", first["dataset"]["fingerprint"]),
        ("device", first.get("device", "?")),
        *first["versions"].items(),
    ]
    parts = ["<h2>Reproduce</h2>"]
    if experiment:
        command = experiment["command"]
        command = f"python {command}" if command.startswith("main.py") else command
        parts.append(
            f"<p>The command, from the project folder: <code>{html.escape(command)}</code> "
            f"(config file <code>{html.escape(experiment['config_file'])}</code>).</p>"
        )
    parts.append(
        html_table(
            [Column("", lambda f: {}, lambda f: f[0]), Column("", lambda f: {}, lambda f: str(f[1]))], facts
        )
    )
    if experiment:
        parts.append(
            "<details><summary>The config, as run</summary>"
            f"<pre>{html.escape(yaml.safe_dump(experiment['config'], sort_keys=False))}</pre></details>"
        )
    return parts


def write_report(
    path: Path,
    summary: dict,
    runs: list[RunRecord],
    experiment: dict | None,
    figures: list[tuple[Path, str]],
    skipped: dict[str, str],
    data_report: dict | None = None,
) -> None:
    """One HTML file with everything embedded (each plot with what to look for in it), so it can be sent to a
    colleague as it is."""
    completed = [r for r in runs if r["status"] == "completed"]
    failed = [r for r in runs if r["status"] != "completed"]
    baseline = completed[0]["dataset"].get("majority_baseline")
    parts = [
        *header_section(summary, completed, failed, data_report),
        *verdict_section(summary),
        *search_section(summary),
    ]
    parts += tables_section(summary, baseline, failed)
    parts.append("<h2>Plots</h2>")
    parts += [figure(image, caption) for image, caption in figures]
    if skipped:
        parts.append(
            "<p class='note'>Not drawn: "
            + "; ".join(f"{html.escape(k)} ({html.escape(v)})" for k, v in skipped.items())
            + ".</p>"
        )
    parts += comparisons_section(summary)
    parts += reproduce_section(completed, experiment)
    title = html.escape(f"bertlab: {completed[0]['dataset']['name']}")
    path.write_text(
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{title}</title>"
        f"<style>{REPORT_STYLE}</style></head><body>{''.join(parts)}</body></html>\n",
        encoding="utf-8",
    )


def tables_section(summary: dict, baseline: dict | None, failed: list[RunRecord]) -> list[str]:
    """The standings against the winner, every configuration, the diagnostics and the failed runs."""
    task, parts = TASKS[summary["task"]], []
    if summary["verdict"].get("standings"):
        parts += [
            f"<h2>{html.escape(winner_title(summary))}</h2>",
            html_table(winner_columns(summary), summary["verdict"]["standings"]),
            f"<p class='note'>{html.escape(WINNER_NOTE)}</p>",
        ]
    parts += [
        "<h2>Configurations</h2>",
        html_table(
            configuration_columns(summary), summary["rows"], lambda r: "chosen" if r["chosen"] else ""
        ),
        f"<p class='note'>Mean ± standard deviation over runs (seeds, folds and few-shot draws). The chosen setting of each "
        f"strategy (highlighted) has the best mean {html.escape(task.label(summary['metric']))}; test scores are only "
        "reported, never used to choose."
        + (f" The {html.escape(describe_baseline(task, baseline))}." if baseline else "")
        + (f" {html.escape(summary['memory_note'])}" if summary["memory_note"] else "")
        + "</p>",
    ]
    if summary["diagnostics"]:
        parts += ["<h2>Diagnostics</h2>", html_table(diagnostic_columns(), summary["diagnostics"])]
    if failed:
        parts += [
            "<h2>Failed runs</h2>",
            html_table(
                [
                    Column("run", lambda r: {}, lambda r: r["run_id"]),
                    Column("error", lambda r: {}, lambda r: r.get("error", "")),
                ],
                failed,
            ),
        ]
    return parts


def comparisons_section(summary: dict) -> list[str]:
    """Every pair of strategies compared, and each variant against the first."""
    parts = []
    if summary["comparisons"]:
        parts += [
            f"<details><summary>{PAIRS_TITLE} ({len(summary['comparisons'])})</summary>",
            html_table(comparison_columns(summary), summary["comparisons"]),
            f"<p class='note'>{html.escape(COMPARISON_NOTE)}</p></details>",
        ]
    if summary["variant_comparisons"]:
        parts += [
            f"<h2>{VARIANTS_TITLE}</h2>",
            html_table(comparison_columns(summary, "variant_comparisons"), summary["variant_comparisons"]),
        ]
    return parts
