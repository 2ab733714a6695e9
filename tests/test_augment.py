"""Augmentation: perturbed copies of training texts from the class's own words, seeded, for the minority
classes only by default, and never in validation or test."""

import dataclasses
from collections import Counter

from config import AugmentConfig, load_config
from data import augment_texts
from experiment import Inputs, plan_runs

TEXTS = [
    "refund my money now",
    "where is the refund",
    "charge twice on card",
    "invoice is wrong here",  # 4 refund
    "reset my password",
    "login fails again",  # 2 login
    "box never came",
]  # 1 delivery
LABELS = [0, 0, 0, 0, 1, 1, 2]


def test_minority_classes_get_copies_made_of_their_own_words():
    texts, labels = augment_texts(
        TEXTS, LABELS, AugmentConfig(enabled=True, copies=3, probability=0.3), seed=0
    )
    assert Counter(labels) == {1: 6, 2: 3}  # below the mean of 7/3 rows per class: login and delivery
    words = {
        label: {w for t, its in zip(TEXTS, LABELS) if its == label for w in t.split()} for label in (1, 2)
    }
    for text, label in zip(texts, labels):
        assert set(text.split()) <= words[label] and text.strip()
    assert any(text not in TEXTS for text in texts)  # perturbed, not copied


def test_balanced_classes_have_no_minority_to_augment_and_say_so(caplog):
    texts, labels = augment_texts(
        TEXTS[:4] + TEXTS[:4], [0] * 4 + [1] * 4, AugmentConfig(enabled=True), seed=0
    )
    assert (texts, labels) == ([], [])
    assert "minority_only adds nothing" in caplog.text


def test_every_class_without_minority_only_and_the_seed_decides():
    cfg = AugmentConfig(enabled=True, minority_only=False)
    texts, labels = augment_texts(TEXTS, LABELS, cfg, seed=1)
    assert Counter(labels) == Counter(LABELS)
    assert augment_texts(TEXTS, LABELS, cfg, seed=1) == (texts, labels)
    assert augment_texts(TEXTS, LABELS, cfg, seed=2)[0] != texts


def test_only_the_training_split_gains_rows_and_the_run_id_changes(write_config):
    config = write_config(data={"augment": {"enabled": True, "minority_only": False, "copies": 2}})
    cfg = load_config(config)
    [augmented] = plan_runs(cfg, ["full"])
    plain = dataclasses.replace(
        augmented, cfg=dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, augment=AugmentConfig()))
    )
    inputs = Inputs()
    data, with_copies = inputs.for_run(augmented)
    _, without = inputs.for_run(plain)
    assert len(inputs.data) == 1  # the data is loaded once for both
    for split in ("validation", "test"):
        assert (
            with_copies.ids[split] == without.ids[split]
            and with_copies.labels[split] == without.labels[split]
        )
    assert with_copies.ids["train"][: len(without.ids["train"])] == without.ids["train"]
    assert len(with_copies.ids["train"]) == 3 * len(
        without.ids["train"]
    ) and with_copies.augmented_rows == 2 * len(without.ids["train"])
    assert augmented.run_id(data.fingerprint) != plain.run_id(data.fingerprint)
