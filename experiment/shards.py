"""Sharing a plan between workers (--shard K/N): each run's cost from the plan alone, and an assignment every
worker derives the same."""

from __future__ import annotations

from experiment.inputs import Inputs
from experiment.plan import Run
from strategies import STRATEGIES


def passes(run: Run) -> int:
    """How many times the run encodes each training text: its epochs, unless its strategy trains otherwise (a head
    fitted on features: once; SetFit: as often as its contrastive training does)."""
    return STRATEGIES[run.strategy].passes(run.settings, run.cfg.training.num_epochs)


def planned_cost(run: Run, inputs: Inputs) -> float:
    """A run's training cost from its plan alone (tokens to train on x passes x the strategy's relative cost),
    so that every worker computes the same shares, whatever has run already."""
    _, encoded = inputs.for_run(run)
    return sum(map(len, encoded.ids["train"])) * passes(run) * STRATEGIES[run.strategy].relative_cost


def assign_shards(costs: list[float], shards: int) -> list[int]:
    """The shard of each run: the costliest first, each to the shard with the least cost so far (the lower
    index among equals), so shares take similar time and every worker derives the same assignment."""
    loads, owners = [0.0] * shards, [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        owners[i] = min(range(shards), key=lambda k: (loads[k], k))
        loads[owners[i]] += costs[i]
    return owners


def print_shares(costs: list[float], owners: list[int], shards: int) -> None:
    loads = [0.0] * shards
    for cost, owner in zip(costs, owners):
        loads[owner] += cost
    print(
        "\nestimated share of the training in each shard: "
        + ", ".join(f"{k}/{shards}: {load / sum(costs):.0%}" for k, load in enumerate(loads))
    )
