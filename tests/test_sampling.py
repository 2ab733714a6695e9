"""Over- and under-sampling: only the training split is resampled, every class equally often per epoch,
the same rows for the same (seed, epoch)."""

from collections import Counter

import numpy as np
import pandas as pd

import main
from conftest import labelled_rows
from data import epoch_rows
from test_cli import results

LABELS = [0] * 10 + [1] * 4 + [2] * 2


def test_oversampling_draws_every_class_up_to_the_largest_keeping_its_own_rows():
    rows = epoch_rows(LABELS, "oversample", seed=1, epoch=0)
    assert Counter(np.asarray(LABELS)[rows].tolist()) == {0: 10, 1: 10, 2: 10}
    assert set(range(16)) <= set(rows.tolist())  # each class's own rows first, then repeats


def test_undersampling_draws_a_fresh_subset_of_every_class_down_to_the_smallest():
    epochs = [epoch_rows(LABELS, "undersample", seed=1, epoch=e) for e in range(4)]
    for rows in epochs:
        assert (
            Counter(np.asarray(LABELS)[rows].tolist()) == {0: 2, 1: 2, 2: 2} and len(set(rows.tolist())) == 6
        )
    assert len({tuple(rows.tolist()) for rows in epochs}) > 1


def test_samples_are_a_function_of_seed_and_epoch():
    for sampler in ("oversample", "undersample"):
        same = [epoch_rows(LABELS, sampler, seed=3, epoch=2) for _ in range(2)]
        assert np.array_equal(*same)
        assert not np.array_equal(same[0], epoch_rows(LABELS, sampler, seed=3, epoch=3))
    assert epoch_rows(LABELS, "random", seed=3, epoch=2).tolist() == list(range(16))


def test_sampling_never_touches_validation_or_test(write_config, tmp_path):
    rows = labelled_rows(per_class=30)
    path = tmp_path / "imbalanced.csv"
    pd.DataFrame(
        [r for r in rows if r["label"] != "login"] + [r for r in rows if r["label"] == "login"][:6]
    ).to_csv(path, index=False)
    config = write_config(
        data={"path": str(path)},
        training={"num_epochs": 2, "early_stopping": {"enabled": False}},
        sweep={"training.sampler": ["random", "oversample", "undersample"]},
    )
    assert main.main(["--config", str(config), "--strategy", "bitfit"]) == 0
    by_sampler = {r["hyperparameters"]["sampler"]: r for r in results(tmp_path)}
    assert {r["dataset"]["sizes"]["train"] for r in by_sampler.values()} == {40}  # 18 + 18 + 4 distinct rows
    for record in by_sampler.values():
        assert record["dataset"]["sizes"] == by_sampler["random"]["dataset"]["sizes"]
        assert record["test_labels"] == by_sampler["random"]["test_labels"]
    # optimizer steps per epoch: ceil(rows drawn / 8)
    assert [by_sampler[s]["optimizer_steps"] for s in ("random", "oversample", "undersample")] == [
        2 * 5,
        2 * 7,
        2 * 2,
    ]
