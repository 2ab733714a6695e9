"""Does `training.compile` pay? bertlab's loop per epoch, eager and with the encoder's layers compiled, in one
process, alternating:

    python benchmarks/compile.py [--strategy full] [--epochs 3] [--rows 3000] [--model minilm]
        [--max-length 128] [--name compile]

Data as in throughput.py: ../shared/datasets/banking77 when present, else the demo data. The first epoch
includes compilation (every new batch length under dynamic shapes, then training and evaluation mode);
later epochs show what compiled code gains once it exists. Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
import transformers

from throughput import CUDA, ROOT, default_data_path

from data import load_data, tokenize  # noqa: E402  (throughput put the project root on sys.path)
from model import build_model, load_tokenizer  # noqa: E402
from strategies import STRATEGIES  # noqa: E402
from trainer import TrainJob, make_accelerator, train  # noqa: E402
from config import load_config, strategy_settings  # noqa: E402
from records.measure import library_versions  # noqa: E402
from utils import atomic_write_json, set_seed  # noqa: E402


def epoch_seconds(cfg, data, encoded, strategy: str, workdir: Path) -> dict:
    """Seconds per training epoch (validation excluded) and in all, from building the model to the end."""
    set_seed(cfg.training.seed)
    start = time.perf_counter()
    model = build_model(cfg, strategy, data.label_names)
    job = TrainJob(cfg, strategy_settings(cfg, strategy), workdir, {"strategy": strategy})
    result = train(model, encoded, job, make_accelerator(cfg.training.fp16))
    return {
        "epochs": [round(h["seconds"], 2) for h in result.history],
        "val_accuracy": [round(h["val_accuracy"], 4) for h in result.history],
        "total_seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="full", choices=sorted(STRATEGIES))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--name", default="compile")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    data_path = default_data_path()
    overrides = [
        f"data.path={data_path}",
        f"data.train_size={args.rows}",
        f"training.num_epochs={args.epochs}",
        f"model.name={args.model}",
        f"model.max_length={args.max_length}",
        "training.early_stopping.enabled=false",
        "output.keep_checkpoints=none",
    ]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for compiled in (False, True):
            cfg = load_config(ROOT / "config.yaml", overrides + [f"training.compile={str(compiled).lower()}"])
            if not runs:
                data = load_data(cfg.data)
                encoded = tokenize(data, load_tokenizer(cfg), cfg.model.max_length)
            runs["compiled" if compiled else "eager"] = epoch_seconds(
                cfg, data, encoded, args.strategy, Path(tmp) / str(compiled)
            )
            print(runs, flush=True)
    report = {
        "machine": {
            "device": torch.cuda.get_device_name() if CUDA else f"{torch.get_num_threads()} CPU threads",
            "platform": platform.platform(),
        },
        "settings": {
            "strategy": args.strategy,
            "model": args.model,
            "rows": args.rows,
            "epochs": args.epochs,
            "max_length": args.max_length,
            "data": str(data_path),
        },
        "versions": library_versions(),
        "runs": runs,
    }
    out = ROOT / "benchmarks" / "results"
    atomic_write_json(out / f"{args.name}.json", report)
    eager, compiled = runs["eager"], runs["compiled"]
    lines = [
        f"{report['machine']['device']}, {args.model}, {args.strategy}, {args.rows} rows, max_length "
        f"{args.max_length}, {args.epochs} epochs (seconds of training per epoch; validation excluded):",
        "",
        "| | " + " | ".join(f"epoch {i + 1}" for i in range(args.epochs)) + " | whole run |",
        "|---|" + "---|" * (args.epochs + 1),
    ]
    for name, run in runs.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{s:.1f}" for s in run["epochs"])
            + f" | {run['total_seconds']:.1f} |"
        )
    lines.append(
        "| eager / compiled | "
        + " | ".join(f"{e / c:.2f}" for e, c in zip(eager["epochs"], compiled["epochs"]))
        + f" | {eager['total_seconds'] / compiled['total_seconds']:.2f} |"
    )
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
