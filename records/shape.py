"""The declared shape of a run's record (all_results.json, a run folder's record.json): its parts as typed
dicts that the run builds and every reader reads by typed key, and the check a record is written under."""

import types
import typing
from typing import Any, Literal, NotRequired, TypedDict, Union

# A task's scores by metric name (its `metrics`, a loss, and what its test report adds: per-class tables, a
# confusion matrix): the task declares them, so the record does not.
Scores = dict[str, Any]


class FewShot(TypedDict):
    shots_per_class: int
    draw: int


class Fold(TypedDict):
    folds: int
    repeat: int  # which cut of the data into folds
    index: int  # the fold held out


class Trial(TypedDict):
    """A search trial's place in its study; a confirmation's also names the trial it tests."""

    study: str
    number: int
    space: dict[str, Any]
    confirms: NotRequired[str]


class Dataset(TypedDict):
    name: str
    fingerprint: str
    sizes: dict[str, int]  # rows per split; train: the examples trained on (few-shot, augmented)
    num_labels: int
    label_names: list[str]
    label_distribution: dict[str, dict[str, float]]  # per split: the task's own counts or statistics
    majority_baseline: Scores  # the test scores of always answering the most common label
    augmented_train_rows: int
    report: str  # where the data report holds this data: data_report.json#<fingerprint>


class Evaluation(TypedDict):
    """One validation of the history: the task's `val_<metric>` scores besides these."""

    epoch: float
    step: int
    train_loss: float | None
    val_loss: NotRequired[float]
    lr: NotRequired[float | None]  # none where no schedule set it (SetFit)
    seconds: float


class MemoryParts(TypedDict):
    weights: int
    gradients: int
    optimizer: int
    activations_per_example: float


class Costs(TypedDict):
    """What experiment.costs counts: compute in FLOPs, memory in bytes and MB, independent of machine load."""

    train_step_flops_per_example: float
    inference_flops_per_example: float
    memory_parts_bytes: MemoryParts
    examples_trained: int
    featurized_examples: int
    train_flops: float
    computed_memory_mb: float


class ParameterGroup(TypedDict):
    part: str
    learning_rate: float
    parameters: int


class Initialisation(TypedDict):
    """The earlier run whose trained weights this one started from."""

    run_id: str
    folder: str
    head: str  # kept, or re-initialised with the reason


class Features(TypedDict):
    """A frozen encoder's features: computed for this run, or reused from an earlier run's cache."""

    cached: bool  # false: this run trains on the model's outputs after all (the rest is then absent)
    computed: NotRequired[int]
    reused: NotRequired[int]
    seconds: NotRequired[float]


class Calibration(TypedDict):
    method: str
    temperature: float
    folded_into: list[str]  # the head's parameters the temperature was folded into
    validation: dict[str, list[float]]  # metric: [before, after]


class DecisionRule(TypedDict):
    """A task's rule fitted on validation after training (label sets: each label's threshold)."""

    setting: Any
    thresholds: dict[str, float]
    validation: dict[str, list[float]]  # metric: [the task's default rule, this rule]


class OutputCheck(TypedDict):
    """Whether the kept weights answer the input at all, on validation (a collapse is diagnosed)."""

    examples: int
    prediction: str
    prediction_share: float
    truth_share: float
    spread: float


class Diagnostic(TypedDict):
    kind: str
    message: str
    next_step: str
    numbers: dict[str, Any]  # the evidence


class Step(TypedDict):
    step: int
    epoch: float


class BatchRetry(TypedDict):
    batch_size: int
    gradient_accumulation_steps: int


class Planned(TypedDict):
    """What a run is, on what data, with which settings, where and with what: written before it trains."""

    schema_version: int
    run_id: str
    config_id: str
    strategy: str
    status: Literal["running", "completed", "pruned", "failed"]
    varied: dict[str, Any]  # the settings a grid, a variant or a search varied, by short key
    few_shot: FewShot | None
    fold: Fold | None
    trial: NotRequired[Trial | None]  # records from before searches lack it
    model: str
    task: str
    dataset: Dataset
    seed: int
    hyperparameters: dict[str, Any]  # training's settings, the strategy's and max_length
    device: str
    mixed_precision: str
    num_processes: int
    versions: dict[str, str]
    started_at: str


class Trained(TypedDict, total=False):
    """What training adds: the TrainResult of the loop, a probe's fit or SetFit's, and the run's costs."""

    history: list[Evaluation]
    best_epoch: float | None
    best_step: int | None
    best_metric: float | None
    stop_reason: str | None
    optimizer_steps: int
    train_time_s: float
    train_samples_per_s: float
    validation_time_s: float
    checkpoint_time_s: float
    setfit: dict[str, Any]  # SetFit's own fit: the body's seconds
    logistic_regression: dict[str, Any]  # a probe's fit: the C chosen, and those tried
    total_params: int
    trainable_params: int
    trainable_pct: float
    costs: Costs
    parameter_groups: list[ParameterGroup]
    init_from: Initialisation | None
    features: Features | None
    export_refused: str | None
    unfreezing: list[dict[str, Any]] | None  # gradual unfreezing's schedule
    oom_retries: list[BatchRetry]


class Tested(TypedDict, total=False):
    """What testing adds (never to a search trial's record): calibration, a decision rule, test scores."""

    calibration: Calibration
    decision: DecisionRule
    validation_outputs: OutputCheck | None
    test: Scores
    test_uncalibrated: Scores
    test_unseen: Scores | None  # a given test split's rows that no earlier split holds
    test_predictions: list[Any]
    test_labels: list[Any]


class Ended(TypedDict, total=False):
    """How the run ended: its diagnostics, or why it failed or was pruned, and what it took."""

    diagnostics: list[Diagnostic]
    error: str
    traceback: str
    pruned_at: Step
    peak_memory_mb: float | None
    peak_memory_measure: str
    finished_at: str
    run_time_s: float


class Outcome(Trained, Tested, Ended):
    """Everything a run's record gains after it is planned."""


class RunRecord(Planned, Outcome):
    """One run's record as this code writes it (records.results.upgrade gives older ones what readers need)."""


class RecordShapeError(Exception):
    """A record this code wrote departs from its declared shape: a defect of the code, never of the run."""


def shape_problems(value: Any, shape: Any = RunRecord, where: str = "record") -> list[str]:
    """Where `value` (a record, or a part of one) departs from its declared shape: a missing or undeclared key,
    or a value of another type; a line each."""
    if shape is Any:
        return []
    origin, arguments = typing.get_origin(shape), typing.get_args(shape)
    if origin in (Union, types.UnionType):
        problems = [shape_problems(value, option, where) for option in arguments]
        return [] if any(not found for found in problems) else min(problems, key=len)
    if origin is Literal:
        return [] if value in arguments else [f"{where}: {value!r} is none of {list(arguments)}"]
    if typing.is_typeddict(shape):
        return typed_dict_problems(value, shape, where)
    expected = origin or shape
    if expected is float:
        expected = (int, float)  # JSON writes a whole float as an integer
    if shape is type(None):
        expected = type(None)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return [f"{where}: {type(value).__name__} where {getattr(shape, '__name__', shape)} is declared"]
    if origin is list:
        return [
            problem
            for i, item in enumerate(value)
            for problem in shape_problems(item, arguments[0], f"{where}[{i}]")
        ]
    if origin is dict:
        return [
            problem
            for key, item in value.items()
            for problem in shape_problems(item, arguments[1], f"{where}.{key}")
        ]
    return []


def typed_dict_problems(value: Any, shape: type, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: {type(value).__name__} where {shape.__name__} is declared"]
    fields = typing.get_type_hints(shape)
    problems = [f"{where}: lacks {key}" for key in sorted(shape.__required_keys__ - value.keys())]
    undeclared = value.keys() - fields.keys()
    if shape is Evaluation:  # the task's val_<metric> scores beside the declared keys
        undeclared = {key for key in undeclared if not key.startswith("val_")}
    problems += [f"{where}: {key} is not declared in {shape.__name__}" for key in sorted(undeclared)]
    for key in value.keys() & fields.keys():
        problems += shape_problems(value[key], fields[key], f"{where}.{key}")
    return problems
