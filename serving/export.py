"""Export a trained run as a standard Hugging Face model folder that loads without this project, with a
model card. Mergeable adapters (LoRA) are merged into the weights; prompt tuning, which cannot be merged,
is exported as a PEFT adapter folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import peft

from model import BUNDLED_MODELS, export_refused, load_tokenizer, resolve_model_path, resolved_config
from serving.predict import load_run
from reporting.summary import aggregate, task_of
from records.results import read_results, results_file
from strategies import STRATEGIES
from utils import ConfigError, WriteError, atomic_write_json, writable_folder
from records.shape import RunRecord


def export_run(run: str, output_dir: str | Path, out: Path, force: bool = False) -> Path:
    """Write the run's model, tokenizer and model card (README.md) into `out`, whole (see written_whole)."""
    check_target(out, output_dir, force)
    _, cfg, record, model = load_run(run, output_dir)
    strategy = STRATEGIES[record["strategy"]]
    refused = export_refused(strategy, strategy.head(resolved_config(cfg).model.head))
    if refused:
        raise ConfigError(f"run {record['run_id']} ({record['strategy']}) cannot be exported: {refused}")
    tokenizer = load_tokenizer(cfg)
    tokenizer.model_max_length = cfg.model.max_length  # texts are truncated where the run truncated them
    siblings = [
        r
        for r in read_results(results_file(output_dir))
        if r["config_id"] == record["config_id"] and r["status"] == "completed"
    ]

    def write(building: Path) -> None:
        nonlocal model
        adapter = (
            isinstance(model, peft.PeftModel) and model.peft_config[model.active_adapter].is_prompt_learning
        )
        if isinstance(model, peft.PeftModel) and not adapter:
            model = model.merge_and_unload()
        model.save_pretrained(building)
        tokenizer.save_pretrained(building)
        if record.get("decision"):  # the task's decision rule: what the card's usage reads (label thresholds)
            for name, contents in task_of([record]).exported_decision(record["decision"])[0].items():
                atomic_write_json(building / name, contents)
        (building / "README.md").write_text(
            model_card(record, cfg, siblings or [record], adapter), encoding="utf-8"
        )

    return written_whole(out, write)


def check_target(out: Path, output_dir: str | Path, force: bool) -> None:
    """--out must be a folder, new or empty (or --force), and outside the output folder the runs live in."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: '{out}' is a file; name a folder (new or empty)")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"--out: '{out}' exists and is not empty; choose another folder or pass --force to write into it"
        )
    if Path(output_dir).resolve() in (out.resolve(), *out.resolve().parents):
        raise ConfigError(f"--out: '{out}' is inside the output folder {output_dir}; export elsewhere")


def written_whole(out: Path, write: Callable[[Path], None]) -> Path:
    """`write` fills a folder made beside `out`, which is then moved in file by file, so that a failure (a
    full disk, a check that fails) leaves no half-written export."""
    parent = writable_folder(out.resolve().parent, "--out")
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    try:
        write(building)
        out.mkdir(exist_ok=True)
        for file in sorted(building.iterdir()):
            os.replace(file, out / file.name)
    except OSError as err:
        raise WriteError(out, err) from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out


def _scores(runs: list[RunRecord], key: str) -> str:
    """A metric over the runs of one configuration: the value, or mean ± 95% interval with several seeds."""
    values = [r["best_metric"] if key == "validation" else r["test"][key] for r in runs]
    stats = aggregate(values)
    return f"{stats['mean']:.4f}" + (
        f" ± {stats['ci95']:.4f} (95% interval over {stats['n']} runs)" if stats["ci95"] is not None else ""
    )


def label_table(distribution: dict | None, labels: list[str]) -> list[str]:
    """The card's table of the labels in each split: counts of examples (or words, or a question answerer's
    windows) per label, or a number's spread."""
    if not distribution:
        return []
    if not all(isinstance(n, int) for n in distribution["train"].values()):  # a number's spread per split
        return (
            [
                f"| {labels[0]} | " + " | ".join(distribution["train"]) + " |",
                "|---|" + "---|" * len(distribution["train"]),
            ]
            + [
                f"| {split} | " + " | ".join(f"{v:.3f}" for v in stats.values()) + " |"
                for split, stats in distribution.items()
            ]
            + [""]
        )
    return (
        ["| label | " + " | ".join(distribution) + " |", "|---|" + "---|" * len(distribution)]
        + [
            f"| {name} | "
            + " | ".join(str(distribution[split].get(name, "")) for split in distribution)
            + " |"
            for name in distribution["train"]
        ]
        + [""]
    )


# The settings a model card shows, where the run has them
CARD_SETTINGS = (
    "learning_rate",
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "num_virtual_tokens",
    "init_text",
    "trainable_layers",
    "batch_size",
    "num_epochs",
    "max_length",
)


def model_card(record: RunRecord, cfg, runs: list[RunRecord], adapter: bool) -> str:
    """The exported folder's README: how to use it, how it was trained, on what, how it scored, its limits."""
    task, dataset = task_of([record]), record["dataset"]
    lines = [
        f"# {dataset['name']}: {record['strategy']} fine-tuning of {record['model']}",
        "",
        f"A {task.name} model trained with bertlab (run `{record['run_id']}`, finished "
        f"{record['finished_at'][:10]}; exported {time.strftime('%Y-%m-%d')}).",
        "",
        "## How to use",
        "",
        *card_usage(record, cfg, adapter),
        "",
        "## Training",
        "",
        *card_training(record),
        *label_table(dataset.get("label_distribution"), dataset["label_names"]),
        "## Results",
        "",
        *card_results(record, cfg, runs),
        "",
        "## Limits",
        "",
        f"- {task.card_limit(dataset['label_names'], dataset.get('label_distribution'))}",
        f"- Texts longer than {cfg.model.max_length} tokens are truncated; the rest is not read.",
        "- Scores were measured on a test split of the same data; other text may score lower.",
        "",
    ]
    return "\n".join(lines)


def card_usage(record: RunRecord, cfg, adapter: bool) -> list[str]:
    """The card's code: the task's pipeline call, or loading a prompt-tuning adapter onto its base model."""
    if not adapter:
        usage = task_of([record]).card_usage(cfg.data.text_pair_column is not None)
        return ["```python", "from transformers import pipeline", "", *usage, "```"]
    labels = record["dataset"]["label_names"]
    label_maps = (
        f"num_labels={len(labels)}, id2label={dict(enumerate(labels))}, "
        f"label2id={ {n: i for i, n in enumerate(labels)} }"
    )
    return [
        "A PEFT prompt-tuning adapter (virtual tokens cannot be merged into the weights); its base model is "
        f"`{resolve_model_path(cfg.model.name)}` (`base_model_name_or_path` in adapter_config.json: point it "
        "at that model where you load it):",
        "",
        "```python",
        "from peft import AutoPeftModelForSequenceClassification",
        "from transformers import AutoTokenizer",
        "",
        f"model = AutoPeftModelForSequenceClassification.from_pretrained(FOLDER, {label_maps})",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
        "```",
    ]


def card_training(record: RunRecord) -> list[str]:
    """The card's lines on how the run trained: model, strategy, settings, data, calibration, decision rule."""
    dataset, model = record["dataset"], record["model"]
    bundled = f" (bundled by the pip package `{BUNDLED_MODELS[model]}`)" if model in BUNDLED_MODELS else ""
    settings = {k: v for k, v in record["hyperparameters"].items() if k in CARD_SETTINGS}
    lines = [
        f"- Base model: `{model}`{bundled}; strategy `{record['strategy']}`, {record['trainable_params']:,} of "
        f"{record['total_params']:,} weights trained ({record['trainable_pct']}%).",
        f"- Settings: {json.dumps(settings)}.",
        f"- Data: `{dataset['name']}` (fingerprint {dataset['fingerprint']}); split sizes "
        + ", ".join(f"{split} {n}" for split, n in dataset["sizes"].items())
        + ".",
        f"- Best epoch {record['best_epoch']} on validation ({record['stop_reason']}); seed {record['seed']}.",
    ]
    if record.get("calibration"):
        lines.append(
            f"- Calibrated: a temperature of {record['calibration']['temperature']:.3f}, fitted on the validation "
            "logits, is folded into the last layer, so the scores are the calibrated probabilities (test ECE "
            f"{record['test_uncalibrated']['ece']:.4f} before it, {record['test']['ece']:.4f} after)."
        )
    if record.get("decision"):
        lines += task_of([record]).exported_decision(record["decision"])[1]
    return lines + [f"- Versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}.", ""]


def card_results(record: RunRecord, cfg, runs: list[RunRecord]) -> list[str]:
    """The card's scores: validation (which chose the epoch), test (only reported), and test per class."""
    task = task_of([record])
    lines = [
        f"- Best {task.label(cfg.training.early_stopping.metric)} (chose the epoch): {_scores(runs, 'validation')}"
    ]
    # records made before a metric existed lack it
    lines += [
        f"- Test {m.label} (only reported): {_scores(runs, m.name)}"
        for m in task.metrics
        if all(m.name in r["test"] for r in runs)
    ]
    per_class = record["test"].get("per_class")
    if not per_class:
        return lines
    return lines + [
        "",
        "| label | test precision | test recall | test F1 | test support |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
            for name, c in per_class.items()
        ),
    ]
