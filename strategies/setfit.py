"""SetFit (Tunstall et al. 2022): contrastive fine-tuning of the encoder on pairs of labelled texts, by the setfit
package, then a logistic-regression head on the tuned encoder's pooled outputs (strategies/probe.py), so the run
records, predicts and compares like every other."""

from __future__ import annotations

import logging
import tempfile
import time

import torch

from config import HeadConfig
from data import Encoded
from strategies.base import Settings, Strategy, rates
from strategies.probe import fit_logistic_regression
from trainer import TrainJob, TrainResult
from tasks import Need, Task
from utils import ConfigError

logger = logging.getLogger(__name__)


def encodings_per_text(settings: dict) -> int:
    """How often contrastive training encodes each training text: it is in 2 x num_iterations pairs (as often
    with a text of its label as with one of another), each of two texts, in every one of num_epochs passes."""
    return 4 * settings.num_iterations * settings.num_epochs


def fit_setfit(model, encoded: Encoded, job: TrainJob, accelerator) -> TrainResult:
    """Tune the model's encoder with SetFit's contrastive pairs (the sentence-transformers body shares the
    encoder's modules, so the model itself is tuned), then fit the head."""
    cfg = job.cfg
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from setfit import SetFitModel, Trainer, TrainingArguments
    from transformers import PrinterCallback, ProgressCallback

    settings = job.settings
    # the pre-trained model's folder (a bundled model's too), which the sentence-transformers body reads
    body = SentenceTransformer(model.name_or_path, device=str(accelerator.device), trust_remote_code=False)
    # setfit tokenizes text itself: it gets the training texts as this run's tokenizer kept them (truncated,
    # and lower-cased by an uncased model), so both see the same words
    texts = body.tokenizer.batch_decode(encoded.ids["train"], skip_special_tokens=True)
    # train the run's own encoder (and init_from's weights)
    body[0].model = model.base_model.to(accelerator.device)
    # setfit wants a folder for checkpoints; this run saves none there (save_strategy no), so a scratch one
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            batch_size=settings.batch_size,
            num_epochs=settings.num_epochs,
            num_iterations=settings.num_iterations,
            body_learning_rate=job.learning_rate,
            max_length=cfg.model.max_length,
            seed=cfg.training.seed,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            show_progress_bar=False,
        )
        trainer = Trainer(
            model=SetFitModel(model_body=body),
            args=args,
            train_dataset=Dataset.from_dict({"text": texts, "label": encoded.labels["train"]}),
        )
        for printer in (
            PrinterCallback,
            ProgressCallback,
        ):  # this runner logs the stage itself, in its own format
            trainer.remove_callback(printer)
        started = time.perf_counter()
        trainer.train_embeddings(texts, encoded.labels["train"], args=args)
    body_seconds = time.perf_counter() - started
    logger.info(
        "setfit: contrastive training of the encoder on %d texts took %.1fs", len(texts), body_seconds
    )
    result = fit_logistic_regression(model, encoded, job, accelerator)
    result.train_time_s = round(result.train_time_s + body_seconds, 2)
    # texts encoded per second, as for the loop's epochs: both texts of every pair in every pass
    result.train_samples_per_s = round(encodings_per_text(settings) * len(texts) / result.train_time_s, 2)
    result.extra["setfit"] = {"body_seconds": round(body_seconds, 2), "package": "setfit"}
    result.stop_reason = f"SetFit: contrastive body training, then {result.stop_reason}"
    return result


def setfit(model, settings: Settings, task: Task) -> torch.nn.Module:
    """The whole encoder tunes contrastively, then logistic regression fits the head: both in fit_setfit."""
    for param in model.parameters():
        param.requires_grad = True
    return model


def refuses(task: Task, cfg) -> str | None:
    if task.lacks(Need.CLASS_PER_TEXT):
        return "setfit learns from pairs of texts of the same and of different classes"
    if cfg.data.text_pair_column:
        return "its sentence encoder reads single texts, and data.text_pair_column gives pairs"
    return None


def setfit_head(head: HeadConfig) -> HeadConfig:
    """SetFit's own head without a model.head: linear on the mean over tokens, the pooling sentence-transformers
    models use. An mlp head is refused: logistic regression stands in for one linear layer."""
    if head.type == "mlp":
        raise ConfigError(
            "strategies.setfit: logistic regression fits its head, one linear layer, so model.head.type "
            "mlp cannot be used with it; set model.head.type: linear (or model)"
        )
    return HeadConfig(type="linear", pooling="mean", dropout=0.0) if head.type == "model" else head


SETFIT = Strategy(
    "setfit",
    setfit,
    fit=lambda settings: fit_setfit,
    refuses=refuses,
    one_process=True,
    space=rates(5e-6, 1e-4),
    passes=lambda settings, epochs: encodings_per_text(settings),
    head=setfit_head,
)
