"""Data: read a Hub data set or local files, clean and split them, tokenize once, batch by length."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from config import AugmentConfig, DataConfig
from tasks import PAD_VALUE, TASKS
from utils import ConfigError, stable_hash

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class HubDataset:
    hub_id: str
    text_column: str
    label_column: str


# Known Hub data sets by short name, with their columns; any other Hub id works with explicit columns.
HUB_DATASETS = {
    "ag_news": HubDataset("fancyzhx/ag_news", "text", "label"),
    "imdb": HubDataset("stanfordnlp/imdb", "text", "label"),
    "banking77": HubDataset("PolyAI/banking77", "text", "label"),
    "trec": HubDataset("CogComp/trec", "text", "coarse_label"),
    "emotion": HubDataset("dair-ai/emotion", "text", "label"),
}

# Training batches are formed from windows of this many batches' worth of shuffled rows, sorted by length:
# little padding, while every batch still mixes rows from across the split.
SORT_WINDOW_BATCHES = 50

# File names accepted for each split inside a data folder.
SPLIT_FILE_STEMS = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


def read_conll(path: Path) -> pd.DataFrame:
    """A CoNLL column file (CoNLL-2003 and its kind): one word per line, the word first and its tag last, a blank
    line between sentences, -DOCSTART- lines skipped. As the Hub's layout: columns `tokens` and `ner_tags`."""
    sentences, words, tags = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if fields and fields[0] == "-DOCSTART-":
            continue
        if not fields:
            if words:
                sentences.append({"tokens": words, "ner_tags": tags})
            words, tags = [], []
            continue
        if len(fields) < 2:
            raise ValueError(f"line {number} holds one field ({line.strip()!r}); a CoNLL line is a word, then its tag last")
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        sentences.append({"tokens": words, "ner_tags": tags})
    return pd.DataFrame(sentences, columns=["tokens", "ner_tags"])


def read_json(path: Path) -> pd.DataFrame:
    """A JSON file: SQuAD's own layout (data / paragraphs / qas) as one row per question with the Hub's columns
    (id, title, context, question, answers: {text, answer_start}); anything else as pandas reads it."""
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raw = None
    articles = raw.get("data") if isinstance(raw, dict) else None
    if not (isinstance(articles, list) and articles and isinstance(articles[0], dict) and "paragraphs" in articles[0]):
        return pd.read_json(io.StringIO(text))
    return pd.DataFrame([{"id": qa.get("id"), "title": article.get("title"), "context": paragraph["context"],
                          "question": qa["question"],
                          "answers": {"text": [a["text"] for a in qa.get("answers", [])],
                                      "answer_start": [a["answer_start"] for a in qa.get("answers", [])]}}
                         for article in articles for paragraph in article["paragraphs"] for qa in paragraph["qas"]])


READERS = {
    ".csv": lambda p: pd.read_csv(p, keep_default_na=False, na_values=[""]),
    # TSV has no quoting (GLUE's files, STS-B's among them, hold unpaired quotes inside sentences)
    ".tsv": lambda p: pd.read_csv(p, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""]),
    ".json": read_json,
    ".jsonl": lambda p: pd.read_json(p, lines=True),
    ".parquet": pd.read_parquet,
    ".conll": read_conll,
    ".txt": read_conll,
    **{suffix: read_conll for suffix in (".train", ".testa", ".testb")},  # the original CoNLL-2003 files
}
# Those original files name their split by extension (eng.train, eng.testa, eng.testb).
SPLIT_SUFFIXES = {".train": "train", ".testa": "validation", ".testb": "test"}


def split_of(file: Path) -> str | None:
    """The split a file of a data folder holds, by its name: train.csv, dev.jsonl, train-v1.1.json (SQuAD's),
    eng.testa (CoNLL-2003's); None for a file that is none of them or in no format READERS reads."""
    suffix, stem = file.suffix.lower(), file.stem.lower()
    if suffix in SPLIT_SUFFIXES:
        return SPLIT_SUFFIXES[suffix]
    if suffix not in READERS:
        return None
    return next((split for split, stems in SPLIT_FILE_STEMS.items() for name in stems
                 if stem == name or re.match(rf"{name}[-_.]", stem)), None)


@dataclass
class LabelledData:
    """Texts (and, for sentence pairs, their second texts) and labels per split, with the label names (the
    classes the integer labels stand for; regression: the one predicted column; token classification: the tags).
    With `words`, each text is a sentence's words joined by single spaces and its label one tag id per word."""

    name: str
    texts: dict[str, list[str]]
    labels: dict[str, list]
    label_names: list[str]
    cleaning: dict = dataclasses.field(default_factory=dict)  # what load_data dropped or found, per split
    pairs: dict[str, list[str]] | None = None
    words: bool = False
    spans: bool = False  # each label is a question's answers in its context (the pair): {text, answer_start}

    @property
    def fingerprint(self) -> str:
        return stable_hash([self.texts, self.labels, self.label_names] + ([self.pairs] if self.pairs else []), length=16)

    def sizes(self) -> dict[str, int]:
        return {split: len(self.labels[split]) for split in SPLITS}


def load_data(cfg: DataConfig) -> LabelledData:
    """Read the configured source, carve missing splits from train, and encode the labels as the task does."""
    task = TASKS[cfg.task]
    known = HUB_DATASETS.get(cfg.name) if cfg.name is not None else None
    columns = task.data_columns(cfg, known)
    label_column = columns["label"][1]
    if cfg.name is not None:
        frames, hub_names = _read_hub(known.hub_id if known else cfg.name, label_column)
        name = cfg.name
    else:
        frames, hub_names = _read_local(Path(cfg.path)), None
        name = Path(cfg.path).stem if Path(cfg.path).is_file() else Path(cfg.path).name
    cleaning = {split: {} for split in SPLITS}
    frames = {split: _clean(frame, split, columns, task, cleaning[split]) for split, frame in frames.items()}
    frames = {split: _drop_duplicates(frame, split, cfg.drop_duplicates, cleaning[split]) for split, frame in frames.items()}
    frames = _carve_missing_splits(frames, cfg, task.stratified)
    frames = _remove_leakage(frames, cfg.remove_leakage, cleaning)
    if cfg.train_size is not None and cfg.train_size < len(frames["train"]):
        frames["train"] = _split(frames["train"], len(frames["train"]) - cfg.train_size, cfg.seed, "train_size",
                                 task.stratified)[0]
    label_names, labels = task.encode_labels({split: frame["label"] for split, frame in frames.items()},
                                             cfg.tag_names or hub_names, label_column)
    texts = {split: frame["text"].tolist() for split, frame in frames.items()}
    pairs = {split: frame["pair"].tolist() for split, frame in frames.items()} if "pair" in frames["train"] else None
    return LabelledData(name=name, texts=texts, labels=labels, label_names=label_names, cleaning=cleaning, pairs=pairs,
                        words=task.words, spans=task.spans)


def _read_hub(hub_id: str, label_column: str) -> tuple[dict[str, pd.DataFrame], list[str] | None]:
    import datasets

    try:
        dataset = datasets.load_dataset(hub_id)
    except Exception as err:  # the datasets library raises many types for "not reachable/not found"
        raise ConfigError(
            f"data.name: could not load Hub data set '{hub_id}' ({type(err).__name__}: {str(err)[:200]}). "
            "The Hub may be unreachable from this machine: point data.path at a local file or folder instead"
        ) from None
    frames = {}
    for split in SPLITS:
        source = next((s for s in (split, *SPLIT_FILE_STEMS[split]) if s in dataset), None)
        if source is not None:
            frames[split] = dataset[source].to_pandas()
    if "train" not in frames:
        raise ConfigError(f"data.name: Hub data set '{hub_id}' has no train split (it has {', '.join(dataset)})")
    feature = dataset["train"].features.get(label_column)
    feature = getattr(feature, "feature", feature)  # a list of tags: its items' feature
    label_names = list(feature.names) if hasattr(feature, "names") else None  # a ClassLabel: keep its names
    return frames, label_names


def _read_local(path: Path) -> dict[str, pd.DataFrame]:
    if path.is_dir():
        frames = {}
        for split in SPLIT_FILE_STEMS:
            candidates = [p for p in sorted(path.iterdir()) if p.is_file() and split_of(p) == split]
            if candidates:
                frames[split] = read_file(candidates[0])
        if "train" not in frames:
            raise ConfigError(f"data.path: folder '{path}' has no train file (expected train.csv, train.jsonl, ...)")
        return frames
    if not path.exists():
        raise ConfigError(f"data.path: '{path}' does not exist")
    return {"train": read_file(path)}


def read_file(path: Path, key: str = "data.path") -> pd.DataFrame:
    """One data file as a frame; `key` names the setting it came from in error messages."""
    if not path.is_file():
        raise ConfigError(f"{key}: '{path}' does not exist" + (" as a file" if path.exists() else ""))
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"{key}: cannot read '{path.name}'; allowed formats: {', '.join(READERS)}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{key}: '{path}' is empty (0 bytes)")
    try:
        frame = reader(path)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{key}: '{path}' is not UTF-8 text (byte {err.start}); re-save it as UTF-8") from None
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ConfigError(f"{key}: could not read '{path}': {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if len(frame) == 0:
        raise ConfigError(f"{key}: '{path}' has no rows")
    return frame


def _clean(frame: pd.DataFrame, split: str, columns: dict[str, tuple[str, str | None]], task, found: dict) -> pd.DataFrame:
    """The split as columns text (and pair) and label, without the rows that lack a text or a label. `columns`
    maps each to (its config key, the column in the data). Lists of words and of their tags become texts and
    tags joined by spaces, and a question's answers JSON text (None without any), so that cleaning compares
    them as strings."""
    columns = {name: (key, column) for name, (key, column) in columns.items() if column is not None}
    for key, column in columns.values():
        if column not in frame.columns:
            raise ConfigError(f"{key}: column '{column}' not in the {split} data; columns: {', '.join(map(str, frame.columns))}")
    frame = pd.DataFrame({name: frame[column] for name, (_, column) in columns.items()})
    if task.words:
        frame = _joined_words(frame, split, columns)
    if task.spans:
        frame["label"] = [_answers_text(answers, split, row, columns["label"][0]) for row, answers in enumerate(frame["label"])]
    if frame["label"].dtype.kind == "f" and (frame["label"].dropna() % 1 == 0).all():
        frame["label"] = frame["label"].astype("Int64")  # integer labels read as floats beside blanks
    texts = {name: frame[name].astype("string").str.strip() for name in ("text", "pair") if name in frame}
    has_text = np.logical_and.reduce([text.notna() & (text != "") for text in texts.values()])
    has_label = frame["label"].notna()
    keep = has_text & has_label
    found.update(rows_read=len(frame), empty_text=int((~has_text).sum()), missing_label=int((has_text & ~has_label).sum()))
    if not keep.all():
        logger.warning("%s split: dropped %d rows with empty text or a missing label", split, int((~keep).sum()))
    if not keep.any():
        raise ConfigError(f"data: the {split} split has no rows with both text and a label")
    return pd.DataFrame({**{name: text[keep].astype(str) for name, text in texts.items()},
                         "label": frame["label"][keep]}).reset_index(drop=True)


def _joined_words(frame: pd.DataFrame, split: str, columns: dict) -> pd.DataFrame:
    """Each row's words and tags as two strings joined by single spaces (what cleaning, splitting and reports
    take), after checking that every word has one tag and holds no space."""
    texts, tags = [], []
    for row, (words, row_tags) in enumerate(zip(frame["text"], frame["label"])):
        if not isinstance(words, (list, tuple, np.ndarray)) or not isinstance(row_tags, (list, tuple, np.ndarray)):
            raise ConfigError(f"{columns['text'][0]}, {columns['label'][0]}: row {row} of the {split} data holds "
                              f"{type(words).__name__} and {type(row_tags).__name__}, allowed: a list of words and a list "
                              "of tags (JSON, JSONL, Parquet, or a CoNLL .conll/.txt file)")
        if len(words) != len(row_tags):
            raise ConfigError(f"{columns['label'][0]}: row {row} of the {split} data has {len(words)} words and "
                              f"{len(row_tags)} tags, allowed: one tag per word")
        spaced = next((w for w in words if len(str(w).split()) != 1), None)
        if spaced is not None:
            raise ConfigError(f"{columns['text'][0]}: row {row} of the {split} data holds the word {str(spaced)!r}, "
                              "allowed: words without spaces, not empty")
        texts.append(" ".join(map(str, words)))
        tags.append(" ".join(map(str, row_tags)))
    return pd.DataFrame({"text": texts, "label": tags})


def _answers_text(answers, split: str, row: int, key: str) -> str | None:
    """A question's answers, as the Hub's squad holds them ({text: [...], answer_start: [...]}, lists or arrays),
    as JSON text; None for a question without an answer."""
    if not isinstance(answers, dict) or not {"text", "answer_start"} <= set(answers):
        raise ConfigError(f"{key}: row {row} of the {split} data holds {type(answers).__name__}, allowed: "
                          "{text: [answers], answer_start: [their first characters]} as in SQuAD")
    texts, starts = [str(t) for t in answers["text"]], [int(s) for s in answers["answer_start"]]
    return json.dumps({"text": texts, "answer_start": starts}) if texts and len(texts) == len(starts) else None


def text_key(text: str) -> str:
    """What makes two texts "the same" for duplicates and leakage: case and runs of whitespace do not count."""
    return " ".join(text.casefold().split())


def row_keys(frame: pd.DataFrame) -> pd.Series:
    """Each row's text_key; for sentence pairs, both texts' (the same pair in the same order)."""
    keys = frame["text"].map(text_key)
    return keys + "\x1f" + frame["pair"].map(text_key) if "pair" in frame else keys


# Examples of conflicting duplicates kept in the data report: enough to see the problem, not a dump.
CONFLICT_EXAMPLES = 5


def _drop_duplicates(frame: pd.DataFrame, split: str, drop: bool, found: dict) -> pd.DataFrame:
    """Repeated texts: one copy kept when every copy has the same label; every copy dropped when the copies
    disagree (which label is right cannot be known). Counted either way; with `drop` false, all rows stay."""
    key = row_keys(frame)
    labels_per_text = frame.groupby(key)["label"].nunique()
    conflicting = key.isin(labels_per_text.index[labels_per_text > 1])
    repeated = key.duplicated() & ~conflicting
    examples = [{"text": group["text"].iloc[0], "labels": sorted(map(str, group["label"].unique()))}
                for _, group in frame[conflicting].groupby(key[conflicting], sort=True)][:CONFLICT_EXAMPLES]
    found.update(duplicates_dropped=int(repeated.sum()) if drop else 0, duplicate_rows=int(repeated.sum()),
                 conflicting_texts=int(labels_per_text.gt(1).sum()), conflicting_rows=int(conflicting.sum()),
                 conflicting_rows_dropped=int(conflicting.sum()) if drop else 0, conflicting_examples=examples)
    if conflicting.any():
        logger.warning("%s split: %d text(s) appear with different labels (%d rows)%s, e.g. %r labelled %s",
                       split, found["conflicting_texts"], found["conflicting_rows"], ", dropped" if drop else "",
                       examples[0]["text"], " and ".join(examples[0]["labels"]))
    if not drop:
        return frame
    kept = frame[~(repeated | conflicting)].reset_index(drop=True)
    if kept.empty:
        raise ConfigError(f"data: the {split} split has no rows left once duplicates are dropped")
    return kept


def _remove_leakage(frames: dict[str, pd.DataFrame], remove: bool, found: dict) -> dict[str, pd.DataFrame]:
    """Texts of a later split already in an earlier one (validation in train; test in train or validation):
    counted, and with `remove`, dropped from the later split, so no score is measured on a text trained on
    or chosen by."""
    seen = set(row_keys(frames["train"]))
    for split in ("validation", "test"):
        keys = row_keys(frames[split])
        leaked = keys.isin(seen)
        found[split].update(leaked=int(leaked.sum()), leaked_removed=int(leaked.sum()) if remove else 0)
        if leaked.any():
            logger.warning("%s split: %d text(s) also in an earlier split%s", split, int(leaked.sum()),
                           ", removed" if remove else " (data.remove_leakage: false keeps them)")
        if remove:
            if leaked.all():
                raise ConfigError(f"data: every {split} text is also in an earlier split; nothing is left to "
                                  f"{'choose' if split == 'validation' else 'test'} on")
            frames[split] = frames[split][~leaked].reset_index(drop=True)
        seen |= set(keys)
    return frames


def _carve_missing_splits(frames: dict[str, pd.DataFrame], cfg: DataConfig, stratified: bool) -> dict[str, pd.DataFrame]:
    """Test first, then validation, both from the full training data, so neither depends on train_size."""
    train = frames["train"]
    total = len(train)
    for split, share in (("test", cfg.test_size), ("validation", cfg.validation_size)):
        if split not in frames:
            train, frames[split] = _split(train, round(share * total), cfg.seed, split, stratified)
    frames["train"] = train
    return {split: frames[split] for split in SPLITS}


def _split(frame: pd.DataFrame, holdout: int, seed: int, split: str,
           stratified: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`holdout` rows held out at random; when `stratified`, in each class's proportion where the counts allow."""
    if holdout < 1 or holdout >= len(frame):
        raise ConfigError(f"data: {len(frame)} rows are too few to hold out a {split} split")
    stratify = None
    if stratified:
        counts = frame["label"].value_counts()
        if counts.min() >= 2 and min(holdout, len(frame) - holdout) >= len(counts):
            stratify = frame["label"]
        else:
            logger.warning("%s split carved without stratification: too few rows for every class", split)
    kept, held = train_test_split(frame, test_size=holdout, random_state=seed, stratify=stratify)
    return kept.reset_index(drop=True), held.reset_index(drop=True)


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
    # question answering: per row (a window of a context), its question and each token's characters in the context
    # (None outside it); per question, its context and true answers
    windows: dict[str, list[dict]] | None = None
    examples: dict[str, list[dict]] | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def with_added_train_rows(self, ids: list[list[int]], labels: list[int]) -> Encoded:
        """The same validation and test splits, training on the rows it has and these."""
        return dataclasses.replace(self, ids={**self.ids, "train": self.ids["train"] + ids},
                                   labels={**self.labels, "train": self.labels["train"] + labels},
                                   augmented_rows=self.augmented_rows + len(ids))

    def with_train_rows(self, rows: list[int]) -> Encoded:
        """The same validation and test splits, training on the given rows only."""
        return dataclasses.replace(self, ids={**self.ids, "train": [self.ids["train"][i] for i in rows]},
                                   labels={**self.labels, "train": [self.labels["train"][i] for i in rows]})


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


def augment_texts(texts: list[str], labels: list[int], cfg: AugmentConfig, seed: int) -> tuple[list[str], list[int]]:
    """The added training rows (data.augment): `copies` perturbed versions of each text of the augmented classes,
    each made by one operation drawn at random: swapping two words, deleting each word with the configured
    probability, or inserting a word seen in the same class's texts. They only ever join a training split."""
    rng = np.random.default_rng([seed, 2])  # its own stream, apart from batch order and resampling
    words = [text.split() for text in texts]
    counts = np.bincount(labels)
    augmented = {label for label in set(labels) if not cfg.minority_only or counts[label] < len(labels) / len(counts)}
    if not augmented:
        logger.warning("data.augment: no class has fewer training rows than the mean per class, so minority_only "
                       "adds nothing; set data.augment.minority_only: false to augment every class")
    vocabulary = {label: sorted({w for ws, l in zip(words, labels) if l == label for w in ws}) for label in augmented}
    added_texts, added_labels = [], []
    for ws, label in zip(words, labels):
        if label not in augmented:
            continue
        for _ in range(cfg.copies):
            added_texts.append(" ".join(_perturb(ws, vocabulary[label], cfg.probability, rng)))
            added_labels.append(label)
    return added_texts, added_labels


def _perturb(words: list[str], vocabulary: list[str], probability: float, rng: np.random.Generator) -> list[str]:
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


def token_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Texts as token ids, truncated at max_length and unpadded: the same for training and for predict."""
    return tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False,
                     return_token_type_ids=False)["input_ids"]


def pair_separator(tokenizer, ids: list[list[int]], types: list[list[int]]) -> int | None:
    """For a model that takes token type ids: the separator token, after whose first occurrence the second text's
    type starts (segment_ids), checked against the token type ids the tokenizer gave with these pairs' `ids`.
    None for a model without token types (RoBERTa and DistilBERT tell the texts apart by separators alone)."""
    if "token_type_ids" not in tokenizer.model_input_names:
        return None
    separator = tokenizer.sep_token_id
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(x) for x in ids], batch_first=True, padding_value=-1)
    types = torch.nn.utils.rnn.pad_sequence([torch.tensor(x) for x in types], batch_first=True)
    if separator is None or not torch.equal(segment_ids(ids, ids >= 0, separator), types):
        raise ConfigError("data.text_pair_column: the tokenizer of this model marks the two texts of a pair in a way "
                          "bertlab does not know (token type ids other than 0 up to the first separator, 1 after it)")
    return separator


def segment_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, separator: int) -> torch.Tensor:
    """Token type ids of padded pairs: 0 up to and including the first separator, 1 after it, 0 on padding."""
    is_separator = (input_ids == separator).long()
    after_first = (is_separator.cumsum(1) - is_separator) > 0
    return (after_first & attention_mask.bool()).long()


def word_token_ids(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """Sentences of space-separated words as token ids (each word split into sub-words on its own), with the
    position of each word's first sub-word; words that max_length cuts off have none."""
    encoded = tokenizer([text.split(" ") for text in texts], is_split_into_words=True, truncation=True,
                        max_length=max_length, return_attention_mask=False, return_token_type_ids=False)
    firsts = []
    for row in range(len(texts)):
        positions: dict[int, int] = {}
        for position, word in enumerate(encoded.word_ids(row)):
            if word is not None:
                positions.setdefault(word, position)
        firsts.append(list(positions.values()))
    return encoded["input_ids"], firsts


def tags_on_tokens(tags: list[int], firsts: list[int], length: int) -> list[int]:
    """Each word's tag on its first sub-word; PAD_VALUE (nothing to learn or score) on its other sub-words and on
    special tokens."""
    row = [PAD_VALUE] * length
    for word, position in enumerate(firsts):
        row[position] = tags[word]
    return row


@dataclass
class Tokenized:
    """One split's texts as the model reads them, with what leads from its tokens back to the texts."""

    ids: list[list[int]]
    separator: int | None = None  # pairs, for a model with token types (pair_separator)
    firsts: list[list[int]] | None = None  # words: each word's first sub-word (word_token_ids)
    windows: list[dict] | None = None  # a question's context in windows (context_windows)


def tokenize_texts(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, doc_stride: int,
                   words: bool = False, spans: bool = False) -> Tokenized:
    """Texts as the task reads them: single texts; pairs, the longer cut first; sentences of words (`words`); or
    questions with their contexts in windows (`spans`). The same for training and for predict."""
    if words:
        ids, firsts = word_token_ids(tokenizer, texts, max_length)
        return Tokenized(ids, firsts=firsts)
    if spans:
        return context_windows(tokenizer, texts, pairs, max_length, doc_stride)
    if pairs is None:
        return Tokenized(token_ids(tokenizer, texts, max_length))
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length, return_attention_mask=False,
                        return_token_type_ids=True)
    return Tokenized(encoded["input_ids"], pair_separator(tokenizer, encoded["input_ids"], encoded["token_type_ids"]))


def context_windows(tokenizer, questions: list[str], contexts: list[str], max_length: int, stride: int) -> Tokenized:
    """Each question with its context, in as many windows of max_length tokens as the context needs, consecutive
    windows sharing `stride` tokens; per window, its question (`example`) and each token's characters in the
    context (`offsets`: None on the question and special tokens)."""
    try:
        encoded = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True, return_attention_mask=False,
                            return_token_type_ids=True)
    except Exception as err:  # the tokenizers library says so when a question leaves no room for the context
        raise ConfigError(f"data.doc_stride: a question and {stride} shared tokens do not fit in model.max_length "
                          f"{max_length} ({str(err).splitlines()[0][:120]}); lower data.doc_stride or raise "
                          "model.max_length") from None
    windows = []
    for row, example in enumerate(encoded["overflow_to_sample_mapping"]):
        in_context = [part == 1 for part in encoded.sequence_ids(row)]
        windows.append({"example": example, "offsets": [tuple(o) if inside else None
                                                         for o, inside in zip(encoded["offset_mapping"][row], in_context)]})
    ids = encoded["input_ids"]
    return Tokenized(ids, pair_separator(tokenizer, ids, encoded["token_type_ids"]), windows=windows)


def answer_tokens(offsets: list, start: int, end: int) -> list[int]:
    """The first and last token of the answer (characters start to end) in one window, or [0, 0] (the first
    token: the window does not hold all of the answer) as models trained on SQuAD mark it."""
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > start or offsets[inside[-1]][1] < end:
        return [0, 0]
    return [next(i for i in inside if offsets[i][1] > start), next(i for i in reversed(inside) if offsets[i][0] < end)]


def tokenize(data: LabelledData, tokenizer, max_length: int, doc_stride: int = 128) -> Encoded:
    """Tokenize every split once; padding happens per batch, to that batch's longest row. Sentences of words get
    their tags on the tokens (tags_on_tokens); questions become windows of their context, labelled with the
    first answer's tokens (answer_tokens)."""
    pairs = data.pairs or dict.fromkeys(SPLITS)
    tokens = {split: tokenize_texts(tokenizer, data.texts[split], pairs[split], max_length, doc_stride, data.words,
                                    data.spans) for split in SPLITS}
    labels, windows, examples = data.labels, None, None
    if data.words:
        labels = {split: [tags_on_tokens(tags, first, len(row)) for tags, first, row in
                          zip(data.labels[split], tokens[split].firsts, tokens[split].ids)] for split in SPLITS}
    if data.spans:
        windows = {split: tokens[split].windows for split in SPLITS}
        labels = {split: [first_answer_tokens(window, data.labels[split][window["example"]]) for window in windows[split]]
                  for split in SPLITS}
        examples = {split: [{"context": context, "answers": answers["text"]}
                            for context, answers in zip(data.pairs[split], data.labels[split])] for split in SPLITS}
    return Encoded(ids={split: tokens[split].ids for split in SPLITS}, labels=labels, pad_id=tokenizer.pad_token_id,
                   label_names=data.label_names, pair_separator=tokens["train"].separator, windows=windows,
                   examples=examples)


def first_answer_tokens(window: dict, answers: dict) -> list[int]:
    """answer_tokens of a question's first answer in one of its windows."""
    start = answers["answer_start"][0]
    return answer_tokens(window["offsets"], start, start + len(answers["text"][0]))


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
        drawn = [np.concatenate([rows, rng.choice(rows, largest - len(rows), replace=True)]) for rows in classes]
    else:
        smallest = min(len(rows) for rows in classes)
        drawn = [rng.choice(rows, smallest, replace=False) for rows in classes]
    return np.sort(np.concatenate(drawn))


def train_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  rows: np.ndarray | None = None) -> list[list[int]]:
    """Random batches of similar length over `rows` (default: every row once): shuffle, sort within windows of
    SORT_WINDOW_BATCHES batches, shuffle the batches.

    The order is a pure function of (seed, epoch), so a resumed run sees the same batches."""
    rng = np.random.default_rng([seed, epoch])
    rows = np.arange(len(lengths)) if rows is None else np.asarray(rows)
    order = rows[rng.permutation(len(rows))]
    window = batch_size * SORT_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window].tolist(), key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: list[int], max_rows: int, max_tokens: int | None = None) -> list[list[int]]:
    """Longest first, so padding is minimal and a memory problem shows on the first batch. A batch holds at
    most `max_rows` rows and, when given, at most `max_tokens` tokens once padded: the long rows come in
    small batches and the short ones in large batches."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, batch = [], []
    for i in order:
        # the batch's first row is its longest, so the padded size is rows x that length
        if batch and (len(batch) == max_rows or (max_tokens and (len(batch) + 1) * lengths[batch[0]] > max_tokens)):
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch] if batch else batches


def collate(ids: list[list[int]], batch: list[int], pad_id: int, multiple: int, pair_separator: int | None = None) -> dict:
    """Pad one batch to its longest row (rounded up to `multiple` for tensor cores); sentence pairs get their
    token type ids."""
    width = max(len(ids[i]) for i in batch)
    width = -(-width // multiple) * multiple
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
        attention_mask[row, :len(ids[i])] = 1
    if pair_separator is None:
        return {"input_ids": input_ids, "attention_mask": attention_mask}
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "token_type_ids": segment_ids(input_ids, attention_mask, pair_separator)}
