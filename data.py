"""Data: read a Hub data set or local files (sources/), clean and split them, tokenize once as the task reads
them, batch by length."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from config import AugmentConfig, DataConfig
from sources.files import SPLITS, read_local
from sources.hub import HUB_DATASETS, read_hub
from tasks import TASKS, Task
from tasks.base import segment_ids
from utils import ConfigError, shown, stable_hash

logger = logging.getLogger(__name__)

# Training batches are formed from windows of this many batches' worth of shuffled rows, sorted by length:
# little padding, while every batch still mixes rows from across the split.
SORT_WINDOW_BATCHES = 50


@dataclass
class LabelledData:
    """Texts (and, for sentence pairs, their second texts) and labels per split, with the label names (the
    classes the integer labels stand for; regression: the one predicted column; token classification: the tags),
    in the shape their task prepared (token classification: a sentence's words joined by single spaces, and one
    tag id per word)."""

    name: str
    texts: dict[str, list[str]]
    labels: dict[str, list]
    label_names: list[str]
    cleaning: dict = dataclasses.field(default_factory=dict)  # what load_data dropped or found, per split
    pairs: dict[str, list[str]] | None = None
    task: str = DataConfig.task  # the data.task whose shape texts and labels have
    # a test split the data gave, scored whole: its rows that no earlier split holds (None: test was cleaned)
    test_unseen: list[int] | None = None
    # a cross-validation fold of the data: {folds, index, repeat, of: the fingerprint of the data it was cut from}
    fold: dict | None = None

    @property
    def fingerprint(self) -> str:
        """Names the data as loaded; a fold is named by the data it was cut from (its run key names the fold)."""
        if self.fold:
            return self.fold["of"]
        return stable_hash(
            [self.texts, self.labels, self.label_names] + ([self.pairs] if self.pairs else []), length=16
        )

    def sizes(self) -> dict[str, int]:
        return {split: len(self.labels[split]) for split in SPLITS}


def load_data(cfg: DataConfig) -> LabelledData:
    """Read the configured source, carve missing splits from train, and encode the labels as the task does."""
    task = TASKS[cfg.task]
    known = HUB_DATASETS.get(cfg.name) if cfg.name is not None else None
    columns = task.data_columns(cfg, known)
    label_column = columns["label"][1]
    if cfg.name is not None:
        frames, hub_names = read_hub(known.hub_id if known else cfg.name, label_column)
        name = cfg.name
    else:
        frames, hub_names = read_local(Path(cfg.path)), None
        name = Path(cfg.path).stem if Path(cfg.path).is_file() else Path(cfg.path).name
    cleaning = {split: {} for split in SPLITS}
    # given by the data: kept whole
    whole = {"test"} if "test" in frames and not cfg.clean_given_test else set()
    frames = {
        split: _clean(frame, split, columns, task, cleaning[split], cfg) for split, frame in frames.items()
    }
    frames = {
        split: _drop_duplicates(
            frame, split, cfg.drop_duplicates and split not in whole, cleaning[split], task.shown_label
        )
        for split, frame in frames.items()
    }
    frames = _carve_missing_splits(frames, cfg, task)
    frames, unseen = _remove_leakage(frames, cfg.remove_leakage, cleaning, whole)
    if cfg.train_size is not None and cfg.train_size < len(frames["train"]):
        frames["train"] = _split(
            frames["train"], len(frames["train"]) - cfg.train_size, cfg.seed, "train_size", task
        )[0]
    label_names, labels = task.encode_labels(
        {split: frame["label"] for split, frame in frames.items()}, cfg.tag_names or hub_names, label_column
    )
    texts = {split: frame["text"].tolist() for split, frame in frames.items()}
    pairs = (
        {split: frame["pair"].tolist() for split, frame in frames.items()}
        if "pair" in frames["train"]
        else None
    )
    return LabelledData(
        name=name,
        texts=texts,
        labels=labels,
        label_names=label_names,
        cleaning=cleaning,
        pairs=pairs,
        task=cfg.task,
        test_unseen=unseen,
    )


def _clean(
    frame: pd.DataFrame,
    split: str,
    columns: dict[str, tuple[str, str | None]],
    task,
    found: dict,
    cfg: DataConfig,
) -> pd.DataFrame:
    """The split as columns text (and pair) and label, without the rows that lack a text or a label. `columns`
    maps each to (its config key, the column in the data); the task prepares what is not a string (lists of
    words, a question's answers), so that cleaning compares strings."""
    columns = {name: (key, column) for name, (key, column) in columns.items() if column is not None}
    for key, column in columns.values():
        if column not in frame.columns and key is not None:  # a column no setting names is read where there
            raise ConfigError(
                f"{key}: column '{column}' not in the {split} data; columns: {', '.join(map(str, frame.columns))}"
            )
    present = {name: frame[column] for name, (_, column) in columns.items() if column in frame.columns}
    frame = task.prepare(pd.DataFrame(present), split, columns, found, cfg)
    check_value_types(frame, split, columns)
    if frame["label"].dtype.kind == "f" and (frame["label"].dropna() % 1 == 0).all():
        frame["label"] = frame["label"].astype("Int64")  # integer labels read as floats beside blanks
    texts = {name: frame[name].astype("string").str.strip() for name in ("text", "pair") if name in frame}
    has_text = np.logical_and.reduce([text.notna() & (text != "") for text in texts.values()])
    has_label = frame["label"].notna()
    keep = has_text & has_label
    found.update(
        rows_read=len(frame),
        empty_text=int((~has_text).sum()),
        missing_label=int((has_text & ~has_label).sum()),
    )
    if not keep.all():
        logger.warning(
            "%s split: dropped %d rows with empty text or a missing label", split, int((~keep).sum())
        )
    if not keep.any():
        raise ConfigError(f"data: the {split} split has no rows with both text and a label")
    return pd.DataFrame(
        {**{name: text[keep].astype(str) for name, text in texts.items()}, "label": frame["label"][keep]}
    ).reset_index(drop=True)


SCALARS = (str, int, float, np.integer, np.floating, bool, np.bool_)


def is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value))


def check_value_types(frame: pd.DataFrame, split: str, columns: dict[str, tuple[str, str | None]]) -> None:
    """Refuse, in one line naming the column and its first bad row, a text that is not text (a list, a mapping)
    and a label that is nested: each would otherwise become its Python repr or a traceback further on. Runs
    after the task's prepare(), which turns the nested values it reads into strings."""
    for name, series in frame.items():
        key, column = columns.get(name, (None, name))
        where = f"{key or 'data'}: column '{column}' of the {split} data"
        present = series[[not is_missing(value) for value in series]]
        wrong = [
            i
            for i, v in present.items()
            if not isinstance(v, SCALARS) or (name != "label" and isinstance(v, (bool, np.bool_)))
        ]
        if wrong:
            value = present[wrong[0]]
            allowed = "text" if name != "label" else "one label per row, a string or a number"
            raise ConfigError(
                f"{where} holds {type(value).__name__} values (row {wrong[0] + 1}: "
                f"{shown(value)}), allowed: {allowed}"
            )


def text_key(text: str) -> str:
    """What makes two texts "the same" for duplicates and leakage: case and runs of whitespace do not count."""
    return " ".join(text.casefold().split())


def row_keys(frame: pd.DataFrame) -> pd.Series:
    """Each row's text_key; for sentence pairs, both texts' (the same pair in the same order)."""
    keys = frame["text"].map(text_key)
    return keys + "\x1f" + frame["pair"].map(text_key) if "pair" in frame else keys


# Examples of conflicting duplicates kept in the data report: enough to see the problem, not a dump.
CONFLICT_EXAMPLES = 5


def _drop_duplicates(
    frame: pd.DataFrame, split: str, drop: bool, found: dict, shown: Callable[[Any], str]
) -> pd.DataFrame:
    """Repeated texts: one copy kept when every copy has the same label; every copy dropped when the copies
    disagree (which label is right cannot be known). Counted either way; with `drop` false, all rows stay."""
    key = row_keys(frame)
    labels_per_text = frame.groupby(key)["label"].nunique()
    conflicting = key.isin(labels_per_text.index[labels_per_text > 1])
    repeated = key.duplicated() & ~conflicting
    examples = [
        {"text": group["text"].iloc[0], "labels": sorted(map(shown, group["label"].unique()))}
        for _, group in frame[conflicting].groupby(key[conflicting], sort=True)
    ][:CONFLICT_EXAMPLES]
    found.update(
        duplicates_dropped=int(repeated.sum()) if drop else 0,
        duplicate_rows=int(repeated.sum()),
        conflicting_texts=int(labels_per_text.gt(1).sum()),
        conflicting_rows=int(conflicting.sum()),
        conflicting_rows_dropped=int(conflicting.sum()) if drop else 0,
        conflicting_examples=examples,
    )
    if conflicting.any():
        logger.warning(
            "%s split: %d text(s) appear with different labels (%d rows)%s, e.g. %r labelled %s",
            split,
            found["conflicting_texts"],
            found["conflicting_rows"],
            ", dropped" if drop else "",
            examples[0]["text"],
            " and ".join(examples[0]["labels"]),
        )
    if not drop:
        return frame
    kept = frame[~(repeated | conflicting)].reset_index(drop=True)
    if kept.empty:
        raise ConfigError(f"data: the {split} split has no rows left once duplicates are dropped")
    return kept


def _remove_leakage(
    frames: dict[str, pd.DataFrame], remove: bool, found: dict, whole: set[str]
) -> tuple[dict[str, pd.DataFrame], list[int] | None]:
    """Texts of a later split already in an earlier one (validation in train; test in train or validation):
    counted, and with `remove`, dropped from the later split, so no score is measured on a text trained on
    or chosen by. A split in `whole` keeps every row; its rows no earlier split holds are returned (test's)."""
    seen, unseen = set(row_keys(frames["train"])), None
    for split in ("validation", "test"):
        keys = row_keys(frames[split])
        leaked = keys.isin(seen)
        drop = remove and split not in whole
        found[split].update(leaked=int(leaked.sum()), leaked_removed=int(leaked.sum()) if drop else 0)
        if split in whole:
            found[split]["scored_whole"] = True
            unseen = np.flatnonzero(~leaked.to_numpy()).tolist()
        if leaked.any():
            logger.warning(
                "%s split: %d text(s) also in an earlier split%s",
                split,
                int(leaked.sum()),
                ", removed"
                if drop
                else ", kept: the data gives this split, so it is scored whole (and "
                "apart without them, as test_unseen)"
                if split in whole
                else " (data.remove_leakage: false keeps them)",
            )
        if drop:
            if leaked.all():
                raise ConfigError(
                    f"data: every {split} text is also in an earlier split; nothing is left to "
                    f"{'choose' if split == 'validation' else 'test'} on"
                )
            frames[split] = frames[split][~leaked].reset_index(drop=True)
        seen |= set(keys)
    return frames, unseen


def _carve_missing_splits(
    frames: dict[str, pd.DataFrame], cfg: DataConfig, task: Task
) -> dict[str, pd.DataFrame]:
    """Test first, then validation, both from the full training data, so neither depends on train_size."""
    train = frames["train"]
    total = len(train)
    for split, share in (("test", cfg.test_size), ("validation", cfg.validation_size)):
        if split not in frames:
            train, frames[split] = _split(train, round(share * total), cfg.seed, split, task)
    frames["train"] = train
    return {split: frames[split] for split in SPLITS}


def _split(
    frame: pd.DataFrame, holdout: int, seed: int, split: str, task: Task
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`holdout` rows held out at random; in proportion to the task's strata (classes) where the counts allow, or
    as the task carves them (label sets)."""
    if holdout < 1 or holdout >= len(frame):
        raise ConfigError(f"data: {len(frame)} rows are too few to hold out a {split} split")
    rows = task.split_rows(frame["label"], holdout, seed)
    if rows is not None:
        return (frame.iloc[rows[0]].reset_index(drop=True), frame.iloc[rows[1]].reset_index(drop=True))
    stratify = task.strata(frame["label"])
    if stratify is not None:
        counts = stratify.value_counts()
        if counts.min() < 2 or min(holdout, len(frame) - holdout) < len(counts):
            stratify = None
            logger.warning("%s split carved without stratification: too few rows for every class", split)
    kept, held = train_test_split(frame, test_size=holdout, random_state=seed, stratify=stratify)
    return kept.reset_index(drop=True), held.reset_index(drop=True)


def fold_rows(data: LabelledData, folds: int, seed: int, repeat: int = 0) -> list[np.ndarray]:
    """The rows of train and validation together (train's first) that each of `folds` folds holds out, the
    repeat-th cut for this seed: a text's repeats (the task's fold_texts) in one fold, and the task's
    fold_strata (classes, label sets) in proportion in each."""
    task = TASKS[data.task]
    texts = data.texts["train"] + data.texts["validation"]
    pairs = data.pairs and data.pairs["train"] + data.pairs["validation"]
    keys = [text_key(text) for text in task.fold_texts(texts, pairs)]
    # each row's group, each group's first row
    _, first, groups = np.unique(keys, return_index=True, return_inverse=True)
    if folds > len(first):
        raise ConfigError(
            f"data.folds: {folds} is more than the {len(first)} distinct texts of train and validation "
            f"together; at most {len(first)}"
        )
    strata = task.fold_strata(data.labels["train"] + data.labels["validation"])
    if strata is not None:
        if strata.ndim == 1:
            strata = strata[
                first
            ]  # a repeated text's label: its first row's (repeats with other labels were dropped)
            counts = np.bincount(strata, minlength=len(data.label_names))
        else:  # a repeated text holds every label any of its rows has
            rows, strata = strata, np.zeros((len(first), strata.shape[1]), dtype=strata.dtype)
            np.maximum.at(strata, groups, rows)
            counts = strata.sum(0)
        rarest = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        if counts[rarest] < folds:
            raise ConfigError(
                f"data.folds: {folds} is more than the {counts[rarest]} examples of "
                f"{task.label_counts.kind} '{data.label_names[rarest]}' in train and "
                f"validation together, so a fold would lack it; at most {counts[rarest]}"
            )
    state = int(np.random.default_rng([seed, repeat]).integers(2**31))
    if strata is None:
        splitter = KFold(folds, shuffle=True, random_state=state)
    elif strata.ndim == 1:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=state)
    else:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        splitter = MultilabelStratifiedKFold(folds, shuffle=True, random_state=state)
    fold_of_group = np.empty(len(first), dtype=np.int64)
    for index, (_, held) in enumerate(splitter.split(np.zeros(len(first)), strata)):
        fold_of_group[held] = index
    fold_of_row = fold_of_group[groups]
    return [np.flatnonzero(fold_of_row == index) for index in range(folds)]


def fold_of(data: LabelledData, cut: list[np.ndarray], index: int, repeat: int = 0) -> LabelledData:
    """The data with the index-th fold of `cut` (fold_rows' repeat-th cut) as the validation split and the rest
    of train and validation as the training split; test as it was."""
    held = np.zeros(len(data.labels["train"]) + len(data.labels["validation"]), dtype=bool)
    held[cut[index]] = True

    def resplit(values: dict[str, list]) -> dict[str, list]:
        pooled = values["train"] + values["validation"]
        return {
            "train": [v for v, out in zip(pooled, held) if not out],
            "validation": [v for v, out in zip(pooled, held) if out],
            "test": values["test"],
        }

    return dataclasses.replace(
        data,
        texts=resplit(data.texts),
        labels=resplit(data.labels),
        pairs=data.pairs and resplit(data.pairs),
        fold={"folds": len(cut), "index": index, "repeat": repeat, "of": data.fingerprint},
    )


# ----------------------------------------------------------------------------------------------
# Tokenization and batching


@dataclass
class Encoded:
    """Token ids (unpadded) and labels per split, with the label names: what the training loop consumes."""

    ids: dict[str, list[list[int]]]
    labels: dict[str, list] | None  # None: text to predict on
    pad_id: int
    label_names: list[str]
    augmented_rows: int = 0  # training rows added by data.augment (at the end of the training split)
    # sentence pairs, for a model that takes token type ids: the token that ends the first text (see segment_ids)
    pair_separator: int | None = None
    # per split, what leads from rows back to the task's examples (Task.align); None where rows are examples
    layout: dict[str, object] | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def with_added_train_rows(self, ids: list[list[int]], labels: list[int]) -> Encoded:
        """The same validation and test splits, training on the rows it has and these."""
        return dataclasses.replace(
            self,
            ids={**self.ids, "train": self.ids["train"] + ids},
            labels={**self.labels, "train": self.labels["train"] + labels},
            augmented_rows=self.augmented_rows + len(ids),
        )

    def with_train_rows(self, rows: list[int]) -> Encoded:
        """The same validation and test splits, training on the given rows only."""
        return dataclasses.replace(
            self,
            ids={**self.ids, "train": [self.ids["train"][i] for i in rows]},
            labels={**self.labels, "train": [self.labels["train"][i] for i in rows]},
        )


def few_shot_rows(labels: list[int], shots: int, seed: int, draw: int) -> list[int]:
    """`shots` training rows per class, the draw-th sample for this seed. Each class is permuted once
    per draw and the first k taken, so within a draw the 16-shot sample contains the 8-shot one and
    curves over k compare like with like. A class with fewer rows gives all it has."""
    rng = np.random.default_rng([seed, draw])
    labels = np.asarray(labels)
    rows = []
    for label in np.unique(labels):
        rows += rng.permutation(np.flatnonzero(labels == label))[:shots].tolist()
    return sorted(rows)


def augment_texts(
    texts: list[str], labels: list[int], cfg: AugmentConfig, seed: int
) -> tuple[list[str], list[int]]:
    """The added training rows (data.augment): `copies` perturbed versions of each text of the augmented classes,
    each made by one operation drawn at random: swapping two words, deleting each word with the configured
    probability, or inserting a word seen in the same class's texts. They only ever join a training split."""
    rng = np.random.default_rng([seed, 2])  # its own stream, apart from batch order and resampling
    words = [text.split() for text in texts]
    counts = np.bincount(labels)
    augmented = {
        label for label in set(labels) if not cfg.minority_only or counts[label] < len(labels) / len(counts)
    }
    if not augmented:
        logger.warning(
            "data.augment: no class has fewer training rows than the mean per class, so minority_only "
            "adds nothing; set data.augment.minority_only: false to augment every class"
        )
    vocabulary = {
        label: sorted({w for ws, its in zip(words, labels) if its == label for w in ws})
        for label in augmented
    }
    added_texts, added_labels = [], []
    for ws, label in zip(words, labels):
        if label not in augmented:
            continue
        for _ in range(cfg.copies):
            added_texts.append(" ".join(_perturb(ws, vocabulary[label], cfg.probability, rng)))
            added_labels.append(label)
    return added_texts, added_labels


def _perturb(
    words: list[str], vocabulary: list[str], probability: float, rng: np.random.Generator
) -> list[str]:
    words = list(words)
    changes = max(1, round(probability * len(words)))
    operation = rng.integers(3) if len(words) > 1 else 2  # a single word can only gain one
    if operation == 0:
        for _ in range(changes):
            i, j = rng.choice(len(words), 2, replace=False)
            words[i], words[j] = words[j], words[i]
    elif operation == 1:
        kept = [w for w in words if rng.random() >= probability]
        words = kept or [words[rng.integers(len(words))]]
    else:
        for _ in range(changes):
            words.insert(int(rng.integers(len(words) + 1)), vocabulary[rng.integers(len(vocabulary))])
    return words


def tokenize(data: LabelledData, tokenizer, max_length: int, doc_stride: int | None = None) -> Encoded:
    """Tokenize every split once, as the data's task reads it; padding happens per batch, to that batch's longest
    row. The task puts the labels on the rows (Task.align)."""
    task = TASKS[data.task]
    pairs = data.pairs or dict.fromkeys(SPLITS)
    tokens = {
        split: task.tokenize(tokenizer, data.texts[split], pairs[split], max_length, doc_stride)
        for split in SPLITS
    }
    labels, layout = {}, {}
    for split in SPLITS:
        labels[split], layout[split] = task.align(tokens[split], data.labels[split], pairs[split])
    return Encoded(
        ids={split: tokens[split].ids for split in SPLITS},
        labels=labels,
        pad_id=tokenizer.pad_token_id,
        label_names=data.label_names,
        pair_separator=tokens["train"].separator,
        layout=layout if any(v is not None for v in layout.values()) else None,
    )


def epoch_rows(labels: list[int], sampler: str, seed: int, epoch: int) -> np.ndarray:
    """The training rows of one epoch (training.sampler): all of them once (`random`); every class drawn up to
    the largest class's count, its own rows first and then random repeats (`oversample`); or a fresh random
    subset of every class, down to the smallest class's count (`undersample`). Only the training split is ever
    resampled. A pure function of (seed, epoch), so a run resumed mid-epoch goes on with the same rows."""
    if sampler == "random":
        return np.arange(len(labels))
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, epoch, 1])  # its own stream, apart from the batch order's
    classes = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    if sampler == "oversample":
        largest = max(len(rows) for rows in classes)
        drawn = [
            np.concatenate([rows, rng.choice(rows, largest - len(rows), replace=True)]) for rows in classes
        ]
    else:
        smallest = min(len(rows) for rows in classes)
        drawn = [rng.choice(rows, smallest, replace=False) for rows in classes]
    return np.sort(np.concatenate(drawn))


def train_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, rows: np.ndarray | None = None
) -> list[list[int]]:
    """Random batches of similar length over `rows` (default: every row once): shuffle, sort within windows of
    SORT_WINDOW_BATCHES batches, shuffle the batches.

    The order is a pure function of (seed, epoch), so a resumed run sees the same batches."""
    rng = np.random.default_rng([seed, epoch])
    rows = np.arange(len(lengths)) if rows is None else np.asarray(rows)
    order = rows[rng.permutation(len(rows))]
    window = batch_size * SORT_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window].tolist(), key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: list[int], max_rows: int, max_tokens: int | None = None) -> list[list[int]]:
    """Longest first, so padding is minimal and a memory problem shows on the first batch. A batch holds at
    most `max_rows` rows and, when given, at most `max_tokens` tokens once padded: the long rows come in
    small batches and the short ones in large batches."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, batch = [], []
    for i in order:
        # the batch's first row is its longest, so the padded size is rows x that length
        if batch and (
            len(batch) == max_rows or (max_tokens and (len(batch) + 1) * lengths[batch[0]] > max_tokens)
        ):
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch] if batch else batches


def collate(
    ids: list[list[int]], batch: list[int], pad_id: int, multiple: int, pair_separator: int | None = None
) -> dict:
    """Pad one batch to its longest row (rounded up to `multiple` for tensor cores); sentence pairs get their
    token type ids."""
    width = max(len(ids[i]) for i in batch)
    width = -(-width // multiple) * multiple
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
        attention_mask[row, : len(ids[i])] = 1
    if pair_separator is None:
        return {"input_ids": input_ids, "attention_mask": attention_mask}
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": segment_ids(input_ids, attention_mask, pair_separator),
    }
