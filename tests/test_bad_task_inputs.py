"""Bad input for every task, in-process: malformed CoNLL and JSONL, words and tags that do not match, tags
outside the IOB scheme, SQuAD files missing their parts, answers outside their context, pairs without their
second text, labels that are not finite numbers, damaged checkpoints. Each ends with exit status 2 and one
line naming the row, column or key, or with a repair counted in the data report; never with a traceback."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

import main
from conftest import labelled_rows
from test_question_answering import squad_articles
from test_token_classification import tagged_sentences


def jsonl(path, rows) -> str:
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return str(path)


def text(path, content: str) -> str:
    path.write_text(content, encoding="utf-8")
    return str(path)


def squad(path, edit) -> str:
    """The SQuAD test data with one part changed by `edit(data)`."""
    data = squad_articles(6)
    edit(data)
    return text(path, json.dumps(data))


def first_qa(data: dict) -> dict:
    return data["data"][0]["paragraphs"][0]["qas"][0]


def sentences(count=30, **change) -> list[dict]:
    rows = tagged_sentences(count)
    rows[0] = {**rows[0], **change}
    return rows


def pairs(count=30, **change) -> list[dict]:
    rows = [
        {"question": r["text"], "other": labelled_rows(count)[-i - 1]["text"], "score": float(i % 5)}
        for i, r in enumerate(labelled_rows(count))
    ]
    rows[0] = {**rows[0], **change}
    return rows


TAGS = ["data.task=token_classification"]
QA = ["data.task=question_answering", "data.doc_stride=4"]
PAIRS = [
    "data.task=regression",
    "data.text_column=question",
    "data.text_pair_column=other",
    "data.label_column=score",
]

# Each case: the task's overrides, a function writing the data file into a folder, and what the one line says.
MISTAKES = {
    # token classification
    "words and tags of different lengths": (
        TAGS,
        lambda d: jsonl(d / "t.jsonl", sentences(ner_tags=["O"])),
        r"data.tags_column: row \d+ of the train data has \d+ words and 1 tags",
    ),
    "words as a string": (
        TAGS,
        lambda d: jsonl(d / "t.jsonl", sentences(tokens="anna in leeds", ner_tags=["O"] * 3)),
        "holds str and list, allowed: a list of words and a list of tags",
    ),
    "tags as a string": (
        TAGS,
        lambda d: jsonl(d / "t.jsonl", sentences(ner_tags="O O O")),
        "holds list and str, allowed: a list of words and a list of tags",
    ),
    "a word with a space": (
        TAGS,
        lambda d: jsonl(d / "t.jsonl", sentences(tokens=["new york"], ner_tags=["B-LOC"])),
        "holds the word 'new york', allowed: words without spaces",
    ),
    "tags outside the IOB scheme": (
        TAGS,
        lambda d: jsonl(d / "t.jsonl", sentences(tokens=["anna"], ner_tags=["PERSON"])),
        "tags outside the IOB scheme: PERSON; allowed: O, or B-, I-",
    ),
    "integer tags without their names": (
        TAGS,
        lambda d: jsonl(
            d / "t.jsonl",
            [{"tokens": r["tokens"], "ner_tags": [0] * len(r["tokens"])} for r in tagged_sentences(30)],
        ),
        "data.tag_names: the tags in 'ner_tags' are integers",
    ),
    "integer tags beyond the tag names": (
        TAGS + ["data.tag_names=[O, B-PER]"],
        lambda d: jsonl(
            d / "t.jsonl",
            [
                {"tokens": r["tokens"], "ner_tags": [i % 3 for i in range(len(r["tokens"]))]}
                for r in tagged_sentences(30)
            ],
        ),
        "tags that data.tag_names does not name: 2",
    ),
    "no tags column": (
        TAGS,
        lambda d: jsonl(d / "t.jsonl", [{"tokens": r["tokens"]} for r in tagged_sentences(30)]),
        "data.tags_column: column 'ner_tags' not in the train data; columns: tokens",
    ),
    "a broken JSONL line": (
        TAGS,
        lambda d: text(d / "t.jsonl", '{"tokens": ["anna"], "ner_tags": ["B-PER"]}\n{"tokens": [\n'),
        "data.path: could not read",
    ),
    "a CoNLL line with one field": (
        TAGS,
        lambda d: text(d / "t.conll", "anna B-PER\nleeds\n"),
        "line 2 holds one field \\('leeds'\\)",
    ),
    "a CoNLL file of document markers only": (
        TAGS,
        lambda d: text(d / "t.conll", "-DOCSTART- O\n\n-DOCSTART- O\n"),
        "t.conll' has no rows",
    ),
    # question answering
    "SQuAD without qas": (
        QA,
        lambda d: squad(d / "s.json", lambda data: data["data"][0]["paragraphs"][0].pop("qas")),
        r"data\[0\].paragraphs\[0\] has no 'qas'",
    ),
    "SQuAD without context": (
        QA,
        lambda d: squad(d / "s.json", lambda data: data["data"][1]["paragraphs"][0].pop("context")),
        r"data\[1\].paragraphs\[0\] has no 'context'",
    ),
    "SQuAD without paragraphs": (
        QA,
        lambda d: squad(d / "s.json", lambda data: data["data"][2].pop("paragraphs")),
        r"data\[2\] has no 'paragraphs'",
    ),
    "SQuAD question without its question": (
        QA,
        lambda d: squad(d / "s.json", lambda data: first_qa(data).pop("question")),
        r"data\[0\].paragraphs\[0\].qas\[0\] has no 'question'",
    ),
    "SQuAD answer without answer_start": (
        QA,
        lambda d: squad(d / "s.json", lambda data: first_qa(data)["answers"][0].pop("answer_start")),
        r"data\[0\].paragraphs\[0\].qas\[0\].answers holds an answer without",
    ),
    "flat QA without an answers column": (
        QA,
        lambda d: jsonl(d / "q.jsonl", [{"question": "q", "context": "c"}] * 9),
        "data.label_column: column 'answers' not in the train data",
    ),
    "flat QA with answers as text": (
        QA,
        lambda d: jsonl(d / "q.jsonl", [{"question": "q", "context": "c a", "answers": "a"}] * 9),
        "data.label_column: row 0 of the train data holds str",
    ),
    "flat QA without a context column": (
        QA,
        lambda d: jsonl(
            d / "q.jsonl", [{"question": "q", "answers": {"text": ["a"], "answer_start": [0]}}] * 9
        ),
        "data.text_pair_column: column 'context' not in the train data",
    ),
    "every answer outside its context": (
        QA,
        lambda d: squad(
            d / "s.json",
            lambda data: [
                qa["answers"][0].update(text="nowhere to be found")
                for article in data["data"]
                for paragraph in article["paragraphs"]
                for qa in paragraph["qas"]
            ],
        ),
        "data: the train split has no rows with both text and a label",
    ),
    # sentence pairs and regression
    "pairs without the second text column": (
        PAIRS,
        lambda d: jsonl(d / "p.jsonl", [{k: v for k, v in r.items() if k != "other"} for r in pairs()]),
        "data.text_pair_column: column 'other' not in the train data; columns: question, score",
    ),
    "a score that is not a number": (
        PAIRS,
        lambda d: jsonl(d / "p.jsonl", pairs(score="high")),
        "regression needs finite numbers, and the .* split's 'score' holds 'high'",
    ),
    "an infinite score": (
        PAIRS,
        lambda d: text(d / "p.csv", pd.DataFrame(pairs(score="inf")).to_csv(index=False)),
        "regression needs finite numbers, and the .* split's 'score' holds 'inf'",
    ),
    "a NaN score written out": (
        PAIRS,
        lambda d: text(d / "p.csv", pd.DataFrame(pairs(score="NaN")).to_csv(index=False)),
        "regression needs finite numbers, and the .* split's 'score' holds 'NaN'",
    ),
    "every score the same": (
        PAIRS,
        lambda d: jsonl(d / "p.jsonl", [{**r, "score": 2.0} for r in pairs()]),
        "every training label is 2.0; regression needs labels that vary",
    ),
    # classification
    "a CSV row with more fields than the header": (
        [],
        lambda d: text(d / "c.csv", "text,label\nmy parcel,delivery\nmy,money,refund\n"),
        "data.path: could not read .*Expected 2 fields in line 3, saw 3",
    ),
    "JSON that is not a table": (
        [],
        lambda d: text(d / "c.json", '"just a string"'),
        "data.path: could not read",
    ),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_bad_task_input_is_one_line_with_exit_status_2(case, write_config, tmp_path, capsys):
    overrides, write, message = MISTAKES[case]
    (tmp_path / "data").mkdir()
    path = write(tmp_path / "data")
    assert (
        main.main(
            [
                "--config",
                str(write_config()),
                "--dry-run",
                "--strategy",
                "full",
                *overrides,
                f"data.path={path}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(message, err[0]), err[0]


def report_of_a_run(write_config, tmp_path, overrides, path) -> dict:
    assert (
        main.main(
            [
                "--config",
                str(write_config()),
                "--strategy",
                "full",
                "training.num_epochs=1",
                *overrides,
                f"data.path={path}",
            ]
        )
        == 0
    )
    [report] = json.loads((tmp_path / "outputs" / "results" / "data_report.json").read_text()).values()
    return report


def test_empty_word_lists_and_answerless_questions_are_dropped_and_counted(write_config, tmp_path):
    rows = tagged_sentences(40)
    rows[3] = rows[7] = {"tokens": [], "ner_tags": []}
    report = report_of_a_run(write_config, tmp_path, TAGS, jsonl(tmp_path / "t.jsonl", rows))
    assert sum(found.get("empty_text", 0) for found in report["cleaning"].values()) == 2
    data = squad_articles(20)
    first_qa(data)["answers"] = []  # a question without an answer: nothing to train or score on
    first_qa(data)["id"] = "no-answer"
    shutil.rmtree(tmp_path / "outputs")
    report = report_of_a_run(write_config, tmp_path, QA, text(tmp_path / "s.json", json.dumps(data)))
    assert sum(found.get("missing_label", 0) for found in report["cleaning"].values()) == 1


@pytest.fixture
def trained_run(write_config, tmp_path):
    """One completed run of BitFit: its run folder and the arguments that reach it."""
    args = ["--config", str(write_config()), "--strategy", "bitfit", "training.num_epochs=1"]
    assert main.main(args) == 0
    [folder] = (tmp_path / "outputs" / "checkpoints" / "bitfit").iterdir()
    return folder, args


def test_a_damaged_resume_state_stops_in_one_line(trained_run, capsys):
    folder, args = trained_run
    state = folder / "last.pt"
    state.write_bytes(state.read_bytes()[:1000])
    assert main.main([*args, "--resume", "--force"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(state) in line


def test_damaged_best_weights_stop_predict_in_one_line(trained_run, capsys):
    folder, args = trained_run
    weights = folder / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    assert main.main(["predict", *args[:2], "--run", str(folder), "--text", "my parcel"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(weights) in line


def test_a_damaged_run_record_stops_predict_in_one_line(trained_run, capsys):
    folder, args = trained_run
    (folder / "record.json").write_text('{"run_id": ')
    assert main.main(["predict", *args[:2], "--run", str(folder), "--text", "my parcel"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(folder / "record.json") in line and "train that run again" in line
