"""What a run costs, counted rather than timed, so that the same data and config always give the same costs
whatever else the machine is doing: the floating-point operations of a training step and of a prediction
(counted by torch's FLOP counter on one batch), and the memory that training needs (the CUDA allocator's peak,
or on a CPU the weights, gradients, optimizer state and a step's saved activations, added up)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from data import Encoded
from records.shape import Costs
from trainer import device_batch, model_inputs

ADAM_STATES = 2  # AdamW keeps two values per trained weight (the moving averages of gradient and its square)
# the training rows a step is counted on: its cost per example is the same at any batch size
MEASURED_ROWS = 8


def counted_step(
    module: torch.nn.Module, encoded: Encoded, task, accelerator, backward: bool
) -> tuple[int, int, int]:
    """Floating-point operations of one forward (and backward) pass over the first training rows, those rows'
    count, and the bytes of what the forward pass saved for the backward one. The pass runs without dropout
    and with the random generators put back, so the run that follows is the one that would have run."""
    rows = list(range(min(MEASURED_ROWS, len(encoded.ids["train"]))))
    device = next(module.parameters()).device
    batch = model_inputs(device_batch(encoded, "train", rows, accelerator, task))
    batch = {key: value.to(device) for key, value in batch.items()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved.setdefault(tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        return tensor

    rng, training = torch.get_rng_state(), module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            if backward:
                with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
                    outputs = module(**batch)
                values = [v for v in outputs.values() if torch.is_tensor(v) and v.requires_grad]
                if values:
                    sum(v.float().sum() for v in values).backward()
            else:
                with torch.no_grad():
                    module(**batch)
    finally:
        module.zero_grad(set_to_none=True)
        module.train(training)
        torch.set_rng_state(rng)
    return counter.get_total_flops(), len(rows), sum(saved.values())


def step_costs(
    model: torch.nn.Module, trained: torch.nn.Module, inputs: Encoded, encoded: Encoded, task, accelerator
) -> dict:
    """Per example: the operations of a training step of what the loop trains (`trained` on `inputs`: the
    model, or a head on cached features) and of a prediction by the whole model; and the memory training needs
    on a CPU, computed: every weight, then the gradient and AdamW's two states of each trained one, and the
    activations a step saves for its backward pass (scaled from the counted rows to a training batch)."""
    step_flops, rows, activations = counted_step(trained, inputs, task, accelerator, backward=True)
    predict_flops, predict_rows, _ = counted_step(model, encoded, task, accelerator, backward=False)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trains = sum(p.numel() * p.element_size() for p in trained.parameters() if p.requires_grad)
    return {
        "train_step_flops_per_example": step_flops / rows,
        "inference_flops_per_example": predict_flops / predict_rows,
        "memory_parts_bytes": {
            "weights": weights,
            "gradients": trains,
            "optimizer": ADAM_STATES * trains,
            "activations_per_example": activations / rows,
        },
    }


def total_costs(step: dict, batch_size: int, examples_trained: float, featurized: int) -> Costs:
    """The run's training compute and computed memory from its step costs: the step's operations per example
    times the examples it trained on, plus a frozen encoder's feature pass over `featurized` training texts
    once (a prediction's operations each)."""
    parts = step["memory_parts_bytes"]
    memory = (
        parts["weights"]
        + parts["gradients"]
        + parts["optimizer"]
        + parts["activations_per_example"] * batch_size
    )
    return {
        **step,
        "examples_trained": examples_trained,
        "featurized_examples": featurized,
        "train_flops": round(
            step["train_step_flops_per_example"] * examples_trained
            + step["inference_flops_per_example"] * featurized
        ),
        "computed_memory_mb": round(memory / 2**20, 1),
    }
