"""Cross-validation (data.folds): how the folds are cut, the runs they make, the paired test over them, a killed
fold resumed, a search on one fold confirmed on all, the verdict's wording, and the values it refuses."""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

import experiment.run
import main
import trainer
import visualize
from config import load_config
from data import LabelledData, fold_of, fold_rows, load_data, text_key
from experiment.plan import plan_runs
from reporting.summary import compare_configurations, summarize
from reporting.verdict import describe
from tasks import TASKS

from conftest import labelled_rows


def records(folder) -> list[dict]:
    return json.loads((folder / "results" / "all_results.json").read_text())["runs"]


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


@pytest.fixture
def imbalanced_csv(tmp_path):
    """60, 30 and 10 rows of three classes, with a few texts repeated (kept: data.drop_duplicates false)."""
    rows = labelled_rows(per_class=60, seed=3)
    by_class = {label: [r for r in rows if r["label"] == label] for label in ("refund", "delivery", "login")}
    kept = by_class["refund"] + by_class["delivery"][:30] + by_class["login"][:10]
    kept += [dict(r) for r in by_class["refund"][:4]] + [dict(by_class["login"][0])]  # repeats
    path = tmp_path / "imbalanced.csv"
    pd.DataFrame(kept).sample(frac=1, random_state=0).to_csv(path, index=False)
    return path


def loaded(path, **data):
    settings = {"path": str(path), "drop_duplicates": False, "remove_leakage": False, **data}
    from config import DataConfig

    return load_data(DataConfig(**settings))


def test_folds_are_disjoint_cover_train_and_validation_keep_class_shares_and_repeats_together(imbalanced_csv):
    data = loaded(imbalanced_csv)
    labels = np.asarray(data.labels["train"] + data.labels["validation"])
    texts = [text_key(t) for t in data.texts["train"] + data.texts["validation"]]
    folds = fold_rows(data, 5, seed=42)
    every = np.concatenate(folds)
    assert sorted(every.tolist()) == list(range(len(labels)))  # each row in exactly one fold
    for label in np.unique(labels):
        share = np.mean(labels == label)
        for held in folds:  # each class in its share, to within one text (and its repeat)
            assert abs(np.sum(labels[held] == label) - share * len(held)) <= 2
    fold_of_text = {}
    for index, held in enumerate(folds):
        for row in held:
            assert fold_of_text.setdefault(texts[row], index) == index  # a repeated text stays in one fold
    assert len(texts) > len(set(texts))  # the data did repeat texts
    assert [f.tolist() for f in fold_rows(data, 5, seed=42)] == [f.tolist() for f in folds]  # reproducible
    assert [f.tolist() for f in fold_rows(data, 5, seed=42, repeat=1)] != [f.tolist() for f in folds]


def test_a_fold_is_the_validation_split_and_test_stays_out_of_every_fold(imbalanced_csv):
    data = loaded(imbalanced_csv)
    pooled = data.texts["train"] + data.texts["validation"]
    held = fold_rows(data, 4, seed=42)[2]
    fold = fold_of(data, fold_rows(data, 4, seed=42), 2)
    assert fold.texts["validation"] == [pooled[i] for i in held]
    assert sorted(fold.texts["train"] + fold.texts["validation"]) == sorted(pooled)
    assert fold.texts["test"] == data.texts["test"] and fold.labels["test"] == data.labels["test"]
    assert not {text_key(t) for t in data.texts["test"]} & {text_key(t) for t in fold.texts["validation"]} - {
        text_key(t) for t in pooled
    }
    assert fold.fingerprint == data.fingerprint and fold.fold == {
        "folds": 4,
        "index": 2,
        "repeat": 0,
        "of": data.fingerprint,
    }


def test_multi_label_folds_bring_each_rare_label_to_every_fold():
    rng = np.random.default_rng(0)
    hot = np.zeros((60, 6), dtype=int)
    hot[:, :3] = rng.random((60, 3)) < [0.5, 0.3, 0.2]
    for label in (3, 4, 5):  # rare labels, each with as many examples as folds
        hot[rng.choice(60, 3, replace=False), label] = 1
    texts = [f"text {i}" for i in range(60)]
    data = LabelledData(
        "tags",
        {"train": texts[:45], "validation": texts[45:], "test": ["t"]},
        {"train": hot[:45].tolist(), "validation": hot[45:].tolist(), "test": [[1, 0, 0, 0, 0, 0]]},
        ["a", "b", "c", "rare", "rarer", "rarest"],
        task="multi_label",
    )
    for held in fold_rows(data, 3, seed=1):
        assert hot[held, 3:].sum(0).tolist() == [1, 1, 1]


def test_a_contexts_questions_share_a_fold():
    contexts = [f"context number {i // 3}" for i in range(30)]  # three questions each
    questions = [f"question {i}" for i in range(30)]
    answers = [{"text": ["x"], "answer_start": [0]}] * 30
    data = LabelledData(
        "qa",
        {"train": questions[:24], "validation": questions[24:], "test": ["q"]},
        {"train": answers[:24], "validation": answers[24:], "test": answers[:1]},
        [],
        pairs={"train": contexts[:24], "validation": contexts[24:], "test": ["c"]},
        task="question_answering",
    )
    for held in fold_rows(data, 5, seed=0):
        assert {contexts[i] for i in held} == {
            contexts[i] for i in range(30) if contexts[i] in {contexts[j] for j in held}
        }
        assert all(Counter(contexts[i] for i in held)[c] == 3 for c in {contexts[i] for i in held})


def test_each_fold_is_a_run_of_one_configuration_with_its_own_id(write_config):
    cfg = load_config(write_config(data={"folds": 3}, training={"seeds": [0, 1]}))
    runs = plan_runs(cfg, ["bitfit"])
    assert sorted((r.fold, r.cfg.training.seed) for r in runs) == [
        ((0, i), s) for i in range(3) for s in (0, 1)
    ]
    assert len({r.run_id("fp") for r in runs}) == 6 and len({r.config_id("fp") for r in runs}) == 1
    reseeded = plan_runs(
        load_config(write_config(data={"folds": 3, "seed": 1}), ["training.seeds=[0,1]"]), ["bitfit"]
    )
    assert not {r.run_id("fp") for r in reseeded} & {r.run_id("fp") for r in runs}  # other folds, other ids
    repeated = plan_runs(load_config(write_config(data={"folds": 3, "fold_repeats": 2})), ["bitfit"])
    assert [r.fold for r in repeated] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert plan_runs(load_config(write_config()), ["bitfit"])[0].fold is None


def fold_record(strategy: str, index: int, predictions: list[int], truth: list[int]) -> dict:
    return {
        "status": "completed",
        "seed": 0,
        "few_shot": None,
        "fold": {"folds": 2, "repeat": 0, "index": index},
        "test_predictions": predictions,
        "test_labels": truth,
        "dataset": {"label_names": ["a", "b"]},
        "strategy": strategy,
    }


def test_the_paired_test_pairs_fold_with_fold():
    truth = [0, 1] * 50
    right, wrong = truth, [1 - t for t in truth[:40]] + truth[40:]
    # each strategy's fold 0 model is right everywhere and its fold 1 model wrong on 40 examples: no difference
    runs_a = [fold_record("a", 0, right, truth), fold_record("a", 1, wrong, truth)]
    runs_b = [fold_record("b", 1, wrong, truth), fold_record("b", 0, right, truth)]
    result = compare_configurations(runs_a, runs_b, TASKS["classification"])
    assert result["paired_runs"] == 2
    assert result["accuracy"]["difference"] == 0 and result["accuracy"]["per_run"] == [0, 0]


def test_a_cross_validated_experiment_chooses_on_the_mean_over_folds_and_says_so(
    write_config, tmp_path, monkeypatch, capsys
):
    config = write_config(
        data={"folds": 3}, training={"num_epochs": 1}, strategies={"bitfit": {"learning_rate": 0.05}}
    )
    assert main.main(["--config", str(config), "--strategy", "full", "--strategy", "bitfit"]) == 0
    runs = records(tmp_path / "outputs")
    assert sorted((r["strategy"], r["fold"]["index"]) for r in runs) == [
        (s, i) for s in ("bitfit", "full") for i in range(3)
    ]
    assert all(r["fold"] == {"folds": 3, "repeat": 0, "index": r["fold"]["index"]} for r in runs)
    # 90 rows: 18 for test, the other 72 in three folds of 24; every fold's model is tested on the same 18
    assert {
        (r["dataset"]["sizes"]["train"], r["dataset"]["sizes"]["validation"], r["dataset"]["sizes"]["test"])
        for r in runs
    } == {(48, 24, 18)}
    assert len({json.dumps(r["test_labels"]) for r in runs}) == 1
    summary = summarize(runs, "val_macro_f1")
    assert json.loads((tmp_path / "outputs" / "results" / "verdict.json").read_text())["folds"]["folds"] == 3
    assert summary["folds"] == {"folds": 3, "repeats": 1} and summary["validation_examples"] == 72
    assert summary["comparisons"][0]["paired_runs"] == 3
    full = next(r for r in summary["rows"] if r["strategy"] == "full")
    validation = [
        next(h["val_macro_f1"] for h in r["history"] if h["epoch"] == r["best_epoch"])
        for r in runs
        if r["strategy"] == "full"
    ]
    assert full["validation"]["mean"] == pytest.approx(np.mean(validation))  # chosen on the mean over folds
    printed = capsys.readouterr().out
    assert "(the mean over 3 folds)" in printed and "over 3 folds)" in printed
    assert "trained without that fold" in printed  # which model predict would use
    assert visualize.main(["--output-dir", str(tmp_path / "outputs")]) == 0
    report = (tmp_path / "outputs" / "report.html").read_text()
    assert "Cross-validation: train and validation together (72 examples) cut into 3 folds" in report
    assert "<td>train</td><td>54</td>" in report  # the data as loaded, as the class counts beside it
    monkeypatch.setattr(experiment.run, "run_one", lambda *a, **k: pytest.fail("a fold trained again"))
    assert main.main(["--config", str(config), "--strategy", "full", "--strategy", "bitfit"]) == 0


def test_a_fold_killed_mid_run_resumes_to_the_uninterrupted_result(write_config, tmp_path, monkeypatch):
    config = write_config(data={"folds": 2}, training={"num_epochs": 2, "early_stopping": {"enabled": False}})
    settings = ["--config", str(config), "--strategy", "bitfit"]
    real_evaluate, real_run_one, calls, starts = trainer.validation_scores, experiment.run.run_one, [], []

    def counting_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    def counting_run_one(*args, **kwargs):
        starts.append(len(calls))
        return real_run_one(*args, **kwargs)

    monkeypatch.setattr(trainer, "validation_scores", counting_evaluate)
    monkeypatch.setattr(experiment.run, "run_one", counting_run_one)
    stop_at = None
    assert main.main([*settings, f"output.dir={tmp_path / 'straight'}"]) == 0
    expected = {r["fold"]["index"]: r for r in records(tmp_path / "straight")}
    stop_at, calls[:], starts[:] = (
        starts[1] + 2,
        [],
        [],
    )  # the second fold, during its second epoch's validation
    assert main.main([*settings, f"output.dir={tmp_path / 'killed'}"]) == 130
    stop_at = None
    assert main.main([*settings, f"output.dir={tmp_path / 'killed'}", "--resume"]) == 0
    resumed = {r["fold"]["index"]: r for r in records(tmp_path / "killed")}
    for index in (0, 1):
        assert without_seconds(resumed[index]["history"]) == without_seconds(expected[index]["history"])
        assert resumed[index]["test_predictions"] == expected[index]["test_predictions"]
        assert resumed[index]["run_id"] == expected[index]["run_id"]


def test_a_search_runs_its_trials_on_the_first_fold_and_confirms_the_best_on_every_fold(
    write_config, tmp_path
):
    config = write_config(
        data={"folds": 2},
        training={"num_epochs": 1},
        search={
            "method": "optuna",
            "trials": 2,
            "space": {"strategies.bitfit.learning_rate": {"low": 1e-2, "high": 1e-1, "log": True}},
        },
    )
    assert main.main(["--config", str(config), "--strategy", "bitfit"]) == 0
    runs = records(tmp_path / "outputs")
    trials = [r for r in runs if not r["trial"].get("confirms") or r["trial"]["confirms"] == r["run_id"]]
    assert len(trials) == 2 and {r["fold"]["index"] for r in trials} == {0}
    confirmations = [r for r in runs if r["trial"].get("confirms")]
    assert sorted(r["fold"]["index"] for r in confirmations) == [0, 1]
    assert len({r["trial"]["number"] for r in confirmations}) == 1 and all("test" in r for r in confirmations)


def verdict_with(validation_examples: int | None, folds: dict | None) -> list[str]:
    rows = [
        {
            "strategy": s,
            "config_id": s,
            "varied": {},
            "shots_per_class": None,
            "chosen": True,
            "runs": 3,
            "failed": 0,
            "trainable_params": 100 if s == "full" else 1,
            "validation": {"mean": v, "std": 0.01},
            "test": {"macro_f1": {"mean": v, "std": 0.01, "n": 3}},
            "test_interval": None,
        }
        for s, v in (("full", 0.9), ("bitfit", 0.8))
    ]
    comparison = {
        "a": "full",
        "b": "bitfit",
        "shots_per_class": None,
        "paired_runs": 3,
        "macro_f1": {
            "difference": 0.1,
            "low": 0.08,
            "high": 0.12,
            "p_value": 0.0002,
            "per_run": [0.1, 0.1, 0.1],
        },
    }
    summary = {
        "task": "classification",
        "metric": "val_macro_f1",
        "rows": rows,
        "comparisons": [comparison],
        "validation_examples": validation_examples,
        "test_examples": 2000,
        "folds": folds,
    }
    from reporting.verdict import decide

    return describe(decide(summary), TASKS["classification"])


def test_the_verdict_suggests_folds_when_the_choice_rests_on_a_small_validation_split():
    small = " ".join(verdict_with(153, None))
    assert "The choice rests on 153 validation examples, where a score of 0.85 moves by about ±0.06" in small
    assert "data.folds=5 trains every configuration once per fold, 5× this experiment's training" in small
    assert "data.folds" not in " ".join(verdict_with(5000, None))  # enough rows to choose on
    folded = " ".join(verdict_with(153, {"folds": 5, "repeats": 1}))
    assert "data.folds=5" not in folded and "(the mean over 5 folds)" in folded


@pytest.mark.parametrize(
    "setting, message",
    [
        ("data.folds=1", "data.folds: got 1, allowed: an integer >= 2"),
        ("data.fold_repeats=0", "data.fold_repeats: got 0, allowed: an integer >= 1"),
        ("data.fold_repeats=2", "data.fold_repeats: got 2, allowed: 1 unless data.folds is set"),
        (
            "sweep={data.folds: [3, 5]}",
            "sweep.data.folds: cannot be swept (every configuration already trains once per fold)",
        ),
        (
            "data.folds=20",
            "examples of class 'login' in train and validation together, so a fold would lack it; at most",
        ),
    ],
)
def test_a_fold_setting_the_data_cannot_take_stops_in_one_line(
    imbalanced_csv, write_config, capsys, setting, message
):
    config = write_config(
        data={"path": str(imbalanced_csv), "drop_duplicates": False, "remove_leakage": False}
    )
    assert main.main(["--config", str(config), "--strategy", "bitfit", setting]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]
