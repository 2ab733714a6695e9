"""Training and evaluation throughput of bertlab's loop beside the Hugging Face Trainer (+PEFT), in one process,
on the same model, data, hyperparameters and threads, alternating between the two per strategy:

    python benchmarks/throughput.py [--rows 3000] [--static-rows 320] [--strategy NAME ...]
        [--model NAME_OR_PATH] [--batch-size 32] [--max-length 128] [--fill-to-max-length] [--repeats 1]
        [--name throughput]

Data: ../shared/datasets/banking77 when present (or --data PATH), else the demo data. Writes
benchmarks/results/<name>.json and <name>.md. The Trainer runs with dynamic padding and
train_sampling_strategy="group_by_length" (its fastest setting here); full fine-tuning also runs once with
every row padded to max_length, as many tutorials do. On a CUDA GPU both loops use fp16 mixed precision and
the yardstick is the measured fp16 matmul peak; --fill-to-max-length repeats each text until it fills
max_length tokens, so every row is exactly that long (for model FLOP utilisation at a fixed length).
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments  # noqa: E402

from data import load_data, tokenize  # noqa: E402
from model import build_model, load_tokenizer  # noqa: E402
from strategies import STRATEGIES  # noqa: E402
from config import load_config, strategy_settings  # noqa: E402
from records.measure import PeakMemory, library_versions  # noqa: E402
from tasks import TASKS  # noqa: E402
from trainer import TrainJob, eval_batch_tokens, evaluate, make_accelerator, train  # noqa: E402
from utils import atomic_write_json, set_seed  # noqa: E402

BANKING77 = ROOT.parent / "shared" / "datasets" / "banking77"


def default_data_path() -> Path:
    """banking77 from ../shared when present, else the demo data that ships with the project."""
    return BANKING77 if BANKING77.is_dir() else ROOT / "examples" / "support_tickets.csv"


CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TRAINER_EVAL_BATCH_SIZES = (8, 16, 32, 64, 256) if CUDA else (8, 16, 32, 64)


def ours(cfg, data, encoded, strategy: str, workdir: Path) -> dict:
    set_seed(cfg.training.seed)
    memory = PeakMemory(DEVICE)
    model = build_model(cfg, strategy, data.label_names)
    accelerator = make_accelerator(cfg.training.fp16)
    job = TrainJob(
        cfg,
        strategy_settings(cfg, strategy),
        workdir / f"ours-{strategy}",
        {"strategy": strategy},
    )
    result = train(model, encoded, job, accelerator)
    peak_mb = memory.stop()[0]  # training's peak, as for the Trainer
    start = time.perf_counter()
    val = evaluate(model, encoded, "validation", cfg.training, accelerator, TASKS[cfg.data.task])
    eval_seconds = time.perf_counter() - start
    return {
        "train_samples_per_s": result.train_samples_per_s,
        "eval_samples_per_s": len(encoded.labels["validation"]) / eval_seconds,
        "val_accuracy": val["accuracy"],
        "peak_memory_mb": peak_mb,
    }


def examples(encoded, split: str, limit: int | None = None) -> list[dict]:
    """A split as a list of examples: all the Trainer needs, also for group_by_length."""
    return [
        {"input_ids": ids, "labels": label}
        for ids, label in zip(encoded.ids[split][:limit], encoded.labels[split][:limit])
    ]


def trainer_arguments(cfg, strategy: str, output_dir: Path, **settings) -> TrainingArguments:
    """The Trainer's arguments for the hyperparameters bertlab's loop uses; `settings` adds or replaces."""
    t = cfg.training
    return TrainingArguments(
        **{
            "output_dir": str(output_dir),
            "per_device_train_batch_size": t.batch_size,
            "per_device_eval_batch_size": t.eval_batch_size,
            "learning_rate": strategy_settings(cfg, strategy).learning_rate,
            "num_train_epochs": 1,
            "weight_decay": t.weight_decay,
            "warmup_steps": t.warmup_ratio,
            "max_grad_norm": t.max_grad_norm,
            "lr_scheduler_type": "linear",
            "train_sampling_strategy": "group_by_length",
            "save_strategy": "no",
            "logging_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "use_cpu": not CUDA,
            "fp16": CUDA and t.fp16,
            "seed": t.seed,
            "label_names": ["labels"],
            **settings,
        }
    )


def collator(cfg, tokenizer, static: bool = False) -> DataCollatorWithPadding:
    # On CUDA both pad to multiples of 8 (tensor cores, fewer distinct shapes), as the Trainer docs advise with fp16.
    if static:
        return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=cfg.model.max_length)
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if CUDA and cfg.training.fp16 else None)


def accuracy(prediction) -> dict:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def hf_trainer(
    cfg, data, encoded, tokenizer, strategy: str, workdir: Path, static: bool = False, rows: int | None = None
) -> dict:
    set_seed(cfg.training.seed)
    memory = PeakMemory(DEVICE)
    model = build_model(cfg, strategy, data.label_names)
    args = trainer_arguments(
        cfg,
        strategy,
        workdir / f"trainer-{strategy}",
        train_sampling_strategy="random" if static else "group_by_length",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=examples(encoded, "train", rows),
        eval_dataset=examples(encoded, "validation"),
        data_collator=collator(cfg, tokenizer, static),
        compute_metrics=accuracy,
    )
    train_metrics = trainer.train().metrics
    peak_mb = memory.stop()[0]
    if static:
        return {"train_samples_per_s": train_metrics["train_samples_per_second"], "peak_memory_mb": peak_mb}
    eval_metrics = trainer.evaluate()
    # The configured eval batch is not the Trainer's fastest: it pads each batch to its longest row, so smaller
    # batches waste less. Its best evaluation batch size is searched too, so that no ratio flatters us.
    eval_speeds = {}
    for batch_size in TRAINER_EVAL_BATCH_SIZES:
        trainer.args.per_device_eval_batch_size = batch_size
        eval_speeds[batch_size] = trainer.evaluate()["eval_samples_per_second"]
    best = max(eval_speeds, key=eval_speeds.get)
    return {
        "train_samples_per_s": train_metrics["train_samples_per_second"],
        "eval_samples_per_s": eval_metrics["eval_samples_per_second"],
        "val_accuracy": eval_metrics["eval_accuracy"],
        "best_eval_samples_per_s": eval_speeds[best],
        "best_eval_batch_size": best,
        "peak_memory_mb": peak_mb,
    }


def median_run(runs: list[dict]) -> dict:
    """Per figure, the median over repeats; the spread (min-max of training samples/s) is kept to show the noise."""
    speeds = [r["train_samples_per_s"] for r in runs]
    merged = {
        key: float(np.median([r[key] for r in runs])) if runs[0][key] is not None else None for key in runs[0]
    }
    return {**merged, "train_samples_per_s_range": [min(speeds), max(speeds)], "repeats": len(runs)}


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """This machine's matmul peak in the precision training uses (fp16 on CUDA, fp32 on CPU), measured here:
    the yardstick for model FLOP utilisation."""
    if CUDA:
        size, repeats = 8192, 50
    kwargs = {"device": "cuda", "dtype": torch.float16} if CUDA else {}
    a, b = torch.randn(size, size, **kwargs), torch.randn(size, size, **kwargs)
    for _ in range(3):
        a @ b
    if CUDA:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if CUDA:
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="training rows (stratified sample)")
    parser.add_argument(
        "--static-rows", type=int, default=320, help="rows for the slow pad-to-128 Trainer run"
    )
    parser.add_argument("--strategy", action="append", choices=sorted(STRATEGIES))
    parser.add_argument("--model", default="minilm", help="model.name: bundled alias, Hub id or folder")
    parser.add_argument(
        "--data", help="data.path (default: banking77 from ../shared when present, else the demo data)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--fill-to-max-length", action="store_true", help="repeat each text to fill max_length"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per loop and strategy; the median is reported"
    )
    parser.add_argument(
        "--name", default="throughput", help="file name of the results in benchmarks/results/"
    )
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    data_path = args.data or default_data_path()
    cfg = load_config(
        ROOT / "config.yaml",
        [
            f"data.path={data_path}",
            f"data.train_size={args.rows}",
            "training.num_epochs=1",
            f"model.max_length={args.max_length}",
            f"model.name={args.model}",
            f"training.batch_size={args.batch_size}",
            "training.early_stopping.enabled=false",
        ],
    )
    data = load_data(cfg.data)
    if args.fill_to_max_length:
        data.texts = {
            split: [" ".join([text] * args.max_length) for text in texts]
            for split, texts in data.texts.items()
        }
    tokenizer = load_tokenizer(cfg)
    encoded = tokenize(data, tokenizer, cfg.model.max_length)
    lengths = [len(x) for x in encoded.ids["train"]]
    non_embedding = sum(
        p.numel()
        for n, p in build_model(cfg, "full", data.label_names).named_parameters()
        if "embeddings" not in n
    )
    peak = matmul_gflops()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # one-time CUDA start-up (context, lazily loaded kernels, cuBLAS handles) belongs to neither loop
        if CUDA:
            warm_rows = 20 * args.batch_size
            ours(cfg, data, encoded.with_train_rows(list(range(warm_rows))), "full", workdir)
            hf_trainer(cfg, data, encoded, tokenizer, "full", workdir, rows=warm_rows)
        for strategy in args.strategy or list(STRATEGIES):
            mine_runs, reference_runs = [], []
            for repeat in range(args.repeats):  # alternating which loop goes first cancels order effects
                pair = [
                    lambda: mine_runs.append(ours(cfg, data, encoded, strategy, workdir)),
                    lambda: reference_runs.append(
                        hf_trainer(cfg, data, encoded, tokenizer, strategy, workdir)
                    ),
                ]
                for run in pair[::-1] if repeat % 2 else pair:
                    run()
            mine, reference = median_run(mine_runs), median_run(reference_runs)
            row = {
                "strategy": strategy,
                "ours": mine,
                "trainer": reference,
                "train_ratio": mine["train_samples_per_s"] / reference["train_samples_per_s"],
                "eval_ratio": mine["eval_samples_per_s"] / reference["eval_samples_per_s"],
                "best_eval_ratio": mine["eval_samples_per_s"] / reference["best_eval_samples_per_s"],
            }
            if strategy == "full":
                row["trainer_static_128"] = hf_trainer(
                    cfg, data, encoded, tokenizer, strategy, workdir, static=True, rows=args.static_rows
                )
                row["static_ratio"] = (
                    mine["train_samples_per_s"] / row["trainer_static_128"]["train_samples_per_s"]
                )
                # 6 FLOPs per parameter and token (forward + backward), counting real tokens only
                tokens_per_s = mine["train_samples_per_s"] * float(np.mean(lengths))
                row["ours_gflops"] = 6 * non_embedding * tokens_per_s / 1e9
                row["share_of_matmul_peak"] = row["ours_gflops"] / peak
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "matmul_gflops": peak,
            "gpu": torch.cuda.get_device_name() if CUDA else None,
            "precision": "fp16 mixed" if CUDA and cfg.training.fp16 else "fp32",
        },
        "data": {
            "path": str(data_path),
            "train_rows": len(lengths),
            "mean_tokens": float(np.mean(lengths)),
            "validation_rows": len(encoded.labels["validation"]),
        },
        "settings": {
            "model": args.model,
            "batch_size": cfg.training.batch_size,
            "eval_batch_size": cfg.training.eval_batch_size,
            "eval_batch_tokens": eval_batch_tokens(cfg.training, DEVICE),
            "max_length": cfg.model.max_length,
            "filled_to_max_length": args.fill_to_max_length,
            "epochs": 1,
            "repeats": args.repeats,
        },
        "versions": library_versions(),
        "rows": rows,
    }
    out = ROOT / "benchmarks" / "results"
    atomic_write_json(out / f"{args.name}.json", report)
    (out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


def speed(run: dict) -> str:
    low, high = run.get("train_samples_per_s_range", (None, None))
    spread = f" ({low:.0f}-{high:.0f})" if run.get("repeats", 1) > 1 else ""
    return f"{run['train_samples_per_s']:.1f}{spread}"


def megabytes(run: dict) -> str:
    return "-" if run.get("peak_memory_mb") is None else f"{run['peak_memory_mb']:.0f}"


def markdown(report: dict) -> str:
    machine, settings = report["machine"], report["settings"]
    device = machine.get("gpu") or f"{machine['cpu_threads']} CPU threads"
    lines = [
        f"Machine: {device}, {machine['platform']}, {machine.get('precision', 'fp32')}; measured matmul peak "
        f"{machine.get('matmul_gflops', machine.get('fp32_matmul_gflops')):.0f} GFLOP/s. Model "
        f"{settings.get('model', 'minilm')}, max_length {settings['max_length']}"
        f"{' (every row filled to it)' if settings.get('filled_to_max_length') else ''}. Data: "
        f"{report['data']['train_rows']} training rows (mean {report['data']['mean_tokens']:.1f} tokens), one "
        f"epoch, batch {settings['batch_size']}, median of {settings.get('repeats', 1)} alternating run(s). Trainer: dynamic padding + group_by_length"
        f"{' (both loops pad to multiples of 8; timed after an untimed warm-up of each)' if machine.get('gpu') else ''}"
        f" (which in transformers 5 also sorts its evaluation batches by length). Our evaluation batches: at most "
        f"{settings.get('eval_batch_size', 128)} rows and {settings.get('eval_batch_tokens') or 'any number of'} padded tokens.",
        "",
        f"| strategy | train/s ours | train/s Trainer | ratio | eval/s ours | eval/s Trainer (batch "
        f"{settings.get('eval_batch_size', 128)}) | ratio | eval/s Trainer, its best batch | ratio | "
        "peak MB ours | peak MB Trainer | val acc ours | val acc Trainer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        o, t = r["ours"], r["trainer"]
        best = (
            f"{t['best_eval_samples_per_s']:.0f} ({t['best_eval_batch_size']:.0f}) | {r['best_eval_ratio']:.2f}"
            if "best_eval_ratio" in r
            else "- | -"
        )
        lines.append(
            f"| {r['strategy']} | {speed(o)} | {speed(t)} | "
            f"{r['train_ratio']:.2f} | {o['eval_samples_per_s']:.0f} | {t['eval_samples_per_s']:.0f} | "
            f"{r['eval_ratio']:.2f} | {best} | {megabytes(o)} | {megabytes(t)} | "
            f"{o['val_accuracy']:.3f} | {t['val_accuracy']:.3f} |"
        )
    full = next((r for r in report["rows"] if "static_ratio" in r), None)
    if full:
        lines += [
            "",
            f"Full fine-tuning: Trainer padding every row to {settings['max_length']}: "
            f"{full['trainer_static_128']['train_samples_per_s']:.1f} samples/s; ours / static = "
            f"{full['static_ratio']:.1f}x. Ours achieves {full['ours_gflops']:.0f} GFLOP/s "
            f"({100 * full['share_of_matmul_peak']:.0f}% of the measured matmul peak).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
