"""Sentence pairs (token type ids, cleaning by pair) and the regression task (metrics, the paired bootstrap on
its statistics, the head's start, config refusals), and a pair regression run end to end with every plot,
predict and export."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from transformers import AutoTokenizer

import main
import visualize
from config import DataConfig, load_config
from conftest import CLASS_WORDS, labelled_rows
from data import collate, load_data
from model import build_model
from reporting.summary import paired_bootstrap
from tasks import TASKS
from utils import ConfigError

REGRESSION = TASKS["regression"]


def write_pairs(path):
    """Pairs of ticket texts scored 5 when both ask the same team, 0 otherwise, written to `path`."""
    rows, rng = labelled_rows(per_class=20), random.Random(1)
    pairs = []
    for i, row in enumerate(rows):
        other = (
            rows[(i * 7 + 3) % len(rows)]
            if i % 2
            else rng.choice([r for r in rows if r["label"] == row["label"] and r is not row])
        )
        pairs.append(
            {
                "question": row["text"],
                "other": other["text"],
                "score": 5.0 if other["label"] == row["label"] else 0.0,
                "same": "yes" if other["label"] == row["label"] else "no",
            }
        )
    pd.DataFrame(pairs).to_csv(path, index=False)
    return path


@pytest.fixture
def pairs_path(tmp_path):
    return write_pairs(tmp_path / "pairs.csv")


def pair_overrides(pairs_path, tmp_path) -> list[str]:
    return [
        "data.task=regression",
        f"data.path={pairs_path}",
        "data.text_column=question",
        "data.text_pair_column=other",
        "data.label_column=score",
        f"output.dir={tmp_path / 'out'}",
        "model.max_length=24",
    ]


def test_correlations_match_scipy_and_are_zero_against_a_constant():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, 200).astype(float)  # ties, as on STS-B's 0-5 scale
    predicted = truth + rng.normal(0, 2, 200)
    scores = REGRESSION.scores(truth, predicted, ["score"])
    assert scores["pearson"] == pytest.approx(pearsonr(predicted, truth).statistic, abs=1e-12)
    assert scores["spearman"] == pytest.approx(spearmanr(predicted, truth).statistic, abs=1e-12)
    assert scores["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - truth) ** 2)))
    assert scores["mae"] == pytest.approx(np.mean(np.abs(predicted - truth)))
    constant = REGRESSION.scores(truth, np.full(200, 2.5), ["score"])
    assert constant["pearson"] == constant["spearman"] == 0.0


def test_bootstrap_statistics_give_the_metrics_and_separate_a_known_better_model():
    rng = np.random.default_rng(1)
    truth = rng.normal(2.5, 1.2, 300)
    close, far = truth + rng.normal(0, 0.3, 300), truth + rng.normal(0, 1.5, 300)
    sums = np.ones((1, 300)) @ REGRESSION.example_statistics(truth, close, ["score"])
    from_sums = REGRESSION.metrics_from_sums(sums, np.array([300.0]), ["score"])
    for name, value in REGRESSION.scores(truth, close, ["score"]).items():
        if name in from_sums:
            assert from_sums[name][0] == pytest.approx(value, abs=1e-9), name
    same = paired_bootstrap(REGRESSION, truth, [close], [close], ["score"], resamples=1000)
    assert all(
        same[name]["difference"] == 0.0 and same[name]["p_value"] == 1.0
        for name in REGRESSION.compared_metrics
    )
    clear = paired_bootstrap(REGRESSION, truth, [close], [far], ["score"], resamples=1000)
    expected = (
        REGRESSION.scores(truth, close, ["score"])["spearman"]
        - REGRESSION.scores(truth, far, ["score"])["spearman"]
    )
    assert clear["spearman"]["difference"] == pytest.approx(expected, abs=1e-9)
    assert clear["spearman"]["low"] > 0 and clear["spearman"]["p_value"] < 0.01
    assert clear["rmse"]["high"] < 0 and clear["mae"]["high"] < 0  # errors: lower is better


def test_pairs_get_the_tokenizers_token_type_ids_also_when_cut_longest_first(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    words = sorted({w for ws in CLASS_WORDS.values() for w in ws})
    texts = [" ".join(words[:3]), " ".join(words * 2), "refund"]
    pairs = [" ".join(words[3:5]), "money", " ".join(reversed(words * 2))]
    reference = tokenizer(texts, pairs, truncation=True, max_length=12, padding=True, return_tensors="pt")
    tokens = TASKS["regression"].tokenize(tokenizer, texts, pairs, 12, 4)
    ids = tokens.ids
    assert max(map(len, ids)) == 12 and min(map(len, ids)) < 12  # cut, and padded once batched
    batch = collate(ids, [0, 1, 2], tokenizer.pad_token_id, 1, tokens.separator)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(batch[key], reference[key]), key
    assert batch["token_type_ids"].sum() > 0
    # single texts have none
    assert "token_type_ids" not in collate(ids, [0, 1, 2], tokenizer.pad_token_id, 1)


def test_duplicates_and_leakage_are_judged_on_the_whole_pair(tmp_path):
    frame = pd.DataFrame(
        {
            "a": ["Where is my parcel", "where is  my parcel", "Where is my parcel", "reset my password"] * 3,
            "b": ["it is late", "It is late", "it was lost", "i forgot it"] * 3,
            "score": [4.0, 4.0, 2.0, 5.0] * 3,
        }
    )
    frame.to_csv(tmp_path / "train.csv", index=False)
    # in test: one pair from train, and a first text from train with another second text, which is new
    pd.DataFrame(
        {
            "a": ["Where is my parcel", "reset my password"],
            "b": ["it is late", "it is late"],
            "score": [4.0, 1.0],
        }
    ).to_csv(tmp_path / "test.csv", index=False)
    data = load_data(
        DataConfig(
            task="regression",
            path=str(tmp_path),
            text_column="a",
            text_pair_column="b",
            label_column="score",
            validation_size=0.3,
            clean_given_test=True,
        )
    )
    # 3 distinct pairs (case and spaces aside), each 4 times
    assert data.cleaning["train"]["duplicate_rows"] == 9
    assert data.cleaning["test"]["leaked"] == 1
    assert list(zip(data.texts["test"], data.pairs["test"], data.labels["test"])) == [
        ("reset my password", "it is late", 1.0)
    ]
    whole = load_data(
        DataConfig(
            task="regression",
            path=str(tmp_path),
            text_column="a",
            text_pair_column="b",
            label_column="score",
            validation_size=0.3,
        )
    )  # the test file scored whole
    assert len(whole.texts["test"]) == 2 and whole.test_unseen == [1]
    assert sorted(
        zip(data.texts["train"] + data.texts["validation"], data.pairs["train"] + data.pairs["validation"])
    ) == [
        ("Where is my parcel", "it is late"),
        ("Where is my parcel", "it was lost"),
        ("reset my password", "i forgot it"),
    ]
    assert isinstance(data.labels["train"][0], float)


def test_glue_sts_b_tsv_files_read_unchanged(tmp_path):
    # GLUE's STS-B layout, with the unpaired quotes its sentences hold
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = [(f'A man said "hello {i}.', f"A man is talking {i}.", 3.8) for i in range(6)] + [
        (f"A cat sleeps {i}.", f'"Stocks fell {i}', 0.2) for i in range(6)
    ]
    lines = [
        f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}\t{score}"
        for i, (a, b, score) in enumerate(rows)
    ]
    (tmp_path / "train.tsv").write_text(header + "\n".join(lines[:8]) + "\n")
    (tmp_path / "dev.tsv").write_text(header + "\n".join(lines[8:]) + "\n")
    data = load_data(
        DataConfig(
            task="regression",
            path=str(tmp_path),
            text_column="sentence1",
            text_pair_column="sentence2",
            label_column="score",
            test_size=0.25,
        )
    )
    assert data.sizes() == {"train": 6, "validation": 4, "test": 2}
    assert 'A man said "hello 0.' in data.texts["train"] + data.texts["test"]
    assert data.pairs["validation"] == [
        '"Stocks fell 2',
        '"Stocks fell 3',
        '"Stocks fell 4',
        '"Stocks fell 5',
    ]


def test_regression_refuses_what_applies_to_classes(pairs_path, write_config, tmp_path, capsys):
    config = str(write_config())
    overrides = pair_overrides(pairs_path, tmp_path)
    for extra, message in [
        (
            "training.class_weights=balanced",
            "training.class_weights: got 'balanced', allowed: null with data.task: regression",
        ),
        ("training.sampler=oversample", "training.sampler: got 'oversample'"),
        (
            "data.augment.enabled=true",
            "data.augment.enabled: got True, allowed: false with data.text_pair_column",
        ),
    ]:
        assert main.main(["--config", config, "--strategy", "full", *overrides, extra]) == 2
        assert message in capsys.readouterr().err
    assert main.main(["--config", config, "--strategy", "setfit", *overrides]) == 2
    assert "strategy setfit does not apply to data.task: regression" in capsys.readouterr().err
    with pytest.raises(
        ConfigError, match="regression needs finite numbers, and the train split's 'same' holds '(yes|no)'"
    ):
        load_data(
            DataConfig(task="regression", path=str(pairs_path), text_column="question", label_column="same")
        )


def test_the_regression_head_starts_at_the_training_mean(write_config, pairs_path, tmp_path):
    cfg = load_config(write_config(), pair_overrides(pairs_path, tmp_path))
    for strategy in ("full", "lora"):
        model = build_model(cfg, strategy, ["score"])
        REGRESSION.init_head(model, [1.0, 2.0, 6.0])
        outputs = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1]
        assert outputs and all(float(m.bias.detach()) == 3.0 for m in outputs)
        # the head's weights are small at first, so every prediction starts near the mean
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor([[2, 10, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long)
            ).logits
        assert logits.shape == (1, 1) and abs(float(logits) - 3.0) < 0.5


def test_a_pair_regression_runs_end_to_end_with_its_plots_predict_and_export(
    pairs_path, write_config, tmp_path, capsys
):
    config = str(write_config())
    overrides = pair_overrides(pairs_path, tmp_path)
    strategies = ["full", "lora", "bitfit", "prompt_tuning", "frozen_encoder"]
    assert (
        main.main(
            [
                "--config",
                config,
                *[a for s in strategies for a in ("--strategy", s)],
                *overrides,
                "training.learning_rate=1e-3",
                "training.num_epochs=3",
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    records = json.loads((out / "results" / "all_results.json").read_text())["runs"]
    assert [r["strategy"] for r in records] == strategies and all(r["status"] == "completed" for r in records)
    for record in records:
        assert set(record["test"]) == {"loss", "spearman", "pearson", "rmse", "mae", "mse"}
        assert record["dataset"]["label_names"] == ["score"] and isinstance(
            record["test_predictions"][0], float
        )
        # early stopping's default metric, higher is better
        assert "val_spearman" in record["history"][0] and record["best_metric"] == max(
            h["val_spearman"] for h in record["history"]
        )
    summary = pd.read_csv(out / "results" / "summary.csv")
    assert "test_spearman_mean" in summary.columns and "test_accuracy_mean" not in summary.columns
    report = json.loads((out / "results" / "data_report.json").read_text())
    assert "label_summary" in next(iter(report.values())) and "class_counts" not in next(
        iter(report.values())
    )
    capsys.readouterr()

    assert visualize.main(["--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "plots" / "predicted_vs_true.png").exists() and not list(
        (out / "plots").glob("confusion_matrix*")
    )
    assert "skipped class_distribution.png: the labels are not one class per text" in printed
    assert "regression with &#x27;score&#x27; predicted" in (out / "report.html").read_text()

    base = ["--config", config, *overrides]
    assert main.main(["predict", *base, "--text", "refund money", "--pair", "invoice charge"]) == 0
    assert "'refund money' + 'invoice charge': score " in capsys.readouterr().out
    assert main.main(["predict", *base, "--text", "refund money"]) == 2
    assert "trained on sentence pairs: give each text its second text" in capsys.readouterr().err
    assert main.main(["predict", *base, "--input", str(pairs_path), "--output", str(tmp_path / "p.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert "predicted_score" in predicted.columns and predicted["predicted_score"].notna().all()
    assert main.main(["export", *base, "--out", str(tmp_path / "exported")]) == 0
    card = (tmp_path / "exported" / "README.md").read_text()
    assert (
        'function_to_apply="none"' in card
        and '"text_pair"' in card
        and "learned score from values between 0.000" in card
    )


def test_pair_classification_runs_on_the_same_file(pairs_path, write_config, tmp_path):
    overrides = [
        o
        for o in pair_overrides(pairs_path, tmp_path)
        if not o.startswith(("data.task", "data.label_column"))
    ]
    assert (
        main.main(
            ["--config", str(write_config()), "--strategy", "lora", *overrides, "data.label_column=same"]
        )
        == 0
    )
    [record] = json.loads((tmp_path / "out" / "results" / "all_results.json").read_text())["runs"]
    assert record["status"] == "completed" and record["dataset"]["label_names"] == ["no", "yes"]
    assert "macro_f1" in record["test"]
