"""Fine-tune a BERT-family encoder with each configured strategy and compare them.

    python main.py [--config FILE] [--strategy NAME ...] [--resume] [--debug] [section.key=value ...]

Exit status: 0 when every run completed, 1 when some run failed (its record says why),
2 for a mistake in the config, the command line or the data, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import yaml

from data import LabelledData, load_data, majority_baseline, tokenize
from model import STRATEGIES, build_model, load_model_config, load_tokenizer, parameter_counts
from trainer import classification_report, evaluate, make_accelerator, peak_memory_mb, train
from utils import (Config, ConfigError, atomic_write_bytes, atomic_write_json, check_against_model,
                   file_lock, library_versions, load_config, read_results, set_seed, stable_hash, strategy_settings)

logger = logging.getLogger("bertlab")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compare fine-tuning strategies for text classification.")
    parser.add_argument("--config", default="config.yaml", help="YAML config (default: config.yaml)")
    parser.add_argument("--strategy", action="append", choices=sorted(STRATEGIES),
                        help="run only this strategy, enabled or not (repeat for several)")
    parser.add_argument("--resume", action="store_true",
                        help="skip runs already completed and continue interrupted ones from their last checkpoint")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for config and data errors")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override a config value, e.g. training.learning_rate=3e-5")
    return parser.parse_intermixed_args(argv)  # overrides may come before and after options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(message)s")
    import transformers

    transformers.logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    transformers.logging.disable_progress_bar()
    # peft 0.21 calls a transformers method that transformers 5 has renamed: nothing for users to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        return run_experiment(args)
    except ConfigError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: `python main.py --resume` continues from the last checkpoint", file=sys.stderr)
        return 130


def run_experiment(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    strategies = args.strategy or [s for s in STRATEGIES if getattr(cfg.strategies, s).enabled]
    if not strategies:
        raise ConfigError(f"{args.config}: no strategy enabled; set strategies.<name>.enabled: true or pass "
                          f"--strategy NAME (known: {', '.join(sorted(STRATEGIES))})")
    check_against_model(cfg, getattr(load_model_config(cfg), "max_position_embeddings", None), strategies)
    data = load_data(cfg.data)
    encoded = tokenize(data, load_tokenizer(cfg), cfg.model.max_length)
    baseline = majority_baseline(data)
    logger.info("data %s: %s examples (train/validation/test), %d classes; majority-class test accuracy %.3f",
                data.name, "/".join(map(str, data.sizes().values())), len(data.label_names), baseline["accuracy"])
    accelerator = make_accelerator(cfg.training.fp16)
    records = []
    for number, strategy in enumerate(strategies, 1):
        logger.info("run %d/%d: %s", number, len(strategies), strategy)
        records.append(run_strategy(strategy, cfg, data, encoded, accelerator, baseline, args.resume))
    print_summary(records, baseline, cfg)
    failed = [r["run_id"] for r in records if r["status"] != "completed"]
    if failed:
        logger.error("%d run(s) failed: %s (see 'error' in their records)", len(failed), ", ".join(failed))
    return 1 if failed else 0


def run_strategy(strategy: str, cfg: Config, data: LabelledData, encoded, accelerator, baseline: dict,
                 resume: bool) -> dict:
    """Train and test one strategy; the record is saved whether the run completes or fails."""
    settings = strategy_settings(cfg, strategy)
    # Everything that changes the result, so a run id never names two different experiments.
    # (How often checkpoints are written changes nothing, so it may differ on --resume.)
    training = {k: v for k, v in dataclasses.asdict(cfg.training).items() if k != "checkpoint_every_steps"}
    run_key = {"strategy": strategy, "settings": settings, "model": dataclasses.asdict(cfg.model),
               "training": training, "data_fingerprint": data.fingerprint}
    run_id = f"{strategy}-{stable_hash(run_key)}"
    output = Path(cfg.output.dir)
    results_path = output / "results" / "all_results.json"
    if resume:
        done = [r for r in read_results(results_path) if r["run_id"] == run_id and r["status"] == "completed"]
        if done:
            logger.info("%s already completed; skipped (--resume)", run_id)
            return done[0]
    run_dir = output / "checkpoints" / strategy / run_id
    atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False).encode())
    record = {"run_id": run_id, "strategy": strategy, "status": "running", "model": cfg.model.name,
              "dataset": {"name": data.name, "fingerprint": data.fingerprint, "sizes": data.sizes(),
                          "num_labels": len(data.label_names), "label_names": data.label_names,
                          "majority_baseline": baseline},
              "seed": cfg.training.seed, "hyperparameters": {**dataclasses.asdict(cfg.training), **settings},
              "device": _device_name(accelerator), "mixed_precision": accelerator.mixed_precision,
              "versions": library_versions(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        set_seed(cfg.training.seed)  # the same head initialisation for every strategy
        model = build_model(cfg, strategy, data.label_names)
        record.update(parameter_counts(model))
        logger.info("%s | %d train examples | %d epochs | effective batch %d | lr %.1e | trainable %d of %d (%.3f%%)",
                    run_id, len(encoded.labels["train"]), cfg.training.num_epochs,
                    cfg.training.batch_size * cfg.training.gradient_accumulation_steps, settings["learning_rate"],
                    record["trainable_params"], record["total_params"], record["trainable_pct"])
        record.update(train(model, encoded, cfg, settings["learning_rate"], run_dir, accelerator, run_key, resume))
        test = evaluate(model, encoded, "test", cfg.training.eval_batch_size, accelerator)
        record["test"] = {"loss": test["loss"],
                          **classification_report(encoded.labels["test"], test["predictions"], data.label_names)}
        record["test_predictions"] = test["predictions"].tolist()  # for paired comparisons between runs
        record["status"] = "completed"
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as err:  # a failing run is recorded with its reason; the others go on
        logger.error("%s failed: %s: %s", run_id, type(err).__name__, err)
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    finally:
        accelerator.free_memory()
    record["peak_memory_mb"], record["peak_memory_measure"] = peak_memory_mb(accelerator)
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save_record(results_path, record)
    return record


def save_record(path: Path, record: dict) -> None:
    """Replace this run's record and keep every other, even with another process writing too."""
    with file_lock(path.with_name(path.name + ".lock")):
        runs = [r for r in read_results(path) if r["run_id"] != record["run_id"]]
        atomic_write_json(path, {"runs": runs + [record]})


def _device_name(accelerator) -> str:
    if accelerator.device.type == "cuda":
        return torch.cuda.get_device_name(accelerator.device)
    return f"cpu ({torch.get_num_threads()} threads)"


def print_summary(records: list[dict], baseline: dict, cfg: Config) -> None:
    metric = cfg.training.early_stopping.metric
    header = ["strategy", "status", "trainable", "best epoch", f"best {metric}", "test acc", "test macro-F1",
              "train s", "samples/s"]
    rows = [header]
    for r in records:
        if r["status"] == "completed":
            rows.append([r["strategy"], r["status"], f"{r['trainable_pct']:.3f}%", str(r["best_epoch"]),
                         f"{r['best_metric']:.4f}", f"{r['test']['accuracy']:.4f}", f"{r['test']['macro_f1']:.4f}",
                         f"{r['train_time_s']:.0f}", f"{r['train_samples_per_s']:.1f}"])
        else:
            rows.append([r["strategy"], r["status"], r.get("error", "")[:60]] + [""] * 6)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    print("\n" + "\n".join(lines))
    print(f"\nmajority-class baseline on test: accuracy {baseline['accuracy']:.4f}, macro-F1 {baseline['macro_f1']:.4f}")
    print(f"best epoch chosen on validation ({metric}); test is only reported. "
          f"Results: {Path(cfg.output.dir) / 'results' / 'all_results.json'}; plots: python visualize.py")


if __name__ == "__main__":
    sys.exit(main())
