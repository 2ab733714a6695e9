"""The data report and the cleaning behind it: repeated and conflicting texts, leakage between splits,
token lengths and `model.max_length: auto`, on data built so the answers are known."""

import json

import numpy as np
import pandas as pd
import pytest

import main
from config import DataConfig
from conftest import labelled_rows
from data import load_data
from reporting.data_report import auto_max_length
from test_cli import results
from utils import ConfigError


def write_splits(folder, **splits):
    for split, rows in splits.items():
        pd.DataFrame(rows, columns=["text", "label"]).to_csv(folder / f"{split}.csv", index=False)
    return folder


def rows(texts, label):
    return [(text, label) for text in texts]


BASE = {
    "train": rows(["refund please", "money back", "invoice wrong", "charge twice"], "refund")
    + rows(["password lost", "login fails", "account locked", "email reset"], "login"),
    "validation": rows(["paid twice", "cannot login"], "refund"),
    "test": rows(["refund my box", "locked out"], "login"),
}


def test_repeated_texts_keep_one_copy_and_conflicting_ones_are_dropped_and_reported(tmp_path):
    train = BASE["train"] + [
        ("Refund  please", "refund"),
        ("refund please ", "refund"),  # repeats, same label
        ("where is it", "refund"),
        ("WHERE is it", "login"),
    ]  # one text, two labels
    data = load_data(DataConfig(path=str(write_splits(tmp_path, **{**BASE, "train": train}))))
    assert sorted(data.texts["train"]) == sorted(text for text, _ in BASE["train"])
    found = data.cleaning["train"]
    assert found["duplicate_rows"] == found["duplicates_dropped"] == 2
    assert (
        found["conflicting_texts"] == 1
        and found["conflicting_rows"] == found["conflicting_rows_dropped"] == 2
    )
    assert found["conflicting_examples"] == [{"text": "where is it", "labels": ["login", "refund"]}]

    kept = load_data(DataConfig(path=str(tmp_path), drop_duplicates=False))
    assert len(kept.texts["train"]) == len(train)
    assert kept.cleaning["train"]["duplicate_rows"] == 2 and kept.cleaning["train"]["duplicates_dropped"] == 0
    assert (
        kept.cleaning["train"]["conflicting_rows"] == 2
        and kept.cleaning["train"]["conflicting_rows_dropped"] == 0
    )


def test_texts_leaked_into_a_later_split_are_removed_from_it(tmp_path):
    validation = BASE["validation"] + [("Money back", "refund")]  # in train
    test = BASE["test"] + [("money back", "refund"), ("paid   twice", "refund")]  # in train; in validation
    folder = write_splits(tmp_path, train=BASE["train"], validation=validation, test=test)
    whole = load_data(DataConfig(path=str(folder)))  # a test file is scored whole, its unseen rows apart
    assert whole.texts["test"] == [text for text, _ in test] and whole.test_unseen == [0, 1]
    assert whole.cleaning["test"]["leaked"] == 2 and whole.cleaning["test"]["leaked_removed"] == 0
    data = load_data(DataConfig(path=str(folder), clean_given_test=True))
    assert data.texts["validation"] == ["paid twice", "cannot login"]
    assert data.texts["test"] == ["refund my box", "locked out"]
    assert data.texts["train"] == [text for text, _ in BASE["train"]]  # train never changes
    assert data.cleaning["validation"]["leaked"] == data.cleaning["validation"]["leaked_removed"] == 1
    assert data.cleaning["test"]["leaked"] == data.cleaning["test"]["leaked_removed"] == 2

    kept = load_data(DataConfig(path=str(folder), remove_leakage=False, clean_given_test=True))
    assert len(kept.texts["test"]) == 4 and kept.cleaning["test"]["leaked"] == 2
    assert kept.cleaning["test"]["leaked_removed"] == 0


def test_a_split_that_is_all_leakage_is_a_config_error(tmp_path):
    folder = write_splits(
        tmp_path,
        train=BASE["train"],
        validation=BASE["validation"],
        test=rows(["money back", "login fails"], "refund"),
    )
    with pytest.raises(ConfigError, match="every test text is also in an earlier split"):
        load_data(DataConfig(path=str(folder), clean_given_test=True))
    assert load_data(DataConfig(path=str(folder))).test_unseen == []  # scored whole: no row is unseen


def test_auto_max_length_is_the_95th_percentile_rounded_up_to_8_within_the_limit():
    lengths = np.arange(1, 101)  # 95th percentile 95.05
    assert auto_max_length(lengths, None) == 96
    assert auto_max_length(lengths, 64) == 64
    assert auto_max_length(np.full(10, 3), None) == 8
    assert auto_max_length(np.array([10] * 99 + [500]), 512) == 16  # one long outlier does not set the length


def test_the_report_is_saved_referenced_and_auto_length_used(write_config, tmp_path, caplog):
    data = pd.DataFrame(
        labelled_rows(per_class=30) + [{"text": "password password password " * 30, "label": "login"}]
    )
    data.to_csv(tmp_path / "tickets.csv", index=False)
    config = write_config(model={"max_length": "auto"}, data={"path": str(tmp_path / "tickets.csv")})
    caplog.set_level("INFO")
    assert main.main(["--config", str(config), "--strategy", "bitfit", "training.num_epochs=1"]) == 0
    [record] = results(tmp_path)
    reports = json.loads((tmp_path / "outputs" / "results" / "data_report.json").read_text())
    report = reports[record["dataset"]["fingerprint"]]
    assert record["dataset"]["report"] == f"data_report.json#{record['dataset']['fingerprint']}"
    lengths = report["token_lengths"]
    # texts of 3 to 10 words, each one token, plus [CLS] and [SEP]: the 95th percentile is at most 12 -> 16
    assert lengths["max_length"] == record["hyperparameters"]["max_length"] == 16
    assert "model.max_length auto: 16" in caplog.text
    assert lengths["train"]["max"] == 92 or lengths["validation"]["max"] == 92 or lengths["test"]["max"] == 92
    long_split = next(split for split in ("train", "validation", "test") if lengths[split]["max"] == 92)
    assert lengths[long_split]["truncated_share"] == pytest.approx(1 / report["sizes"][long_split])
    assert report["class_counts"]["train"] == record["dataset"]["label_distribution"]["train"]
    counts = report["class_counts"]["train"].values()
    assert report["imbalance_ratio"] == max(counts) / min(counts)
    assert sum(lengths["train"]["histogram"]) == report["sizes"]["train"]
    assert "imbalance ratio" in caplog.text and "truncated at max_length 16" in caplog.text
