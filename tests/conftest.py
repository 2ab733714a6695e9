"""Shared fixtures: a tiny random BERT with its own WordPiece vocabulary, and small labelled files,
all written into temporary folders so no test touches the network."""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Each class has its own words, so even a tiny model learns the task in a few steps.
CLASS_WORDS = {
    "refund": ["refund", "money", "charge", "invoice", "paid"],
    "delivery": ["parcel", "courier", "tracking", "arrive", "box"],
    "login": ["password", "login", "account", "email", "locked"],
}
SHARED_WORDS = ["my", "the", "is", "where", "please", "help", "why", "not", "a", "i"]


def labelled_rows(per_class: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for label, words in CLASS_WORDS.items():
        for _ in range(per_class):
            tokens = rng.choices(words, k=rng.randint(2, 4)) + rng.choices(SHARED_WORDS, k=rng.randint(1, 6))
            rng.shuffle(tokens)
            rows.append({"text": " ".join(tokens), "label": label})
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {w for words in CLASS_WORDS.values() for w in words} | set(SHARED_WORDS)
    )
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # `vocab`: transformers 5 ignores vocab_file
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    # the same "pre-trained" weights in every session, so no test depends on a lucky draw
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture
def csv_path(tmp_path) -> Path:
    path = tmp_path / "tickets.csv"
    pd.DataFrame(labelled_rows(per_class=30)).to_csv(path, index=False)
    return path


def small_config(folder: Path, model_dir: Path, data_path: Path, **sections) -> Path:
    """A small, fast config written into `folder` (outputs go to folder/outputs); keyword sections override its
    values."""
    config = {
        "model": {"name": str(model_dir), "max_length": 16},
        "data": {"path": str(data_path), "validation_size": 0.2, "test_size": 0.2},
        "training": {"batch_size": 8, "num_epochs": 2, "eval_batch_size": 16},
        "strategies": {"prompt_tuning": {"num_virtual_tokens": 4}},
        "output": {"dir": str(folder / "outputs")},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def write_config(tmp_path, tiny_model_dir, csv_path):
    """Write a small, fast config into tmp_path; keyword sections override its values."""
    return lambda **sections: small_config(tmp_path, tiny_model_dir, csv_path, **sections)


@pytest.fixture
def main_here(capsys, caplog):
    """main.main in this process, answered as subprocess.run answers for main.py: the exit status, what it
    printed, and its log lines with what it wrote to stderr (for tests where the process is not the point)."""
    import logging
    from types import SimpleNamespace

    import main

    def run(*args):
        caplog.set_level(logging.INFO)
        caplog.clear()
        capsys.readouterr()
        try:
            status = main.main([str(a) for a in args])
        except SystemExit as stop:  # argparse's refusals
            status = stop.code
        out = capsys.readouterr()
        return SimpleNamespace(returncode=status, stdout=out.out, stderr=out.err + caplog.text)

    return run


def settings_at(cfg, strategy: str, learning_rate: float | None = None):
    """A strategy's settings for one run of `cfg`, at `learning_rate` (None: the rate the strategy would use)."""
    from config import strategy_settings

    settings = strategy_settings(cfg, strategy)
    return settings if learning_rate is None else dataclasses.replace(settings, learning_rate=learning_rate)


def prepared(config_path: Path, overrides: list[str] = ()):
    """The config, its data and the tokenized splits, as main.py builds them."""
    from data import load_data, tokenize
    from model import load_tokenizer
    from config import load_config

    cfg = load_config(config_path, list(overrides))
    data = load_data(cfg.data)
    return cfg, data, tokenize(data, load_tokenizer(cfg), cfg.model.max_length)
