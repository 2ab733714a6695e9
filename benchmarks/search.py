"""The pruned search (search.method: optuna) against an exhaustive grid, on the same data, machine, seed and
epoch budget, in one process, one side after the other:

    python benchmarks/search.py [--data demo|banking77] [--rows 2000] [--strategy NAME ...] [--epochs N]
        [--grid-points 9] [--trials 8] [--eval-every-steps N] [--name search_demo]

The grid trains each strategy at --grid-points log-spaced rates across the strategy's default search range,
every run to its full budget (early stopping as configured), one seed. The search trains --trials trials per
strategy (the config's own rate first) with successive-halving pruning, then confirms each strategy's best on
the same seed (which tests the trial's kept weights rather than training again). Both start from the demo
config (config.yaml) with the strategies' rates reset to the library defaults, so neither side starts from
hand-tuned rates. Each side runs in its own output folder under --workdir (default: a temporary folder).

Reported per side: total training seconds (the records' train_time_s, which leave out validation and
checkpoints), the winner and the verdict's first sentence; per strategy, the best validation score any of its
runs or trials reached. Writes benchmarks/results/<name>.json and <name>.md.
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
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import main as bertlab  # noqa: E402
from records.measure import library_versions  # noqa: E402
from records.results import read_results, results_file  # noqa: E402
from strategies import STRATEGIES  # noqa: E402
from utils import atomic_write_json  # noqa: E402

BANKING77 = ROOT.parent / "shared" / "datasets" / "banking77"
STRATEGIES_COMPARED = ["full", "lora", "bitfit", "prompt_tuning", "ia3"]


def data_overrides(args) -> list[str]:
    if args.data == "demo":
        return []
    if not BANKING77.is_dir():
        sys.exit(f"{BANKING77} is not here: banking77 is read from ../shared/datasets")
    return [f"data.path={BANKING77}", f"data.train_size={args.rows}"]


def default_rates() -> list[str]:
    """config.yaml's hand-tuned rates replaced by each strategy's library default."""
    from schema.strategies import StrategiesConfig

    defaults = StrategiesConfig()
    return [
        f"strategies.{name}.learning_rate={getattr(defaults, name).learning_rate}"
        for name in STRATEGIES
        if getattr(defaults, name).learning_rate is not None
    ] + ["training.learning_rate=5e-5"]


def grid_rates(strategy: str, points: int) -> list[float]:
    rate = STRATEGIES[strategy].space["learning_rate"]
    return [float(f"{r:.3g}") for r in np.geomspace(rate["low"], rate["high"], points)]


def run_side(name: str, folder: Path, overrides: list[str], strategies: list[str]) -> dict:
    argv = [
        "--config",
        str(ROOT / "config.yaml"),
        *[a for s in strategies for a in ("--strategy", s)],
        f"output.dir={folder}",
        *overrides,
    ]
    started = time.perf_counter()
    status = bertlab.main(argv)
    wall = time.perf_counter() - started
    experiment = json.loads((folder / "results" / "experiment.json").read_text())
    verdict = json.loads((folder / "results" / "verdict.json").read_text())
    records = read_results(results_file(folder))
    planned = set(experiment["run_ids"])
    studies = set(experiment.get("studies") or [])
    # each trial once (a confirmation that tested its trial's weights is that trial), then the rest
    if studies:
        trials = [
            r
            for r in records
            if (r.get("trial") or {}).get("study") in studies
            and r["trial"].get("confirms") in (None, r["run_id"])
        ]
        trained = trials + [r for r in records if r["run_id"] in planned and r not in trials]
    else:
        trained = [r for r in records if r["run_id"] in planned]
    best = {}
    for strategy in strategies:
        scores = [
            r["best_metric"] for r in trained if r["strategy"] == strategy and r["status"] == "completed"
        ]
        best[strategy] = max(scores) if scores else None
    return {
        "side": name,
        "exit_status": status,
        "wall_s": round(wall, 1),
        "train_s": round(sum(r.get("train_time_s") or 0 for r in trained), 1),
        "runs": len(trained),
        "pruned": sum(r["status"] == "pruned" for r in trained),
        "failed": sum(r["status"] == "failed" for r in trained),
        "winner": verdict["winner"]["label"] if verdict.get("winner") else None,
        "verdict": verdict["sentences"][0] if verdict.get("sentences") else None,
        "best_validation": best,
    }


def table(result: dict) -> str:
    grid, search = result["grid"], result["search"]
    lines = [
        "| | grid | search |",
        "|---|---|---|",
        f"| runs or trials (pruned, failed) | {grid['runs']} ({grid['pruned']}, {grid['failed']}) | "
        f"{search['runs']} ({search['pruned']}, {search['failed']}) |",
        f"| training seconds | {grid['train_s']:.0f} | {search['train_s']:.0f} "
        f"({search['train_s'] / grid['train_s']:.2f}x the grid's) |",
        f"| wall seconds (with validation, checkpoints, loading) | {grid['wall_s']:.0f} | {search['wall_s']:.0f} |",
        f"| winner | {grid['winner']} | {search['winner']} |",
    ]
    for strategy in result["strategies"]:
        g, s = grid["best_validation"][strategy], search["best_validation"][strategy]
        diff = "" if g is None or s is None else f" ({100 * (s - g):+.1f} points)"
        lines.append(
            f"| best validation {result['metric']}: {strategy} | "
            f"{'-' if g is None else f'{g:.4f}'} | {'-' if s is None else f'{s:.4f}'}{diff} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["demo", "banking77"], default="demo")
    parser.add_argument("--rows", type=int, default=2000, help="banking77: training rows kept (per class)")
    parser.add_argument("--strategy", action="append", choices=list(STRATEGIES))
    parser.add_argument("--epochs", type=int, help="the epoch budget of every run (default: config.yaml's)")
    parser.add_argument("--grid-points", type=int, default=9)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--eval-every-steps", type=int)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--name", default="search_demo")
    args = parser.parse_args()
    strategies = args.strategy or STRATEGIES_COMPARED
    common = data_overrides(args) + default_rates()
    if args.epochs:
        common.append(f"training.num_epochs={args.epochs}")
    if args.eval_every_steps:
        common.append(f"training.eval_every_steps={args.eval_every_steps}")
    grid = [f"strategies.{s}.learning_rates={grid_rates(s, args.grid_points)}" for s in strategies]
    search = ["search.method=optuna", f"search.trials={args.trials}", "search.pruner=successive_halving"]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bertlab-search-"))
    torch.set_num_threads(torch.get_num_threads())  # both sides in one process, on the same threads
    result = {
        "data": args.data,
        "rows": args.rows if args.data != "demo" else None,
        "strategies": strategies,
        "epochs": args.epochs,
        "grid_points": args.grid_points,
        "trials": args.trials,
        "eval_every_steps": args.eval_every_steps,
        "metric": "macro_f1",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "versions": library_versions(),
        "date": time.strftime("%Y-%m-%d"),
    }
    result["grid"] = run_side("grid", workdir / "grid", common + grid, strategies)
    result["search"] = run_side("search", workdir / "search", common + search, strategies)
    out = ROOT / "benchmarks" / "results"
    atomic_write_json(out / f"{args.name}.json", result)
    (out / f"{args.name}.md").write_text(
        f"# Search against the grid: {args.data}\n\n{table(result)}\n\n"
        f"Grid verdict: {result['grid']['verdict']}\n\n"
        f"Search verdict: {result['search']['verdict']}\n"
    )
    print(table(result))


if __name__ == "__main__":
    main()
