"""A whole experiment, end to end, with bertlab and with the same runs scripted around the Hugging Face Trainer:

    python benchmarks/experiment.py [--seeds 3] [--epochs 3] [--data PATH] [--strategy NAME ...] [--name experiment]

Every enabled strategy x seed trains for --epochs epochs with validation after each, keeps the best epoch's
weights (chosen on validation macro-F1) and is scored on test. bertlab runs as `python main.py` would (its
own process state, checkpoints, records and summary); the Trainer script does what a user would write:
tokenize once, then per run build the model (the same strategy code), train with per-epoch evaluation and
saving, load the best model at the end, and predict on test. Wall-clock time covers everything after the
imports, for both. Data: the demo data unless --data. Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from sklearn.metrics import f1_score
from transformers import EarlyStoppingCallback, Trainer

from throughput import CUDA, ROOT, collator, examples, trainer_arguments

import main as bertlab  # noqa: E402  (throughput put the project root on sys.path)
from data import load_data, tokenize  # noqa: E402
from model import build_model, load_tokenizer  # noqa: E402
from strategies import STRATEGIES  # noqa: E402
from config import load_config  # noqa: E402
from records.measure import library_versions  # noqa: E402
from utils import atomic_write_json, set_seed  # noqa: E402


def macro_f1(prediction) -> dict:
    return {
        "macro_f1": f1_score(prediction.label_ids, np.argmax(prediction.predictions, -1), average="macro")
    }


def trainer_experiment(
    cfg, strategies: list[str], seeds: list[int], workdir: Path
) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    data = load_data(cfg.data)
    tokenizer = load_tokenizer(cfg)
    encoded = tokenize(data, tokenizer, cfg.model.max_length)
    patience = cfg.training.early_stopping.patience
    runs = []
    for strategy in strategies:
        for seed in seeds:
            cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, seed=seed))
            set_seed(seed)
            model = build_model(cfg, strategy, data.label_names)
            args = trainer_arguments(
                cfg,
                strategy,
                workdir / f"{strategy}-{seed}",
                num_train_epochs=cfg.training.num_epochs,
                eval_strategy="epoch",
                save_strategy="epoch",
                logging_strategy="epoch",
                load_best_model_at_end=True,
                metric_for_best_model="macro_f1",
                greater_is_better=True,
                save_total_limit=2,
            )
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=examples(encoded, "train"),
                eval_dataset=examples(encoded, "validation"),
                data_collator=collator(cfg, tokenizer),
                compute_metrics=macro_f1,
                callbacks=[EarlyStoppingCallback(patience)],
            )
            trainer.train()
            test = trainer.predict(examples(encoded, "test"))
            # compared with the label_ids the Trainer returns: its evaluation order may group rows by length
            runs.append(
                {
                    "strategy": strategy,
                    "seed": seed,
                    "test_accuracy": float((np.argmax(test.predictions, -1) == test.label_ids).mean()),
                }
            )
    return time.perf_counter() - start, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default=str(ROOT / "examples" / "support_tickets.csv"))
    parser.add_argument("--strategy", action="append", choices=sorted(STRATEGIES))
    parser.add_argument("--name", default="experiment")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    strategies, seeds = args.strategy or list(STRATEGIES), list(range(args.seeds))
    shared = [
        f"data.path={args.data}",
        f"training.num_epochs={args.epochs}",
    ]  # the Trainer script loops over seeds itself
    timings, accuracies = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        # bertlab first, then the Trainer script: both start from files on disk, neither reuses the other's work
        start = time.perf_counter()
        status = bertlab.main(
            [
                "--config",
                str(ROOT / "config.yaml"),
                *[f"--strategy={s}" for s in strategies],
                *shared,
                f"training.seeds={seeds}",
                f"output.dir={tmp}/bertlab",
            ]
        )
        timings["bertlab"] = time.perf_counter() - start
        records = json.loads((Path(tmp) / "bertlab" / "results" / "all_results.json").read_text())["runs"]
        assert status == 0, [r.get("error") for r in records]
        accuracies["bertlab"] = {
            s: [r["test"]["accuracy"] for r in records if r["strategy"] == s] for s in strategies
        }
        cfg = load_config(ROOT / "config.yaml", shared)
        timings["trainer"], runs = trainer_experiment(cfg, strategies, seeds, Path(tmp) / "trainer")
        accuracies["trainer"] = {
            s: [r["test_accuracy"] for r in runs if r["strategy"] == s] for s in strategies
        }
    report = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if CUDA else None,
        },
        "settings": {
            "data": args.data,
            "strategies": strategies,
            "seeds": len(seeds),
            "epochs": args.epochs,
            "runs": len(strategies) * len(seeds),
        },
        "seconds": timings,
        "ratio": timings["trainer"] / timings["bertlab"],
        "test_accuracy": accuracies,
        "versions": library_versions(),
    }
    out = ROOT / "benchmarks" / "results"
    atomic_write_json(out / f"{args.name}.json", report)
    (out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    s, machine = report["settings"], report["machine"]
    lines = [
        f"Machine: {machine['gpu'] or str(machine['cpu_threads']) + ' CPU threads'}, {machine['platform']}. "
        f"{s['runs']} runs: {', '.join(s['strategies'])} x {s['seeds']} seeds x up to {s['epochs']} epochs "
        f"(validation each epoch, best epoch restored, test at the end) on {Path(s['data']).name}.",
        "",
        "| | bertlab | Trainer script | Trainer / bertlab |",
        "|---|---|---|---|",
        f"| wall-clock seconds | {report['seconds']['bertlab']:.0f} | {report['seconds']['trainer']:.0f} | "
        f"{report['ratio']:.2f} |",
        "",
        "| strategy | test accuracy bertlab (mean over seeds) | Trainer |",
        "|---|---|---|",
    ]
    for strategy in s["strategies"]:
        ours, theirs = (
            report["test_accuracy"]["bertlab"][strategy],
            report["test_accuracy"]["trainer"][strategy],
        )
        lines.append(f"| {strategy} | {np.mean(ours):.3f} | {np.mean(theirs):.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
