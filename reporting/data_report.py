"""The data report: what a data set holds before any training (class counts per split, rows dropped and why,
duplicates, leakage between splits, token lengths, the imbalance), printed once and saved beside the results."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from data import SPLITS, LabelledData
from tasks import Task
from records.shared import read_json
from utils import atomic_write_json

DATA_REPORT = "data_report.json"  # in the results folder, one entry per data fingerprint
LENGTH_PERCENTILE = 95  # model.max_length: auto keeps this share of training texts whole
LENGTH_MULTIPLE = 8  # auto lengths are rounded up to a multiple of this (tensor-core friendly)
HISTOGRAM_BINS = 40


def token_lengths(tokenizer, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
    """Each text's (or pair's, encoded together) length in tokens, special tokens included and nothing truncated."""
    ids = tokenizer(
        texts,
        pairs,
        truncation=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )["input_ids"]
    return np.array([len(row) for row in ids])


def auto_max_length(train_lengths: np.ndarray, limit: int | None) -> int:
    """The training split's 95th-percentile length rounded up to a multiple of 8, within the model's limit."""
    length = math.ceil(np.percentile(train_lengths, LENGTH_PERCENTILE) / LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    length = max(length, LENGTH_MULTIPLE)
    return length if limit is None else min(length, limit)


def build_report(
    data: LabelledData, lengths: dict[str, np.ndarray], max_length: int, model: str, task: Task
) -> dict:
    """The report of one data set, as stored in data_report.json."""
    labels = task.label_report(
        {split: task.label_distribution(data.labels[split], data.label_names) for split in SPLITS},
        data.labels,
        data.label_names,
    )
    top = max(max(lengths[split].max() for split in SPLITS), max_length + 1)
    edges = np.unique(np.linspace(0, top, HISTOGRAM_BINS + 1).round().astype(int))
    return {
        "dataset": data.name,
        "fingerprint": data.fingerprint,
        "label_names": data.label_names,
        "sizes": data.sizes(),
        **labels,
        "cleaning": data.cleaning,
        "token_lengths": {
            "model": model,
            "max_length": max_length,
            "histogram_edges": edges.tolist(),
            # what happens to the tokens beyond max_length: a question's context is read on in further windows
            "beyond_max_length": task.beyond_max_length,
            **{
                split: {
                    "min": int(x.min()),
                    "median": float(np.median(x)),
                    f"p{LENGTH_PERCENTILE}": float(np.percentile(x, LENGTH_PERCENTILE)),
                    "max": int(x.max()),
                    "truncated_share": float((x > max_length).mean()),
                    "histogram": np.histogram(x, edges)[0].tolist(),
                }
                for split, x in lengths.items()
            },
        },
    }


def describe_report(report: dict, task: Task) -> list[str]:
    """The report in a few lines for the log (and the report page), with what the task says of its own."""
    sizes = ", ".join(f"{split} {n}" for split, n in report["sizes"].items())
    if "class_counts" in report:
        train = report["class_counts"]["train"]
        rarest = sorted(train, key=train.get)[:3]
        lines = [
            f"data {report['dataset']} ({report['fingerprint']}): {sizes}; imbalance ratio "
            f"{report['imbalance_ratio']:.1f} (largest / smallest training class)",
            "  rarest training classes: " + ", ".join(f"{name} {train[name]}" for name in rarest),
        ]
    else:
        lines = [f"data {report['dataset']} ({report['fingerprint']}): {sizes}"]
        for split, summary in report["label_summary"].items():  # a score's spread, or counts of word tags
            lines.append(
                f"  {split}: "
                + ", ".join(
                    f"{key} {value:,}" if isinstance(value, int) else f"{key} {value:.3f}"
                    for key, value in summary.items()
                )
            )
    lines += task.report_lines(report)
    for split, found in report["cleaning"].items():
        notes = cleaning_notes(found)
        if notes:
            lines.append(f"  {split}: " + "; ".join(notes))
    t = report["token_lengths"]
    for split in SPLITS:
        x = t[split]
        lines.append(
            f"  {split} tokens: min {x['min']}, median {x['median']:.0f}, p{LENGTH_PERCENTILE} "
            f"{x[f'p{LENGTH_PERCENTILE}']:.0f}, max {x['max']}; {100 * x['truncated_share']:.1f}% "
            f"{t.get('beyond_max_length', 'truncated')} at max_length {t['max_length']}"
        )
    return lines


def cleaning_notes(found: dict) -> list[str]:
    """What cleaning dropped and kept of one split, and what it found of label sets and answers, in words."""
    dropped = {
        "empty text": found.get("empty_text", 0),
        "missing label": found.get("missing_label", 0),
        "repeated text": found.get("duplicates_dropped", 0),
        "text with conflicting labels": found.get("conflicting_rows_dropped", 0),
        "text also in an earlier split": found.get("leaked_removed", 0),
    }
    kept = {
        "repeated text": found.get("duplicate_rows", 0) - found.get("duplicates_dropped", 0),
        "text with conflicting labels": found.get("conflicting_rows", 0)
        - found.get("conflicting_rows_dropped", 0),
        "text also in an earlier split": found.get("leaked", 0) - found.get("leaked_removed", 0),
    }
    notes = [f"dropped {n} ({why})" for why, n in dropped.items() if n]
    notes += [f"kept {n} ({why})" for why, n in kept.items() if n]
    if found.get("texts_without_label"):  # label sets: a text none of the labels applies to
        notes.append(f"kept {found['texts_without_label']} (no label applies)")
    if found.get("scored_whole"):
        notes.append(
            "given by the data: scored whole, and apart on the rows no earlier split holds (test_unseen)"
        )
    # a question's answers checked in its context
    if found.get("answers_moved") or found.get("answers_dropped"):
        notes.append(
            f"answers not at their answer_start: {found['answers_moved']} moved to where their text "
            f"stands nearby, {found['answers_dropped']} dropped"
        )
    return notes


def save_report(report: dict, folder: Path) -> None:
    """Add the report to data_report.json (keyed by data fingerprint, so experiments on several data sets
    sharing an output folder keep each one's)."""
    path = folder / DATA_REPORT
    reports = read_json(path) or {}  # a damaged file stops here, kept as it is
    reports[report["fingerprint"]] = report
    atomic_write_json(path, reports)


def read_report(folder: Path, fingerprint: str) -> dict | None:
    path = folder / DATA_REPORT
    return (read_json(path) or {}).get(fingerprint)
