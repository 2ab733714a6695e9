"""SetFit (Tunstall et al. 2022): contrastive fine-tuning of the encoder on pairs of labelled texts, by the setfit
package, then a logistic-regression head on the tuned encoder's pooled outputs (probe.py), so the run records,
predicts and compares like every other."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from config import Config, strategy_settings
from data import Encoded
from probe import fit_logistic_regression

logger = logging.getLogger(__name__)


def encodings_per_text(settings: dict) -> int:
    """How often contrastive training encodes each training text: it is in 2 x num_iterations pairs (as often
    with a text of its label as with one of another), each of two texts, in every one of num_epochs passes."""
    return 4 * settings["num_iterations"] * settings["num_epochs"]


def fit_setfit(model, encoded: Encoded, cfg: Config, learning_rate: float, run_dir: Path, accelerator, run_key: dict,
               resume: bool = False, on_epoch=None, rates=None) -> dict:
    """Tune the model's encoder with SetFit's contrastive pairs (the sentence-transformers body shares the
    encoder's modules, so the model itself is tuned), then fit the head; returns what trainer.train returns."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from setfit import SetFitModel, Trainer, TrainingArguments
    from transformers import PrinterCallback, ProgressCallback

    from model import load_tokenizer, resolve_model_path

    settings = strategy_settings(cfg, "setfit")
    # setfit tokenizes text itself: it gets the training texts as this run's tokenizer kept them (truncated,
    # and lower-cased by an uncased model), so both see the same words
    tokenizer = load_tokenizer(cfg)
    texts = tokenizer.batch_decode(encoded.ids["train"], skip_special_tokens=True)
    body = SentenceTransformer(resolve_model_path(cfg.model.name), device=str(accelerator.device))
    body[0].model = model.base_model.to(accelerator.device)  # train the run's own encoder (and init_from's weights)
    # setfit wants a folder for checkpoints; this run saves none there (save_strategy no), so a scratch one
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=scratch, batch_size=settings["batch_size"],
                                 num_epochs=settings["num_epochs"], num_iterations=settings["num_iterations"],
                                 body_learning_rate=learning_rate, max_length=cfg.model.max_length,
                                 seed=cfg.training.seed, report_to="none", save_strategy="no", logging_strategy="no",
                                 show_progress_bar=False)
        trainer = Trainer(model=SetFitModel(model_body=body), args=args,
                          train_dataset=Dataset.from_dict({"text": texts, "label": encoded.labels["train"]}))
        for printer in (PrinterCallback, ProgressCallback):  # this runner logs the stage itself, in its own format
            trainer.remove_callback(printer)
        started = time.perf_counter()
        trainer.train_embeddings(texts, encoded.labels["train"], args=args)
    body_seconds = time.perf_counter() - started
    logger.info("setfit: contrastive training of the encoder on %d texts took %.1fs", len(texts), body_seconds)
    result = fit_logistic_regression(model, encoded, cfg, learning_rate, run_dir, accelerator, run_key, resume,
                                     on_epoch, rates)
    result["train_time_s"] = round(result["train_time_s"] + body_seconds, 2)
    # texts encoded per second, as for the loop's epochs: both texts of every pair in every pass
    result["train_samples_per_s"] = round(encodings_per_text(settings) * len(texts) / result["train_time_s"], 2)
    result["setfit"] = {"body_seconds": round(body_seconds, 2), "package": "setfit"}
    result["stop_reason"] = f"SetFit: contrastive body training, then {result['stop_reason']}"
    return result
