"""Token classification: one tag per word (named entities in IOB tags: B-PER, I-PER, O, ...), each word's tag
on its first sub-word, scored on whole entities by seqeval (CoNLL's rules)."""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pandas as pd
import peft
import torch
import torch.nn.functional as F
from seqeval.metrics import accuracy_score as tag_accuracy
from seqeval.metrics import classification_report as entity_report
from seqeval.metrics.sequence_labeling import get_entities
from transformers import AutoModelForTokenClassification

from tasks.base import (
    own_head_setting,
    PAD_VALUE,
    Metric,
    Task,
    Tokenized,
    class_settings,
    label_maps,
    settings_away_from_defaults,
)
from utils import ConfigError

# A tag of the IOB scheme (and IOBES's E- and S-): outside any entity, or a position in one of a type.
IOB_TAG = re.compile(r"^(O|[BIES]-\S+)$")


def tag_sequences(truth, values, label_names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Per sentence, the true and the predicted tag of each word the model saw: the tokens whose truth is not
    PAD_VALUE (a word's first sub-word), as tag names."""
    gold, predicted = [], []
    for row_truth, row_values in zip(truth, values):
        row_truth = np.asarray(row_truth)
        scored = np.flatnonzero(row_truth != PAD_VALUE)
        gold.append([label_names[t] for t in row_truth[scored]])
        predicted.append([label_names[v] for v in np.asarray(row_values)[scored]])
    return gold, predicted


def entity_counts(gold: list[str], predicted: list[str]) -> tuple[int, int, int]:
    """Entities of one sentence (conlleval's rules, as seqeval's default): found exactly, predicted, true."""
    true, found = set(get_entities(gold)), set(get_entities(predicted))
    return len(true & found), len(found), len(true)


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (micro, over all entities) and the share of words tagged right."""
    found, guessed, true = (
        np.sum([entity_counts(g, p) for g, p in zip(gold, predicted)], axis=0) if gold else (0, 0, 0)
    )
    words = sum(map(len, gold))
    return {
        "f1": 2 * found / (guessed + true) if guessed + true else 0.0,
        "precision": found / guessed if guessed else 0.0,
        "recall": found / true if true else 0.0,
        "accuracy": tag_accuracy(gold, predicted) if words else 0.0,
    }


def of_tags(name: str) -> Callable[[list, np.ndarray, list[str]], float]:
    return lambda truth, values, label_names: entity_scores(*tag_sequences(truth, values, label_names))[name]


class TokenClassification(Task):
    """One tag per word (named entities in IOB tags: B-PER, I-PER, O, ...), scored on whole entities."""

    name = "token_classification"
    model_class = AutoModelForTokenClassification
    peft_task_type = peft.TaskType.TOKEN_CLS
    loss_label = "cross-entropy summed over the words"
    baseline_label = "no-entity"
    metrics = (
        Metric("f1", "entity F1", of_tags("f1")),
        Metric("precision", "entity precision", of_tags("precision")),
        Metric("recall", "entity recall", of_tags("recall")),
        Metric("accuracy", "word accuracy", of_tags("accuracy")),
    )
    default_metric = "val_f1"
    main_metric = "f1"
    compared_metrics = ("f1", "precision", "recall", "accuracy")
    plots = ("per_class_f1",)
    pipeline = "token-classification"
    labels_on_positions = "tags"
    pooled_head = False

    def data_columns(self, cfg, known):
        return {
            "text": ("data.tokens_column", cfg.tokens_column or "tokens"),
            "label": ("data.tags_column", cfg.tags_column or "ner_tags"),
        }

    def prepare(self, frame, split, columns, found, data):
        """Each row's words and tags as two strings joined by single spaces (what cleaning, splitting and reports
        take), after checking that every word has one tag and holds no space."""
        texts, tags = [], []
        for row, (words, row_tags) in enumerate(zip(frame["text"], frame["label"])):
            if not isinstance(words, (list, tuple, np.ndarray)) or not isinstance(
                row_tags, (list, tuple, np.ndarray)
            ):
                raise ConfigError(
                    f"{columns['text'][0]}, {columns['label'][0]}: row {row} of the {split} data holds "
                    f"{type(words).__name__} and {type(row_tags).__name__}, allowed: a list of words and "
                    "a list of tags (JSON, JSONL, Parquet, or a CoNLL .conll/.txt file)"
                )
            if len(words) != len(row_tags):
                raise ConfigError(
                    f"{columns['label'][0]}: row {row} of the {split} data has {len(words)} words and "
                    f"{len(row_tags)} tags, allowed: one tag per word"
                )
            spaced = next((w for w in words if len(str(w).split()) != 1), None)
            if spaced is not None:
                raise ConfigError(
                    f"{columns['text'][0]}: row {row} of the {split} data holds the word {str(spaced)!r}, "
                    "allowed: words without spaces, not empty"
                )
            texts.append(" ".join(map(str, words)))
            tags.append(" ".join(map(str, row_tags)))
        return pd.DataFrame({"text": texts, "label": tags})

    def tokenize(self, tokenizer, texts, pairs, max_length, doc_stride):
        """Sentences of space-separated words as token ids (each word split into sub-words on its own), with the
        position of each word's first sub-word; words that max_length cuts off have none."""
        encoded = tokenizer(
            [text.split(" ") for text in texts],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        firsts = []
        for row in range(len(texts)):
            positions: dict[int, int] = {}
            for position, word in enumerate(encoded.word_ids(row)):
                if word is not None:
                    positions.setdefault(word, position)
            firsts.append(list(positions.values()))
        return Tokenized(encoded["input_ids"], firsts=firsts)

    def align(self, tokens, labels, pairs):
        """Each word's tag on its first sub-word; PAD_VALUE (nothing to learn or score) on its other sub-words and
        on special tokens. The layout: each row's first sub-words, which predict reads the words' tags from."""
        if labels is None:
            return None, tokens.firsts
        rows = []
        for tags, firsts, ids in zip(labels, tokens.firsts, tokens.ids):
            row = [PAD_VALUE] * len(ids)
            for word, position in enumerate(firsts):
                row[position] = tags[word]
            rows.append(row)
        return rows, tokens.firsts

    def text_for_prediction(self, text):
        return " ".join(text.split())  # words are what whitespace separates

    def values_per_text(self, encoded, split, values):
        # a word's value is its first sub-word's
        return [np.asarray(row)[firsts] for row, firsts in zip(values, encoded.layout[split])]

    def config_problems(self, cfg):
        text_settings = [("data.text_pair_column", cfg.data.text_pair_column, None), own_head_setting(cfg)]
        return settings_away_from_defaults(
            text_settings + class_settings(cfg), "token_classification", "it applies to whole texts"
        )

    def describe_labels(self, label_names):
        return f"{len(label_names)} tags"

    def card_usage(self, pairs):
        return [
            'tag = pipeline("token-classification", model=FOLDER, aggregation_strategy="simple")',
            'tag("Anna Schmidt ordered from the Leeds store")  # entities with their words and character offsets',
        ]

    def card_limit(self, label_names, distribution):
        return f"It knows only these tags: {', '.join(label_names)}. Every word gets one of them."

    def encode_labels(self, labels, hub_names, column):
        rows = {split: [tags.split(" ") for tags in values] for split, values in labels.items()}
        seen = [tag for row in rows["train"] for tag in row]
        if all(tag.lstrip("-").isdigit() for row in rows.values() for tags in row for tag in tags):
            if hub_names is None:
                raise ConfigError(
                    f"data.tag_names: the tags in '{column}' are integers; name them in order with "
                    "data.tag_names (e.g. [O, B-PER, I-PER, ...]), or give the tags as strings"
                )
            names = list(hub_names)
            to_id = {str(i): i for i in range(len(names))}
        else:  # "O" first, then by entity type, B before I
            outside = sorted({tag for tag in seen if not IOB_TAG.match(tag)})
            if outside:
                raise ConfigError(
                    f"{column}: the train data has tags outside the IOB scheme: {', '.join(outside[:10])}; "
                    "allowed: O, or B-, I- (E-, S-) followed by the entity type, e.g. B-PER"
                )
            names = sorted(set(seen), key=lambda tag: (tag != "O", tag[2:], tag))
            to_id = {tag: i for i, tag in enumerate(names)}
        encoded = {}
        for split, tags in rows.items():
            unknown = sorted({tag for row in tags for tag in row if tag not in to_id})
            if unknown:
                raise ConfigError(
                    f"data: the {split} split has tags that {'data.tag_names does not name' if hub_names else 'training never saw'}: "
                    f"{', '.join(unknown[:10])}"
                )
            encoded[split] = [[to_id[tag] for tag in row] for row in tags]
        return names, encoded

    def model_kwargs(self, label_names):
        return label_maps(label_names)

    def collate_labels(self, labels, width):
        return torch.tensor([row + [PAD_VALUE] * (width - len(row)) for row in labels], dtype=torch.long)

    def loss(self, outputs, labels):
        return F.cross_entropy(
            outputs.logits.float().flatten(0, 1), labels.flatten(), ignore_index=PAD_VALUE, reduction="sum"
        )

    def predict(self, values):
        # each row's tokens, without the padding of its batch, as a list (rows differ in length)
        rows = np.empty(len(values), dtype=object)
        for i, row in enumerate(np.asarray(values)):
            rows[i] = row[row != PAD_VALUE].tolist()
        return rows

    def label_distribution(self, labels, label_names):
        counts = np.bincount(
            [tag for row in labels for tag in row if tag != PAD_VALUE], minlength=len(label_names)
        )
        return {name: int(n) for name, n in zip(label_names, counts)}

    def prediction_values(self, outputs, attention_mask):
        return outputs.logits.argmax(-1).masked_fill(attention_mask == 0, PAD_VALUE)

    def decode(self, values, label_names, top_k, text):
        # `values`: one tag id per word the model saw (the words max_length cut off are left outside)
        words = text.split()
        tags = [label_names[v] for v in values] + ["O"] * (len(words) - len(values))
        entities = [f"{kind}: {' '.join(words[start : end + 1])}" for kind, start, end in get_entities(tags)]
        return {"entities": "; ".join(entities), "tags": " ".join(tags)}

    def format_prediction(self, row):
        return row["entities"] or "(no entities)"

    def baseline(self, train_labels, test_labels, label_names):
        # every word tagged with the commonest training tag (O): no entity at all
        common = int(
            np.bincount([t for row in train_labels for t in row], minlength=len(label_names)).argmax()
        )
        gold = [[label_names[t] for t in row] for row in test_labels]
        return {
            "label": label_names[common],
            **entity_scores(gold, [[label_names[common]] * len(row) for row in gold]),
        }

    def scores(self, truth, values, label_names):
        return entity_scores(*tag_sequences(truth, values, label_names))

    def test_report(self, truth, values, label_names):
        gold, predicted = tag_sequences(truth, values, label_names)
        report = entity_report(gold, predicted, output_dict=True, zero_division=0)
        types = sorted({kind for kind, _, _ in get_entities([tag for row in gold for tag in row])})
        return {
            **entity_scores(gold, predicted),
            "per_class": {
                kind: {
                    "precision": float(report[kind]["precision"]),
                    "recall": float(report[kind]["recall"]),
                    "f1": float(report[kind]["f1-score"]),
                    "support": int(report[kind]["support"]),
                }
                for kind in types
            },
        }

    def example_statistics(self, truth, predictions, label_names):
        # per sentence: entities found exactly, predicted, true; words tagged right, words
        rows = []
        for gold, predicted in zip(*tag_sequences(truth, predictions, label_names)):
            rows.append(
                [*entity_counts(gold, predicted), sum(g == p for g, p in zip(gold, predicted)), len(gold)]
            )
        return np.asarray(rows, dtype=np.float64)

    def metrics_from_sums(self, sums, counts, label_names):
        found, guessed, true, right, words = sums.T
        ratio = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b > 0)
        return {
            "f1": ratio(2 * found, guessed + true),
            "precision": ratio(found, guessed),
            "recall": ratio(found, true),
            "accuracy": ratio(right, words),
        }
