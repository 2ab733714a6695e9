"""Every plot and the report, drawn from a small constructed results file."""

import base64
import json
import random
from html.parser import HTMLParser

import numpy as np

import visualize
from data import LabelledData
from reporting.data_report import build_report, save_report
from reporting.plots import caption as plot_caption
from tasks import TASKS
from utils import atomic_write_json

LABELS = ["billing", "shipping", "account"]


def record(strategy: str, seed: int, varied: dict, shots: int | None = None, draw: int | None = None) -> dict:
    rng = random.Random(f"{strategy}{seed}{varied}{shots}{draw}")
    truth = [i % 3 for i in range(30)]
    predictions = [t if rng.random() < 0.8 else (t + 1) % 3 for t in truth]
    logits = np.log(np.full((30, 3), 0.1))
    logits[range(30), predictions] = np.log(0.8)
    config_id = f"{strategy}-{json.dumps(varied, sort_keys=True)}-{shots}"
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e + rng.random() / 10,
            "val_loss": 1.2 / e + rng.random() / 10,
            "val_accuracy": 0.5 + e / 10,
            "val_macro_f1": 0.4 + e / 10 + rng.random() / 20,
            "lr": 1e-4,
            "seconds": 2.0,
        }
        for e in range(1, 4)
    ]
    return {
        "run_id": f"{config_id}-{seed}-{draw}",
        "config_id": config_id,
        "strategy": strategy,
        "status": "completed",
        "varied": varied,
        "seed": seed,
        "few_shot": {"shots_per_class": shots, "draw": draw} if shots else None,
        "model": "tiny",
        "hyperparameters": {"learning_rate": varied.get("learning_rate", 1e-4)},
        "dataset": {
            "name": "tickets",
            "fingerprint": "f" * 16,
            "sizes": {"train": 60, "validation": 30, "test": 30},
            "num_labels": 3,
            "label_names": LABELS,
            "label_distribution": {"train": {"billing": 30, "shipping": 20, "account": 10}},
            "majority_baseline": TASKS["classification"].baseline([0, 0, 1, 2], truth, LABELS),
        },
        "trainable_params": 1000 * varied.get("rank", 100),
        "total_params": 10**6,
        "history": history,
        "best_epoch": 3,
        "test": TASKS["classification"].test_report(truth, logits, LABELS),
        "test_predictions": predictions,
        "test_labels": truth,
        "train_time_s": 5.0 + seed,
        "peak_memory_mb": 900.0,
        "device": "cpu",
        "versions": {"torch": "2.13.0"},
        "finished_at": "2026-11-22T12:00:00",
    }


def write_results(folder, runs, metric="val_macro_f1"):
    results = folder / "results"
    texts = {
        "train": ["a b c"] * 30 + ["a b c d e f g"] * 20 + ["a"] * 10,
        "validation": ["a b"] * 30,
        "test": ["a b c d"] * 30,
    }
    labels = {"train": [0] * 30 + [1] * 20 + [2] * 10, "validation": [0, 1, 2] * 10, "test": [0, 1, 2] * 10}
    data = LabelledData("tickets", texts, labels, LABELS)
    lengths = {split: np.array([len(t.split()) + 2 for t in texts[split]]) for split in texts}
    report = build_report(data, lengths, 8, "tiny", TASKS["classification"])
    save_report({**report, "fingerprint": runs[0]["dataset"]["fingerprint"]}, results)
    atomic_write_json(results / "all_results.json", {"runs": runs})
    atomic_write_json(
        results / "experiment.json",
        {
            "config_file": "config.yaml",
            "command": "main.py",
            "run_ids": [r["run_id"] for r in runs],
            "config": {"training": {"early_stopping": {"metric": metric}}},
        },
    )


def test_every_plot_and_the_report_from_a_results_file(tmp_path, capsys):
    runs = [
        record(s, seed, {"learning_rate": lr})
        for s in ("full", "bitfit")
        for lr in (1e-4, 3e-4)
        for seed in (0, 1)
    ]
    runs += [
        record("lora", seed, {"learning_rate": lr, "rank": rank})
        for lr in (1e-3, 3e-3)
        for rank in (4, 16)
        for seed in (0, 1)
    ]
    runs += [
        record(s, 0, {}, shots, draw) for s in ("full", "lora") for shots in (2, 4, 8, 16) for draw in (0, 1)
    ]
    write_results(tmp_path, runs)
    assert visualize.main(["--output-dir", str(tmp_path)]) == 0
    expected = [
        "convergence_train_loss",
        "convergence_val_loss",
        "performance_comparison",
        "few_shot_learning",
        "lr_ablation",
        "lora_rank_ablation",
        "efficiency",
        "class_distribution",
        "length_distribution",
        "confusion_matrix_full",
        "confusion_matrix_lora",
        "confusion_matrix_bitfit",
        "per_class_f1",
        "calibration",
    ]
    for name in expected:
        png = (tmp_path / "plots" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 15_000, name
    skipped = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped")]
    # a grid's results: the search's plot is drawn from a real search in test_search.py
    assert skipped == ["skipped search_progress.png: no search in this experiment (search.method: optuna)"]
    report = (tmp_path / "report.html").read_text()
    page = parse_page(report)
    assert page.errors == [] and page.open == []  # every element is closed, in order
    # every plot is embedded exactly once, as the very file it names, with a caption on what to look for
    assert sorted(page.figures) == sorted(f"{name}.png" for name in expected)
    for name, (png, caption) in page.figures.items():
        assert png == (tmp_path / "plots" / name).read_bytes() and caption == plot_caption(name), name
    # a short document: the data, then the verdict, then the evidence, then how to reproduce it
    assert page.headings[:4] == [
        "Which fine-tuning strategy for tickets?",
        "Verdict",
        "Against lora, the best on validation",
        "Configurations",
    ]
    assert page.headings[-1] == "Reproduce"
    assert (
        "<tr class='chosen'>" in report and "<td>yes</td>" in report
    )  # the chosen configurations are marked
    assert "Every pair of chosen settings (" in report and "full vs lora" in report
    assert "imbalance ratio 3.0" in report and "<td>account</td><td>10</td>" in report
    assert (
        "<td>train</td><td>60</td><td>account (10)</td><td>billing (30)</td>" in report
    )  # split sizes as a table
    assert "The command, from the project folder: <code>python main.py</code>" in report


class Page(HTMLParser):
    """What a test needs of the report: unclosed or misnested elements, the headings, and each figure's
    embedded image and caption by the file name the caption gives."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.open, self.errors, self.headings, self.figures = [], [], [], {}
        self.text, self.image = None, None

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2", "figcaption", "code"):
            self.text = "" if tag != "code" or self.text is None else self.text
        if tag == "img":
            source = dict(attrs)["src"]
            assert source.startswith("data:image/png;base64,")  # self-contained: no external assets
            self.image = base64.b64decode(source.split(",", 1)[1])
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_data(self, data):
        if self.text is not None:
            self.text += data

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.open[-1] if self.open else None}>")
            return
        self.open.pop()
        if tag in ("h1", "h2"):
            self.headings.append(self.text.strip())
            self.text = None
        elif tag == "figcaption":
            caption, name = self.text.rsplit(" ", 1)
            self.figures[name] = (self.image, caption)
            self.text = None


def parse_page(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def test_plots_without_data_are_skipped_with_a_reason(tmp_path, capsys):
    write_results(tmp_path, [record("full", 0, {})])
    assert visualize.main(["--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "skipped few_shot_learning.png: needs few-shot runs at two or more shot counts" in out
    assert "skipped lr_ablation.png: needs two or more values of learning_rate for a strategy" in out
    assert "skipped efficiency.png: needs two or more strategies" in out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "calibration.png",
        "class_distribution.png",
        "confusion_matrix_full.png",
        "convergence_train_loss.png",
        "convergence_val_loss.png",
        "length_distribution.png",
        "per_class_f1.png",
        "performance_comparison.png",
    ]


def test_no_completed_runs_is_an_error(tmp_path, capsys):
    assert visualize.main(["--output-dir", str(tmp_path)]) == 2
    assert "no completed runs" in capsys.readouterr().err
