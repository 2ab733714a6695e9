"""ONNX: a trained run as one graph (adapters merged into the weights, the head included), checked against the
run on its validation texts, optionally quantized to int8 and scored on its test split; and the onnxruntime
model that predict and serve run in place of the torch one."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import peft
import torch
import yaml
from transformers import AutoTokenizer

from config import Config, load_config
from data import load_data, tokenize
from model import from_pretrained, load_tokenizer
from records.measure import library_versions
from reporting.summary import task_of
from records.shared import read_json
from serving.export import check_target, written_whole
from serving.predict import Predictor, find_run, load_run
from trainer import device_batch, evaluate, make_accelerator, model_inputs
from utils import ConfigError, atomic_write_json
from records.shape import RunRecord

logger = logging.getLogger("bertlab")

ONNX_MODEL, INT8_MODEL = "model.onnx", "model.int8.onnx"
# beside the graph: a summary of the run's record, and its config
ONNX_RECORD, ONNX_CONFIG = "record.json", "config.yaml"
ONNX_FACTS = "onnx.json"  # what the export checked and measured
RUN_EXPORT = "onnx"  # where predict and serve export a run for --backend onnx, inside its run folder
# The largest difference allowed between any output value (a logit) of the fp32 graph and the run's torch
# model on the same validation texts: float32 kernels differ in the order they add in, far below this.
FP32_TOLERANCE = 1e-3
# Test score (0-1) int8 may lose against the run before the export warns in the log and the card.
INT8_MAX_LOSS = 0.01
RECORD_KEPT = (
    "run_id",
    "config_id",
    "strategy",
    "status",
    "task",
    "model",
    "seed",
    "dataset",
    "best_metric",
    "best_epoch",
    "test",
    "decision",
    "calibration",
    "versions",
    "finished_at",
    "trainable_params",
)


class OnnxModel:
    """An ONNX graph under onnxruntime, called as the run's torch model is (keyword tensors in, outputs named as
    the model names them out), so that evaluation and predict run it unchanged."""

    def __init__(self, path: Path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [graph_input.name for graph_input in self.session.get_inputs()]
        self.outputs = [graph_output.name for graph_output in self.session.get_outputs()]

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, **batch: torch.Tensor) -> SimpleNamespace:
        values = self.session.run(None, {name: batch[name].cpu().numpy() for name in self.inputs})
        return SimpleNamespace(**{name: torch.from_numpy(value) for name, value in zip(self.outputs, values)})


class TensorsInOut(torch.nn.Module):
    """The run's model with named tensors in and a tuple of its named outputs out: what the exporter traces."""

    def __init__(self, model: torch.nn.Module, outputs: list[str]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        result = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return tuple(result[name] for name in self.outputs)


def one_graph(model: torch.nn.Module, record: RunRecord) -> torch.nn.Module:
    """The run's model as plain weights: PEFT adapters merged in; prompt tuning refused, with why."""
    if isinstance(model, peft.PeftModel):
        if model.peft_config[model.active_adapter].is_prompt_learning:
            raise ConfigError(
                f"run {record['run_id']} ({record['strategy']}) cannot be exported to ONNX: PEFT puts "
                "its virtual tokens before the text's embeddings outside the model, so no graph of the "
                "model holds them; predict and serve it with --backend torch"
            )
        model = model.merge_and_unload()
    return model.eval()


@contextlib.contextmanager
def quiet_root_logger(level: int = logging.ERROR):
    """The ONNX exporter and quantizer log a line per weight they touch to the root logger: kept out of the log."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]  # torch's notes on optional packages too
    before = [one.level for one in loggers]
    for one in loggers:
        one.setLevel(level)
    try:
        yield
    finally:
        for one, was in zip(loggers, before):
            one.setLevel(was)


def export_graph(model: torch.nn.Module, sample: dict, path: Path) -> list[str]:
    """Export with torch's ONNX exporter, batch and sequence dimensions dynamic; the names of the outputs."""
    with torch.no_grad():
        outputs = [name for name, value in model(**sample).items() if isinstance(value, torch.Tensor)]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: sequence} for name in sample}
    with warnings.catch_warnings(), quiet_root_logger():  # the exporter's notes on its own internals
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TensorsInOut(model, outputs).eval(),
            args=(),
            kwargs=sample,
            f=str(path),
            input_names=list(sample),
            output_names=outputs,
            dynamic_shapes=shapes,
            dynamo=True,
            verbose=False,
        )
    return outputs


def same_prediction(a, b) -> bool:
    """A label, label set, span or tag sequence the same; a number (regression) within FP32_TOLERANCE."""
    if isinstance(a, (float, np.floating)) and isinstance(b, (float, np.floating)):
        return abs(float(a) - float(b)) <= FP32_TOLERANCE
    return str(a) == str(b)


def compared(torch_result: dict, onnx_result: dict) -> dict:
    """How far the graph's validation answers are from the run's: labels that differ, the largest difference."""
    same = sum(same_prediction(a, b) for a, b in zip(torch_result["predictions"], onnx_result["predictions"]))
    try:
        gap = float(
            np.nanmax(
                np.abs(
                    np.asarray(torch_result["values"], dtype=np.float64)
                    - np.asarray(onnx_result["values"], dtype=np.float64)
                )
            )
        )
    except (TypeError, ValueError):  # values per example of different widths (QA windows): labels only
        gap = None
    return {"examples": len(torch_result["predictions"]), "same_prediction": same, "largest_difference": gap}


def export_onnx(
    run: str, output_dir: str | Path, out: Path, force: bool = False, quantize: str | None = None
) -> Path:
    """`python main.py export --format onnx`: the run written into `out` (see write_onnx)."""
    check_target(out, output_dir, force)
    return write_onnx(run, output_dir, out, quantize)


def write_onnx(run: str | Path, output_dir: str | Path, out: Path, quantize: str | None = None) -> Path:
    """Write the run as `model.onnx` (and `model.int8.onnx`) beside its tokenizer, config, record and a card,
    built whole beside `out` and moved in. The fp32 graph must give the run's prediction on every validation text
    and values within FP32_TOLERANCE; int8's test score is measured against the run's."""
    _, cfg, record, model = load_run(run, output_dir)
    task = task_of([record]).decided(record.get("decision"))
    graph = one_graph(model, record)
    tokenizer = load_tokenizer(cfg)
    tokenizer.model_max_length = cfg.model.max_length  # texts are truncated where the run truncated them
    encoded = tokenize(load_data(cfg.data), tokenizer, cfg.model.max_length, cfg.data.doc_stride)
    accelerator = make_accelerator(False, False, warn=False)
    sample = model_inputs(device_batch(encoded, "validation", [0, 1], accelerator, task))

    def write(building: Path) -> None:
        started = time.perf_counter()
        outputs = export_graph(graph, sample, building / ONNX_MODEL)
        exported_s = time.perf_counter() - started
        reference = evaluate(graph, encoded, "validation", cfg.training, accelerator, task)
        check = compared(
            reference,
            evaluate(
                OnnxModel(building / ONNX_MODEL), encoded, "validation", cfg.training, accelerator, task
            ),
        )
        if (
            check["same_prediction"] < check["examples"]
            or (check["largest_difference"] or 0) > FP32_TOLERANCE
        ):
            raise ConfigError(
                f"run {record['run_id']}: the exported graph does not answer as the run does on "
                f"validation ({check['same_prediction']} of {check['examples']} predictions the same, "
                f"largest difference {check['largest_difference']}); nothing was written"
            )
        facts = {
            "run_id": record["run_id"],
            "inputs": list(sample),
            "outputs": outputs,
            "max_length": cfg.model.max_length,
            "exported_in_s": round(exported_s, 1),
            "fp32_check": {**check, "tolerance": FP32_TOLERANCE},
            "versions": library_versions(),
        }
        if quantize:
            facts["int8"] = quantized(building, encoded, cfg, accelerator, task, record)
        atomic_write_json(building / ONNX_FACTS, facts)
        atomic_write_json(building / ONNX_RECORD, {key: record[key] for key in RECORD_KEPT if key in record})
        (building / ONNX_CONFIG).write_text(
            yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), encoding="utf-8"
        )
        tokenizer.save_pretrained(building)
        (building / "README.md").write_text(onnx_card(record, facts), encoding="utf-8")

    return written_whole(out, write)


def quantized(building: Path, encoded, cfg: Config, accelerator, task, record: RunRecord) -> dict:
    """int8 weights (dynamic quantization: activations quantized per batch as they come), scored on the test
    split against the run's own test score."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the exporter's recorded intermediate shapes trip the quantizer's own shape inference: it infers them anew
    graph = onnx.load(str(building / ONNX_MODEL))
    del graph.graph.value_info[:]
    with tempfile.TemporaryDirectory() as scratch, quiet_root_logger():
        onnx.save(graph, str(Path(scratch) / ONNX_MODEL))
        quantize_dynamic(
            str(Path(scratch) / ONNX_MODEL), str(building / INT8_MODEL), weight_type=QuantType.QInt8
        )
    metric = task.main_metric
    scored = evaluate(OnnxModel(building / INT8_MODEL), encoded, "test", cfg.training, accelerator, task)[
        metric
    ]
    run_score = record["test"][metric]
    loss = run_score - scored if task.metric(metric).higher_is_better else scored - run_score
    result = {
        "metric": metric,
        "label": task.metric(metric).label,
        "test": scored,
        "run_test": run_score,
        "loss": loss,
        "max_loss": INT8_MAX_LOSS,
        "within": loss <= INT8_MAX_LOSS,
        "bytes": (building / INT8_MODEL).stat().st_size,
        # the fp32 graph with the file its exporter keeps the weights in
        "fp32_bytes": sum(f.stat().st_size for f in building.glob(f"{ONNX_MODEL}*")),
    }
    if not result["within"]:
        logger.warning(
            "the int8 graph loses %.4f of test %s against the run (%.4f against %.4f), more than %.2f: "
            "prefer model.onnx, or check the card before using it",
            loss,
            metric,
            scored,
            run_score,
            INT8_MAX_LOSS,
        )
    return result


def onnx_card(record: RunRecord, facts: dict) -> str:
    check = facts["fp32_check"]
    lines = [
        f"# {record['dataset']['name']}: {record['strategy']} fine-tuning of {record['model']}, as ONNX",
        "",
        f"Run `{record['run_id']}` exported by bertlab on {time.strftime('%Y-%m-%d')}: `{ONNX_MODEL}` takes "
        f"{', '.join(f'`{name}`' for name in facts['inputs'])} (int64, batch x tokens, from the tokenizer in this "
        f"folder, truncated at {facts['max_length']} tokens) and gives "
        f"{', '.join(f'`{name}`' for name in facts['outputs'])}; the labels, in order, are in `{ONNX_RECORD}` "
        "(`dataset.label_names`).",
        "",
        "```python",
        "import onnxruntime, numpy as np",
        "from transformers import AutoTokenizer",
        "",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
        f"session = onnxruntime.InferenceSession(FOLDER + '/{ONNX_MODEL}')",
        "batch = tokenizer(['a text'], return_tensors='np', padding=True)",
        f"outputs = session.run(None, {{name: batch[name] for name in {facts['inputs']}}})",
        "```",
        "",
        "Or with bertlab: `python main.py predict --backend onnx --run FOLDER --text ...` (or onnx-int8), "
        "`python main.py serve --backend onnx --run FOLDER`.",
        "",
        "## Checked",
        "",
        f"- On the run's {check['examples']} validation examples the graph gave the run's prediction "
        f"{check['same_prediction']} times"
        + (
            f", every output value within {check['largest_difference']:.1e} of the run's (tolerance "
            f"{check['tolerance']:.0e})."
            if check["largest_difference"] is not None
            else "."
        ),
    ]
    int8 = facts.get("int8")
    if int8:
        lines.append(
            f"- `{INT8_MODEL}` (dynamic int8 quantization, {int8['bytes'] / 1e6:.1f} MB against "
            f"{int8['fp32_bytes'] / 1e6:.1f} MB): test {int8['label']} {int8['test']:.4f} against the run's "
            f"{int8['run_test']:.4f} (a loss of {int8['loss']:+.4f}; allowed {int8['max_loss']})"
            + ("." if int8["within"] else ": **more than allowed; prefer model.onnx**.")
        )
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in facts['versions'].items())}."]
    return "\n".join(lines) + "\n"


def named_folder(run: str, output_dir: str | Path) -> Path:
    """The folder `--run` names for predict and serve: an ONNX export's, else a run's (find_run)."""
    return Path(run) if (Path(run) / ONNX_MODEL).is_file() else find_run(run, output_dir)


def onnx_predictor(run: str, output_dir: str | Path, int8: bool = False) -> Predictor:
    """A Predictor on onnxruntime: from an ONNX export's folder, or from a run, exported on the first use into
    its run folder's `onnx/` (and reused while it is the run's)."""
    folder = named_folder(run, output_dir)
    if not (folder / ONNX_MODEL).is_file():
        run_folder, folder = folder, folder / RUN_EXPORT
        facts = read_json(folder / ONNX_FACTS)
        stale = (
            not facts
            or facts.get("run_id") != run_folder.name
            or (int8 and not (folder / INT8_MODEL).is_file())
        )
        if stale:
            logger.info("exporting %s to ONNX (once) in %s", run_folder.name, folder)
            shutil.rmtree(folder, ignore_errors=True)
            write_onnx(run_folder, output_dir, folder, "int8" if int8 else None)
    path = folder / (INT8_MODEL if int8 else ONNX_MODEL)
    if not path.is_file():
        raise ConfigError(
            f"{folder} has no {path.name}: export the run with python main.py export --format onnx"
            + (" --quantize int8" if int8 else "")
        )
    record = read_json(folder / ONNX_RECORD)
    if not isinstance(record, dict) or "run_id" not in record:
        raise ConfigError(f"{folder / ONNX_RECORD} is not the record an ONNX export writes")
    cfg = load_config(folder / ONNX_CONFIG)
    tokenizer = from_pretrained(
        AutoTokenizer, dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=str(folder)))
    )
    return Predictor(OnnxModel(path), tokenizer, cfg, record, make_accelerator(False, False, warn=False))
