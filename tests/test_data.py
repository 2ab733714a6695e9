import json
from collections import Counter

import pandas as pd
import pytest

from conftest import labelled_rows
from data import eval_batches, load_data, train_batches
from config import DataConfig
from utils import ConfigError


def test_csv_with_string_labels_is_split_stratified_and_named(csv_path):
    data = load_data(DataConfig(path=str(csv_path), validation_size=0.2, test_size=0.2, seed=1))
    assert data.label_names == ["delivery", "login", "refund"]
    assert data.sizes() == {"train": 54, "validation": 18, "test": 18}
    for split in ("validation", "test"):  # 30 rows per class: each held-out split gets 6 of each
        assert Counter(data.labels[split]) == {0: 6, 1: 6, 2: 6}
    all_texts = data.texts["train"] + data.texts["validation"] + data.texts["test"]
    assert sorted(all_texts) == sorted(pd.read_csv(csv_path)["text"])  # a partition: nothing lost or shared


def test_jsonl_with_string_labels(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in labelled_rows(per_class=20)))
    data = load_data(DataConfig(path=str(path)))
    assert data.label_names == ["delivery", "login", "refund"]
    assert sum(data.sizes().values()) == 60


def test_same_seed_same_splits_and_fingerprint(csv_path):
    first, second = (load_data(DataConfig(path=str(csv_path), seed=3)) for _ in range(2))
    assert first.texts == second.texts and first.fingerprint == second.fingerprint
    assert load_data(DataConfig(path=str(csv_path), seed=4)).fingerprint != first.fingerprint


def test_folder_with_its_own_test_split_keeps_it(tmp_path):
    rows = labelled_rows(per_class=20)
    pd.DataFrame(rows[:45]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[45:]).to_csv(tmp_path / "test.csv", index=False)
    data = load_data(DataConfig(path=str(tmp_path), validation_size=0.2))
    assert data.texts["test"] == [r["text"] for r in rows[45:]]
    assert data.sizes() == {"train": 36, "validation": 9, "test": 15}


def test_integer_labels_and_train_size_cap(tmp_path):
    frame = pd.DataFrame(labelled_rows(per_class=40))
    frame["label"] = frame["label"].map({"refund": 0, "delivery": 1, "login": 2})
    frame.to_csv(tmp_path / "ints.csv", index=False)
    full = load_data(DataConfig(path=str(tmp_path / "ints.csv")))
    capped = load_data(DataConfig(path=str(tmp_path / "ints.csv"), train_size=30))
    assert capped.label_names == ["0", "1", "2"]
    assert Counter(capped.labels["train"]) == {0: 10, 1: 10, 2: 10}
    assert capped.texts["test"] == full.texts["test"]  # the cap never changes what is evaluated


def test_rows_without_text_or_label_are_dropped(tmp_path):
    frame = pd.DataFrame(labelled_rows(per_class=20))
    frame.loc[0, "text"] = "   "
    frame.loc[1, "label"] = None
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    assert sum(load_data(DataConfig(path=str(tmp_path / "gaps.csv"))).sizes().values()) == 58


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda f: f.rename(columns={"text": "question"}),
            r"data\.text_column: column 'text' not in the train data; columns: question, label",
        ),
        (lambda f: f.assign(label="refund"), r"single class \('refund'\)"),
    ],
)
def test_data_mistakes_get_a_clear_message(tmp_path, change, message):
    change(pd.DataFrame(labelled_rows(per_class=20))).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ConfigError, match=message):
        load_data(DataConfig(path=str(tmp_path / "bad.csv")))


def test_label_unseen_in_training_is_named(tmp_path):
    rows = labelled_rows(per_class=20)
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame([{"text": "my card is lost", "label": "card_lost"}] + rows[:5]).to_csv(
        tmp_path / "test.csv", index=False
    )
    with pytest.raises(ConfigError, match="the test split has labels that training never saw: card_lost"):
        load_data(DataConfig(path=str(tmp_path)))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_data(DataConfig(path=str(tmp_path / "nope.csv")))
    (tmp_path / "rows.xlsx").write_text("x")
    with pytest.raises(ConfigError, match="allowed formats: .csv, .tsv, .json, .jsonl, .parquet"):
        load_data(DataConfig(path=str(tmp_path / "rows.xlsx")))


def test_train_batches_cover_every_row_once_group_lengths_and_depend_on_seed_and_epoch():
    lengths = [(i * 7919) % 50 + 1 for i in range(1000)]
    batches = train_batches(lengths, 16, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert train_batches(lengths, 16, seed=0, epoch=0) == batches  # resumable: a function of (seed, epoch)
    assert train_batches(lengths, 16, seed=0, epoch=1) != batches
    assert train_batches(lengths, 16, seed=1, epoch=0) != batches
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths)  # grouping by length wastes little on padding


def test_eval_batches_sorted_longest_first():
    batches = eval_batches([3, 9, 1, 7], 2)
    assert batches == [[1, 3], [0, 2]]


def test_eval_batches_keep_padded_tokens_under_the_limit():
    lengths = [40, 5, 6, 30, 5, 4, 6, 5, 3]
    batches = eval_batches(lengths, max_rows=4, max_tokens=24)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[:2] == [[0], [3]]  # a row longer than the limit still gets a batch of its own
    assert all(len(b) * max(lengths[i] for i in b) <= 24 for b in batches[2:])
    assert max(len(b) for b in batches) == 4  # the row cap holds as well
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)


def test_known_hub_data_set_uses_its_columns_and_class_names(monkeypatch):
    """The Hub is unreachable here: a local DatasetDict stands in for what load_dataset returns."""
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "coarse_label": datasets.ClassLabel(names=["ABBR", "DESC", "HUM"])}
    )
    rows = {"text": [f"question {i}" for i in range(60)], "coarse_label": [i % 3 for i in range(60)]}
    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows, features=features),
            "test": datasets.Dataset.from_dict(
                {"text": [f"test question {i}" for i in range(9)], "coarse_label": rows["coarse_label"][:9]},
                features=features,
            ),
        }
    )
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id: asked.append(hub_id) or fake)
    data = load_data(DataConfig(name="trec"))
    assert asked == ["CogComp/trec"]
    assert data.label_names == ["ABBR", "DESC", "HUM"]
    assert data.sizes() == {"train": 54, "validation": 6, "test": 9}


def test_unreachable_hub_says_so_and_how_to_work_offline(monkeypatch):
    import datasets

    def offline(hub_id):
        raise ConnectionError("Couldn't reach 'fancyzhx/ag_news' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        ConfigError, match="could not load Hub data set 'fancyzhx/ag_news'.*point data.path at a local file"
    ):
        load_data(DataConfig(name="ag_news"))


def test_non_utf8_file_is_named_with_the_fix(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9 order late,shipping\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text .*re-save it as UTF-8"):
        load_data(DataConfig(path=str(tmp_path / "latin1.csv")))


def test_the_tiny_test_tokenizer_knows_its_words(tiny_model_dir):
    """Every other test relies on texts reaching the model as words, not as [UNK]."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.unk_token_id not in tokenizer("refund parcel password")["input_ids"]


def test_a_test_split_the_data_gives_is_scored_whole_with_its_unseen_rows_apart(tmp_path):
    rows = labelled_rows(per_class=20)
    pd.DataFrame(rows[:45]).to_csv(tmp_path / "train.csv", index=False)
    test = rows[45:] + [rows[50], rows[0], rows[1]]  # a repeat within test, and two rows also in train
    pd.DataFrame(test).to_csv(tmp_path / "test.csv", index=False)
    data = load_data(DataConfig(path=str(tmp_path), validation_size=0.2))
    assert data.texts["test"] == [r["text"] for r in test]  # every row, in the file's order
    found = data.cleaning["test"]
    assert (
        found["duplicate_rows"],
        found["duplicates_dropped"],
        found["leaked"],
        found["leaked_removed"],
    ) == (1, 0, 2, 0)
    assert found["scored_whole"] and data.test_unseen == list(range(len(test) - 2))
    cleaned = load_data(DataConfig(path=str(tmp_path), validation_size=0.2, clean_given_test=True))
    assert len(cleaned.texts["test"]) == len(test) - 3 and cleaned.test_unseen is None
    carved = load_data(DataConfig(path=str(tmp_path / "train.csv"), validation_size=0.2))
    assert carved.test_unseen is None and "scored_whole" not in carved.cleaning["test"]


def test_a_run_reports_the_unseen_rows_beside_the_whole_test_split(write_config, tmp_path, capsys):
    import json

    import main

    rows = labelled_rows(per_class=20)
    (tmp_path / "given").mkdir()
    pd.DataFrame(rows[:45]).to_csv(tmp_path / "given" / "train.csv", index=False)
    pd.DataFrame(rows[45:] + rows[:6]).to_csv(tmp_path / "given" / "test.csv", index=False)
    config = write_config(data={"path": str(tmp_path / "given"), "validation_size": 0.2})
    assert main.main(["--config", str(config), "--strategy", "bitfit", "training.num_epochs=1"]) == 0
    [record] = json.loads((tmp_path / "outputs" / "results" / "all_results.json").read_text())["runs"]
    unseen = record["test_unseen"]
    assert record["dataset"]["sizes"]["test"] == 21 and unseen["examples"] == 15
    assert 0 <= unseen["macro_f1"] <= 1 and set(unseen) >= {"accuracy", "per_class", "confusion_matrix"}
    assert "test macro-F1, unseen rows" in capsys.readouterr().out  # beside test in the summary
    summary = pd.read_csv(tmp_path / "outputs" / "results" / "summary.csv")
    assert summary["test_unseen_macro_f1_mean"].tolist() == [unseen["macro_f1"]]
