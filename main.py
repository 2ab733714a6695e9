"""The command line: fine-tune a BERT-family encoder with each configured strategy and compare them, then use
the winner.

    python main.py [--config FILE] [--strategy NAME ...] [--resume] [--force] [--dry-run] [--shard K/N] [--summary-only]
                   [--repair] [--debug] [section.key=value ...]
    python main.py predict [--run RUN] (--text TEXT [--text ...] | --input FILE [--output FILE]) [--top-k K]
                           [--backend torch|onnx|onnx-int8]
    python main.py export [--run RUN] --out DIR [--force] [--format hf|onnx] [--quantize int8]
    python main.py gather FOLDER [FOLDER ...] [--config FILE] [--strategy NAME ...] [section.key=value ...]
    python main.py serve [--run RUN] [--host 127.0.0.1] [--port 8000] [--backend torch|onnx|onnx-int8]
                         [--max-batch N] [--max-wait-ms M] [--api-key K]

Exit status: 0 when every run completed, 1 when some run failed (its record says why),
2 for a mistake in the config, the command line or the data, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from config import file_settings, load_config
from experiment import Launch, applicable, run_experiment
from records.results import repair
from strategies import STRATEGIES
from utils import ConfigError, is_main_process

logger = logging.getLogger("bertlab")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.yaml", help="YAML config (default: config.yaml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for config and data errors")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="override a config value, e.g. training.learning_rate=3e-5 or output.dir=elsewhere",
    )


def add_strategy(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--strategy", action="append", choices=sorted(STRATEGIES), help=help)


def experiment_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare fine-tuning strategies for text classification. "
        "Sub-commands: predict, export, serve, gather "
        "(python main.py serve --help)."
    )
    add_strategy(parser, "run only this strategy, enabled or not (repeat for several)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue interrupted runs from their last checkpoint (completed runs are always reused)",
    )
    parser.add_argument("--force", action="store_true", help="run again even the runs already completed")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the planned runs, what is cached, parameter counts and a time estimate; train nothing",
    )
    parser.add_argument(
        "--shard",
        type=shard_spec,
        metavar="K/N",
        help="run only the K-th of N disjoint shares of the planned runs (K from 0), e.g. one per GPU "
        "or job-array task, all into one output.dir; the last to finish writes the summary",
    )
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="train nothing: write and print the summary of the planned runs that have finished",
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="train nothing: rebuild output.dir's results file from the run folders, setting a "
        "damaged results, experiment, data report or verdict file aside",
    )
    add_common(parser)
    return parser


def shard_spec(text: str) -> tuple[int, int]:
    """ "K/N" -> (K, N), with 0 <= K < N."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"got {text!r}, allowed: K/N with 0 <= K < N, e.g. 0/4")
    return int(k), int(n)


BACKENDS = ["torch", "onnx", "onnx-int8"]
BACKEND_HELP = (
    "what runs the model: torch (default), or onnxruntime on the run's ONNX graph (onnx) or its int8 "
    "graph (onnx-int8); --run may then also be an ONNX export's folder, and a run is exported on first use"
)
RUN_HELP = (
    "a run id, a run folder, best (default: the best run of the latest experiment, chosen on validation) "
    "or recommended (the best run of the strategy the verdict recommends)"
)


def predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py predict", description="Predict with a trained run.")
    parser.add_argument("--run", default="best", help=RUN_HELP)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a text to predict on (repeat for several)")
    source.add_argument("--input", type=Path, help="a CSV, TSV, JSON, JSONL or Parquet file to predict on")
    parser.add_argument(
        "--output", type=Path, help="where --input's predictions go (default: <input>.predictions.csv)"
    )
    parser.add_argument(
        "--pair",
        action="append",
        help="a run trained on sentence pairs: the second text of each --text, in the same order",
    )
    parser.add_argument("--text-column", help="the column of --input holding the text (default: the run's)")
    parser.add_argument(
        "--pair-column", help="the column of --input holding each second text (default: the run's)"
    )
    parser.add_argument(
        "--top-k", type=int, default=1, help="also list the k most likely labels (default: 1)"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)
    add_common(parser)
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py export", description="Write a trained run as a Hugging Face model folder or as ONNX."
    )
    parser.add_argument("--run", default="best", help=RUN_HELP)
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (new or empty)")
    parser.add_argument(
        "--format",
        choices=["hf", "onnx"],
        default="hf",
        help="hf: a folder transformers loads (default); onnx: one graph for onnxruntime, checked "
        "against the run",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="with --format onnx: also an int8 graph, its test score measured against the run's",
    )
    parser.add_argument("--force", action="store_true", help="write into --out even when it is not empty")
    add_common(parser)
    return parser


def serve_parser() -> argparse.ArgumentParser:
    from serving.server import API_KEY_VARIABLE, Limits

    limits = Limits()
    parser = argparse.ArgumentParser(prog="main.py serve", description="Serve a trained run over HTTP.")
    parser.add_argument("--run", default="best", help=RUN_HELP)
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)
    parser.add_argument(
        "--max-batch",
        type=int,
        default=limits.max_batch,
        help=f"inputs of concurrent requests run together (default: {limits.max_batch})",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=limits.max_wait_ms,
        help=f"how long an input waits for others to join its batch (default: {limits.max_wait_ms})",
    )
    parser.add_argument(
        "--max-inputs",
        type=int,
        default=limits.max_inputs,
        help=f"inputs one request may hold, 413 beyond (default: {limits.max_inputs})",
    )
    parser.add_argument(
        "--max-text-chars",
        type=int,
        default=limits.max_text_chars,
        help=f"characters one text may hold, 413 beyond (default: {limits.max_text_chars})",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=limits.max_body_bytes,
        help=f"bytes a request body may hold, 413 beyond (default: {limits.max_body_bytes})",
    )
    parser.add_argument(
        "--api-key",
        help=f"require Authorization: Bearer <key> on every route but /health "
        f"(default: ${API_KEY_VARIABLE}, else none)",
    )
    add_common(parser)
    return parser


def gather_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py gather",
        description=(
            "Bring the runs other workers of this experiment wrote to their own output folders into output.dir, then "
            "write the summary and verdict of them all (docs/scaling.md)."
        ),
    )
    add_strategy(parser, "the strategies the workers ran, when they were named with --strategy")
    parser.add_argument(
        "--config", default="config.yaml", help="the workers' YAML config (default: config.yaml)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for config and data errors")
    parser.add_argument(
        "items",
        nargs="+",
        metavar="FOLDER or section.key=value",
        help="a worker's output.dir (its results/ and checkpoints/), or a config override",
    )
    return parser


def tell_own_settings(config: str, overrides: list[str], strategies: list[str]) -> None:
    """With other data than the config file's own (data.path or data.name on the command line), say which of its
    settings, chosen for its own data, still apply to the strategies that run: learning rates tuned on a demo set
    should not shape a user's data unnoticed. Settings that adapt to the data (auto) are not listed."""
    overridden = {override.split("=", 1)[0] for override in overrides}
    if not overridden & {"data.path", "data.name"}:
        return
    runs = lambda key: not key.startswith("strategies.") or key.split(".")[1] in strategies
    own = {
        key: value
        for key, value in file_settings(config).items()
        if not key.startswith("data.") and key not in overridden and value != "auto" and runs(key)
    }
    if own:
        logger.warning(
            "%s was written for its own data; with yours these of its settings still apply (override them, "
            "or write a config of your own): %s",
            config,
            ", ".join(f"{key}={value}" for key, value in own.items()),
        )


def experiment_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.repair:
        for line in repair(cfg.output.dir):
            print(line)
        return 0
    strategies = strategies_of(cfg, args)
    tell_own_settings(args.config, args.overrides, strategies)
    return run_experiment(
        cfg,
        Launch(
            strategies,
            resume=args.resume,
            force=args.force,
            dry_run=args.dry_run,
            shard=args.shard,
            summary_only=args.summary_only,
            config_file=str(args.config),
            command=" ".join(sys.argv),
        ),
    )


def strategies_of(cfg, args: argparse.Namespace) -> list[str]:
    strategies = args.strategy or applicable(
        cfg, [s for s in STRATEGIES if getattr(cfg.strategies, s).enabled]
    )
    if not strategies:
        raise ConfigError(
            f"{args.config}: no strategy enabled; set strategies.<name>.enabled: true or pass "
            f"--strategy NAME (known: {', '.join(sorted(STRATEGIES))})"
        )
    return strategies


def gather_command(args: argparse.Namespace) -> int:
    overrides = [item for item in args.items if OVERRIDE.match(item)]
    folders = tuple(Path(item) for item in args.items if not OVERRIDE.match(item))
    if not folders:
        raise ConfigError("gather: name at least one worker's output folder")
    cfg = load_config(args.config, overrides)
    return run_experiment(
        cfg,
        Launch(
            strategies_of(cfg, args),
            summary_only=True,
            gather_from=folders,
            config_file=str(args.config),
            command=" ".join(sys.argv),
        ),
    )


def predict_command(args: argparse.Namespace) -> int:
    from serving.predict import check_output, predict_file

    if args.top_k < 1:
        raise ConfigError(f"--top-k: got {args.top_k}, allowed: an integer >= 1")
    output_dir = load_config(args.config, args.overrides).output.dir
    if args.input is not None:
        check_output(args.output, args.input, output_dir)
    predictor = predictor_of(args.run, output_dir, args.backend)
    print(f"using {predictor.describe()}")
    if args.input is not None:
        print(
            f"wrote {predict_file(predictor, args.input, args.output, args.text_column, args.top_k, args.pair_column)}"
        )
        return 0
    if args.pair is not None and len(args.pair) != len(args.text):
        raise ConfigError(
            f"--pair: got {len(args.pair)} for {len(args.text)} --text, allowed: one per --text"
        )
    shown = (
        args.text
        if args.pair is None
        else [f"{text!r} + {pair!r}" for text, pair in zip(args.text, args.pair)]
    )
    for text, row in zip(shown, predictor.predict(args.text, args.top_k, args.pair)):
        print(
            f"{text if args.pair else repr(text)}: "
            f"{predictor.task.format_prediction(row) if row else '(empty text: no prediction)'}"
        )
    return 0


def predictor_of(run: str, output_dir: str, backend: str):
    """The run ready to predict, on the backend asked for."""
    from serving.predict import Predictor

    if backend == "torch":
        return Predictor.from_run(run, output_dir)
    from serving.onnx import onnx_predictor

    return onnx_predictor(run, output_dir, int8=backend == "onnx-int8")


def export_command(args: argparse.Namespace) -> int:
    output_dir = load_config(args.config, args.overrides).output.dir
    if args.format == "onnx":
        from serving.onnx import export_onnx

        print(f"wrote {export_onnx(args.run, output_dir, args.out, args.force, args.quantize)}")
        return 0
    if args.quantize:
        raise ConfigError(
            "--quantize: int8 is for --format onnx (a Hugging Face folder keeps the run's weights)"
        )
    from serving.export import export_run

    print(f"wrote {export_run(args.run, output_dir, args.out, args.force)}")
    return 0


def serve_command(args: argparse.Namespace) -> int:
    from serving.onnx import named_folder
    from serving.server import API_KEY_VARIABLE, Limits, serve

    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_inputs=args.max_inputs,
        max_text_chars=args.max_text_chars,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
    )
    for name, value in vars(args).items():
        least = 0 if name == "max_wait_ms" else 1  # no wait is a choice; no batch, body or port is not
        if name.startswith("max_") and value < least or name == "port" and not 0 < value < 65536:
            raise ConfigError(
                f"--{name.replace('_', '-')}: got {value}, allowed: a number of at least {least}"
                + (" and below 65536" if name == "port" else "")
            )
    output_dir = load_config(args.config, args.overrides).output.dir
    folder = named_folder(args.run, output_dir)  # a wrong --run stops here, before the server starts
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    return serve(
        lambda: predictor_of(str(folder), output_dir, args.backend),
        args.host,
        args.port,
        limits,
        api_key,
        args.backend,
    )


COMMANDS = {
    "predict": (predict_parser, predict_command),
    "export": (export_parser, export_command),
    "serve": (serve_parser, serve_command),
    "gather": (gather_parser, gather_command),
}
OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*\.[\w.-]+=")  # section.key=value, where gather takes folders too


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        make_parser, command = COMMANDS[argv[0]]
        argv = argv[1:]
    else:
        make_parser, command = experiment_parser, experiment_command
    args = make_parser().parse_intermixed_args(argv)  # overrides may come before and after options
    # under a launch of several processes, the others speak only of errors
    level = logging.DEBUG if args.debug else logging.INFO if is_main_process() else logging.ERROR
    logging.basicConfig(level=level, datefmt="%H:%M:%S", format="%(asctime)s %(levelname)s %(message)s")
    import transformers

    transformers.logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    transformers.logging.disable_progress_bar()
    # peft 0.21 calls a transformers method that transformers 5 has renamed: nothing for users to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # Accelerate passes no other way to turn off torch's broadcast of buffers before each forward; these models'
    # buffers never change, and evaluation, shared unevenly among processes, must not wait on one another
    warnings.filterwarnings("ignore", message=".*broadcast_buffers.* is deprecated", category=FutureWarning)
    try:
        return command(args)
    except ConfigError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: `python main.py --resume` continues from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
