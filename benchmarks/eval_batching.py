"""How evaluation batches should be cut on this machine: bertlab's evaluation of the validation split with
batches of at most N rows (no token limit) and with batches of at most T padded tokens, for one model:

    python benchmarks/eval_batching.py [--model minilm] [--strategy full] [--rows 16 32 64 128]
        [--tokens 256 512 1024 2048 4096] [--fill-to-max-length] [--limit N] [--name eval_batching]

Batches are always sorted by length. Data as in throughput.py. Speed does not depend on the weights, so the
model is not trained. Each setting runs once untimed, then the best of three timed runs is kept.
Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import torch
import transformers

from throughput import CUDA, ROOT, default_data_path

from data import load_data, tokenize  # noqa: E402  (throughput put the project root on sys.path)
from model import build_model, load_tokenizer  # noqa: E402
from strategies import STRATEGIES  # noqa: E402
from trainer import evaluate, make_accelerator  # noqa: E402
from config import load_config  # noqa: E402
from records.measure import library_versions  # noqa: E402
from tasks import TASKS  # noqa: E402
from utils import atomic_write_json, set_seed  # noqa: E402


def samples_per_second(model, encoded, t, accelerator) -> float:
    evaluate(model, encoded, "validation", t, accelerator, TASKS["classification"])
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        evaluate(model, encoded, "validation", t, accelerator, TASKS["classification"])
        seconds.append(time.perf_counter() - start)
    return len(encoded.labels["validation"]) / min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--strategy", default="full", choices=sorted(STRATEGIES))
    parser.add_argument("--rows", type=int, nargs="*", default=[16, 32, 64, 128])
    parser.add_argument("--tokens", type=int, nargs="*", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--fill-to-max-length", action="store_true", help="repeat each text to fill max_length"
    )
    parser.add_argument("--limit", type=int, help="validation rows used (default: all)")
    parser.add_argument("--name", default="eval_batching")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    data_path = default_data_path()
    cfg = load_config(
        ROOT / "config.yaml",
        [f"data.path={data_path}", f"model.name={args.model}", f"model.max_length={args.max_length}"],
    )
    data = load_data(cfg.data)
    if args.fill_to_max_length:
        data.texts = {
            split: [" ".join([text] * args.max_length) for text in texts]
            for split, texts in data.texts.items()
        }
    data.texts["validation"], data.labels["validation"] = (
        data.texts["validation"][: args.limit],
        data.labels["validation"][: args.limit],
    )
    encoded = tokenize(data, load_tokenizer(cfg), cfg.model.max_length)
    set_seed(0)
    accelerator = make_accelerator(cfg.training.fp16)
    model = accelerator.prepare(build_model(cfg, args.strategy, data.label_names))
    unlimited = 10**9  # an explicit limit: None would mean the automatic choice
    settings = [(rows, unlimited) for rows in args.rows] + [(unlimited, tokens) for tokens in args.tokens]
    results = []
    for rows, tokens in settings:
        t = dataclasses.replace(cfg.training, eval_batch_size=rows, eval_batch_tokens=tokens)
        results.append(
            {
                "max_rows": rows if rows < unlimited else None,
                "max_tokens": tokens if tokens < unlimited else None,
                "samples_per_s": round(samples_per_second(model, encoded, t, accelerator), 1),
            }
        )
        print(results[-1], flush=True)
    lengths = [len(ids) for ids in encoded.ids["validation"]]
    report = {
        "machine": {
            "device": torch.cuda.get_device_name() if CUDA else f"{torch.get_num_threads()} CPU threads",
            "platform": platform.platform(),
        },
        "settings": {
            "model": args.model,
            "strategy": args.strategy,
            "data": str(data_path),
            "validation_rows": len(lengths),
            "mean_tokens": sum(lengths) / len(lengths),
            "filled_to_max_length": args.fill_to_max_length,
        },
        "versions": library_versions(),
        "results": results,
    }
    out = ROOT / "benchmarks" / "results"
    atomic_write_json(out / f"{args.name}.json", report)
    lines = [
        f"{report['machine']['device']}, {args.model} ({args.strategy}), {len(lengths)} validation rows of mean "
        f"{report['settings']['mean_tokens']:.1f} tokens, batches sorted by length:",
        "",
        "| batches of at most | samples/s |",
        "|---|---|",
    ]
    lines += [
        f"| {r['max_rows']} rows | {r['samples_per_s']:.0f} |"
        if r["max_tokens"] is None
        else f"| {r['max_tokens']} padded tokens | {r['samples_per_s']:.0f} |"
        for r in results
    ]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
