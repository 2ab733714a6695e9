"""The dry run: what a real run would do, with the wrapped models' sizes and a rough time, training nothing."""

from __future__ import annotations

import dataclasses

from config import Config
from experiment.inputs import Inputs
from experiment.plan import Run, Share, short_key
from experiment.search import searched_space
from experiment.shards import passes
from model import parameter_counts, planned_model
from records.results import results_file
from utils import stable_hash
from records.shape import RunRecord

# The training speed assumed for the time estimate when no earlier run here gives one (MiniLM-L6,
# max_length 64, 2 CPU cores).
GUESSED_SAMPLES_PER_S = 100.0


def print_search_plan(cfg: Config, strategies: list[str]) -> None:
    """What a search would do: each strategy's space and trials, then the confirmation runs, training nothing."""
    seeds = cfg.search.confirm_seeds or cfg.training.seeds or [cfg.training.seed]
    budget = f", no new trial after {cfg.search.time_budget:g}s" if cfg.search.time_budget else ""
    judged = "" if cfg.search.pruner == "none" else f" on {cfg.search.prune_on}"
    print(
        f"search ({cfg.search.pruner} pruning{judged}{budget}): up to {cfg.search.trials} trial(s) per strategy, "
        f"validated only, then the best {cfg.search.confirm_top_k} of each confirmed with seed(s) {seeds} and tested"
    )
    for strategy in strategies:
        ranges = ", ".join(f"{short_key(k)} {v}" for k, v in searched_space(cfg, strategy).items())
        print(f"  {strategy}: {ranges}")


def print_plan(
    runs: list[Run], inputs: Inputs, share: Share, completed: dict[str, RunRecord], cfg: Config
) -> None:
    """What a real run would do (the share's runs: all, or a shard's), with the wrapped models' sizes and a
    rough time, training nothing."""
    mine = share.mine
    part = "" if len(mine) == len(runs) else f" in this shard, of the plan's {len(runs)}"
    runs, ids = [runs[i] for i in mine], [share.ids[i] for i in mine]
    cached = share.cached & set(ids)
    print(
        f"{len(runs)} run(s) planned{part}: {len(cached)} already completed in {results_file(cfg.output.dir)} "
        f"(reused), {len(runs) - len(cached)} to run"
    )
    for number, (run, run_id) in enumerate(zip(runs, ids), 1):
        print(
            f"  {number:3d}  {run_id}  {'cached' if run_id in cached else 'to run':6}  {run.strategy} {run.describe()}"
        )
    print("\nparameters of the wrapped models (built, not trained):")
    built = set()
    for run in runs:
        data = inputs.data_for(run)
        settings = {k: v for k, v in run.settings.recorded().items() if k != "learning_rate"}
        shape = stable_hash(
            [
                run.strategy,
                settings,
                run.cfg.model.name,
                dataclasses.asdict(run.cfg.model.head),
                len(data.label_names),
            ]
        )
        if shape not in built:
            built.add(shape)
            counts = parameter_counts(planned_model(run.model_plan(), data.label_names))
            label = " ".join(
                [run.strategy]
                + [f"{short_key(k)}={v}" for k, v in run.varied.items() if not k.endswith(".learning_rate")]
            )
            print(
                f"  {label:24}  {counts['trainable_params']:>12,} trainable of {counts['total_params']:,} "
                f"({counts['trainable_pct']:.3f}%)"
            )
    seconds, source = estimate_seconds([r for r, i in zip(runs, ids) if i not in cached], inputs, completed)
    print(
        f"\nrough time for the runs to do: {seconds / 60:.0f} min if every run trains all its epochs ({source})"
    )


def estimate_seconds(runs: list[Run], inputs: Inputs, completed: dict[str, RunRecord]) -> tuple[float, str]:
    """Examples to train on over the median speed of earlier runs here with the same strategy, model and
    max_length; without one, GUESSED_SAMPLES_PER_S."""
    speeds: dict[tuple, list[float]] = {}
    for record in completed.values():
        key = (record["strategy"], record["model"], record["hyperparameters"].get("max_length"))
        speeds.setdefault(key, []).append(record["train_samples_per_s"])
    total, measured = 0.0, 0
    for run in runs:
        _, encoded = inputs.for_run(run)
        known = speeds.get((run.strategy, run.cfg.model.name, run.cfg.model.max_length))
        measured += bool(known)
        speed = sorted(known)[len(known) // 2] if known else GUESSED_SAMPLES_PER_S
        total += len(encoded.labels["train"]) * passes(run) / speed
    if not runs:
        return 0.0, "nothing to run"
    return total, (
        f"{measured} of {len(runs)} run(s) timed from earlier runs here, the rest guessed at "
        f"{GUESSED_SAMPLES_PER_S:.0f} examples/s"
    )
