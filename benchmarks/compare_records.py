"""Compare the records of two results files run by run, leaving out what differs between any two runs of the
same code (timings, memory, dates): what a change that should not alter results must leave as it was.

    python benchmarks/compare_records.py OLD/results/all_results.json NEW/results/all_results.json [--by config]

Runs are paired by run id, or with `--by config` by strategy, seed, grid values and few-shot draw (for a
change that moves run ids on purpose, such as a new default). Prints every key that differs (numbers with
their difference), every key only one side has, and exits 1 when a value differs.
"""

from __future__ import annotations

import argparse
import json
import sys

# Keys whose values differ from one run of the same code to the next.
VOLATILE = {
    "train_time_s",
    "train_samples_per_s",
    "validation_time_s",
    "checkpoint_time_s",
    "run_time_s",
    "peak_memory_mb",
    "started_at",
    "finished_at",
    "seconds",
    "traceback",
}


def differences(old, new, path: str = "") -> tuple[list[str], list[str]]:
    """(keys whose values differ, keys present on one side only), as dotted paths."""
    if isinstance(old, dict) and isinstance(new, dict):
        changed, one_sided = [], []
        for key in sorted(set(old) | set(new), key=str):
            if key in VOLATILE:
                continue
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                one_sided.append(f"{where} (only in {'new' if key not in old else 'old'})")
                continue
            c, o = differences(old[key], new[key], where)
            changed += c
            one_sided += o
        return changed, one_sided
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        changed, one_sided = [], []
        for i, (a, b) in enumerate(zip(old, new)):
            c, o = differences(a, b, f"{path}[{i}]")
            changed += c
            one_sided += o
        return changed, one_sided
    if old == new:
        return [], []
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    return [f"{path}: {old!r} -> {new!r}" + (f" ({new - old:+.4g})" if numbers else "")], []


def pairing_key(record: dict, by: str) -> str:
    if by == "id":
        return record["run_id"]
    shots = record.get("few_shot") or {}
    return (
        f"{record['strategy']} seed={record['seed']} {json.dumps(record.get('varied') or {}, sort_keys=True)}"
        + (f" shots={shots.get('shots_per_class')} draw={shots.get('draw')}" if shots else "")
    )


def main(old_path: str, new_path: str, by: str = "id") -> int:
    old = {pairing_key(r, by): r for r in json.load(open(old_path))["runs"]}
    new = {pairing_key(r, by): r for r in json.load(open(new_path))["runs"]}
    print(f"runs: {len(old)} old, {len(new)} new, {len(set(old) & set(new))} paired by {by}")
    changed_any = False
    for run_id in sorted(set(old) | set(new)):
        if run_id not in old or run_id not in new:
            print(f"{run_id}: only in {'new' if run_id not in old else 'old'}")
            changed_any = True
            continue
        changed, one_sided = differences(old[run_id], new[run_id])
        changed_any |= bool(changed)
        print(
            f"{run_id}: {len(changed)} value(s) differ" + (f"; {', '.join(one_sided)}" if one_sided else "")
        )
        for line in changed:
            print(f"  {line}")
    return 1 if changed_any else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--by", choices=["id", "config"], default="id", help="how runs are paired")
    args = parser.parse_args()
    sys.exit(main(args.old, args.new, args.by))
