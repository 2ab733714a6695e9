"""Use a trained run: find it (by id, folder, or the best of the latest experiment) and predict on new text
with its own model, tokenizer and max_length.

    from serving.predict import Predictor
    predictor = Predictor.from_run("best")           # or a run id, or outputs/checkpoints/<strategy>/<run_id>
    predictor.predict(["I was charged twice this month"], top_k=3)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from config import Config
from data import Encoded
from sources.files import read_file
from model import load_tokenizer, run_model
from reporting.summary import best_run, summarize, task_of
from records.results import RUN_RECORD, read_results, results_file, run_folder, select_runs
from trainer import inference, make_accelerator
from utils import ConfigError, atomic_write_bytes
from records.shape import RunRecord

# The folders of an output folder that hold what runs keep: nothing else is ever written into them.
KEPT_FOLDERS = ("results", "checkpoints", "search")

logger = logging.getLogger(__name__)


def find_run(spec: str, output_dir: str | Path) -> Path:
    """The folder of a run named by its id, its folder, "best" (the best run, by validation score, of the chosen
    setting of the best strategy in the latest experiment, full training data before few-shot runs) or
    "recommended" (likewise, of the strategy the verdict recommends)."""
    output_dir = Path(output_dir)
    if Path(spec).is_dir():
        folder = Path(spec)
        if not (folder / RUN_RECORD).is_file():
            raise ConfigError(
                f"--run: '{folder}' is not a run folder (no {RUN_RECORD}); run folders are "
                f"{output_dir}/checkpoints/<strategy>/<run_id>"
            )
        return folder
    records = read_results(results_file(output_dir))
    if spec in ("best", "recommended"):
        record = best_of_latest_experiment(output_dir, spec)
    else:
        record = next((r for r in records if r["run_id"] == spec), None)
        if record is None:
            recent = sorted(records, key=lambda r: r.get("finished_at", ""), reverse=True)[:5]
            known = (
                ", ".join(f"{r['run_id']} ({r['strategy']})" for r in recent)
                or "none yet: run python main.py"
            )
            raise ConfigError(
                f"--run: no run '{spec}' in {results_file(output_dir)}; the most recent: {known}"
            )
    return run_folder(output_dir, record["strategy"], record["run_id"])


def best_of_latest_experiment(output_dir: Path, which: str) -> RunRecord:
    """The best run on validation of the verdict's winner ("best") or recommendation ("recommended")."""
    runs, experiment = select_runs(output_dir, None)
    if experiment is None:
        raise ConfigError(
            f"--run {which}: no experiment in {output_dir} yet; run python main.py first "
            "(or pass output.dir=... where your runs are)"
        )
    runs = [r for r in runs if r["status"] == "completed"]
    if not runs:
        raise ConfigError(f"--run {which}: the latest experiment in {output_dir} has no completed run")
    metric, task = experiment["config"]["training"]["early_stopping"]["metric"], task_of(runs)
    verdict = summarize(runs, metric)["verdict"]
    config_id = verdict["winner"]["config_id"] if which == "best" else verdict["recommended_config_id"]
    return best_run([r for r in runs if r["config_id"] == config_id], metric, task)


def load_run(run: str | Path, output_dir: str | Path):
    """A completed run's folder, config, record and model (its strategy's wrapping, best weights loaded, on the CPU)."""
    folder = find_run(str(run), output_dir)
    record, cfg, model = run_model(folder)
    return folder, cfg, record, model.eval()


class Predictor:
    """A trained run, ready to predict: its strategy's model with the best epoch's weights, its tokenizer,
    max_length and label names, on the GPU when there is one."""

    def __init__(self, model, tokenizer, cfg: Config, record: RunRecord, accelerator):
        self.model, self.tokenizer, self.cfg, self.record, self.accelerator = (
            model,
            tokenizer,
            cfg,
            record,
            accelerator,
        )
        self.task = task_of([record]).decided(record.get("decision"))  # label sets: the run's thresholds
        self.label_names = record["dataset"]["label_names"]
        # the text columns the run read (a second text: sentence pairs, or a question's context)
        self.columns = {name: column for name, (_, column) in self.task.data_columns(cfg.data, None).items()}

    @classmethod
    def from_run(cls, run: str | Path = "best", output_dir: str | Path = "outputs") -> Predictor:
        _, cfg, record, model = load_run(run, output_dir)
        accelerator = make_accelerator(cfg.training.fp16, cfg.training.bf16, warn=False)
        return cls(accelerator.prepare(model), load_tokenizer(cfg), cfg, record, accelerator)

    def describe(self) -> str:
        r = self.record
        validation = r["best_metric"]
        test = r["test"][self.task.main_metric]
        return (
            f"run {r['run_id']} ({r['strategy']}, {r['model']}): {self.task.label(self.cfg.training.early_stopping.metric)} "
            f"{validation:.4f}, {self.task.label('test_' + self.task.main_metric)} {test:.4f}"
        )

    def predict(self, texts: list[str], top_k: int = 1, pairs: list[str] | None = None) -> list[dict]:
        """One dict of named columns per text, or per pair of texts for a run trained on pairs (classification:
        predicted_label, probability, and with top_k > 1 the top k labels and their probabilities; multi_label:
        predicted_labels and their probabilities, each joined by "|", every label at or above its threshold; regression:
        the predicted number; token classification: the entities and each word's tag, words being what
        whitespace separates). An empty text gets an empty dict."""
        trained_on_pairs = self.columns.get("pair") is not None
        if trained_on_pairs != (pairs is not None):
            raise ConfigError(
                f"{self.task.pair_request} (--pair, --pair-column)"
                if trained_on_pairs
                else "this run was trained on single texts: predict without second texts"
            )
        texts_of = [texts] + ([pairs] if pairs is not None else [])
        kept = [i for i in range(len(texts)) if all(isinstance(x[i], str) and x[i].strip() for x in texts_of)]
        if not kept:
            return [{} for _ in texts]
        chosen = [[x[i] for i in kept] for x in texts_of]
        chosen[0] = [self.task.text_for_prediction(text) for text in chosen[0]]
        pairs = chosen[1] if pairs is not None else None
        tokens = self.task.tokenize(
            self.tokenizer, chosen[0], pairs, self.cfg.model.max_length, self.cfg.data.doc_stride
        )
        _, layout = self.task.align(tokens, None, pairs)
        encoded = Encoded(
            ids={"texts": tokens.ids},
            labels=None,
            pad_id=self.tokenizer.pad_token_id,
            label_names=self.label_names,
            pair_separator=tokens.separator,
            layout=None if layout is None else {"texts": layout},
        )
        _, values = inference(self.model, encoded, "texts", self.cfg.training, self.accelerator, self.task)
        rows = [{} for _ in texts]
        for i, row_values in zip(kept, self.task.values_per_text(encoded, "texts", values)):
            rows[i] = self.task.decode(np.asarray(row_values), self.label_names, top_k, texts[i])
        return rows


def predict_file(
    predictor: Predictor,
    path: Path,
    output: Path | None,
    text_column: str | None,
    top_k: int,
    pair_column: str | None = None,
) -> Path:
    """Predict every row of a file and write the input's columns plus the predictions as CSV, in input order."""
    frame = read_file(path, "--input")
    columns = {"--text-column": text_column or predictor.columns["text"]}
    if predictor.columns.get("pair") is not None:
        columns["--pair-column"] = pair_column or predictor.columns["pair"]
    texts = []
    for option, column in columns.items():
        if column not in frame.columns:
            raise ConfigError(
                f"{option}: column '{column}' not in {path.name}; its columns: "
                f"{', '.join(map(str, frame.columns))}"
            )
        # a list of words (JSON, Parquet, CoNLL files) reads as those words with spaces between
        texts.append(
            [
                text
                if isinstance(text, str)
                else " ".join(map(str, text))
                if isinstance(text, (list, np.ndarray))
                else ""
                for text in frame[column].tolist()
            ]
        )
    empty = sum(not all(x[i].strip() for x in texts) for i in range(len(frame)))
    if empty:
        logger.warning(
            "%d of %d rows have an empty text: their predictions are left empty", empty, len(frame)
        )
    predictions = pd.DataFrame(predictor.predict(texts[0], top_k, *texts[1:]), index=frame.index)
    output = output or path.with_name(f"{path.stem}.predictions.csv")
    atomic_write_bytes(output, pd.concat([frame, predictions], axis=1).to_csv(index=False).encode())
    return output


def check_output(output: Path | None, path: Path, output_dir: str | Path) -> None:
    """Refuse, before anything is read or written, an --output that would write over the input or over what an
    output folder keeps (records, checkpoints, results), or that names a folder or a missing place."""
    if output is None:
        return
    target = output.resolve()
    if target == path.resolve():
        raise ConfigError(f"--output: '{output}' is the --input file itself; name another file")
    kept = [Path(output_dir).resolve() / part for part in KEPT_FOLDERS]
    if any(target.is_relative_to(folder) for folder in kept):
        raise ConfigError(
            f"--output: '{output}' is inside {output_dir}'s {', '.join(KEPT_FOLDERS)} folders, which hold "
            "the runs' records, checkpoints and results; write predictions elsewhere"
        )
    if target.is_dir():
        raise ConfigError(f"--output: '{output}' is a folder; name a file")
    if not target.parent.is_dir():
        raise ConfigError(f"--output: the folder '{output.parent}' does not exist")
