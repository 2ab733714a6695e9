"""What runs share, loaded once: the data, tokenizers, token lengths and token ids per data config and model;
max_length resolved from the data; the data reports and the baseline."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from config import Config
from data import (
    SPLITS,
    Encoded,
    LabelledData,
    augment_texts,
    few_shot_rows,
    fold_of,
    fold_rows,
    load_data,
    tokenize,
)
from experiment.plan import Run
from model import load_tokenizer
from reporting.data_report import LENGTH_PERCENTILE, auto_max_length, build_report, token_lengths
from strategies import STRATEGIES
from tasks import TASKS
from tasks.base import token_ids
from utils import stable_hash

logger = logging.getLogger("bertlab")


class Inputs:
    """Data, tokenizers, token lengths and token ids, each loaded once per distinct data config and model, shared
    by every run."""

    def __init__(self):
        self.data: dict[str, LabelledData] = {}
        self.cuts: dict[
            tuple, list[np.ndarray]
        ] = {}  # each repeat's folds (fold_rows), cut once for all of them
        self.folds: dict[tuple, LabelledData] = {}
        self.tokenizers: dict[str, Any] = {}
        self.lengths: dict[tuple, dict[str, np.ndarray]] = {}
        self.encoded: dict[tuple, Encoded] = {}

    def tokenizer_for(self, run: Run):
        if run.cfg.model.name not in self.tokenizers:
            self.tokenizers[run.cfg.model.name] = load_tokenizer(run.cfg)
        return self.tokenizers[run.cfg.model.name]

    def lengths_for(self, run: Run) -> dict[str, np.ndarray]:
        """Every split's untruncated token lengths under the run's tokenizer."""
        key = (self.data_key(run), run.cfg.model.name)
        if key not in self.lengths:
            data = self.data_for(run)
            self.lengths[key] = {
                split: token_lengths(
                    self.tokenizer_for(run), data.texts[split], data.pairs and data.pairs[split]
                )
                for split in SPLITS
            }
        return self.lengths[key]

    @staticmethod
    def data_key(run: Run) -> str:
        """What the loaded data depends on: augmentation is per run, added in for_run."""
        return stable_hash({**dataclasses.asdict(run.cfg.data), "augment": None})

    def data_for(self, run: Run) -> LabelledData:
        if self.data_key(run) not in self.data:
            self.data[self.data_key(run)] = load_data(run.cfg.data)
        return self.data[self.data_key(run)]

    def fold_for(self, run: Run) -> LabelledData:
        """The data as the run splits it: with data.folds, its fold held out for validation."""
        data = self.data_for(run)
        if run.fold is None:
            return data
        repeat, index = run.fold
        cut_key = (self.data_key(run), repeat)
        if cut_key not in self.cuts:
            self.cuts[cut_key] = fold_rows(data, run.cfg.data.folds, run.cfg.data.seed, repeat)
        if (cut_key, index) not in self.folds:
            self.folds[cut_key, index] = fold_of(data, self.cuts[cut_key], index, repeat)
        return self.folds[cut_key, index]

    def for_run(self, run: Run) -> tuple[LabelledData, Encoded]:
        """The data as the run splits it, and the token ids it trains on: its few-shot sample and augmented rows,
        if any."""
        data = self.fold_for(run)
        token_key = (self.data_key(run), run.fold, run.cfg.model.name, run.cfg.model.max_length)
        if token_key not in self.encoded:
            self.encoded[token_key] = tokenize(
                data, self.tokenizer_for(run), run.cfg.model.max_length, run.cfg.data.doc_stride
            )
        encoded = self.encoded[token_key]
        rows = range(len(data.labels["train"]))
        if run.shots is not None:
            rows = few_shot_rows(data.labels["train"], run.shots, run.cfg.data.seed, run.draw)
            encoded = encoded.with_train_rows(rows)
        augment = run.cfg.data.augment
        if augment.enabled:
            texts, labels = augment_texts(
                [data.texts["train"][i] for i in rows],
                [data.labels["train"][i] for i in rows],
                augment,
                run.cfg.training.seed,
            )
            encoded = encoded.with_added_train_rows(
                token_ids(self.tokenizer_for(run), texts, run.cfg.model.max_length), labels
            )
        return data, encoded


def resolve_max_length(runs: list[Run], inputs: Inputs, model_configs: dict) -> list[Run]:
    """Runs with model.max_length: auto get the length data_report.auto_max_length picks from their training
    data, so their ids, records and saved configs hold the number that was used."""
    resolved, told = [], set()
    for run in runs:
        if run.cfg.model.max_length == "auto":
            limit = getattr(model_configs[run.cfg.model.name], "max_position_embeddings", None)
            extra = STRATEGIES[run.strategy].extra_positions(run.settings)
            if extra and limit is not None:
                limit -= extra[1]  # positions the strategy takes beside the text's tokens (virtual tokens)
            train = inputs.lengths_for(run)["train"]
            length = auto_max_length(train, limit)
            if (length, run.cfg.model.name) not in told:
                told.add((length, run.cfg.model.name))
                percentile = np.percentile(train, LENGTH_PERCENTILE)
                logger.info(
                    "model.max_length auto: %d (the %dth percentile of %s's training token lengths is %.0f%s; "
                    "%.1f%% of training texts are truncated)",
                    length,
                    LENGTH_PERCENTILE,
                    run.cfg.model.name,
                    percentile,
                    f", above the model's limit of {limit}" if limit and percentile > limit else "",
                    100 * (train > length).mean(),
                )
            run = dataclasses.replace(
                run,
                cfg=dataclasses.replace(run.cfg, model=dataclasses.replace(run.cfg.model, max_length=length)),
            )
        resolved.append(run)
    return resolved


def data_reports(runs: list[Run], inputs: Inputs) -> dict[str, dict]:
    """The data report of each data set the runs use (under the first run's model and max_length), by fingerprint."""
    reports = {}
    for run in runs:
        data = inputs.data_for(run)
        if data.fingerprint not in reports:
            reports[data.fingerprint] = build_report(
                data,
                inputs.lengths_for(run),
                run.cfg.model.max_length,
                run.cfg.model.name,
                TASKS[run.cfg.data.task],
            )
    return reports


def baseline_of(data: LabelledData, cfg: Config) -> dict:
    return TASKS[cfg.data.task].baseline(data.labels["train"], data.labels["test"], data.label_names)
