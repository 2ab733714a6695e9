"""Choosing a strategy on little data: one validation split against cross-validation, judged on the data set's
whole test split, which no draw sees:

    python benchmarks/small_data.py [--data trec banking77] [--draws 5] [--per-class 10] [--folds 5]
        [--strategy NAME ...] [--workdir DIR]

From each data set's training split (../shared/datasets) --draws training sets of --per-class examples per class
are drawn. On each, config.yaml's strategies run twice: with one validation split carved from the draw (config.yaml's
data.validation_size) and with data.folds. Each way's winner is the verdict's (the best on validation: the split's
score, or the mean over folds); its regret is the best strategy's test macro-F1 minus the winner's, each strategy
as that way trained it (one model, or the mean of the folds' models). Every run is cached under --workdir, so a
rerun goes on where an interrupted one stopped. Writes benchmarks/results/small_data.json and small_data.md.
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
from config import load_config  # noqa: E402
from records.measure import library_versions  # noqa: E402
from records.results import read_results, results_file  # noqa: E402
from strategies import STRATEGIES  # noqa: E402
from utils import atomic_write_json  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "benchmarks" / "results" / "small_data.json"


def draw_folder(workdir: Path, name: str, draw: int, per_class: int) -> Path:
    """The draw-th training set of `per_class` examples per class, beside the data set's whole test split."""
    folder = workdir / name / f"draw-{draw}" / "data"
    if not (folder / "train.csv").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        train = pd.read_csv(SHARED / name / "train.csv")[["text", "label"]]
        rng = np.random.default_rng([draw, per_class])
        picked = [rows.iloc[rng.permutation(len(rows))[:per_class]] for _, rows in train.groupby("label")]
        pd.concat(picked).sample(frac=1, random_state=draw).to_csv(folder / "train.csv", index=False)
        pd.read_csv(SHARED / name / "test.csv")[["text", "label"]].to_csv(folder / "test.csv", index=False)
    return folder


def run_way(data: Path, output: Path, strategies: list[str], extra: list[str]) -> dict:
    """One way of choosing on one draw: every strategy's validation and test scores, the verdict's winner, and
    what it cost."""
    started = time.perf_counter()
    status = bertlab.main(
        [
            "--config",
            str(ROOT / "config.yaml"),
            *[a for s in strategies for a in ("--strategy", s)],
            f"data.path={data}",
            f"output.dir={output}",
            *extra,
        ]
    )
    wall = time.perf_counter() - started
    planned = set(json.loads((output / "results" / "experiment.json").read_text())["run_ids"])
    runs = [
        r for r in read_results(results_file(output)) if r["run_id"] in planned and r["status"] == "completed"
    ]
    verdict = json.loads((output / "results" / "verdict.json").read_text())
    scores = {}
    for strategy in strategies:
        done = [r for r in runs if r["strategy"] == strategy]
        if done:
            scores[strategy] = {
                "validation": float(np.mean([r["best_metric"] for r in done])),
                "test": float(np.mean([r["test"]["macro_f1"] for r in done])),
                "runs": len(done),
            }
    winner = (verdict.get("winner") or {}).get("strategy")
    best = max(s["test"] for s in scores.values())
    return {
        "exit_status": status,
        "winner": winner,
        "scores": scores,
        "best": [name for name, s in scores.items() if s["test"] == best],
        "regret": best - scores[winner]["test"] if winner else None,
        "train_flops": sum(r["costs"]["train_flops"] for r in runs if r.get("costs")),
        "runs": len(runs),
        "wall_s": round(wall, 1),
    }


def table(results: dict) -> str:
    lines = [
        "| data | way of choosing | draws | winner best on test | mean regret (max) | winner's test macro-F1 | "
        "best strategy's | training compute per draw (TFLOP) | wall time per draw (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, measured in results["data"].items():
        for way, label in (("single", "one validation split"), ("folds", f"{measured['folds']}-fold")):
            cells = [d[way] for d in measured["draws"] if d[way]["winner"]]
            regrets = [c["regret"] for c in cells]
            hits = sum(c["winner"] in c["best"] for c in cells)
            lines.append(
                f"| {name} ({measured['per_class']} per class) | {label} | {len(cells)} | {hits} of {len(cells)} | "
                f"{np.mean(regrets):.3f} ({max(regrets):.3f}) | "
                f"{np.mean([c['scores'][c['winner']]['test'] for c in cells]):.3f} | "
                f"{np.mean([max(s['test'] for s in c['scores'].values()) for c in cells]):.3f} | "
                f"{np.mean([c['train_flops'] for c in cells]) / 1e12:.1f} | "
                f"{np.mean([c['wall_s'] for c in cells]) / 60:.1f} |"
            )
    return "\n".join(lines)


def draws_table(results: dict) -> str:
    """Each draw: each way's winner, and every strategy's test macro-F1 under it."""
    lines = [
        "| data | draw | way | winner | regret | test macro-F1 per strategy |",
        "|---|---|---|---|---|---|",
    ]
    for name, measured in results["data"].items():
        for number, draw in enumerate(measured["draws"]):
            for way in ("single", "folds"):
                cell = draw[way]
                scores = ", ".join(f"{s} {v['test']:.3f}" for s, v in cell["scores"].items())
                lines.append(
                    f"| {name} | {number} | {way} | {cell['winner']} | {cell['regret']:.3f} | {scores} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=["trec", "banking77"], default=["trec"])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--strategy", nargs="+", default=[], help="default: config.yaml's strategies")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bertlab-small-data")
    args = parser.parse_args()
    cfg = load_config(ROOT / "config.yaml")
    strategies = args.strategy or [s for s in STRATEGIES if getattr(cfg.strategies, s).enabled]
    for name in args.data:
        if not (SHARED / name).is_dir():
            sys.exit(f"{SHARED / name} is missing: the draws are taken from ../shared/datasets")
        draws = []
        for draw in range(args.draws):
            data = draw_folder(args.workdir, name, draw, args.per_class)
            base = args.workdir / name / f"draw-{draw}"
            draws.append(
                {
                    "single": run_way(data, base / "single", strategies, []),
                    "folds": run_way(data, base / "folds", strategies, [f"data.folds={args.folds}"]),
                }
            )
        # other data sets' as they are
        results = json.loads(OUT.read_text()) if OUT.is_file() else {"data": {}}
        results["data"][name] = {
            "per_class": args.per_class,
            "folds": args.folds,
            "strategies": strategies,
            "draws": draws,
        }
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
        atomic_write_json(OUT, results)
        OUT.with_suffix(".md").write_text(
            "# Choosing on little data: one validation split against folds\n\n"
            f"{table(results)}\n\n## Each draw\n\n{draws_table(results)}\n"
        )
    print(table(results))


if __name__ == "__main__":
    main()
