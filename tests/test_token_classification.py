"""Token classification: reading CoNLL files and word lists, tags on sub-words (with truncation), seqeval's
entity scores, the bootstrap's statistics, and a named-entity run end to end with plots, predict and export."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from seqeval.metrics import f1_score as seqeval_f1
from transformers import BertTokenizerFast

import main
import visualize
from config import DataConfig
from conftest import CLASS_WORDS, SHARED_WORDS
from data import load_data
from sources.files import read_conll
from reporting.summary import paired_bootstrap
from tasks import PAD_VALUE, TASKS
from utils import ConfigError

NER = TASKS["token_classification"]
TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def tagged_sentences(count: int, seed: int = 0) -> list[dict]:
    """Sentences of the tiny model's words in which the delivery words are places (one or two words long) and
    the login words people: entities the tiny model can learn."""
    rng, rows = random.Random(seed), []
    for _ in range(count):
        words, tags = [], []
        for _ in range(rng.randint(3, 7)):
            kind = rng.choice(["O", "O", "LOC", "PER"])
            if kind == "O":
                words.append(rng.choice(SHARED_WORDS + CLASS_WORDS["refund"]))
                tags.append("O")
                continue
            pool = CLASS_WORDS["delivery" if kind == "LOC" else "login"]
            for i in range(rng.randint(1, 2)):
                words.append(rng.choice(pool))
                tags.append(("B-" if i == 0 else "I-") + kind)
        rows.append({"tokens": words, "ner_tags": tags})
    return rows


def test_a_conll_file_is_read_as_word_and_tag_lists(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER"
    )  # no blank line at the end
    frame = read_conll(path)
    assert frame.to_dict("records") == [
        {"tokens": ["EU", "rejects", "German"], "ner_tags": ["B-ORG", "O", "B-MISC"]},
        {"tokens": ["Peter", "Blackburn"], "ner_tags": ["B-PER", "I-PER"]},
    ]
    # the original distribution's files, split by extension
    for name, sentence in [
        ("eng.train", "EU B-ORG\nrejects O\nPeter B-PER\nin O\nBonn B-LOC\n"),
        ("eng.testa", "Peter B-PER\n"),
        ("eng.testb", "Bonn B-LOC\n"),
    ]:
        (tmp_path / name).write_text(f"-DOCSTART- -X- -X- O\n\n{sentence}")
    (tmp_path / "conll").mkdir()
    for name in ("eng.train", "eng.testa", "eng.testb"):
        (tmp_path / name).rename(tmp_path / "conll" / name)
    data = load_data(
        DataConfig(task="token_classification", path=str(tmp_path / "conll"), drop_duplicates=False)
    )
    assert (data.texts, data.label_names) == (
        {"train": ["EU rejects Peter in Bonn"], "validation": ["Peter"], "test": ["Bonn"]},
        ["O", "B-LOC", "B-ORG", "B-PER"],
    )
    path.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(ConfigError, match="line 2 holds one field"):
        load_data(DataConfig(task="token_classification", path=str(path)))


def test_each_words_first_sub_word_carries_its_tag_also_under_truncation(tmp_path):
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "anna",
        "par",
        "##cel",
        "##s",
        "lon",
        "##don",
        "in",
    ]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"))
    tags = [3, 0, 0, 1]  # anna: B-PER; parcels, in: O; london: B-LOC
    task = TASKS["token_classification"]
    tokens = task.tokenize(tokenizer, ["anna parcels in london"], None, 16, 0)
    assert tokenizer.convert_ids_to_tokens(tokens.ids[0]) == [
        "[CLS]",
        "anna",
        "par",
        "##cel",
        "##s",
        "in",
        "lon",
        "##don",
        "[SEP]",
    ]
    assert tokens.firsts == [[1, 2, 5, 6]]
    assert task.align(tokens, [tags], None)[0] == [
        [PAD_VALUE, 3, 0, PAD_VALUE, PAD_VALUE, 0, 1, PAD_VALUE, PAD_VALUE]
    ]
    tokens = task.tokenize(tokenizer, ["anna parcels in london"], None, 6, 0)  # london is cut off
    assert tokenizer.convert_ids_to_tokens(tokens.ids[0]) == ["[CLS]", "anna", "par", "##cel", "##s", "[SEP]"]
    assert task.align(tokens, [tags], None)[0] == [[PAD_VALUE, 3, 0, PAD_VALUE, PAD_VALUE, PAD_VALUE]]


def test_entity_scores_are_seqevals_on_a_known_case():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"]]
    predicted = [["B-PER", "I-PER", "O", "B-PER"], ["O", "B-LOC", "O"]]  # 1 of 3 predicted entities exact
    to_id = {tag: i for i, tag in enumerate(TAGS)}
    # tokens as the loop sees them: special tokens and later sub-words hold PAD_VALUE in the truth
    truth = [
        [PAD_VALUE] + [to_id[t] for t in gold[0]] + [PAD_VALUE],
        [PAD_VALUE, to_id["O"], to_id["B-LOC"], PAD_VALUE, to_id["I-LOC"], PAD_VALUE],
    ]
    values = np.full((2, 6), PAD_VALUE)
    values[0, :6] = [0] + [to_id[t] for t in predicted[0]] + [0]
    values[1, :6] = [0, to_id["O"], to_id["B-LOC"], 2, to_id["O"], 0]  # a sub-word's own guess does not count
    scores = NER.scores(truth, values, TAGS)
    assert scores["f1"] == pytest.approx(seqeval_f1(gold, predicted)) == pytest.approx(2 * 1 / (3 + 3))
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == pytest.approx(1 / 3)
    assert scores["accuracy"] == pytest.approx(5 / 7)
    report = NER.test_report(truth, values, TAGS)
    assert report["per_class"]["PER"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "support": 1,
    }
    assert report["per_class"]["LOC"]["support"] == 2 and report["per_class"]["LOC"]["recall"] == 0.0


def test_bootstrap_statistics_give_the_entity_scores_and_separate_a_known_better_tagger():
    rng = np.random.default_rng(0)
    truth, good, none = [], [], []
    for _ in range(120):
        row = rng.choice([0, 0, 1, 3], size=rng.integers(2, 8)).tolist()
        truth.append([PAD_VALUE] + row + [PAD_VALUE])
        good.append([0] + row + [0])
        none.append([0] * (len(row) + 2))
    truth[0][1:3] = [1, 2]  # one entity the good tagger misses a word of
    scores = NER.scores(truth, [np.array(g) for g in good], TAGS)
    sums = np.ones((1, len(truth))) @ NER.example_statistics(truth, good, TAGS)
    from_sums = NER.metrics_from_sums(sums, np.array([len(truth)]), TAGS)
    for name in NER.compared_metrics:
        assert from_sums[name][0] == pytest.approx(scores[name]), name
    same = paired_bootstrap(NER, truth, [good], [good], TAGS, resamples=500)
    assert same["f1"]["difference"] == 0.0 and same["f1"]["p_value"] == 1.0
    clear = paired_bootstrap(NER, truth, [good], [none], TAGS, resamples=500)
    assert clear["f1"]["difference"] == pytest.approx(scores["f1"]) and clear["f1"]["low"] > 0.9
    assert clear["f1"]["p_value"] < 0.01


def test_integer_tags_take_their_names_from_the_config_and_strings_are_ordered(tmp_path):
    names, places = ["anna", "bob", "cleo", "dev"], ["leeds", "york"]
    rows = [{"tokens": [name, "in", place], "ner_tags": [3, 0, 1]} for name in names for place in places]
    path = tmp_path / "tags.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    with pytest.raises(ConfigError, match="data.tag_names: the tags in 'ner_tags' are integers"):
        load_data(
            DataConfig(task="token_classification", path=str(path), validation_size=0.25, test_size=0.25)
        )
    data = load_data(
        DataConfig(
            task="token_classification", path=str(path), validation_size=0.25, test_size=0.25, tag_names=TAGS
        )
    )
    assert data.label_names == TAGS and data.task == "token_classification"
    assert data.texts["train"][0].split()[1] == "in" and data.labels["train"][0] == [3, 0, 1]
    named = [{"tokens": r["tokens"], "ner_tags": [TAGS[t] for t in r["ner_tags"]]} for r in rows]
    pd.DataFrame(named).to_json(path, orient="records", lines=True)
    data = load_data(
        DataConfig(task="token_classification", path=str(path), validation_size=0.25, test_size=0.25)
    )
    assert data.label_names == ["O", "B-LOC", "B-PER"]  # O first, then by type
    pd.DataFrame([{"tokens": ["a", "b"], "ner_tags": ["O"]}]).to_json(path, orient="records", lines=True)
    with pytest.raises(ConfigError, match="data.tags_column: row 0 of the train data has 2 words and 1 tags"):
        load_data(DataConfig(task="token_classification", path=str(path)))


@pytest.fixture
def entities_path(tmp_path):
    path = tmp_path / "entities.jsonl"
    pd.DataFrame(tagged_sentences(90)).to_json(path, orient="records", lines=True)
    return path


def test_a_named_entity_run_ends_to_end_with_plots_predict_and_export(
    entities_path, write_config, tmp_path, capsys
):
    config = str(write_config())
    overrides = [
        "data.task=token_classification",
        f"data.path={entities_path}",
        f"output.dir={tmp_path / 'out'}",
        "training.learning_rate=3e-3",
        "training.num_epochs=4",
    ]
    strategies = ["full", "lora", "bitfit", "frozen_encoder", "gradual_unfreezing"]
    assert (
        main.main(["--config", config, *[a for s in strategies for a in ("--strategy", s)], *overrides]) == 0
    )
    out = tmp_path / "out"
    records = json.loads((out / "results" / "all_results.json").read_text())["runs"]
    assert [r["strategy"] for r in records] == strategies and all(r["status"] == "completed" for r in records)
    full = records[0]
    assert full["dataset"]["label_names"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert set(full["test"]) == {"loss", "f1", "precision", "recall", "accuracy", "per_class"}
    assert set(full["test"]["per_class"]) == {"LOC", "PER"}
    # the tiny model learns which words are places and people (the no-entity baseline scores 0)
    assert full["test"]["f1"] > 0.3 and full["dataset"]["majority_baseline"]["f1"] == 0.0
    # one prediction per token the model saw, special tokens included, as the truth
    assert [len(p) for p in full["test_predictions"]] == [len(t) for t in full["test_labels"]]
    capsys.readouterr()

    assert visualize.main(["--output-dir", str(out)]) == 0
    assert (out / "plots" / "per_class_f1.png").exists() and not list(
        (out / "plots").glob("confusion_matrix*")
    )
    assert "token_classification with 5 tags" in (out / "report.html").read_text()

    base = ["--config", config, *overrides]
    assert main.main(["predict", *base, "--text", "the parcel courier is here  with password"]) == 0
    printed = capsys.readouterr().out
    assert "'the parcel courier is here  with password': " in printed
    assert (
        main.main(["predict", *base, "--input", str(entities_path), "--output", str(tmp_path / "p.csv")]) == 0
    )
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert {"entities", "tags"} <= set(predicted.columns)
    assert all(
        len(t.split()) == len(w)
        for t, w in zip(predicted["tags"], pd.read_json(entities_path, lines=True)["tokens"])
    )
    assert main.main(["export", *base, "--out", str(tmp_path / "exported")]) == 0
    card = (tmp_path / "exported" / "README.md").read_text()
    assert 'pipeline("token-classification"' in card and "It knows only these tags: O, B-LOC" in card
    from transformers import AutoModelForTokenClassification

    assert isinstance(
        AutoModelForTokenClassification.from_pretrained(tmp_path / "exported").classifier, torch.nn.Linear
    )


def test_what_cannot_tag_words_is_refused(entities_path, write_config, tmp_path, capsys):
    base = ["--config", str(write_config()), "data.task=token_classification", f"data.path={entities_path}"]
    assert main.main([*base, "--strategy", "prompt_tuning"]) == 2
    assert (
        "strategy prompt_tuning does not apply to data.task: token_classification" in capsys.readouterr().err
    )
    assert main.main([*base, "--strategy", "full", "model.head.type=linear"]) == 2
    assert (
        "model.head.type: got 'linear', allowed: model with data.task: token_classification"
        in capsys.readouterr().err
    )
