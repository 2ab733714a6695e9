"""Local data files as frames: CSV, TSV, JSON (SQuAD's own layout too), JSONL, Parquet and CoNLL column files;
a folder's files by split name; every reading problem as one line naming the file."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pandas as pd

from utils import ConfigError

SPLITS = ("train", "validation", "test")

# File names accepted for each split inside a data folder.
SPLIT_FILE_STEMS = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}


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
            raise ValueError(
                f"line {number} holds one field ({line.strip()!r}); a CoNLL line is a word, then its tag last"
            )
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
    if not (
        isinstance(articles, list)
        and articles
        and isinstance(articles[0], dict)
        and "paragraphs" in articles[0]
    ):
        return pd.read_json(io.StringIO(text))
    rows = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(squad_part(article, "paragraphs", f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = squad_part(paragraph, "context", where)
            for q, qa in enumerate(squad_part(paragraph, "qas", where)):
                # none: a question without an answer
                answers = qa.get("answers", []) if isinstance(qa, dict) else []
                if not all(
                    isinstance(answer, dict) and {"text", "answer_start"} <= set(answer) for answer in answers
                ):
                    raise ValueError(
                        f"{where}.qas[{q}].answers holds an answer without text and answer_start"
                    )
                rows.append(
                    {
                        "id": qa.get("id") if isinstance(qa, dict) else None,
                        "title": article.get("title"),
                        "context": context,
                        "question": squad_part(qa, "question", f"{where}.qas[{q}]"),
                        "answers": {
                            "text": [answer["text"] for answer in answers],
                            "answer_start": [answer["answer_start"] for answer in answers],
                        },
                    }
                )
    return pd.DataFrame(rows)


def squad_part(node, key: str, where: str):
    """One part of a SQuAD file (data / paragraphs / context, qas / question), or a one-line error naming where it
    is missing."""
    if not isinstance(node, dict) or key not in node:
        raise ValueError(
            f"{where} has no '{key}' (SQuAD's layout: data / paragraphs / context and qas / question, "
            "answers)"
        )
    return node[key]


def read_delimited(path: Path, sep: str = ",", quoting: int = csv.QUOTE_MINIMAL) -> pd.DataFrame:
    """A CSV or TSV file, refusing a header that names a column twice (pandas would rename the second and a
    setting naming it would silently read the first)."""
    with path.open(encoding="utf-8", newline="") as file:
        header = next(csv.reader(file, delimiter=sep, quoting=quoting), [])
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise ValueError(
            f"its header names the column {twice[0]!r} {header.count(twice[0])} times; name each column once"
        )
    return pd.read_csv(path, sep=sep, quoting=quoting, keep_default_na=False, na_values=[""])


READERS = {
    ".csv": read_delimited,
    # TSV has no quoting (GLUE's files, STS-B's among them, hold unpaired quotes inside sentences)
    ".tsv": lambda p: read_delimited(p, sep="\t", quoting=csv.QUOTE_NONE),
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
    return next(
        (
            split
            for split, stems in SPLIT_FILE_STEMS.items()
            for name in stems
            if stem == name or re.match(rf"{name}[-_.]", stem)
        ),
        None,
    )


def read_local(path: Path) -> dict[str, pd.DataFrame]:
    if path.is_dir():
        frames = {}
        for split in SPLIT_FILE_STEMS:
            candidates = [p for p in sorted(path.iterdir()) if p.is_file() and split_of(p) == split]
            if candidates:
                frames[split] = read_file(candidates[0])
        if "train" not in frames:
            raise ConfigError(
                f"data.path: folder '{path}' has no train file (expected train.csv, train.jsonl, ...)"
            )
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
        raise ConfigError(
            f"{key}: '{path}' is not UTF-8 text (byte {err.start}); re-save it as UTF-8"
        ) from None
    except (ValueError, OSError, csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ConfigError(
            f"{key}: could not read '{path}': {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    if len(frame) == 0:
        raise ConfigError(f"{key}: '{path}' has no rows")
    return frame
