"""Multi-label classification (data.task: multi_label): label sets read from lists, separated strings or 0/1
columns, splits that keep rare labels, the metrics against scikit-learn, thresholds tuned on validation, the
refusals, and a trained run that predicts, calibrates and exports with its thresholds."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import f1_score, hamming_loss, label_ranking_average_precision_score

import main
from config import TrainingConfig, load_config
from conftest import CLASS_WORDS, SHARED_WORDS, small_config
from data import load_data
from model import fit_temperature
from reporting.summary import weighted_scores
from serving.predict import Predictor
from tasks import TASKS
from tasks.multi_label import MultiLabel, best_f1_threshold
from test_cli import results
from test_predict_export import outside_the_project
from utils import ConfigError

TASK = TASKS["multi_label"]


def tagged_rows(count: int, seed: int = 0, rare: int = 0) -> list[dict]:
    """Texts holding the words of none to three labels, tagged with those labels; `rare` more rows carry the
    rare label "urgent" (the word "please" twice) beside one other."""
    rng = random.Random(seed)
    rows = []
    for i in range(count + rare):
        labels = (
            rng.sample(sorted(CLASS_WORDS), rng.choice([0, 1, 1, 2, 2, 3]))
            if i < count
            else [rng.choice(sorted(CLASS_WORDS)), "urgent"]
        )
        words = [w for label in labels if label != "urgent" for w in rng.choices(CLASS_WORDS[label], k=2)]
        words += ["please", "please"] if "urgent" in labels else []
        words += rng.choices([w for w in SHARED_WORDS if w != "please"], k=rng.randint(1, 3))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "tags": labels})
    rng.shuffle(rows)
    return rows


def write_tagged(folder, rows, layout: str):
    """The same rows as a CSV of separated tags, a JSONL of lists, or a CSV of 0/1 columns; the overrides."""
    frame = pd.DataFrame(rows)
    if layout == "separator":
        frame.assign(tags=frame["tags"].map(";".join)).to_csv(folder / "tags.csv", index=False)
        return [f"data.path={folder / 'tags.csv'}", "data.label_column=tags", "data.label_separator=;"]
    if layout == "list":
        frame.to_json(folder / "tags.jsonl", orient="records", lines=True)
        return [f"data.path={folder / 'tags.jsonl'}", "data.label_column=tags"]
    names = sorted({label for row in rows for label in row["tags"]})
    for name in names:
        frame[name] = frame["tags"].map(lambda tags: int(name in tags))
    frame.drop(columns="tags").to_csv(folder / "flags.csv", index=False)
    return [f"data.path={folder / 'flags.csv'}", f"data.label_columns=[{','.join(names)}]"]


def test_list_separator_and_flag_columns_read_to_the_same_labels(write_config, tmp_path):
    rows = tagged_rows(60, rare=6)
    read = {}
    for layout in ("separator", "list", "flags"):
        folder = tmp_path / layout
        folder.mkdir()
        data = load_data(
            load_config(write_config(), ["data.task=multi_label", *write_tagged(folder, rows, layout)]).data
        )
        read[layout] = (
            data.label_names,
            data.texts,
            data.labels,
            data.cleaning["train"]["texts_without_label"],
        )
    assert read["separator"] == read["list"] == read["flags"]
    names, _, labels, empty = read["list"]
    assert names == ["delivery", "login", "refund", "urgent"] and empty > 0  # rows without a label are kept
    assert all(
        set(map(len, split)) == {4} and {x for row in split for x in row} == {0, 1}
        for split in labels.values()
    )


def test_a_text_given_different_label_sets_is_reported_with_its_sets_readable(write_config, tmp_path):
    rows = tagged_rows(60) + [
        {"text": "where is my parcel", "tags": tags} for tags in (["delivery", "login"], ["delivery"], [])
    ]
    data = load_data(
        load_config(write_config(), ["data.task=multi_label", *write_tagged(tmp_path, rows, "list")]).data
    )
    assert data.cleaning["train"]["conflicting_examples"] == [
        {"text": "where is my parcel", "labels": ["(no label)", "delivery", "delivery|login"]}
    ]


def test_iterative_stratification_keeps_a_rare_label_in_every_split(write_config, tmp_path):
    overrides = ["data.task=multi_label", *write_tagged(tmp_path, tagged_rows(150, rare=6), "list")]
    for seed in range(5):
        data = load_data(load_config(write_config(), [*overrides, f"data.seed={seed}"]).data)
        rare = data.label_names.index("urgent")
        assert all(
            sum(row[rare] for row in data.labels[split]) >= 1 for split in ("train", "validation", "test")
        ), seed


TRUTH = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]])
PREDICTED = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
NAMES = ["a", "b", "c", "d"]


def test_metrics_on_a_hand_worked_case_match_scikit_learn_and_the_bootstrap_sums():
    logits = np.where(PREDICTED == 1, 2.0, -2.0) + np.linspace(-0.5, 0.5, 20).reshape(5, 4)
    scores = TASK.scores(TRUTH, logits, NAMES)
    # by hand: 4 true positives, 5 predicted, 7 true -> micro-F1 8/12; per label F1 1, 1, 0, 0 -> macro 0.5;
    # per text F1 2/3, 2/3, 1, 1 (nothing due, nothing given), 0 -> 3.333/5; exact sets: rows 3 and 4
    assert scores["micro_f1"] == pytest.approx(8 / 12)
    assert scores["macro_f1"] == pytest.approx(0.5)
    assert scores["samples_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1 + 0) / 5)
    assert scores["subset_accuracy"] == pytest.approx(2 / 5)
    assert scores["hamming_loss"] == pytest.approx(4 / 20)
    for name, average in (("micro_f1", "micro"), ("macro_f1", "macro")):
        assert scores[name] == pytest.approx(f1_score(TRUTH, PREDICTED, average=average, zero_division=0))
    assert scores["hamming_loss"] == pytest.approx(hamming_loss(TRUTH, PREDICTED))
    assert scores["lrap"] == pytest.approx(label_ranking_average_precision_score(TRUTH, expit(logits)))
    # the paired bootstrap's sums, unweighted, give the same scores
    summed = weighted_scores(TASK, TRUTH, [PREDICTED], NAMES, np.ones((1, len(TRUTH)), dtype=np.float32))
    for name in TASK.compared_metrics:
        assert summed[name][0, 0] == pytest.approx(scores[name]), name


def test_a_tuned_threshold_scores_the_best_f1_of_a_brute_force_search():
    rng = np.random.default_rng(3)
    for _ in range(20):
        truth = rng.integers(0, 2, 40)
        probability = np.clip(truth * 0.25 + rng.random(40) * 0.75, 0, 1).round(2)  # ties included
        f1_at = lambda t: f1_score(truth, probability >= t, zero_division=0)
        brute = max(f1_at(t) for t in np.linspace(0, 1, 1001))
        assert f1_at(best_f1_threshold(probability, truth)) == pytest.approx(brute)
    assert best_f1_threshold(np.array([0.2, 0.9]), np.array([0, 0])) == 0.5  # no positive: nothing to tune on


def test_decisions_use_each_labels_threshold():
    logits = np.log(np.array([[0.3, 0.6]]) / (1 - np.array([[0.3, 0.6]])))
    assert TASK.predict(logits).tolist() == [[0, 1]]
    assert MultiLabel([0.25, 0.7]).predict(logits).tolist() == [[1, 0]]
    decision = TASK.decide(np.array([[1, 0], [0, 1]]), np.array([[1.0, -1.0], [-1.0, 1.0]]), ["a", "b"], 0.3)
    assert decision["thresholds"] == {"a": 0.3, "b": 0.3} and TASK.decided(decision).thresholds.tolist() == [
        0.3,
        0.3,
    ]


def test_balanced_class_weights_weigh_each_labels_positives_by_its_negatives():
    labels = [[1, 0], [1, 0], [1, 1], [0, 0]]
    loss = TASK.training_loss(TrainingConfig(class_weights="balanced"), labels, ["a", "b"])
    logits, target = torch.zeros(1, 2), torch.tensor([[1.0, 1.0]])
    # pos_weight 1/3 for a (3 positives, 1 negative), 3 for b: -log(0.5) times each
    assert float(loss(type("Out", (), {"logits": logits}), target)) == pytest.approx(np.log(2) * (1 / 3 + 3))


def test_a_temperature_fitted_on_sigmoid_logits_scaled_by_a_known_factor_recovers_it():
    rng = np.random.default_rng(0)
    calibrated = rng.normal(0, 2, size=(3000, 4))
    truth = (rng.random(calibrated.shape) < expit(calibrated)).astype(int)
    assert fit_temperature(calibrated * 2.5, truth, TASK.calibration_loss) == pytest.approx(2.5, rel=0.05)


@pytest.mark.parametrize(
    "override, says",
    [
        ("few_shot.enabled=true", "few_shot.enabled"),
        ("training.loss=focal", "training.loss"),
        ("training.sampler=oversample", "training.sampler"),
        ("data.augment.enabled=true", "data.augment.enabled"),
        ("training.label_smoothing=0.1", "training.label_smoothing"),
        ("data.label_column=tags", "data.label_column"),
    ],
)
def test_settings_of_one_class_per_text_are_refused_in_one_line(write_config, override, says):
    with pytest.raises(ConfigError) as refused:
        load_config(write_config(), ["data.task=multi_label", "data.label_columns=[a,b]", override])
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_label_keys_are_refused_for_single_label_tasks(write_config):
    for override, says in (
        ("data.label_columns=[a,b]", "data.label_columns"),
        ("training.decision_threshold=0.3", "training.decision_threshold"),
    ):
        with pytest.raises(ConfigError, match=says):
            load_config(write_config(), [override])
    with pytest.raises(ConfigError, match="between 0 and 1"):
        load_config(write_config(), ["data.task=multi_label", "training.decision_threshold=1.5"])


@pytest.fixture(scope="module")
def tagged_run(tmp_path_factory, tiny_model_dir):
    """full and LoRA trained on tagged tickets, calibrated, in one output folder."""
    folder = tmp_path_factory.mktemp("tagged")
    overrides = write_tagged(folder, tagged_rows(160, seed=1), "separator")
    config = small_config(
        folder,
        tiny_model_dir,
        folder / "tags.csv",
        data={"task": "multi_label"},
        training={"num_epochs": 10, "learning_rate": 5e-3, "calibration": "temperature"},
        strategies={"lora": {"learning_rate": 3e-2}},
    )
    assert main.main(["--config", str(config), "--strategy", "full", "--strategy", "lora", *overrides]) == 0
    records = {r["strategy"]: r for r in results(folder)}
    cfg = load_config(config, overrides)
    return {
        "folder": folder,
        "config": config,
        "overrides": overrides,
        "records": records,
        "test_texts": load_data(cfg.data).texts["test"],
    }


def test_a_run_tunes_its_thresholds_on_validation_and_tests_with_them(tagged_run):
    record = tagged_run["records"]["full"]
    decision, test = record["decision"], record["test"]
    assert decision["setting"] == "tuned" and list(decision["thresholds"]) == record["dataset"]["label_names"]
    before, after = decision["validation"]["micro_f1"]
    assert after >= before  # the thresholds maximise each label's F1 on validation
    # validation during training was scored at thresholds tuned on it: the best epoch's score is theirs
    assert record["best_metric"] == pytest.approx(after)
    predictions = np.array(record["test_predictions"])
    assert predictions.shape == (len(record["test_labels"]), 3) and test["micro_f1"] > 0.6
    assert (
        set(test["per_class"]) == set(decision["thresholds"])
        and test["micro_f1"] > record["dataset"]["majority_baseline"]["micro_f1"]
    )
    ece_before, ece_after = record["calibration"]["validation"]["ece"]
    assert ece_after <= ece_before and record["test_uncalibrated"]["micro_f1"] == test["micro_f1"]


def test_predict_gives_every_label_at_or_above_its_threshold_with_its_probability(tagged_run, capsys):
    record = tagged_run["records"]["full"]
    predictor = Predictor.from_run(record["run_id"], tagged_run["folder"] / "outputs")
    thresholds = record["decision"]["thresholds"]
    rows = predictor.predict(tagged_run["test_texts"], top_k=3)
    given = [set(filter(None, row["predicted_labels"].split("|"))) for row in rows]
    assert [[int(name in labels) for name in thresholds] for labels in given] == record["test_predictions"]
    for row in rows:
        for name, p in zip(row["predicted_labels"].split("|"), row["probabilities"].split("|")):
            assert not name or float(p) >= thresholds[name] - 1e-4
        ranked = {row[f"top_{k}_label"]: row[f"top_{k}_probability"] for k in (1, 2, 3)}
        assert all(ranked[name] >= thresholds[name] for name in row["predicted_labels"].split("|") if name)
    assert (
        main.main(
            [
                "predict",
                "--config",
                str(tagged_run["config"]),
                *tagged_run["overrides"],
                "--run",
                record["run_id"],
                "--text",
                "refund money parcel courier",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "refund (" in out and "delivery (" in out


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_an_export_served_by_the_sigmoid_pipeline_gives_predicts_labels_with_the_thresholds(
    tagged_run, strategy
):
    record = tagged_run["records"][strategy]
    out = tagged_run["folder"] / f"export-{strategy}"
    assert (
        main.main(
            [
                "export",
                "--config",
                str(tagged_run["config"]),
                *tagged_run["overrides"],
                "--run",
                record["run_id"],
                "--out",
                str(out),
            ]
        )
        == 0
    )
    card = (out / "README.md").read_text()
    assert "thresholds.json" in card and 'function_to_apply="sigmoid"' in card and "Calibrated" in card
    texts = tagged_run["test_texts"]
    predictor = Predictor.from_run(record["run_id"], tagged_run["folder"] / "outputs")
    expected = [sorted(filter(None, row["predicted_labels"].split("|"))) for row in predictor.predict(texts)]
    code = (
        "import json, sys\nfrom transformers import pipeline\n"
        "thresholds = json.load(open(sys.argv[1] + '/thresholds.json'))\n"
        "tag = pipeline('text-classification', model=sys.argv[1], device='cpu', top_k=None, "
        "function_to_apply='sigmoid')\n"
        "print(json.dumps([sorted(s['label'] for s in scores if s['score'] >= thresholds[s['label']])"
        " for scores in tag(json.loads(sys.argv[2]), truncation=True)]))\n"
    )
    assert outside_the_project(code, out, texts) == expected
