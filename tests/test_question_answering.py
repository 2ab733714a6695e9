"""Extractive question answering: SQuAD's files, windows of long contexts and the answer's tokens in each,
span decoding across windows, SQuAD's normalisation and scores, the bootstrap over questions, and a run end
to end with plots, predict and export."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

import main
import visualize
from config import DataConfig
from conftest import CLASS_WORDS, SHARED_WORDS
from data import Encoded, load_data
from sources.files import read_json
from tasks.question_answering import answer_tokens, context_windows
from reporting.summary import paired_bootstrap
from tasks import TASKS
from tasks.question_answering import answer_scores, best_span, normalized_answer

QA = TASKS["question_answering"]


def squad_articles(count: int, seed: int = 0) -> dict:
    """SQuAD-layout data on the tiny model's words: each context names a login word after 'password' and a
    delivery word after 'parcel'; the questions ask for them."""
    rng, articles = random.Random(seed), []
    for number in range(count):
        filler = lambda: " ".join(rng.choices(SHARED_WORDS + CLASS_WORDS["refund"], k=rng.randint(3, 8)))
        secret, place = rng.choice(CLASS_WORDS["login"]), rng.choice(CLASS_WORDS["delivery"])
        context = f"{filler()} password {secret} {filler()} parcel {place} {filler()}"
        qas = [
            {
                "id": f"{number}-{i}",
                "question": question,
                "answers": [
                    {"text": answer, "answer_start": context.index(f"{cue} {answer}") + len(cue) + 1}
                ],
            }
            for i, (question, cue, answer) in enumerate(
                [("where is my password", "password", secret), ("where is the parcel", "parcel", place)]
            )
        ]
        articles.append({"title": f"t{number}", "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "1.1", "data": articles}


def test_squad_json_and_the_flat_hub_layout_read_the_same(tmp_path):
    squad = squad_articles(3)
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    nested = read_json(tmp_path / "squad.json")
    assert list(nested.columns) == ["id", "title", "context", "question", "answers"] and len(nested) == 6
    first = squad["data"][0]["paragraphs"][0]["qas"][0]
    assert nested.loc[0, "answers"] == {
        "text": [first["answers"][0]["text"]],
        "answer_start": [first["answers"][0]["answer_start"]],
    }
    nested.to_json(tmp_path / "flat.jsonl", orient="records", lines=True)
    config = dict(task="question_answering", validation_size=1 / 3, test_size=1 / 3)
    from_nested = load_data(DataConfig(path=str(tmp_path / "squad.json"), **config))
    from_flat = load_data(DataConfig(path=str(tmp_path / "flat.jsonl"), **config))
    assert from_nested.fingerprint == from_flat.fingerprint
    # a folder with SQuAD's own file names: dev-v1.1.json is the validation split
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "train-v1.1.json").write_text(json.dumps(squad_articles(6)))
    (tmp_path / "squad" / "dev-v1.1.json").write_text(json.dumps(squad_articles(2, seed=1)))
    official = load_data(DataConfig(task="question_answering", path=str(tmp_path / "squad"), test_size=0.25))
    assert {split: len(questions) for split, questions in official.texts.items()} == {
        "train": 9,
        "validation": 4,
        "test": 3,
    }
    assert from_flat.texts["train"][0] in ("where is my password", "where is the parcel")
    answer = from_flat.labels["train"][0]
    context = from_flat.pairs["train"][0]
    start = answer["answer_start"][0]
    assert context[start : start + len(answer["text"][0])] == answer["text"][0]


def test_squad_normalisation_and_scores_on_known_cases():
    assert normalized_answer("The  Cat's hat!") == "cats hat"
    assert normalized_answer("an apple, a pear") == "apple pear"
    assert answer_scores("the cat", ["A cat", "dog"]) == (1.0, 1.0)
    assert answer_scores("big red dog", ["red dog house"]) == (
        0.0,
        pytest.approx(2 / 3),
    )  # 2 of 3 words each way
    assert answer_scores("red red", ["red"]) == (
        0.0,
        pytest.approx(2 / 3),
    )  # a repeated word counts once per match
    assert answer_scores("", ["red"]) == (0.0, 0.0)
    scores = QA.scores([["Denver Broncos"], ["1990", "in 1990"]], ["the Denver Broncos", "1990s"], ["answer"])
    assert scores == {"f1": pytest.approx(0.5), "exact_match": pytest.approx(0.5)}


def test_spans_stay_in_the_context_and_in_order():
    offsets = [
        None,
        None,
        None,
        (0, 3),
        (4, 9),
        (10, 12),
        (13, 17),
        None,
    ]  # [CLS] question [SEP] context [SEP]
    logits = np.zeros((8, 2))
    logits[1] = [9.0, 9.0]  # the best start and end: inside the question
    logits[5] = [5.0, 0.0]
    logits[4, 1] = 6.0  # an end before the best context start
    logits[6, 1] = 4.0
    assert best_span(logits, offsets) == (9.0, 10, 17)  # tokens 5 to 6; never the question, never backwards
    long = [None] + [(i * 2, i * 2 + 1) for i in range(40)]
    wide = np.full((41, 2), -10.0)
    wide[1, 0], wide[40, 1], wide[20, 1] = 5.0, 9.0, 1.0
    assert best_span(wide, long)[1:] == (
        0,
        39,
    )  # 40 tokens is too long an answer: the next best end, token 20
    assert best_span(np.zeros((3, 2)), [None, None, None]) is None


def test_an_answer_cut_by_one_window_is_found_whole_in_the_next(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # every word is one token: 7 tokens of question and special tokens leave 9 of context per window of 16, and
    # with 6 shared, windows start every 3 context tokens; the answer's 2 tokens are context tokens 8 and 9
    words = (SHARED_WORDS * 3)[:24]
    answer = "parcel courier"
    context = " ".join(words[:8] + answer.split() + words[8:])
    start = context.index(answer)
    tokens = context_windows(tokenizer, ["where is the parcel"], [context], 16, 6)
    ids, windows = tokens.ids, tokens.windows
    assert len(windows) > 2 and all(w["example"] == 0 for w in windows)
    labels = [answer_tokens(w["offsets"], start, start + len(answer)) for w in windows]
    cut = [
        i
        for i, w in enumerate(windows)
        if any(o and o[0] == start for o in w["offsets"]) and labels[i] == [0, 0]
    ]
    whole = [i for i, label in enumerate(labels) if label != [0, 0]]
    assert cut == [0] and whole == [
        1,
        2,
    ]  # the window that cuts the answer marks it absent; the next two hold it
    tokens = tokenizer.convert_ids_to_tokens(ids[whole[0]][labels[whole[0]][0] : labels[whole[0]][1] + 1])
    assert tokens == ["parcel", "courier"]
    # decoding across windows: the window where the answer is whole scores it, and the question gets its text
    values = np.zeros((len(windows), max(map(len, ids)), 2))
    for i, window in enumerate(windows):
        values[i, :, :] = -5.0
        if i in whole:
            values[i, labels[i][0], 0], values[i, labels[i][1], 1] = 8.0, 8.0
    encoded = Encoded(
        ids={"test": ids},
        labels={"test": labels},
        pad_id=0,
        label_names=["answer"],
        layout={"test": {"windows": windows, "questions": [{"context": context, "answers": [answer]}]}},
    )
    truth, predicted = QA.examples(encoded, "test", values)
    assert list(predicted) == [answer] and truth == [[answer]]


def test_the_bootstrap_over_questions_knows_a_better_reader():
    rng = np.random.default_rng(0)
    truth = [[f"answer {i}"] for i in range(200)]
    good = [t[0] if rng.random() < 0.8 else "wrong" for t in truth]
    stats = QA.example_statistics(truth, good, ["answer"])
    from_sums = QA.metrics_from_sums(np.ones((1, 200)) @ stats, np.array([200.0]), ["answer"])
    scores = QA.scores(truth, good, ["answer"])
    assert from_sums["f1"][0] == pytest.approx(scores["f1"]) and from_sums["exact_match"][0] == pytest.approx(
        scores["exact_match"]
    )
    clear = paired_bootstrap(QA, truth, [good], [[""] * 200], ["answer"], resamples=500)
    assert (
        clear["exact_match"]["difference"] == pytest.approx(scores["exact_match"])
        and clear["exact_match"]["p_value"] < 0.01
    )


@pytest.fixture
def squad_path(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad_articles(40)))
    return path


def test_a_question_answering_run_ends_to_end_with_plots_predict_and_export(
    squad_path, write_config, tmp_path, capsys
):
    config = str(write_config())
    overrides = [
        "data.task=question_answering",
        f"data.path={squad_path}",
        f"output.dir={tmp_path / 'out'}",
        "model.max_length=16",
        "data.doc_stride=4",
        "training.learning_rate=3e-3",
        "training.num_epochs=3",
    ]
    strategies = ["full", "lora", "bitfit", "frozen_encoder"]
    assert (
        main.main(["--config", config, *[a for s in strategies for a in ("--strategy", s)], *overrides]) == 0
    )
    out = tmp_path / "out"
    records = json.loads((out / "results" / "all_results.json").read_text())["runs"]
    assert [r["strategy"] for r in records] == strategies and all(r["status"] == "completed" for r in records)
    full = records[0]
    assert set(full["test"]) == {"loss", "f1", "exact_match"}
    sizes = full["dataset"]["sizes"]
    # questions, not windows
    assert len(full["test_predictions"]) == len(full["test_labels"]) == sizes["test"] == 16
    # contexts need several windows
    assert full["dataset"]["label_distribution"]["train"]["windows"] > sizes["train"]
    assert all(isinstance(p, str) for p in full["test_predictions"])
    contexts = {p["context"] for a in squad_articles(40)["data"] for p in a["paragraphs"]}
    # answers are spans of a context
    assert all(any(p in c for c in contexts) for p in full["test_predictions"])
    capsys.readouterr()

    assert visualize.main(["--output-dir", str(out)]) == 0
    assert (out / "plots" / "performance_comparison.png").exists()
    assert "question_answering with answer spans" in (out / "report.html").read_text()
    report = json.loads((out / "results" / "data_report.json").read_text())
    lengths = next(iter(report.values()))["token_lengths"]
    assert (
        lengths["beyond_max_length"] == "read in further windows"
        and lengths["train"]["truncated_share"] > 0.5
    )

    base = ["--config", config, *overrides]
    context = squad_articles(1, seed=5)["data"][0]["paragraphs"][0]["context"]
    assert main.main(["predict", *base, "--text", "where is my password", "--pair", context]) == 0
    assert "'where is my password' + " in capsys.readouterr().out
    assert main.main(["predict", *base, "--text", "where is my password"]) == 2
    assert (
        "answers questions from a context: give each question (--text) its context" in capsys.readouterr().err
    )
    assert main.main(["export", *base, "--out", str(tmp_path / "exported")]) == 0
    card = (tmp_path / "exported" / "README.md").read_text()
    assert 'pipeline("question-answering"' in card
    assert f"| windows | {full['dataset']['label_distribution']['train']['windows']} |" in card
    from transformers import AutoModelForQuestionAnswering

    assert isinstance(
        AutoModelForQuestionAnswering.from_pretrained(tmp_path / "exported").qa_outputs, torch.nn.Linear
    )


def test_what_cannot_answer_from_spans_is_refused(squad_path, write_config, capsys):
    base = [
        "--config",
        str(write_config()),
        "data.task=question_answering",
        "data.doc_stride=4",
        f"data.path={squad_path}",
    ]
    assert main.main([*base, "--strategy", "prompt_tuning"]) == 2
    assert "strategy prompt_tuning does not apply to data.task: question_answering" in capsys.readouterr().err
    assert main.main([*base, "--strategy", "full", "data.doc_stride=16"]) == 2
    assert "data.doc_stride: got 16, allowed: 1 <= stride < model.max_length (16)" in capsys.readouterr().err
    pd.DataFrame({"question": ["q"] * 3, "context": ["c"] * 3, "answers": ["x"] * 3}).to_json(
        squad_path.with_suffix(".jsonl"), orient="records", lines=True
    )
    assert main.main([*base[:4], f"data.path={squad_path.with_suffix('.jsonl')}", "--strategy", "full"]) == 2
    assert "data.label_column: row 0 of the train data holds str" in capsys.readouterr().err


def test_answers_are_checked_against_their_context(tmp_path, caplog):
    """An answer_start that misses its text by a few characters (bytes counted, markup lost) is moved to where
    the text stands; one whose text is not near it, or beyond the context's end, is dropped; both are counted
    per split in the data report and named in a warning."""
    from tasks.question_answering import OFFSET_SLACK, located_answers

    context = "Résumé: the reset link is valid for one hour. Links expire after one hour."
    right = context.index("one hour")
    assert located_answers({"text": ["one hour"], "answer_start": [right]}, context, "train", 0, "k") == (
        {"text": ["one hour"], "answer_start": [right]},
        0,
        0,
    )
    # counted in bytes: é is two, so the offset is two characters late; the nearer of the two occurrences wins
    assert located_answers({"text": ["one hour"], "answer_start": [right + 2]}, context, "train", 0, "k") == (
        {"text": ["one hour"], "answer_start": [right]},
        1,
        0,
    )
    far = context.rindex("one hour")
    assert located_answers({"text": ["one hour"], "answer_start": [far - 3]}, context, "train", 0, "k")[
        0
    ] == {"text": ["one hour"], "answer_start": [far]}
    assert located_answers({"text": ["two hours"], "answer_start": [right]}, context, "train", 0, "k") == (
        None,
        0,
        1,
    )
    # beyond the context's end: moved when its text stands near, else dropped, each answer on its own
    assert located_answers(
        {"text": ["one hour", "hour"], "answer_start": [len(context) + 2, right + 4]},
        context,
        "train",
        0,
        "k",
    ) == ({"text": ["one hour", "hour"], "answer_start": [far, right + 4]}, 1, 0)
    assert located_answers(
        {"text": ["one hour", "hour"], "answer_start": [len(context) + OFFSET_SLACK, right + 4]},
        context,
        "train",
        0,
        "k",
    ) == ({"text": ["hour"], "answer_start": [right + 4]}, 0, 1)
    long_context = "one hour " + "x" * (OFFSET_SLACK + 20)
    assert located_answers(
        {"text": ["one hour"], "answer_start": [OFFSET_SLACK + 20]}, long_context, "train", 0, "k"
    ) == (None, 0, 1)

    squad = squad_articles(12)
    qas = [qa for article in squad["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    qas[0]["answers"][0]["answer_start"] += 3  # moved back
    qas[1]["answers"][0]["text"] = "nowhere"  # dropped, and the question with it
    (tmp_path / "train.json").write_text(json.dumps(squad))
    (tmp_path / "dev.json").write_text(json.dumps(squad_articles(4, seed=1)))
    data = load_data(DataConfig(task="question_answering", path=str(tmp_path), test_size=0.25))
    found = data.cleaning["train"]
    assert (found["answers_moved"], found["answers_dropped"], found["missing_label"]) == (1, 1, 1)
    assert "1 answer(s) did not stand at their answer_start" in caplog.text and qas[0]["id"] in caplog.text
    assert "were not in their context" in caplog.text and qas[1]["id"] in caplog.text
    answers = [a for split in data.labels.values() for a in split]
    assert all(
        data_context[a["answer_start"][0] :].startswith(a["text"][0])
        for data_context, a in zip([c for split in data.pairs.values() for c in split], answers)
    )
    from reporting.data_report import describe_report

    report = {
        "dataset": "d",
        "fingerprint": "f",
        "sizes": data.sizes(),
        "label_summary": {},
        "cleaning": data.cleaning,
        "token_lengths": {
            "max_length": 8,
            **{
                s: {"min": 1, "median": 1, "p95": 1, "max": 1, "truncated_share": 0}
                for s in ("train", "validation", "test")
            },
        },
    }
    assert any(
        "answers not at their answer_start: 1 moved to where their text stands nearby, 1 dropped" in line
        for line in describe_report(report, TASKS["question_answering"])
    )
