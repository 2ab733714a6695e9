"""The `search:` config section (how each strategy's settings are chosen: the config's grid, or an Optuna
search pruned on validation), with the checks of its own values and of each range in its space."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from schema.checks import list_problem, problem

# Each field's docstring (the string under it) is its help text: docs/config.md is generated from them.


@dataclass
class SearchConfig:
    method: Literal["grid", "optuna"] = "grid"
    """`grid`: the runs the config's lists make (rates, ranks, sweep, variants), each to its full budget; `optuna`: per strategy, `trials` settings drawn from its space, each trial pruned on validation when it falls behind, then the best confirmed with `confirm_seeds` (docs/search.md)."""
    trials: int = 8
    """Trials per strategy, the config's own setting first (so a search is never worse than the config alone)."""
    space: dict[str, dict | list] = field(default_factory=dict)
    """Dotted key -> `{low, high, log}` (a range; integers when both ends are) or a list of choices; a `strategies.<name>.` key searches that strategy only. Replaces the key's range in each strategy's own default space (its learning rate, over a range that suits the method)."""
    pruner: Literal["none", "median", "successive_halving"] = "successive_halving"
    """How trials are judged, from a quarter of their budget on: none; Optuna's median pruner (after every evaluation, against the median of earlier trials at the same step); or successive halving (rungs at a quarter and three quarters of the budget, where the trials of a round wait for each other, then each goes on if in the best third of all the trials that reached that rung)."""
    prune_on: Literal["val_loss", "metric"] = "val_loss"
    """What the pruner judges, best so far: the validation loss, or the metric trials are chosen by (training.early_stopping.metric). Early in training the loss already ranks rates as their final scores do, where a metric of argmax decisions does not (on banking77, full fine-tuning's best rate scored lowest at the first rung)."""
    sampler_seed: int = 0
    """Seeds Optuna's samplers (a Sobol sequence for the first draws, then TPE): the same seed draws the same settings."""
    time_budget: float | None = None
    """Seconds after which no new trial starts (strategies take turns, so each gets about its share); the trials done are then confirmed. null: `trials` each."""
    confirm_top_k: int = 1
    """The best settings of each strategy (by validation) run again with `confirm_seeds`, tested, and compared by the verdict."""
    confirm_seeds: list[int] | None = None
    """Seeds of the confirmation runs; null: training.seeds, else training.seed. A trial with the same seed that ran to its end is reused, tested from its kept weights."""
    storage: str | None = None
    """Where the studies live: null, a journal file in output.dir (resumable; workers of --shard K/N on one folder share it), unless the environment variable BERTLAB_SEARCH_STORAGE names a database; or a database URL, `postgresql://user@host/db` for workers on many machines (docs/scaling.md; a password is better left to PGPASSWORD or ~/.pgpass), `sqlite:///file.db` on one."""

    def __post_init__(self):  # YAML 1.1 reads 1e-5 (no dot) as a string
        self.space = {
            key: {k: numeric(v) for k, v in spec.items()} if isinstance(spec, dict) else spec
            for key, spec in self.space.items()
        }

    def problems(self) -> list[str]:
        return (
            problem(self.trials >= 1, "search.trials", self.trials, "an integer >= 1")
            + problem(
                self.time_budget is None or self.time_budget > 0,
                "search.time_budget",
                self.time_budget,
                "seconds > 0, or null",
            )
            + problem(self.confirm_top_k >= 1, "search.confirm_top_k", self.confirm_top_k, "an integer >= 1")
            + list_problem(self.confirm_seeds, "search.confirm_seeds", lambda v: True, "integers")
            + [p for key, spec in self.space.items() for p in range_problems(f"search.space.{key}", spec)]
            + ([] if self.storage is None else storage_problems("search.storage", self.storage))
            + self.environment_problems()
        )

    def environment_problems(self) -> list[str]:
        """The database URL of the environment variable, checked as search.storage is when it stands in for it
        (a search, no search.storage): a URL of no supported database would otherwise go unnoticed."""
        url = os.environ.get(STORAGE_VARIABLE)
        if self.method != "optuna" or self.storage is not None or not url:
            return []
        return storage_problems(f"the environment variable {STORAGE_VARIABLE}", url)


STORAGE_VARIABLE = "BERTLAB_SEARCH_STORAGE"  # the database URL when search.storage is null
DATABASES = ("postgresql", "sqlite")  # PostgreSQL for many machines (advisory locks); SQLite on one


def storage_problems(key: str, url: str) -> list[str]:
    import sqlalchemy

    try:
        backend = sqlalchemy.engine.make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        backend = None
    return problem(
        backend in DATABASES,
        key,
        shown_url(url),
        "a database URL such as postgresql://user@host/db or sqlite:///studies.db, or null",
    )


def database_url(url: str) -> str:
    """The URL as SQLAlchemy opens it: PostgreSQL through psycopg (version 3, which the requirements install)
    unless it names another driver."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def shown_url(url: str) -> str:
    """A database URL as logs, errors and saved configs show it: its password as ***."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "(not a URL)" if "@" in url else url


def range_problems(key: str, spec: dict | list) -> list[str]:
    """What is wrong with one searched range: `{low, high, log}` or a non-empty list of distinct choices."""
    if isinstance(spec, list):
        return problem(
            len(spec) > 0 and len({repr(v) for v in spec}) == len(spec),
            key,
            spec,
            "a non-empty list of distinct choices, or {low, high, log}",
        )
    allowed = "{low: number, high: number above low, log: true or false} (log needs low > 0)"
    if set(spec) - {"low", "high", "log"} or not {"low", "high"} <= set(spec):
        return problem(False, key, spec, allowed)
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    return problem(
        numbers and isinstance(log, bool) and low < high and (not log or low > 0), key, spec, allowed
    )


def numeric(value):
    """A number written as YAML 1.1 leaves it (`1e-5` is a string there) as a float; anything else as it is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def range_values(spec: dict | list) -> list[Any]:
    """Values a range holds that a config must accept: its ends, or every choice."""
    return list(spec) if isinstance(spec, list) else [spec["low"], spec["high"]]


def edge_of_range(value, spec: dict | list) -> str | None:
    """ "low" or "high" when a value lies in the outer tenth of its range (by log where the range is): a best
    setting there may lie beyond it. None inside, and for choices."""
    if isinstance(spec, list):
        return None
    scale = math.log if spec.get("log") else float
    position = (scale(value) - scale(spec["low"])) / (scale(spec["high"]) - scale(spec["low"]))
    return "low" if position < 0.1 else "high" if position > 0.9 else None


def outside_range(value, spec: dict | list) -> bool:
    return value not in spec if isinstance(spec, list) else not spec["low"] <= value <= spec["high"]


def describe_range(spec: dict | list) -> str:
    if isinstance(spec, list):
        return "{" + ", ".join(map(str, spec)) + "}"
    return f"{spec['low']:.3g}..{spec['high']:.3g}" + (" (log)" if spec.get("log") else "")
