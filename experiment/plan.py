"""The plan of an experiment: its runs (strategies x grid x few-shot draws x folds x seeds), each a strategy
under a config with no lists left in it, with the key that names it."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from config import Config, HeadConfig, TrainingConfig, expand_grid, short_key, strategy_settings
from model import OWN_HEAD, ModelPlan, resolved_config, source_run
from records.shape import Trial
from schema.strategies import StrategyConfig
from strategies import STRATEGIES
from tasks import TASKS, Task
from utils import stable_hash

# Training keys added after run ids were first handed out: left out of the run key at their defaults, so
# runs made before them keep their ids (and their cached results).
ADDED_TRAINING_KEYS = (
    "loss",
    "class_weights",
    "focal_gamma",
    "label_smoothing",
    "sampler",
    "bf16",
    "head_learning_rate",
    "layer_lr_decay",
    "eval_every_steps",
    "calibration",
    "decision_threshold",
)


@dataclasses.dataclass(frozen=True)
class Share:
    """This worker's part of a plan: every planned run's id, the places in the plan of the runs it trains (all,
    or a shard's), the ids already completed (reused), and the search trials validated without test (each
    resumes into its confirmation)."""

    ids: list[str]
    mine: list[int]
    cached: set[str]
    trials_done: dict[str, Trial]

    def to_run(self) -> list[str]:
        return [self.ids[i] for i in self.mine if self.ids[i] not in self.cached]


@dataclasses.dataclass
class Run:
    """One training run of the experiment: a strategy under a config with no lists left in it."""

    strategy: str
    cfg: Config  # seed, rates and swept values resolved to single values
    varied: dict[str, Any]  # the grid values that set this configuration apart from the strategy's others
    shots: int | None = None  # few-shot: training examples per class
    draw: int | None = None  # few-shot: which sample of `shots` per class
    fold: tuple[int, int] | None = None  # cross-validation (data.folds): (repeat, index) of the fold held out
    # with model.init_from: the starting run's folder, record and config (source_run)
    source: dict | None = None
    # a search's trial {study, number, space}, or its confirmation (with confirms: the trial's run id); not in the key
    trial: Trial | None = None
    # derived from cfg once, so that running goes down the layers without deriving them again
    settings: StrategyConfig = dataclasses.field(init=False)  # the strategy's own, with the rate it uses
    head: HeadConfig = dataclasses.field(init=False)  # the head the strategy trains under model.head
    task: Task = dataclasses.field(init=False)

    def __post_init__(self):
        self.settings = strategy_settings(self.cfg, self.strategy)
        self.head = STRATEGIES[self.strategy].head(self.cfg.model.head)
        self.task = TASKS[self.cfg.data.task]

    def model_plan(self, cfg: Config | None = None) -> ModelPlan:
        """What builds its model, as resolved here (`cfg`: an out-of-memory retry's, the run's own by default)."""
        return ModelPlan(cfg or self.cfg, self.strategy, self.settings, self.head, self.source)

    def key(self, data_fingerprint: str) -> dict:
        """Everything that changes the result, so a run id never names two different experiments.
        (How often checkpoints are written changes nothing, so it may differ on --resume; the global
        learning rate is in `settings` when it is the one used.)"""
        excluded = ("checkpoint_every_steps", "seeds", "learning_rate")
        defaults = dataclasses.asdict(TrainingConfig())
        training = {
            k: v
            for k, v in dataclasses.asdict(self.cfg.training).items()
            if k not in excluded and not (k in ADDED_TRAINING_KEYS and v == defaults[k])
        }
        model = dataclasses.asdict(self.cfg.model)
        if self.cfg.model.head == OWN_HEAD:  # added later: runs with the model's own head keep their ids
            del model["head"]
        if self.source:  # the run itself, however its folder was named
            model["init_from"] = self.source["record"]["run_id"]
        else:  # added later: runs without it keep their ids
            del model["init_from"]
        key = {
            "strategy": self.strategy,
            "settings": self.settings.recorded(),
            "model": model,
            "training": training,
            "data_fingerprint": data_fingerprint,
        }
        if self.shots is not None:
            key["few_shot"] = {"shots_per_class": self.shots, "draw": self.draw}
        if self.cfg.data.doc_stride is not None:  # added later: runs without it keep their ids
            key["doc_stride"] = self.cfg.data.doc_stride
        if self.cfg.data.augment.enabled:  # off, it changes nothing: earlier runs keep their ids
            key["augment"] = dataclasses.asdict(self.cfg.data.augment)
        if self.head.type != "model" and STRATEGIES[self.strategy].extra_positions(self.settings):
            key["head_pools"] = (
                "the text's positions"  # added later: prompt tuning's virtual tokens were pooled too
            )
        if self.fold is not None:  # the data's seed too: it cuts the folds of a given validation split
            key["fold"] = {
                "folds": self.cfg.data.folds,
                "repeat": self.fold[0],
                "index": self.fold[1],
                "seed": self.cfg.data.seed,
            }
        return key

    def run_id(self, data_fingerprint: str) -> str:
        return f"{self.strategy}-{stable_hash(self.key(data_fingerprint))}"

    def config_id(self, data_fingerprint: str) -> str:
        """Runs that differ only in seed, few-shot draw or fold share a configuration: they are aggregated."""
        key = self.key(data_fingerprint)
        key["training"].pop("seed")
        key.get("few_shot", {}).pop("draw", None)
        key.get("fold", {}).pop("repeat", None)
        key.get("fold", {}).pop("index", None)
        return f"{self.strategy}-{stable_hash(key)}"

    def describe(self) -> str:
        parts = [f"{short_key(k)}={v}" for k, v in self.varied.items()]
        if self.shots is not None:
            parts.append(f"shots={self.shots} draw={self.draw}")
        if self.fold is not None:
            repeat = f" repeat={self.fold[0] + 1}" if self.cfg.data.fold_repeats > 1 else ""
            parts.append(f"fold={self.fold[1] + 1}/{self.cfg.data.folds}{repeat}")
        return " ".join(parts + [f"seed={self.cfg.training.seed}"])


def folds_of(cfg: Config) -> list[tuple[int, int] | None]:
    """The (repeat, index) of each cross-validation fold, repeats outermost; [None] without data.folds."""
    if cfg.data.folds is None:
        return [None]
    return [(repeat, index) for repeat in range(cfg.data.fold_repeats) for index in range(cfg.data.folds)]


def plan_runs(cfg: Config, strategies: list[str]) -> list[Run]:
    """Strategies x their grid (rates, ranks, sweep) x few-shot sizes and draws x folds x seeds, each with its
    starting run (model.init_from) read once."""
    seeds = cfg.training.seeds or [cfg.training.seed]
    few = cfg.few_shot
    shots_and_draws = (
        [(k, d) for k in few.shots_per_class for d in range(few.repeats)] if few.enabled else [(None, None)]
    )
    sources: dict[str | None, dict | None] = {}
    runs = []
    for strategy in strategies:
        for varied, point in expand_grid(cfg, strategy):
            spec = point.model.init_from
            if spec not in sources:
                sources[spec] = source_run(point)
            # the head `auto` gives this model, in the run's key and saved config
            point = resolved_config(point)
            for (shots, draw), fold, seed in itertools.product(shots_and_draws, folds_of(cfg), seeds):
                single = dataclasses.replace(
                    point, training=dataclasses.replace(point.training, seed=seed, seeds=None)
                )
                runs.append(Run(strategy, single, varied, shots, draw, fold, sources[spec]))
    return runs
