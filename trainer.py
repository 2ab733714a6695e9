"""The training loop, the same for every strategy: Accelerate for devices and mixed precision,
AdamW over trainable parameters, linear warm-up and decay, early stopping on validation,
checkpoints that resume exactly."""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import random
import resource
import signal
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from data import Encoded, collate, eval_batches, train_batches
from utils import Config, ConfigError, TrainingConfig, atomic_open

logger = logging.getLogger(__name__)


CHECK_FINITE_EVERY = 50  # batches between reads of the device-side "loss went non-finite" marker
# Evaluation batches on a CPU hold at most this many padded tokens unless training.eval_batch_tokens says
# otherwise: batches that fit the caches were fastest there (MiniLM and bert-base, benchmarks/results/).
CPU_EVAL_BATCH_TOKENS = 512


class TrainingFailed(Exception):
    """A run that cannot go on (a loss that is no longer finite): recorded as failed with this reason."""


@dataclass
class TrainState:
    """Everything besides weights and optimizer that a resumed run needs to continue exactly."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_evals: int = 0  # evaluations in a row without improvement
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None
    # Progress inside the current epoch, for checkpoints taken mid-epoch
    batches_done: int = 0
    epoch_loss: float = 0.0
    epoch_seconds: float = 0.0


class StopRequest:
    """Ctrl-C sets a flag; the loop saves a checkpoint after the current optimizer step, then stops.

    Stopping between steps keeps the checkpoint consistent: no half-accumulated gradients."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stopping after the current step, once a checkpoint is saved (Ctrl-C again to stop at once)")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def make_accelerator(fp16: bool) -> Accelerator:
    use_fp16 = fp16 and torch.cuda.is_available()
    if fp16 and not use_fp16:
        logger.warning("training.fp16 is ignored without a CUDA GPU: half-precision matmul on CPUs without "
                       "native support is hundreds of times slower; training in fp32")
    return Accelerator(mixed_precision="fp16" if use_fp16 else "no")


def compile_layers(model: torch.nn.Module) -> None:
    """torch.compile each of the encoder's repeated layers in place: one compilation serves them all (the
    layers share their code), and parameter names, hence checkpoints, stay as they are. Shapes are
    dynamic because batches differ in length."""
    layers = [layer for stack in model.modules() if isinstance(stack, torch.nn.ModuleList) and len(stack) > 1
              and len({type(layer) for layer in stack}) == 1 for layer in stack]
    for module in layers or [model]:
        module.compile(dynamic=True)
    logger.info("compiling %d layers with torch.compile; the first batches of each shape and mode wait for it",
                len(layers) or 1)


def make_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over trainable parameters only; biases and LayerNorm weights (1-D) are not decayed."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    # fused: one kernel for all parameters; the per-tensor loop costs a quarter of a CPU step
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, fused=True)


def train(model: torch.nn.Module, encoded: Encoded, cfg: Config, learning_rate: float, run_dir: Path,
          accelerator: Accelerator, run_key: dict, resume: bool = False) -> dict:
    """Train with validation each epoch; return the history and leave the best weights in `model`."""
    t = cfg.training
    num_batches = math.ceil(len(encoded.labels["train"]) / t.batch_size)
    total_steps = math.ceil(num_batches / t.gradient_accumulation_steps) * t.num_epochs
    optimizer = make_optimizer(model, learning_rate, t.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    if t.compile:
        compile_layers(accelerator.unwrap_model(model))
    scheduler = get_linear_schedule_with_warmup(optimizer, round(t.warmup_ratio * total_steps), total_steps)
    state, best_weights = TrainState(), None
    if resume and (run_dir / "last.pt").exists():
        state, best_weights = load_checkpoint(run_dir, model, optimizer, scheduler, accelerator, run_key)
        logger.info("resumed from %s: %d epochs and %d batches done (step %d)", run_dir / "last.pt", state.epoch,
                    state.batches_done, state.step)

    spent = {"validation_time_s": 0.0, "checkpoint_time_s": 0.0}  # where the time beside training goes

    def checkpoint():
        with stopwatch(spent, "checkpoint_time_s"):
            save_checkpoint(run_dir, model, optimizer, scheduler, accelerator, state, run_key)

    epochs_left = range(state.epoch, t.num_epochs) if state.stop_reason is None else range(0)
    with StopRequest() as stop:
        for epoch in epochs_left:
            train_loss, seconds = train_epoch(model, optimizer, scheduler, accelerator, encoded, t, epoch, state,
                                              checkpoint, stop)
            with stopwatch(spent, "validation_time_s"):
                val = evaluate(model, encoded, "validation", t, accelerator)
            state.epoch, state.batches_done, state.epoch_loss, state.epoch_seconds = epoch + 1, 0, 0.0, 0.0
            state.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val["loss"],
                                  "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                                  "lr": scheduler.get_last_lr()[0], "seconds": seconds})
            logger.info("epoch %d/%d | train_loss %.4f | val_loss %.4f | val_acc %.4f | val_f1 %.4f | lr %.2e | %.1fs",
                        epoch + 1, t.num_epochs, train_loss, val["loss"], val["accuracy"], val["macro_f1"],
                        scheduler.get_last_lr()[0], seconds)
            with stopwatch(spent, "checkpoint_time_s"):
                if _update_early_stopping(state, t):
                    best_weights = trainable_weights(model, accelerator)
                    _save(run_dir / "best.pt", {"run_key": run_key, "trainable": best_weights, "epoch": state.epoch})
                if cfg.output.keep_checkpoints == "all":
                    _save(run_dir / f"epoch_{state.epoch}.pt", {"run_key": run_key, "epoch": state.epoch,
                                                                 "trainable": trainable_weights(model, accelerator)})
            if state.stop_reason is None and state.epoch == t.num_epochs:
                state.stop_reason = f"completed all {t.num_epochs} epochs"
            checkpoint()
            if state.stop_reason:
                break
            if stop.requested:
                raise KeyboardInterrupt

    accelerator.unwrap_model(model).load_state_dict(best_weights, strict=False)
    train_seconds = sum(h["seconds"] for h in state.history)
    return {"history": state.history, "best_epoch": state.best_epoch, "best_metric": state.best_metric,
            "stop_reason": state.stop_reason, "optimizer_steps": state.step, "train_time_s": round(train_seconds, 2),
            "train_samples_per_s": round(len(encoded.labels["train"]) * len(state.history) / train_seconds, 2),
            **{key: round(seconds, 2) for key, seconds in spent.items()}}


@contextmanager
def stopwatch(totals: dict[str, float], key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        totals[key] += time.perf_counter() - start


def train_epoch(model, optimizer, scheduler, accelerator: Accelerator, encoded: Encoded, t: TrainingConfig,
                epoch: int, state: TrainState, checkpoint, stop: StopRequest) -> tuple[float, float]:
    """One pass over the training split (from where a mid-epoch checkpoint left it); returns the mean
    loss per example and the seconds it took."""
    ids, labels = encoded.ids["train"], encoded.labels["train"]
    batches = train_batches([len(x) for x in ids], t.batch_size, t.seed, epoch)
    accum = t.gradient_accumulation_steps
    model.train()
    # summed on the device: no host sync per step
    loss_total = torch.tensor(state.epoch_loss, device=accelerator.device)
    # the first batch whose loss is not finite, also tracked on the device and read every CHECK_FINITE_EVERY batches
    first_nonfinite = torch.tensor(-1, device=accelerator.device)
    start = time.perf_counter() - state.epoch_seconds
    progress = tqdm(range(state.batches_done, len(batches)), initial=state.batches_done, total=len(batches),
                    desc=f"epoch {epoch + 1}", leave=False, mininterval=1, disable=None)
    for i in progress:
        window_start = i - i % accum
        # Each window's loss is the mean over its examples, so 2 x 4 accumulates exactly what 8 does.
        window_examples = sum(len(b) for b in batches[window_start:window_start + accum])
        batch = device_batch(encoded, "train", batches[i], accelerator)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
        accelerator.backward(loss / window_examples)
        loss_total += loss.detach()
        first_nonfinite = torch.where((first_nonfinite < 0) & ~torch.isfinite(loss.detach()), i, first_nonfinite)
        if (i + 1) % CHECK_FINITE_EVERY == 0 or i + 1 == len(batches):
            _fail_if_nonfinite(int(first_nonfinite), epoch, len(batches), accum)
        if (i + 1) % accum == 0 or i + 1 == len(batches):
            if t.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)  # unscales fp16 grads first
            optimizer.step()
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            every = t.checkpoint_every_steps
            if i + 1 < len(batches) and (stop.requested or (every and state.step % every == 0)):
                _fail_if_nonfinite(int(first_nonfinite), epoch, len(batches), accum)  # never checkpoint a NaN
                state.batches_done, state.epoch_loss = i + 1, loss_total.item()
                paused = time.perf_counter()
                state.epoch_seconds = paused - start
                checkpoint()
                start += time.perf_counter() - paused  # the epoch's seconds count training only
                if stop.requested:
                    raise KeyboardInterrupt
    return loss_total.item() / len(labels), time.perf_counter() - start


def _fail_if_nonfinite(batch: int, epoch: int, num_batches: int, accum: int) -> None:
    if batch >= 0:
        step = epoch * math.ceil(num_batches / accum) + batch // accum + 1
        raise TrainingFailed(f"training loss became nan or infinite at optimizer step {step} (epoch {epoch + 1}, batch "
                             f"{batch + 1}); try a lower learning rate (or fp16: false if it happens only in mixed precision)")


def device_batch(encoded: Encoded, split: str, rows: list[int], accelerator: Accelerator) -> dict:
    """One padded batch on the training device; fp16 pads to multiples of 8 for tensor cores."""
    pad_multiple = 8 if accelerator.mixed_precision == "fp16" else 1
    batch = collate(encoded.ids[split], encoded.labels[split], rows, encoded.pad_id, pad_multiple)
    if accelerator.device.type != "cuda":
        return batch
    # A copy from pageable memory waits for the GPU to finish its queue; from pinned memory it does not,
    # so the host prepares the next batch while the GPU still computes this one.
    return {k: v.pin_memory().to(accelerator.device, non_blocking=True) for k, v in batch.items()}


def eval_batch_tokens(t: TrainingConfig, device: torch.device) -> int | None:
    """The padded-token limit of an evaluation batch: the configured one, else a cache-sized one on a CPU and
    none on an accelerator, where larger batches keep it busy."""
    if t.eval_batch_tokens is not None:
        return t.eval_batch_tokens
    return CPU_EVAL_BATCH_TOKENS if device.type == "cpu" else None


@torch.inference_mode()
def predict(model, encoded: Encoded, split: str, t: TrainingConfig, accelerator: Accelerator) -> tuple[float, np.ndarray]:
    """Mean loss and predicted class per example, in the split's original order."""
    ids, labels = encoded.ids[split], encoded.labels[split]
    model.eval()
    batches = eval_batches([len(x) for x in ids], t.eval_batch_size, eval_batch_tokens(t, accelerator.device))
    loss_total = torch.zeros((), device=accelerator.device)
    predicted = []  # kept on the device: one transfer at the end instead of a host sync per batch
    for batch_rows in tqdm(batches, desc=f"eval {split}", leave=False, mininterval=1, disable=None):
        batch = device_batch(encoded, split, batch_rows, accelerator)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        loss_total += F.cross_entropy(logits, batch["labels"], reduction="sum")
        predicted.append(logits.argmax(-1))
    predictions = np.empty(len(labels), dtype=np.int64)
    predictions[[i for rows in batches for i in rows]] = torch.cat(predicted).cpu().numpy()
    return loss_total.item() / len(labels), predictions


def evaluate(model, encoded: Encoded, split: str, t: TrainingConfig, accelerator: Accelerator) -> dict:
    loss, predictions = predict(model, encoded, split, t, accelerator)
    truth = encoded.labels[split]
    return {"loss": loss, "accuracy": accuracy_score(truth, predictions),
            "macro_f1": f1_score(truth, predictions, average="macro", zero_division=0), "predictions": predictions}


def classification_report(truth: list[int], predictions: np.ndarray, label_names: list[str]) -> dict:
    """Test metrics: accuracy, macro and weighted F1, and precision/recall/F1/support per class."""
    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predictions, labels=ids, zero_division=0)
    return {
        "accuracy": accuracy_score(truth, predictions),
        "macro_f1": f1_score(truth, predictions, labels=ids, average="macro", zero_division=0),
        "weighted_f1": f1_score(truth, predictions, labels=ids, average="weighted", zero_division=0),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(label_names)},
    }


def _update_early_stopping(state: TrainState, t: TrainingConfig) -> bool:
    """Track the best validation metric; return True when this epoch is the new best."""
    metric = t.early_stopping.metric
    value = state.history[-1][metric]
    lower_is_better = metric == "val_loss"
    improved = state.best_metric is None or (value < state.best_metric if lower_is_better else value > state.best_metric)
    if improved:
        state.best_metric, state.best_epoch, state.bad_evals = value, state.epoch, 0
    else:
        state.bad_evals += 1
        if t.early_stopping.enabled and state.bad_evals >= t.early_stopping.patience:
            state.stop_reason = (f"early stopping: {metric} did not improve for {state.bad_evals} epochs "
                                 f"(best {state.best_metric:.4f} at epoch {state.best_epoch})")
    return improved


class PeakMemory:
    """The peak memory of one run, from here to `stop()`, and what it measures. On a GPU: the CUDA allocator's
    peak. On a CPU: how far this process's resident set rose above its level at the start, sampled every 10 ms
    from /proc (where there is no /proc: the process's lifetime peak, which only grows from run to run). Memory
    freed before the start is handed back to the system first, or a run could reuse what the previous run
    freed and seem to need nothing."""

    def __init__(self, device: torch.device):
        gc.collect()  # the previous run's model and optimizer must not count towards this run's peak
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        with suppress(OSError, AttributeError):  # glibc only
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.start = self.peak = resident_bytes()
        self.sampling = self.start is not None
        if self.sampling:
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()

    def _sample(self) -> None:
        while self.sampling:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.01)

    def stop(self) -> tuple[float, str]:
        """Megabytes, and the name of the measure."""
        if self.cuda:
            return round(torch.cuda.max_memory_allocated() / 2**20, 1), "cuda_max_allocated"
        if self.start is None:
            return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "process_peak_rss"
        self.sampling = False
        self.sampler.join()
        return round((self.peak - self.start) / 2**20, 1), "rss_rise_during_run"


def resident_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------
# Checkpoints: one dict of plain types, written to a temporary file and renamed.


def trainable_weights(model, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """Frozen weights are not saved: they are reloaded from the pre-trained model."""
    return {name: p.detach().cpu().clone() for name, p in accelerator.unwrap_model(model).named_parameters()
            if p.requires_grad}


def _save(path: Path, payload: dict) -> None:
    with atomic_open(path) as f:  # straight into the file: no second copy in memory
        torch.save(payload, f)


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, accelerator: Accelerator, state: TrainState,
                    run_key: dict) -> None:
    _save(run_dir / "last.pt", {
        "run_key": run_key, "trainable": trainable_weights(model, accelerator),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        "state": asdict(state),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    })


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, accelerator: Accelerator,
                    run_key: dict) -> tuple[TrainState, dict | None]:
    """Restore everything `save_checkpoint` wrote; refuse a checkpoint made under another config."""
    checkpoint = torch.load(run_dir / "last.pt", weights_only=False)
    differing = _differing_keys(checkpoint["run_key"], run_key)
    if differing:
        raise ConfigError(f"checkpoint {run_dir / 'last.pt'} was made with a different config "
                          f"({', '.join(differing)}); it cannot be resumed. Run without --resume to start over")
    accelerator.unwrap_model(model).load_state_dict(checkpoint["trainable"], strict=False)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint["scaler"] is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    best_path = run_dir / "best.pt"
    best = torch.load(best_path, weights_only=False)["trainable"] if best_path.exists() else None
    return TrainState(**checkpoint["state"]), best


def saved_run_key(run_dir: Path) -> dict | None:
    """The run key `last.pt` was written under (None without one), read without loading its tensors."""
    path = run_dir / "last.pt"
    return torch.load(path, weights_only=False, mmap=True)["run_key"] if path.exists() else None


def _differing_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _differing_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []
