"""The strategies PEFT implements: LoRA, IA3, LoHa, LoKr (adapters on the target projections) and prompt tuning
(virtual tokens before the input); with the task's PEFT type, PEFT trains and saves the head beside them."""

from __future__ import annotations

import peft
import torch
from transformers import PreTrainedModel

from schema.strategies import IA3Config, LohaLokrConfig, LoraConfig, PromptTuningConfig
from strategies.base import Strategy, rates
from tasks import Need, Task
from utils import ConfigError


def with_adapters(model: PreTrainedModel, config: peft.PeftConfig, strategy: str, targets: list[str] | None):
    """The model wrapped by PEFT with `config`; the task type makes PEFT train and save the head too. Target
    modules the model lacks, or a model PEFT cannot adapt, are config errors naming the model."""
    linear = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
    )
    missing = [m for m in targets or [] if m.rsplit(".", 1)[-1] not in linear]
    if missing:
        raise ConfigError(
            f"strategies.{strategy}.target_modules: {', '.join(missing)} not in '{model.name_or_path}'; "
            f"its linear layers are: {', '.join(linear)}"
        )
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(
            f"strategies.{strategy}: PEFT cannot apply it to '{model.name_or_path}' "
            f"({str(err).splitlines()[0][:200]}); set its target_modules"
        ) from None


def lora(model: PreTrainedModel, settings: LoraConfig, task: Task) -> torch.nn.Module:
    """Low-rank updates on the target projections (Hu et al. 2021)."""
    config = peft.LoraConfig(
        task_type=task.peft_task_type,
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
    )
    return with_adapters(model, config, "lora", settings.target_modules)


def ia3(model: PreTrainedModel, settings: IA3Config, task: Task) -> torch.nn.Module:
    """Learned vectors that rescale the target projections' outputs (IA3, Liu et al. 2022): the fewest
    parameters of the adapters here. Without target modules, PEFT's choice for the architecture."""
    config = peft.IA3Config(
        task_type=task.peft_task_type,
        target_modules=settings.target_modules,
        feedforward_modules=settings.feedforward_modules,
    )
    return with_adapters(model, config, "ia3", settings.target_modules)


def loha(model: PreTrainedModel, settings: LohaLokrConfig, task: Task) -> torch.nn.Module:
    """Updates as the Hadamard product of two low-rank matrices (LoHa, Hyeon-Woo et al. 2022): a higher rank
    of update than LoRA for the same parameters."""
    config = peft.LoHaConfig(
        task_type=task.peft_task_type,
        r=settings.rank,
        alpha=settings.alpha,
        target_modules=settings.target_modules,
    )
    return with_adapters(model, config, "loha", settings.target_modules)


def lokr(model: PreTrainedModel, settings: LohaLokrConfig, task: Task) -> torch.nn.Module:
    """Updates as a Kronecker product of a small matrix and a low-rank one (LoKr, Yeh et al. 2023)."""
    config = peft.LoKrConfig(
        task_type=task.peft_task_type,
        r=settings.rank,
        alpha=settings.alpha,
        target_modules=settings.target_modules,
    )
    return with_adapters(model, config, "lokr", settings.target_modules)


def prompt_tuning(model: PreTrainedModel, settings: PromptTuningConfig, task: Task) -> torch.nn.Module:
    """Trainable virtual tokens before the input (Lester et al. 2021); the encoder stays frozen."""
    init_text = settings.init_text
    config = peft.PromptTuningConfig(
        task_type=task.peft_task_type,
        num_virtual_tokens=settings.num_virtual_tokens,
        prompt_tuning_init=peft.PromptTuningInit.TEXT if init_text else peft.PromptTuningInit.RANDOM,
        prompt_tuning_init_text=init_text,
        tokenizer_name_or_path=model.name_or_path if init_text else None,
    )
    return peft.get_peft_model(model, config)


def shifts_positions(task: Task, cfg) -> str | None:
    """Virtual tokens before the text move every token's position: a task whose labels sit on tokens or
    spans cannot be read back."""
    lacking = task.lacks(Need.UNMOVED_POSITIONS)
    return lacking and f"its virtual tokens shift every token's position, and {lacking}"


# Training examples per second relative to full fine-tuning, measured on the demo data with 2 CPU cores (full
# 80, lora 101, prompt tuning 77 examples/s).
LORA = Strategy("lora", lora, relative_cost=0.8, space=rates(1e-4, 1e-2))
IA3 = Strategy("ia3", ia3, space=rates(1e-3, 1e-1))
LOHA = Strategy("loha", loha, space=rates(3e-4, 3e-2))
LOKR = Strategy("lokr", lokr, space=rates(3e-4, 3e-2))
PROMPT_TUNING = Strategy(
    "prompt_tuning",
    prompt_tuning,
    refuses=shifts_positions,
    relative_cost=1.04,
    space=rates(3e-3, 3e-1),
    extra_positions=lambda settings: (
        "strategies.prompt_tuning.num_virtual_tokens",
        settings.num_virtual_tokens,
    ),
)
