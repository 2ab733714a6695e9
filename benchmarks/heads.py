"""The task head each strategy trains best with, measured: every candidate head under every compared strategy,
on several data sets and seeds, one process, one side after the other:

    python benchmarks/heads.py [--data demo banking77 trec spam] [--seeds 0 1] [--epochs 3] [--rows 2000]
        [--strategy NAME ...] [--heads own cls mean] [--workdir DIR]

Heads: the model's own (BERT's pooler on the first token, then a linear layer), a linear layer on the first
token's state, and a linear layer on the mean of the token states (what sentence-transformers models such as the
bundled MiniLM were trained to give). Data: the demo data at config.yaml's settings; banking77 and trec from
../shared/datasets, --rows training rows drawn from each (the rest of config.yaml as it is, --epochs epochs);
`spam`, a binary set made from trec (LOC against the rest, the minority drawn down to 13% of --rows), scored on
trec's test split labelled the same way. Rates are config.yaml's, tuned on the demo data for the model's own
head: no rate was tuned for the other data. Each data set runs in its own output folder under --workdir, so a
rerun reuses finished runs. Writes benchmarks/results/heads.json and heads.md (every data set found there).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import main as bertlab  # noqa: E402
from records.measure import library_versions  # noqa: E402
from records.results import read_results, results_file  # noqa: E402
from utils import atomic_write_json  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
COMPARED = ["full", "lora", "bitfit", "prompt_tuning", "ia3", "frozen_encoder"]
HEADS = {
    "own": ("model's own (pooler on the first token)", ["model.head.type=model", "model.head.pooling=cls"]),
    "cls": ("linear, first token", ["model.head.type=linear", "model.head.pooling=cls"]),
    "mean": ("linear, mean of tokens", ["model.head.type=linear", "model.head.pooling=mean"]),
}
SPAM_MINORITY, SPAM_LABEL = 0.13, "LOC"


def spam_folder(workdir: Path, rows: int, seed: int = 0) -> Path:
    """trec as a binary, imbalanced data set: LOC (the minority, 13% of the training rows) against the rest."""
    folder = workdir / "spam-data"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train = pd.read_csv(SHARED / "trec" / "train.csv")
    train["label"] = np.where(train["label"] == SPAM_LABEL, "location", "other")
    minority = round(rows * SPAM_MINORITY)
    picked = pd.concat(
        [
            train[train.label == "location"].sample(minority, random_state=rng.integers(1 << 31)),
            train[train.label == "other"].sample(rows - minority, random_state=rng.integers(1 << 31)),
        ]
    )
    picked.sample(frac=1, random_state=seed)[["text", "label"]].to_csv(folder / "train.csv", index=False)
    test = pd.read_csv(SHARED / "trec" / "test.csv")
    test["label"] = np.where(test["label"] == SPAM_LABEL, "location", "other")
    test[["text", "label"]].to_csv(folder / "test.csv", index=False)
    return folder


def data_overrides(name: str, args, workdir: Path) -> list[str]:
    if name == "demo":
        return []
    if not (SHARED / "trec").is_dir() or not (SHARED / "banking77").is_dir():
        sys.exit(f"{SHARED} does not hold banking77 and trec: they are read from ../shared/datasets")
    common = [f"training.num_epochs={args.epochs}"]
    if name == "spam":
        return [f"data.path={spam_folder(workdir, args.rows)}", *common]
    return [f"data.path={SHARED / name}", f"data.train_size={args.rows}", *common]


def run_data(name: str, args, workdir: Path) -> dict:
    folder = workdir / name
    common = [
        "--config",
        str(ROOT / "config.yaml"),
        *[a for s in args.strategy for a in ("--strategy", s)],
        f"output.dir={folder}",
        f"training.seeds={list(args.seeds)}",
        *data_overrides(name, args, workdir),
    ]
    cells = []
    for head, overrides in (HEADS[h] for h in args.heads):
        started = time.perf_counter()
        status = bertlab.main([*common, *overrides])
        wall = time.perf_counter() - started
        planned = set(json.loads((folder / "results" / "experiment.json").read_text())["run_ids"])
        runs = [r for r in read_results(results_file(folder)) if r["run_id"] in planned]
        for strategy in args.strategy:
            done = [r for r in runs if r["strategy"] == strategy and r["status"] == "completed"]
            cells.append(
                {
                    "head": head,
                    "strategy": strategy,
                    "exit_status": status,
                    "wall_s": round(wall, 1),
                    "seeds": [r["seed"] for r in done],
                    "validation": [r["best_metric"] for r in done],
                    "test": [r["test"]["macro_f1"] for r in done],
                    "train_s": [r["train_time_s"] for r in done],
                }
            )
    return {
        "data": name,
        "rows": None if name == "demo" else args.rows,
        "epochs": None if name == "demo" else args.epochs,
        "seeds": args.seeds,
        "cells": cells,
    }


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def table(results: dict) -> str:
    """Validation (test) macro-F1 per strategy and head, mean over seeds, one column per data set; the best head
    of each strategy and data set in bold."""
    names = list(results["data"])
    lines = ["| strategy | head | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    strategies = list(dict.fromkeys(c["strategy"] for d in results["data"].values() for c in d["cells"]))
    for strategy in strategies:
        for head, _ in HEADS.values():
            row = [strategy, head]
            for name in names:
                cells = {c["head"]: c for c in results["data"][name]["cells"] if c["strategy"] == strategy}
                if head not in cells:
                    row.append("-")
                    continue
                best = max(mean(c["validation"]) for c in cells.values())
                cell = cells[head]
                spread = f" ±{np.std(cell['test']):.3f}" if len(cell["seeds"]) > 1 else ""
                text = f"{mean(cell['validation']):.3f} ({mean(cell['test']):.3f}{spread})"
                row.append(f"**{text}**" if mean(cell["validation"]) == best else text)
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=["demo", "banking77", "trec", "spam"], default=["demo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3, help="epochs on banking77, trec and spam")
    parser.add_argument("--rows", type=int, default=2000, help="training rows of banking77, trec and spam")
    parser.add_argument("--strategy", nargs="+", default=COMPARED)
    parser.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bertlab-heads")
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results" / "heads.json"
    for name in args.data:
        measured = run_data(name, args, args.workdir)
        # other data sets' as they are now
        results = json.loads(out.read_text()) if out.is_file() else {"data": {}}
        results["data"][name] = measured
        results.update(
            machine={
                "platform": platform.platform(),
                "processor": platform.processor(),
                "threads": torch.get_num_threads(),
                "cuda": torch.cuda.is_available(),
            },
            versions=library_versions(),
            date=time.strftime("%Y-%m-%d"),
        )
        # after each data set, so an interrupted benchmark keeps what it measured
        atomic_write_json(out, results)
        out.with_suffix(".md").write_text(
            f"# Heads: validation (test) macro-F1, mean over seeds\n\n{table(results)}\n"
        )
    print(table(results))


if __name__ == "__main__":
    main()
