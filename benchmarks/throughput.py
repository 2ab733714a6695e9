"""Training and evaluation throughput of bertlab's loop beside the Hugging Face Trainer (+PEFT), in one process,
on the same model, data, hyperparameters and threads, alternating between the two per strategy:

    python benchmarks/throughput.py [--rows 3000] [--static-rows 320] [--strategy NAME ...]

Data: ../shared/datasets/banking77 when present, else the demo data. Writes benchmarks/results/throughput.json
and throughput.md. The Trainer runs with dynamic padding and train_sampling_strategy="group_by_length" (its
fastest setting here); full fine-tuning also runs once with every row padded to 128 tokens, as many tutorials do.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments  # noqa: E402

from data import load_data, tokenize  # noqa: E402
from model import STRATEGIES, build_model, load_tokenizer  # noqa: E402
from trainer import evaluate, make_accelerator, train  # noqa: E402
from utils import atomic_write_json, library_versions, load_config, set_seed, strategy_settings  # noqa: E402

BANKING77 = ROOT.parent / "shared" / "datasets" / "banking77"


def ours(cfg, data, encoded, strategy: str, workdir: Path) -> dict:
    set_seed(cfg.training.seed)
    model = build_model(cfg, strategy, data.label_names)
    accelerator = make_accelerator(False)
    result = train(model, encoded, cfg, strategy_settings(cfg, strategy)["learning_rate"], workdir / f"ours-{strategy}",
                   accelerator, {"strategy": strategy})
    start = time.perf_counter()
    val = evaluate(model, encoded, "validation", cfg.training.eval_batch_size, accelerator)
    eval_seconds = time.perf_counter() - start
    return {"train_samples_per_s": result["train_samples_per_s"],
            "eval_samples_per_s": len(encoded.labels["validation"]) / eval_seconds, "val_accuracy": val["accuracy"]}


def hf_trainer(cfg, data, encoded, tokenizer, strategy: str, workdir: Path, static: bool = False, rows: int | None = None) -> dict:
    set_seed(cfg.training.seed)
    model = build_model(cfg, strategy, data.label_names)
    t = cfg.training

    def dataset(split, limit=None):
        return datasets.Dataset.from_dict({"input_ids": encoded.ids[split][:limit], "labels": encoded.labels[split][:limit]})

    collator = (DataCollatorWithPadding(tokenizer, padding="max_length", max_length=cfg.model.max_length) if static
                else DataCollatorWithPadding(tokenizer))
    args = TrainingArguments(
        output_dir=str(workdir / f"trainer-{strategy}"), per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size, learning_rate=strategy_settings(cfg, strategy)["learning_rate"],
        num_train_epochs=1, weight_decay=t.weight_decay, warmup_steps=t.warmup_ratio, max_grad_norm=t.max_grad_norm,
        lr_scheduler_type="linear", train_sampling_strategy="random" if static else "group_by_length",
        save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        seed=t.seed, label_names=["labels"])
    trainer = Trainer(model=model, args=args, train_dataset=dataset("train", rows), eval_dataset=dataset("validation"),
                      data_collator=collator,
                      compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())})
    train_metrics = trainer.train().metrics
    if static:
        return {"train_samples_per_s": train_metrics["train_samples_per_second"]}
    eval_metrics = trainer.evaluate()
    return {"train_samples_per_s": train_metrics["train_samples_per_second"],
            "eval_samples_per_s": eval_metrics["eval_samples_per_second"], "val_accuracy": eval_metrics["eval_accuracy"]}


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matmul peak, measured here: the yardstick for model FLOP utilisation."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="training rows (stratified sample)")
    parser.add_argument("--static-rows", type=int, default=320, help="rows for the slow pad-to-128 Trainer run")
    parser.add_argument("--strategy", action="append", choices=sorted(STRATEGIES))
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    data_path = BANKING77 if BANKING77.is_dir() else ROOT / "examples" / "support_tickets.csv"
    cfg = load_config(ROOT / "config.yaml", [f"data.path={data_path}", f"data.train_size={args.rows}",
                                             "training.num_epochs=1", "model.max_length=128",
                                             "training.early_stopping.enabled=false"])
    data = load_data(cfg.data)
    tokenizer = load_tokenizer(cfg)
    encoded = tokenize(data, tokenizer, cfg.model.max_length)
    lengths = [len(x) for x in encoded.ids["train"]]
    non_embedding = sum(p.numel() for n, p in build_model(cfg, "full", data.label_names).named_parameters()
                        if "embeddings" not in n)
    peak = matmul_gflops()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for strategy in args.strategy or list(STRATEGIES):
            mine = ours(cfg, data, encoded, strategy, workdir)
            reference = hf_trainer(cfg, data, encoded, tokenizer, strategy, workdir)
            row = {"strategy": strategy, "ours": mine, "trainer": reference,
                   "train_ratio": mine["train_samples_per_s"] / reference["train_samples_per_s"],
                   "eval_ratio": mine["eval_samples_per_s"] / reference["eval_samples_per_s"]}
            if strategy == "full":
                row["trainer_static_128"] = hf_trainer(cfg, data, encoded, tokenizer, strategy, workdir, static=True,
                                                       rows=args.static_rows)
                row["static_ratio"] = mine["train_samples_per_s"] / row["trainer_static_128"]["train_samples_per_s"]
                # 6 FLOPs per parameter and token (forward + backward), counting real tokens only
                tokens_per_s = mine["train_samples_per_s"] * float(np.mean(lengths))
                row["ours_gflops"] = 6 * non_embedding * tokens_per_s / 1e9
                row["share_of_matmul_peak"] = row["ours_gflops"] / peak
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                          "processor": platform.processor(), "fp32_matmul_gflops": peak},
              "data": {"path": str(data_path), "train_rows": len(lengths), "mean_tokens": float(np.mean(lengths)),
                       "validation_rows": len(encoded.labels["validation"])},
              "settings": {"batch_size": cfg.training.batch_size, "max_length": cfg.model.max_length, "epochs": 1},
              "versions": library_versions(), "rows": rows}
    out = ROOT / "benchmarks" / "results"
    atomic_write_json(out / "throughput.json", report)
    (out / "throughput.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']['cpu_threads']} threads, {report['machine']['platform']}, measured fp32 "
             f"matmul peak {report['machine']['fp32_matmul_gflops']:.0f} GFLOP/s. Data: {report['data']['train_rows']} "
             f"training rows (mean {report['data']['mean_tokens']:.1f} tokens), one epoch, batch "
             f"{report['settings']['batch_size']}. Trainer: dynamic padding + group_by_length.", "",
             "| strategy | train/s ours | train/s Trainer | ratio | eval/s ours | eval/s Trainer | ratio | "
             "val acc ours | val acc Trainer |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        o, t = r["ours"], r["trainer"]
        lines.append(f"| {r['strategy']} | {o['train_samples_per_s']:.1f} | {t['train_samples_per_s']:.1f} | "
                     f"{r['train_ratio']:.2f} | {o['eval_samples_per_s']:.0f} | {t['eval_samples_per_s']:.0f} | "
                     f"{r['eval_ratio']:.2f} | {o['val_accuracy']:.3f} | {t['val_accuracy']:.3f} |")
    full = next((r for r in report["rows"] if "static_ratio" in r), None)
    if full:
        lines += ["", f"Full fine-tuning: Trainer padding every row to 128: "
                  f"{full['trainer_static_128']['train_samples_per_s']:.1f} samples/s; ours / static = "
                  f"{full['static_ratio']:.1f}x. Ours achieves {full['ours_gflops']:.0f} GFLOP/s "
                  f"({100 * full['share_of_matmul_peak']:.0f}% of the measured matmul peak)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
