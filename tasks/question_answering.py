"""Extractive question answering (SQuAD): the answer is a span of the context, read in windows of the context
when it is longer than the model reads, and scored per question by exact match and F1."""

from __future__ import annotations

import json
import logging
import re
import string
from collections import Counter

import numpy as np
import peft
import torch
import torch.nn.functional as F
from transformers import AutoModelForQuestionAnswering

from tasks.base import (
    own_head_setting,
    PAD_VALUE,
    Metric,
    Task,
    Tokenized,
    class_settings,
    pair_separator,
    settings_away_from_defaults,
)
from utils import ConfigError

logger = logging.getLogger(__name__)


def normalized_answer(text: str) -> str:
    """SQuAD's normalisation (its v1.1 evaluation script): lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def answer_scores(predicted: str, answers: list[str]) -> tuple[float, float]:
    """Exact match and F1 of a predicted answer against the best of the true ones, as SQuAD v1.1 scores them."""

    def f1(gold: str) -> float:
        mine, theirs = normalized_answer(predicted).split(), normalized_answer(gold).split()
        same = sum((Counter(mine) & Counter(theirs)).values())
        return 0.0 if same == 0 else 2 * same / (len(mine) + len(theirs))

    return (
        max(float(normalized_answer(predicted) == normalized_answer(gold)) for gold in answers),
        max(f1(gold) for gold in answers),
    )


def question_scores(truth: list[list[str]], predicted) -> np.ndarray:
    """Exact match and F1 (answer_scores) of each question: questions x 2."""
    return np.array(
        [answer_scores(p, answers) for p, answers in zip(predicted, truth)], dtype=np.float64
    ).reshape(-1, 2)


def mean_answer_scores(truth: list[list[str]], predicted) -> dict[str, float]:
    """F1 and exact match averaged over the questions."""
    scores = question_scores(truth, predicted)
    return {"f1": float(scores[:, 1].mean()), "exact_match": float(scores[:, 0].mean())}


# Span decoding as in the SQuAD literature and Hugging Face's examples: the best starts and ends considered, and
# the longest answer in tokens.
N_BEST = 20
MAX_ANSWER_TOKENS = 30


def best_span(logits: np.ndarray, offsets: list) -> tuple[float, int, int] | None:
    """The highest-scoring (start + end logit) span of one window that lies in the context (`offsets` holds None
    for question and special tokens), ends at or after its start and is at most MAX_ANSWER_TOKENS long, as
    (score, first character, end character); None when the window has no such span."""
    length = len(offsets)
    starts, ends = logits[:length, 0], logits[:length, 1]
    best = None
    for start in np.argsort(-starts)[:N_BEST]:
        for end in np.argsort(-ends)[:N_BEST]:
            if offsets[start] is None or offsets[end] is None or not start <= end < start + MAX_ANSWER_TOKENS:
                continue
            score = float(starts[start] + ends[end])
            if best is None or score > best[0]:
                best = (score, offsets[start][0], offsets[end][1])
    return best


class QuestionAnswering(Task):
    """Extractive question answering (SQuAD): the answer is a span of the context, found in windows of the
    context when it is longer than the model reads, and scored per question by exact match and F1."""

    name = "question_answering"
    model_class = AutoModelForQuestionAnswering
    peft_task_type = peft.TaskType.QUESTION_ANS
    loss_label = "cross-entropy of the answer's start and end"
    baseline_label = "no-answer"
    metrics = (
        Metric("f1", "F1", lambda t, v, _: mean_answer_scores(t, v)["f1"]),
        Metric("exact_match", "exact match", lambda t, v, _: mean_answer_scores(t, v)["exact_match"]),
    )
    default_metric = "val_f1"
    main_metric = "f1"
    compared_metrics = ("f1", "exact_match")
    pipeline = "question-answering"
    labels_on_positions = "answer's start and end"
    pooled_head = False
    beyond_max_length = "read in further windows"
    pair_request = "this run answers questions from a context: give each question (--text) its context"

    def prepare(self, frame, split, columns, found, data):
        """A question's answers checked against its context (located_answers: moved to where their text stands
        nearby, or dropped), counted in `found` with a warning naming up to five questions, then as JSON text,
        so that cleaning compares them as strings (None without any)."""
        key = columns["label"][0]
        ids = (
            frame["id"].astype(str).tolist() if "id" in frame else [f"row {row}" for row in range(len(frame))]
        )
        labels, moved, dropped = [], [], []
        for row, (answers, context) in enumerate(zip(frame["label"], frame["pair"])):
            located, row_moved, row_dropped = located_answers(answers, context, split, row, key)
            labels.append(json.dumps(located) if located else None)
            moved += [ids[row]] * row_moved
            dropped += [ids[row]] * row_dropped
        found.update(answers_moved=len(moved), answers_dropped=len(dropped))
        for questions, what in (
            (
                moved,
                "did not stand at their answer_start and were moved to where their text "
                f"stands within {OFFSET_SLACK} characters",
            ),
            (
                dropped,
                f"were not in their context within {OFFSET_SLACK} characters of their answer_start: dropped",
            ),
        ):
            if questions:
                logger.warning(
                    "%s split: %d answer(s) %s, e.g. question(s) %s",
                    split,
                    len(questions),
                    what,
                    ", ".join(dict.fromkeys(questions[:5])),
                )
        return frame.assign(label=labels)

    def tokenize(self, tokenizer, texts, pairs, max_length, doc_stride):
        return context_windows(tokenizer, texts, pairs, max_length, doc_stride or max_length // 3)

    def align(self, tokens, labels, pairs):
        """Each window labelled with its question's first answer's tokens (answer_tokens); the layout: the windows,
        and per question its context and true answers."""
        questions = [{"context": context} for context in pairs]
        if labels is None:
            return None, {"windows": tokens.windows, "questions": questions}
        for question, answers in zip(questions, labels):
            question["answers"] = answers["text"]
        rows = []
        for window in tokens.windows:
            answers = labels[window["example"]]
            start = answers["answer_start"][0]
            rows.append(answer_tokens(window["offsets"], start, start + len(answers["text"][0])))
        return rows, {"windows": tokens.windows, "questions": questions}

    def example_count(self, encoded, split):
        return len(encoded.layout[split]["questions"])

    def fold_texts(self, texts, pairs):
        return pairs  # a context's questions share a fold: its answers are in it

    def data_columns(self, cfg, known):
        return {
            "text": ("data.text_column", cfg.text_column or "question"),
            "pair": ("data.text_pair_column", cfg.text_pair_column or "context"),
            "label": ("data.label_column", cfg.label_column or "answers"),
            "id": (None, "id"),
        }  # read where there, to name questions in warnings

    def config_problems(self, cfg):
        settings = [own_head_setting(cfg)] + class_settings(cfg)
        problems = settings_away_from_defaults(settings, "question_answering", "it applies to whole texts")
        stride, length = cfg.data.doc_stride, cfg.model.max_length
        if stride is not None and isinstance(length, int) and not 1 <= stride < length:
            problems.append(
                f"data.doc_stride: got {cfg.data.doc_stride}, allowed: 1 <= stride < model.max_length "
                f"({cfg.model.max_length})"
            )
        return problems

    def describe_labels(self, label_names):
        return "answer spans"

    def card_usage(self, pairs):
        return [
            'answer = pipeline("question-answering", model=FOLDER)',
            'answer(question="your question", context="the text that holds the answer")',
        ]

    def card_limit(self, label_names, distribution):
        return "It answers with a span of the context it is given; a question the context does not answer still gets one."

    def encode_labels(self, labels, hub_names, column):
        # each split's answers as cleaning left them (JSON text): {"text": [...], "answer_start": [...]}
        return ["answer"], {
            split: [json.loads(answers) for answers in values] for split, values in labels.items()
        }

    def model_kwargs(self, label_names):
        return {}

    def collate_labels(self, labels, width):
        return torch.tensor(labels, dtype=torch.long)  # (start, end) token of the answer per window

    def loss(self, outputs, labels):
        return F.cross_entropy(outputs.start_logits.float(), labels[:, 0], reduction="sum") + F.cross_entropy(
            outputs.end_logits.float(), labels[:, 1], reduction="sum"
        )

    def prediction_values(self, outputs, attention_mask):
        logits = torch.stack([outputs.start_logits, outputs.end_logits], -1).float()
        return logits.masked_fill((attention_mask == 0)[..., None], PAD_VALUE)

    def examples(self, encoded, split, values):
        """Each question's answer: the best span over its windows (best_span), with the true answers."""
        windows, found = encoded.layout[split]["windows"], {}
        for window, logits in zip(windows, values):
            span = best_span(np.asarray(logits), window["offsets"])
            if span is not None and (window["example"] not in found or span[0] > found[window["example"]][0]):
                found[window["example"]] = span
        contexts = encoded.layout[split]["questions"]
        predicted = np.empty(len(contexts), dtype=object)
        for example, item in enumerate(contexts):
            span = found.get(example)
            predicted[example] = item["context"][span[1] : span[2]] if span else ""
        truth = [item["answers"] for item in contexts] if encoded.labels is not None else None
        return truth, predicted

    def predict(self, values):
        return values

    def label_distribution(self, labels, label_names):
        if labels and isinstance(labels[0], dict):  # questions with their answers
            return {"questions": len(labels), "answers": sum(len(a["text"]) for a in labels)}
        return {
            "windows": len(labels),
            "windows holding the answer": sum(1 for start, _ in labels if start > 0),
        }

    def decode(self, values, label_names, top_k, text):
        return {"answer": str(values)}

    def format_prediction(self, row):
        return repr(row["answer"]) if row["answer"] else "(no answer found in the context)"

    def baseline(self, train_labels, test_labels, label_names):
        # no answer at all: what a model that read nothing could say without guessing
        return {
            "label": "(no answer)",
            **self.scores([a["text"] for a in test_labels], [""] * len(test_labels), label_names),
        }

    def scores(self, truth, values, label_names):
        return mean_answer_scores(truth, values)  # both at once: each reads every answer

    def test_report(self, truth, values, label_names):
        return self.scores(truth, values, label_names)

    def example_statistics(self, truth, predictions, label_names):
        return question_scores(truth, predictions)

    def metrics_from_sums(self, sums, counts, label_names):
        return {"exact_match": sums[:, 0] / counts, "f1": sums[:, 1] / counts}


# How far from its answer_start an answer's text may stand and still be moved there: exports that count bytes
# instead of characters, or lose a few characters of markup, shift offsets by a few characters.
OFFSET_SLACK = 64


def located_answers(answers, context, split: str, row: int, key: str) -> tuple[dict | None, int, int]:
    """A question's answers, as the Hub's squad holds them ({text: [...], answer_start: [...]}, lists or arrays),
    each checked against the context: kept where its text stands at answer_start, moved to the nearest place
    its text stands within OFFSET_SLACK characters, else dropped (also beyond the context's end). Returns the
    answers (None when none is left), and how many were moved and dropped."""
    if not isinstance(answers, dict) or not {"text", "answer_start"} <= set(answers):
        raise ConfigError(
            f"{key}: row {row} of the {split} data holds {type(answers).__name__}, allowed: "
            "{text: [answers], answer_start: [their first characters]} as in SQuAD"
        )
    texts, starts = [str(t) for t in answers["text"]], [int(s) for s in answers["answer_start"]]
    if not texts or len(texts) != len(starts):
        return None, 0, 0
    if not isinstance(context, str):  # no context: cleaning drops the question
        return {"text": texts, "answer_start": starts}, 0, 0
    kept, moved, dropped = {"text": [], "answer_start": []}, 0, 0
    for text, start in zip(texts, starts):
        if context[start : start + len(text)] != text:
            near = [
                m.start()
                for m in re.finditer(re.escape(text), context)
                if abs(m.start() - start) <= OFFSET_SLACK
            ]
            if not text or not near:
                dropped += 1
                continue
            start, moved = min(near, key=lambda at: abs(at - start)), moved + 1
        kept["text"].append(text)
        kept["answer_start"].append(start)
    return (kept if kept["text"] else None), moved, dropped


def context_windows(
    tokenizer, questions: list[str], contexts: list[str], max_length: int, stride: int
) -> Tokenized:
    """Each question with its context, in as many windows of max_length tokens as the context needs, consecutive
    windows sharing `stride` tokens; per window, its question (`example`) and each token's characters in the
    context (`offsets`: None on the question and special tokens)."""
    try:
        encoded = tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=True,
        )
    except Exception as err:  # the tokenizers library says so when a question leaves no room for the context
        raise ConfigError(
            f"data.doc_stride: a question and {stride} shared tokens do not fit in model.max_length "
            f"{max_length} ({str(err).splitlines()[0][:120]}); lower data.doc_stride or raise "
            "model.max_length"
        ) from None
    windows = []
    for row, example in enumerate(encoded["overflow_to_sample_mapping"]):
        in_context = [part == 1 for part in encoded.sequence_ids(row)]
        windows.append(
            {
                "example": example,
                "offsets": [
                    tuple(o) if inside else None
                    for o, inside in zip(encoded["offset_mapping"][row], in_context)
                ],
            }
        )
    ids = encoded["input_ids"]
    return Tokenized(ids, pair_separator(tokenizer, ids, encoded["token_type_ids"]), windows=windows)


def answer_tokens(offsets: list, start: int, end: int) -> list[int]:
    """The first and last token of the answer (characters start to end) in one window, or [0, 0] (the first
    token: the window does not hold all of the answer) as models trained on SQuAD mark it."""
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > start or offsets[inside[-1]][1] < end:
        return [0, 0]
    return [
        next(i for i in inside if offsets[i][1] > start),
        next(i for i in reversed(inside) if offsets[i][0] < end),
    ]
