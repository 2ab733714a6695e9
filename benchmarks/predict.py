"""Prediction speed: `python main.py predict --input` (length-sorted batches) beside transformers.pipeline on the
exported folder at its best batch size, on the same texts, in one process, alternating:

    python benchmarks/predict.py [--data PATH] [--strategy full] [--repeats 3] [--name predict]

It first trains a short run of the bundled model (speed does not depend on how well it was trained: 500
training rows, one epoch) into a temporary folder and exports it. Texts: the test split of
../shared/datasets/banking77 when present (3,080 texts), else of the demo data. Writes
benchmarks/results/<name>.json and <name>.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from throughput import CUDA, ROOT, default_data_path

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from transformers import pipeline  # noqa: E402

import main as bertlab  # noqa: E402  (throughput put the project root on sys.path)
from config import load_config  # noqa: E402
from data import load_data  # noqa: E402
from records.measure import device_name, library_versions  # noqa: E402
from serving.predict import Predictor, predict_file  # noqa: E402
from utils import atomic_write_json  # noqa: E402

PIPELINE_BATCH_SIZES = (8, 16, 32, 64)


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_path())
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="predict")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bertlab-predict-"))
    settings = [f"data.path={args.data}", "data.name=null", f"output.dir={work / 'outputs'}", "data.train_size=500",
                "training.num_epochs=1", "data.text_column=text", "data.label_column=label"]
    config = ["--config", str(ROOT / "config.yaml")]
    assert bertlab.main([*config, "--strategy", args.strategy, *settings]) == 0
    assert bertlab.main(["export", *config, "--out", str(work / "exported"), f"output.dir={work / 'outputs'}"]) == 0
    texts = load_data(load_config(ROOT / "config.yaml", settings).data).texts["test"]
    inputs = work / "texts.csv"
    pd.DataFrame({"text": texts}).to_csv(inputs, index=False)

    predictor = Predictor.from_run("best", work / "outputs")
    classify = pipeline("text-classification", model=str(work / "exported"), device=0 if CUDA else "cpu")
    ours = lambda: predict_file(predictor, inputs, work / "out.csv", None, 1)  # noqa: E731
    theirs = {b: (lambda b=b: classify(texts, batch_size=b, truncation=True)) for b in PIPELINE_BATCH_SIZES}
    ours(), [run() for run in theirs.values()]  # warm-up, untimed
    seconds = {"ours": [], **{b: [] for b in PIPELINE_BATCH_SIZES}}
    for _ in range(args.repeats):  # alternating, so drifts in the machine's speed hit both sides alike
        seconds["ours"].append(timed(ours))
        for b, run in theirs.items():
            seconds[b].append(timed(run))
    rate = {k: len(texts) / statistics.median(v) for k, v in seconds.items()}
    best = max(PIPELINE_BATCH_SIZES, key=lambda b: rate[b])
    ours_labels = pd.read_csv(work / "out.csv")["predicted_label"].astype(str).tolist()
    agree = sum(a == r["label"] for a, r in zip(ours_labels, classify(texts, batch_size=best, truncation=True)))
    result = {"texts": len(texts), "data": str(args.data), "strategy": args.strategy, "repeats": args.repeats,
              "device": device_name(torch.device("cuda" if CUDA else "cpu")), "texts_per_s": rate,
              "pipeline_best_batch": best, "ratio_vs_best": rate["ours"] / rate[best], "same_labels": agree,
              "versions": library_versions()}
    results = ROOT / "benchmarks" / "results"
    atomic_write_json(results / f"{args.name}.json", result)
    lines = [f"# Prediction speed: {len(texts)} texts, {args.strategy}, {result['device']}", "",
             "| predictor | texts/s (median of %d) |" % args.repeats, "|---|---|",
             f"| bertlab predict --input | {rate['ours']:.0f} |"]
    lines += [f"| pipeline, batch {b} | {rate[b]:.0f} |" for b in PIPELINE_BATCH_SIZES]
    lines += ["", f"bertlab / pipeline at its best batch ({best}): {result['ratio_vs_best']:.2f}x; "
              f"same label for {agree} of {len(texts)} texts."]
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
