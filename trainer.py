"""The training loop, the same for every strategy: Accelerate for devices, mixed precision and several
processes, AdamW over trainable parameters, linear warm-up and decay, early stopping on validation,
checkpoints that resume exactly."""

from __future__ import annotations

import enum
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from records.checkpoints import (
    BEST_WEIGHTS,
    RESUME_STATE,
    InTraining,
    epoch_weights,
    load_checkpoint,
    save_checkpoint,
    save_weights,
    trainable_weights,
)
from config import Config, TrainingConfig
from schema.strategies import StrategyConfig
from data import Encoded, collate, epoch_rows, eval_batches, train_batches
from records.measure import stopwatch
from records.shape import Trained
from tasks import PAD_VALUE, TASKS, Task
from utils import process_state

logger = logging.getLogger(__name__)


CHECK_FINITE_EVERY = 50  # batches between reads of the device-side "loss went non-finite" marker
# Evaluation batches on a CPU hold at most this many padded tokens unless training.eval_batch_tokens says
# otherwise: batches that fit the caches were fastest there (MiniLM and bert-base, benchmarks/results/).
CPU_EVAL_BATCH_TOKENS = 512


class TrainingFailed(Exception):
    """A run that cannot go on (a loss that is no longer finite): recorded as failed with this reason."""


class RunPruned(Exception):
    """Raised by `train` when an evaluation's callback judged the run behind (a search trial): it holds the
    evaluations so far."""

    def __init__(self):
        super().__init__()
        self.history: list[dict] = []

    def __str__(self):
        return f"pruned at optimizer step {self.history[-1]['step']}" if self.history else "pruned"


class RunPaused(Exception):
    """Raised by `train` when an evaluation's callback asked to pause (a search trial waiting at a rung for the
    others of its round): the checkpoint holds the run just after that evaluation, and resuming hands that
    evaluation to the callback again before training on."""


@dataclass
class TrainState:
    """Everything besides weights and optimizer that a resumed run needs to continue exactly."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: float | None = None
    best_epoch: float | None = None  # an evaluation inside an epoch has a fractional one
    best_step: int | None = None
    bad_evals: int = 0  # evaluations in a row without improvement
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None
    paused: bool = False  # at the last evaluation, whose callback is asked again on resuming
    # Progress inside the current epoch, for checkpoints taken mid-epoch
    batches_done: int = 0
    epoch_loss: float = 0.0
    epoch_seconds: float = 0.0
    # of those, the seconds already in history entries (evaluations mid-epoch)
    epoch_seconds_logged: float = 0.0


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
        logger.warning(
            "stopping after the current step, once a checkpoint is saved (Ctrl-C again to stop at once)"
        )

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def make_accelerator(fp16: bool, bf16: bool = False, warn: bool = True) -> Accelerator:
    """An Accelerator with the mixed precision asked for where the hardware runs it fast: fp16 on any CUDA GPU,
    bf16 on one that supports it; elsewhere fp32, with one warning (half-precision matmul on CPUs without
    native support is hundreds of times slower)."""
    cuda = torch.cuda.is_available()
    if bf16:
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
        reason = "training.bf16 is ignored without a CUDA GPU that supports bfloat16"
    else:
        precision = "fp16" if fp16 and cuda else "no"
        reason = "training.fp16 is ignored without a CUDA GPU"
    if (fp16 or bf16) and precision == "no" and warn:
        logger.warning("%s: half-precision matmul is far slower elsewhere; training in fp32", reason)
    process_state()  # first, so that a launch without GPUs is set up for gloo
    # Accelerate keeps one mixed precision per process; a second run (predict after training, a config with
    # another training.fp16) would be refused, so the state is renewed, the processes' setup kept
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()
    # Buffers are constants in these models, and a frozen encoder's cached features are one: broadcasting them
    # before every forward would only cost time.
    return Accelerator(
        mixed_precision=precision, kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)]
    )


def compile_layers(model: torch.nn.Module) -> None:
    """torch.compile each of the encoder's repeated layers in place: one compilation serves them all (the
    layers share their code), and parameter names, hence checkpoints, stay as they are. Shapes are
    dynamic because batches differ in length."""
    layers = [
        layer
        for stack in model.modules()
        if isinstance(stack, torch.nn.ModuleList)
        and len(stack) > 1
        and len({type(layer) for layer in stack}) == 1
        for layer in stack
    ]
    for module in layers or [model]:
        module.compile(dynamic=True)
    logger.info(
        "compiling %d layers with torch.compile; the first batches of each shape and mode wait for it",
        len(layers) or 1,
    )


def make_optimizer(
    model: torch.nn.Module, learning_rate: float, weight_decay: float, rates: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """AdamW over trainable parameters only, each at its rate in `rates` (by name; default `learning_rate`);
    biases and LayerNorm weights (1-D) are not decayed."""
    groups: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(((rates or {}).get(name, learning_rate), param.dim() >= 2), []).append(param)
    # at one rate: the decayed group, then the other, as checkpoints written before per-part rates hold them
    order = list(dict.fromkeys(rate for rate, _ in groups))
    keys = sorted(groups, key=lambda key: (order.index(key[0]), not key[1]))
    # fused: one kernel for all parameters; the per-tensor loop costs a quarter of a CPU step
    return torch.optim.AdamW(
        [
            {"params": groups[rate, matrix], "lr": rate, "weight_decay": weight_decay if matrix else 0.0}
            for rate, matrix in keys
        ],
        lr=learning_rate,
        fused=True,
    )


class Decision(enum.Enum):
    """What an evaluation's callback (a search judging its trial) tells the loop."""

    GO_ON = "go on"
    PAUSE = "pause"  # checkpoint, then RunPaused; resuming hands that evaluation to the callback again
    PRUNE = "prune"  # end the run: RunPruned, with the evaluations so far


@dataclass
class TrainJob:
    """What one training run needs, resolved before it starts."""

    cfg: Config
    settings: StrategyConfig  # the strategy's own, with the learning rate it trains at
    run_dir: Path  # where its checkpoints go
    run_key: dict  # what a checkpoint must match to be resumed
    resume: bool = False
    rates: dict[str, float] | None = None  # a parameter's own rate, by name (default: learning_rate)
    # a strategy that changes what trains from epoch to epoch
    before_epoch: Callable[[int], None] | None = None
    on_evaluation: Callable[[list[dict]], Decision] | None = None  # sees the history after each evaluation

    @property
    def learning_rate(self) -> float:
        return self.settings.learning_rate


@dataclass
class TrainResult:
    """What every way of training returns (the loop, a probe's fit, SetFit's): the record's part on training."""

    history: list[dict]
    best_epoch: float | None
    best_step: int | None
    best_metric: float | None
    stop_reason: str | None
    optimizer_steps: int
    train_time_s: float
    train_samples_per_s: float
    validation_time_s: float = 0.0
    checkpoint_time_s: float = 0.0
    extra: dict = field(default_factory=dict)  # what a way of training adds: a probe's C, SetFit's body time

    def as_record(self) -> Trained:
        fields = {key: value for key, value in asdict(self).items() if key != "extra"}
        return {**fields, **self.extra}


def train(model: torch.nn.Module, encoded: Encoded, job: TrainJob, accelerator: Accelerator) -> TrainResult:
    """Train with validation after each epoch, and every `training.eval_every_steps` optimizer steps when set
    (after each evaluation `job.on_evaluation` judges the history so far: go on, pause or prune), each parameter
    at its rate; leave the best weights in `model`."""
    return Loop(model, encoded, job, accelerator).run()


class Loop:
    """One run of the loop: its model, optimizer and schedule prepared, its state (resumed from a checkpoint or
    new), and the time spent beside training."""

    def __init__(self, model: torch.nn.Module, encoded: Encoded, job: TrainJob, accelerator: Accelerator):
        self.job, self.encoded, self.accelerator = job, encoded, accelerator
        self.t, self.task = job.cfg.training, TASKS[job.cfg.data.task]
        t = self.t
        # validation: task.loss
        self.loss_of = self.task.training_loss(t, encoded.labels["train"], encoded.label_names)
        # the same every epoch
        self.epoch_examples = len(epoch_rows(encoded.labels["train"], t.sampler, t.seed, 0))
        num_batches = math.ceil(self.epoch_examples / t.batch_size)
        total_steps = math.ceil(num_batches / t.gradient_accumulation_steps) * t.num_epochs
        self.trained = {
            name for name, param in model.named_parameters() if param.requires_grad
        }  # checkpoints' part
        optimizer = make_optimizer(model, job.learning_rate, t.weight_decay, job.rates)
        # parameters that freeze and thaw between epochs give no gradient while frozen, which data parallelism
        # must be told of (a graph traversal per step, so only then)
        accelerator.ddp_handler.find_unused_parameters = job.before_epoch is not None
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        if t.compile:
            compile_layers(accelerator.unwrap_model(self.model))
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, round(t.warmup_ratio * total_steps), total_steps
        )
        self.state, self.best_weights = TrainState(), None
        self.spent = {
            "validation_time_s": 0.0,
            "checkpoint_time_s": 0.0,
        }  # where the time beside training goes
        if job.resume and (job.run_dir / RESUME_STATE).exists():
            saved_state, self.best_weights = load_checkpoint(job.run_dir, self.in_training(), job.run_key)
            self.state = TrainState(**saved_state)
            logger.info(
                "resumed from %s: %d epochs and %d batches done (step %d)",
                job.run_dir / RESUME_STATE,
                self.state.epoch,
                self.state.batches_done,
                self.state.step,
            )

    def run(self) -> TrainResult:
        state, t = self.state, self.t
        if state.paused:  # the evaluation it paused at is judged now (a run resumed without a judge goes on)
            state.paused = False
            self.judge()
            if state.paused:
                raise RunPaused
        epochs_left = range(state.epoch, t.num_epochs) if state.stop_reason is None else range(0)
        with StopRequest() as stop:
            for epoch in epochs_left:
                if self.job.before_epoch:
                    self.job.before_epoch(epoch)
                train_loss, seconds, stopped = self.train_epoch(epoch, stop)
                state.epoch, state.batches_done, state.epoch_loss, state.epoch_seconds = (
                    epoch + 1,
                    0,
                    0.0,
                    0.0,
                )
                state.epoch_seconds_logged = 0.0
                if not stopped:
                    self.validate(epoch + 1, train_loss, seconds)
                if self.job.cfg.output.keep_checkpoints == "all":
                    with stopwatch(self.spent, "checkpoint_time_s"):
                        save_weights(
                            self.job.run_dir / epoch_weights(state.epoch),
                            self.weights(),
                            self.job.run_key,
                            state.epoch,
                        )
                if state.stop_reason is None and state.epoch == t.num_epochs:
                    state.stop_reason = f"completed all {t.num_epochs} epochs"
                self.checkpoint()
                if state.stop_reason:
                    break
                if state.paused:
                    raise RunPaused
                if in_any_process(stop.requested, self.accelerator):
                    raise KeyboardInterrupt
        self.accelerator.unwrap_model(self.model).load_state_dict(self.best_weights, strict=False)
        return self.result()

    def result(self) -> TrainResult:
        state = self.state
        train_seconds = sum(h["seconds"] for h in state.history)
        epochs_trained = state.history[-1]["epoch"] if state.history else 0
        return TrainResult(
            state.history,
            state.best_epoch,
            state.best_step,
            state.best_metric,
            state.stop_reason,
            state.step,
            round(train_seconds, 2),
            round(self.epoch_examples * epochs_trained / train_seconds, 2),
            **{key: round(seconds, 2) for key, seconds in self.spent.items()},
        )

    def in_training(self) -> InTraining:
        return InTraining(self.model, self.optimizer, self.scheduler, self.accelerator, self.trained)

    def weights(self) -> dict:
        return trainable_weights(self.model, self.accelerator, self.trained)

    def judge(self) -> None:
        """The history to the job's callback: the run goes on, pauses at its next checkpoint or ends pruned."""
        if self.job.on_evaluation is None:
            return
        decision = self.job.on_evaluation(self.state.history)
        if decision is Decision.PRUNE:
            pruned = RunPruned()
            pruned.history = list(self.state.history)
            raise pruned
        self.state.paused = decision is Decision.PAUSE

    def rate(self) -> float:
        """The run's rate under the schedule now (parts with rates of their own move in proportion)."""
        return (
            self.job.learning_rate
            * self.scheduler.get_last_lr()[0]
            / self.optimizer.param_groups[0]["initial_lr"]
        )

    def checkpoint(self) -> None:
        with stopwatch(self.spent, "checkpoint_time_s"):
            save_checkpoint(self.job.run_dir, self.in_training(), asdict(self.state), self.job.run_key)

    def validate(self, epoch: float, train_loss: float, seconds: float) -> bool:
        """Score validation after `seconds` more training, log it, keep the best weights, let the job judge;
        True: stop training."""
        state, t, task = self.state, self.t, self.task
        with stopwatch(self.spent, "validation_time_s"):
            val = validation_scores(self.model, self.encoded, t, self.accelerator, task)
        scores = {f"val_{name}": val[name] for name in ["loss"] + [m.name for m in task.metrics]}
        state.history.append(
            {
                "epoch": epoch,
                "step": state.step,
                "train_loss": train_loss,
                **scores,
                "lr": self.rate(),
                "seconds": seconds,
            }
        )
        shown = ["val_loss", *(f"val_{m.name}" for m in task.summary_metrics()), t.early_stopping.metric]
        logger.info(
            "epoch %g/%d | train_loss %.4f | %s | lr %.2e | %.1fs",
            epoch,
            t.num_epochs,
            train_loss,
            " | ".join(f"{key} {scores[key]:.4f}" for key in dict.fromkeys(shown)),
            self.rate(),
            seconds,
        )
        with stopwatch(self.spent, "checkpoint_time_s"):
            if update_early_stopping(state, t, task):
                self.best_weights = self.weights()
                save_weights(
                    self.job.run_dir / BEST_WEIGHTS, self.best_weights, self.job.run_key, state.best_epoch
                )
        self.judge()  # after the best is kept: it may end the run (a pruned search trial)
        return state.stop_reason is not None

    def train_epoch(self, epoch: int, stop: StopRequest) -> tuple[float, float, bool]:
        """One pass over the training split (from where a mid-epoch checkpoint left it), validating every
        `eval_every_steps` optimizer steps when set; returns the mean loss per example, the training seconds
        since the last evaluation, and whether an evaluation ended training."""
        state, t, accelerator = self.state, self.t, self.accelerator
        rows = epoch_rows(self.encoded.labels["train"], t.sampler, t.seed, epoch)
        batches = train_batches(
            [len(x) for x in self.encoded.ids["train"]], t.batch_size, t.seed, epoch, rows
        )
        self.model.train()
        # summed on the device: no host sync per step; a checkpoint holds the sum over processes
        pass_ = EpochPass(epoch, batches, accelerator, state, time.perf_counter() - state.epoch_seconds)
        progress = tqdm(
            range(state.batches_done, len(batches)),
            initial=state.batches_done,
            total=len(batches),
            desc=f"epoch {epoch + 1}",
            leave=False,
            mininterval=1,
            disable=not accelerator.is_main_process or None,
        )
        for i in progress:
            if not self.train_batch(pass_, i):
                continue
            state.step += 1
            if t.eval_every_steps and state.step % t.eval_every_steps == 0 and i + 1 < len(batches):
                with pass_.paused_clock():
                    elapsed = pass_.elapsed()
                    train_loss = pass_.loss_sum() / sum(len(b) for b in batches[: i + 1])
                    stopped = self.validate(
                        round(epoch + (i + 1) / len(batches), 3),
                        train_loss,
                        elapsed - state.epoch_seconds_logged,
                    )
                    state.epoch_seconds_logged = elapsed
                self.model.train()  # evaluation left it in eval mode
                if stopped:
                    return train_loss, 0.0, True
            self.checkpoint_mid_epoch(pass_, i, stop)
        return pass_.loss_sum() / len(rows), pass_.elapsed() - state.epoch_seconds_logged, False

    def train_batch(self, pass_: EpochPass, i: int) -> bool:
        """Forward and backward one batch (this process's share of it); at the last batch of an accumulation
        window, the optimizer's step. True when it stepped. Under several processes the optimizer sees the
        gradients of the whole batch, as on one."""
        accelerator, batches, accum = self.accelerator, pass_.batches, self.t.gradient_accumulation_steps
        window_start = i - i % accum
        # Each window's loss is the mean over its examples, so 2 x 4 accumulates exactly what 8 does.
        window_examples = sum(len(b) for b in batches[window_start : window_start + accum])
        last_of_window = (i + 1) % accum == 0 or i + 1 == len(batches)
        share, weight = process_share(batches[i], accelerator.process_index, accelerator.num_processes)
        batch = device_batch(self.encoded, "train", share, accelerator, self.task)
        # gradients are exchanged once per window, at its last batch
        with nullcontext() if last_of_window else accelerator.no_sync(self.model):
            loss = weight * self.loss_of(self.model(**model_inputs(batch)), batch["labels"])
            # data parallelism averages the processes' gradients; their sum is the batch's
            accelerator.backward(loss * accelerator.num_processes / window_examples)
        pass_.add(loss.detach(), i)
        if (i + 1) % CHECK_FINITE_EVERY == 0 or i + 1 == len(batches):
            pass_.fail_if_nonfinite(accum)
        if not last_of_window:
            return False
        if self.t.max_grad_norm is not None:
            # unscales fp16 grads first
            accelerator.clip_grad_norm_(self.model.parameters(), self.t.max_grad_norm)
        self.optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def checkpoint_mid_epoch(self, pass_: EpochPass, i: int, stop: StopRequest) -> None:
        """After an optimizer step inside the epoch: a checkpoint every `checkpoint_every_steps`, or before
        stopping (Ctrl-C) or pausing."""
        state, every = self.state, self.t.checkpoint_every_steps
        stopping = in_any_process(stop.requested, self.accelerator) or state.paused
        if i + 1 >= len(pass_.batches) or not (stopping or (every and state.step % every == 0)):
            return
        pass_.fail_if_nonfinite(self.t.gradient_accumulation_steps)  # never checkpoint a NaN
        state.batches_done, state.epoch_loss = i + 1, pass_.loss_sum()
        with pass_.paused_clock():
            state.epoch_seconds = pass_.elapsed()
            self.checkpoint()
        if state.paused:
            raise RunPaused
        if stopping:
            raise KeyboardInterrupt


class EpochPass:
    """An epoch's running sums, kept on the device (no host sync per step): its loss (a checkpoint holds the
    sum over processes), the first batch whose loss was not finite (read every CHECK_FINITE_EVERY batches), and
    its training seconds (evaluations and checkpoints inside it do not count)."""

    def __init__(
        self, epoch: int, batches: list[list[int]], accelerator: Accelerator, state: TrainState, start: float
    ):
        self.epoch, self.batches, self.accelerator, self.start = epoch, batches, accelerator, start
        self.loss_total = torch.tensor(
            state.epoch_loss if accelerator.is_main_process else 0.0, device=accelerator.device
        )
        self.first_nonfinite = torch.tensor(-1, device=accelerator.device)

    def add(self, loss: torch.Tensor, i: int) -> None:
        self.loss_total += loss
        self.first_nonfinite = torch.where(
            (self.first_nonfinite < 0) & ~torch.isfinite(loss), i, self.first_nonfinite
        )

    def loss_sum(self) -> float:
        return self.accelerator.reduce(self.loss_total, "sum").item()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @contextmanager
    def paused_clock(self):
        paused = time.perf_counter()
        yield
        self.start += time.perf_counter() - paused  # the epoch's seconds count training only

    def fail_if_nonfinite(self, accum: int) -> None:
        _fail_if_nonfinite(
            first_in_any_process(self.first_nonfinite, self.accelerator), self.epoch, len(self.batches), accum
        )


def process_share(batch: list[int], process: int, processes: int) -> tuple[list[int], float]:
    """This process's rows of a batch (a contiguous run, so similar in length) and the weight of their loss.
    A process left without rows computes the batch's first at weight 0: every process must take part in
    each exchange of gradients."""
    share = np.array_split(np.asarray(batch), processes)[process].tolist()
    return (share, 1.0) if share else (batch[:1], 0.0)


def in_any_process(flag: bool, accelerator: Accelerator) -> bool:
    """Whether `flag` holds in some process: every process gets the same answer, so all stop together."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.gather(torch.tensor([flag], device=accelerator.device)).any())


def first_in_any_process(first_nonfinite: torch.Tensor, accelerator: Accelerator) -> int:
    """The first batch whose loss was not finite in some process (-1: none), the same in every process."""
    found = accelerator.gather(first_nonfinite.reshape(1))
    found = found[found >= 0]
    return int(found.min()) if len(found) else -1


def _fail_if_nonfinite(batch: int, epoch: int, num_batches: int, accum: int) -> None:
    if batch >= 0:
        step = epoch * math.ceil(num_batches / accum) + batch // accum + 1
        raise TrainingFailed(
            f"training loss became nan or infinite at optimizer step {step} (epoch {epoch + 1}, batch "
            f"{batch + 1}); try a lower learning rate (or fp16/bf16: false if it happens only in mixed precision)"
        )


def device_batch(encoded: Encoded, split: str, rows: list[int], accelerator: Accelerator, task: Task) -> dict:
    """One padded batch on the training device; mixed precision pads to multiples of 8 for tensor cores."""
    pad_multiple = 8 if accelerator.mixed_precision != "no" else 1
    batch = collate(encoded.ids[split], rows, encoded.pad_id, pad_multiple, encoded.pair_separator)
    if encoded.labels is not None:
        batch["labels"] = task.collate_labels(
            [encoded.labels[split][i] for i in rows], batch["input_ids"].shape[1]
        )
    if accelerator.device.type != "cuda":
        return batch
    # A copy from pageable memory waits for the GPU to finish its queue; from pinned memory it does not,
    # so the host prepares the next batch while the GPU still computes this one.
    return {k: v.pin_memory().to(accelerator.device, non_blocking=True) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}


def eval_batch_tokens(t: TrainingConfig, device: torch.device) -> int | None:
    """The padded-token limit of an evaluation batch: the configured one, else a cache-sized one on a CPU and
    none on an accelerator, where larger batches keep it busy."""
    if t.eval_batch_tokens is not None:
        return t.eval_batch_tokens
    return CPU_EVAL_BATCH_TOKENS if device.type == "cpu" else None


@torch.inference_mode()
def inference(
    model, encoded: Encoded, split: str, t: TrainingConfig, accelerator: Accelerator, task: Task
) -> tuple[float | None, np.ndarray]:
    """The mean loss (None for unlabelled text) and, per example in the split's original order, the task's
    prediction values (what its prediction_values makes of each batch's outputs). Several processes share the
    batches out and gather what each computed, every example once."""
    ids = encoded.ids[split]
    model.eval()
    batches = eval_batches([len(x) for x in ids], t.eval_batch_size, eval_batch_tokens(t, accelerator.device))
    mine = batches[accelerator.process_index :: accelerator.num_processes]
    loss_total = torch.zeros((), device=accelerator.device)
    predicted = []  # kept on the device: one transfer at the end instead of a host sync per batch
    # a process without a batch of its own computes the first and drops it, so that it has values to gather
    for batch_rows in tqdm(
        mine or batches[:1],
        desc=f"eval {split}",
        leave=False,
        mininterval=1,
        disable=not accelerator.is_main_process or None,
    ):
        batch = device_batch(encoded, split, batch_rows, accelerator, task)
        outputs = model(**model_inputs(batch))
        if "labels" in batch and mine:
            loss_total += task.loss(outputs, batch["labels"])
        predicted.append(task.prediction_values(outputs, batch["attention_mask"]))
    rows = torch.tensor(
        [i for batch_rows in mine for i in batch_rows] if mine else [-1] * len(batches[0]),
        device=accelerator.device,
    )
    predictions = torch.cat(padded_to_widest(predicted))
    if predictions.dim() > 1:  # per-token values: as wide as the widest in any process
        predictions = accelerator.pad_across_processes(predictions, dim=1, pad_index=PAD_VALUE)
    predictions = accelerator.gather(accelerator.pad_across_processes(predictions))
    rows = accelerator.gather(accelerator.pad_across_processes(rows, pad_index=-1))
    predictions, rows = predictions[rows >= 0].cpu().numpy(), rows[rows >= 0].cpu().numpy()
    in_order = np.empty_like(predictions)
    in_order[rows] = predictions
    loss = accelerator.reduce(loss_total, "sum").item() / len(ids) if encoded.labels is not None else None
    return loss, in_order


def padded_to_widest(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-batch values padded along their second dimension (tokens) to the widest batch's, with PAD_VALUE;
    values of one width (a classifier's logits) come back as they are."""
    if values[0].dim() < 2:
        return values
    width = max(v.shape[1] for v in values)
    # torch's pad counts dimensions from the last one
    return [
        torch.nn.functional.pad(v, (0, 0) * (v.dim() - 2) + (0, width - v.shape[1]), value=PAD_VALUE)
        for v in values
    ]


def validation_scores(
    model, encoded: Encoded, t: TrainingConfig, accelerator: Accelerator, task: Task
) -> dict:
    """The loss and every metric of the task on validation, as training scores it after each evaluation: under
    the task's decision rule fitted on validation itself (label sets: thresholds), since at a fixed 0.5 a model
    that still gives every label less scores 0 for epochs, and early stopping ends it before it learns."""
    loss, values = inference(model, encoded, "validation", t, accelerator, task)
    truth, values = task.examples(encoded, "validation", values)
    fitted = task.decided(task.decide(truth, values, encoded.label_names, t.decision_threshold))
    return {"loss": loss, **fitted.scores(truth, values, encoded.label_names)}


def evaluate(
    model, encoded: Encoded, split: str, t: TrainingConfig, accelerator: Accelerator, task: Task
) -> dict:
    """The loss, every metric of the task, and the truth, prediction values and predictions of one split, per
    example (a question answered from several windows is one)."""
    loss, values = inference(model, encoded, split, t, accelerator, task)
    truth, values = task.examples(encoded, split, values)
    return {
        "loss": loss,
        **task.scores(truth, values, encoded.label_names),
        "truth": truth,
        "values": values,
        "predictions": task.predict(values),
    }


def update_early_stopping(state: TrainState, t: TrainingConfig, task: Task) -> bool:
    """Track the best validation metric; return True when this epoch is the new best."""
    metric = t.early_stopping.metric
    value = state.history[-1][metric]
    improved = task.is_better(metric, value, state.best_metric)
    if improved:
        entry = state.history[-1]
        state.best_metric, state.best_epoch, state.best_step, state.bad_evals = (
            value,
            entry["epoch"],
            entry["step"],
            0,
        )
    else:
        state.bad_evals += 1
        if t.early_stopping.enabled and state.bad_evals >= t.early_stopping.patience:
            unit = "evaluations" if t.eval_every_steps else "epochs"
            state.stop_reason = (
                f"early stopping: {metric} did not improve for {state.bad_evals} {unit} "
                f"(best {state.best_metric:.4f} at epoch {state.best_epoch:g})"
            )
    return improved
