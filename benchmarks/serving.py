"""Serving speed, side by side on one machine: transformers.pipeline (one text a call, and batched at its best
batch size), bertlab's predict on torch, on ONNX fp32 and on ONNX int8; then `python main.py serve` under 1, 8
and 32 concurrent HTTP clients against the FastAPI app a user writes by hand (pipeline() per request):

    python benchmarks/serving.py [--repeats 3] [--texts 1000] [--clients 1 8 32] [--requests 1600]
        [--workdir DIR] [--name serving]

It trains (once; reused from --workdir) config.yaml's full fine-tuning of the bundled MiniLM on the demo data,
with the model's own head so that the run exports to a folder pipeline() loads, then exports it as that folder
and as ONNX with int8. Texts: the demo data's and banking77's test texts (../shared/datasets), the first --texts of each. The
offline ways alternate --repeats times (median); every server runs alone, loaded by clients that each send one
text a request until --requests are answered (at most 300 s a level). Writes benchmarks/results/<name>.json and
<name>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import main as bertlab  # noqa: E402
from records.measure import library_versions  # noqa: E402
from serving.onnx import onnx_predictor  # noqa: E402
from serving.predict import Predictor  # noqa: E402
from utils import atomic_write_json  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
PIPELINE_BATCH_SIZES = (8, 16, 32, 64)
SINGLE_CALLS = 100  # one-text calls timed for each way's latency
LEVEL_LIMIT_S = 300  # the longest one level of concurrent clients may run
HAND_WRITTEN_APP = """
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

classify = pipeline("text-classification", model={folder!r}, device="cpu")
app = FastAPI()


class Body(BaseModel):
    text: str


@app.post("/predict")
def predict(body: Body):
    return classify(body.text, truncation=True)[0]
"""


def prepared(work: Path) -> dict:
    """The run, its Hugging Face folder and its ONNX folder (with int8), made once in `work`."""
    output, config = work / "outputs", ["--config", str(ROOT / "config.yaml")]
    settings = [f"output.dir={output}", "model.head.type=model", "model.head.pooling=cls"]
    assert bertlab.main([*config, "--strategy", "full", *settings]) == 0
    if not (work / "hf" / "config.json").is_file():
        assert bertlab.main(["export", *config, "--out", str(work / "hf"), "--force", *settings]) == 0
    if not (work / "onnx" / "model.int8.onnx").is_file():
        assert (
            bertlab.main(
                [
                    "export",
                    *config,
                    "--format",
                    "onnx",
                    "--quantize",
                    "int8",
                    "--out",
                    str(work / "onnx"),
                    "--force",
                    *settings,
                ]
            )
            == 0
        )
    return {"output": output, "hf": work / "hf", "onnx": work / "onnx"}


def text_sets(limit: int) -> dict[str, list[str]]:
    sets = {"demo": pd.read_csv(ROOT / "examples" / "support_tickets.csv")["text"].astype(str).tolist()}
    if (SHARED / "banking77" / "test.csv").is_file():
        sets["banking77"] = pd.read_csv(SHARED / "banking77" / "test.csv")["text"].astype(str).tolist()
    return {name: texts[:limit] for name, texts in sets.items()}


def seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def percentiles(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": 1000 * float(np.percentile(values, 50)),
        "p99_ms": 1000 * float(np.percentile(values, 99)),
    }


def offline(parts: dict, texts: list[str], repeats: int) -> dict:
    """Texts per second of each way over all `texts` (median of `repeats`, alternating), and each way's latency
    for one text a call."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(parts["hf"]), device="cpu")
    predictors = {
        "predict, torch": Predictor.from_run("best", parts["output"]),
        "predict, ONNX fp32": onnx_predictor(str(parts["onnx"]), parts["output"]),
        "predict, ONNX int8": onnx_predictor(str(parts["onnx"]), parts["output"], int8=True),
    }
    batched = {
        f"pipeline, batch {b}": (lambda b=b: classify(texts, batch_size=b, truncation=True))
        for b in PIPELINE_BATCH_SIZES
    }
    batched.update({name: (lambda p=p: p.predict(texts)) for name, p in predictors.items()})
    for work in batched.values():  # warm-up, untimed
        work()
    taken = {name: [] for name in batched}
    for _ in range(repeats):  # alternating, so that drifts in the machine's speed hit every way alike
        for name, work in batched.items():
            taken[name].append(seconds(work))
    single = {"pipeline, one text a call": lambda text: classify(text, truncation=True)}
    single.update({name: (lambda text, p=p: p.predict([text])) for name, p in predictors.items()})
    calls = {
        name: [seconds(lambda: call(text)) for text in texts[:SINGLE_CALLS]] for name, call in single.items()
    }
    one_at_a_time = {
        "pipeline, one text a call": len(calls["pipeline, one text a call"])
        / sum(calls["pipeline, one text a call"])
    }
    rates = {name: len(texts) / statistics.median(values) for name, values in taken.items()}
    return {
        "texts": len(texts),
        "texts_per_s": {**one_at_a_time, **rates},
        "latency_one_text": {name: percentiles(values) for name, values in calls.items()},
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def server(command: list[str], port: int, cwd: Path):
    """A server process, up once /docs answers (at most 120 s), stopped afterwards."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited: {process.stderr.read()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code in (200, 404):
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"{command} did not come up within 120 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.communicate(timeout=60)


async def load(url: str, body_of, texts: list[str], clients: int, requests: int) -> dict:
    """`clients` clients, each sending one text a request until `requests` are answered: requests per second
    and the latency of each. aiohttp, because httpx's async client spends about 0.4 of a core at 32 clients
    (aiohttp 0.05), taken from the server it measures when both share the machine."""
    sent, latencies = iter(range(requests)), []

    async def client(http: aiohttp.ClientSession, deadline: float):
        for number in sent:
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            async with http.post(f"{url}/predict", json=body_of(texts[number % len(texts)])) as response:
                await response.read()
                response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as http:
        async with http.post(f"{url}/predict", json=body_of(texts[0])) as warm_up:
            await warm_up.read()
        started, deadline = time.perf_counter(), time.monotonic() + LEVEL_LIMIT_S
        await asyncio.gather(*(client(http, deadline) for _ in range(clients)))
        wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / wall,
        **percentiles(latencies),
    }


def served(parts: dict, texts: list[str], levels: list[int], requests: int, work: Path) -> dict:
    """Each server alone under each number of clients."""
    (work / "hand_written_app.py").write_text(HAND_WRITTEN_APP.format(folder=str(parts["hf"])))
    ours = lambda run, backend, port: [  # noqa: E731
        sys.executable,
        str(ROOT / "main.py"),
        "serve",
        "--config",
        str(ROOT / "config.yaml"),
        f"output.dir={parts['output']}",
        "--run",
        run,
        "--port",
        str(port),
        "--backend",
        backend,
    ]
    ways = {
        "bertlab serve, torch": (
            lambda port: ours("best", "torch", port),
            lambda text: {"inputs": text},
            ROOT,
        ),
        "bertlab serve, ONNX int8": (
            lambda port: ours(str(parts["onnx"]), "onnx-int8", port),
            lambda text: {"inputs": text},
            ROOT,
        ),
        "hand-written FastAPI + pipeline()": (
            lambda port: [
                sys.executable,
                "-m",
                "uvicorn",
                "hand_written_app:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            lambda text: {"text": text},
            work,
        ),
    }
    results = {}
    for name, (command, body_of, folder) in ways.items():
        port = free_port()
        with server(command(port), port, folder) as url:
            results[name] = [asyncio.run(load(url, body_of, texts, clients, requests)) for clients in levels]
    return results


def tables(result: dict) -> str:
    lines = []
    for name, measured in result["offline"].items():
        lines += [
            f"### {name}: {measured['texts']} texts",
            "",
            "| way | texts/s | one text a call: p50 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for way, rate in measured["texts_per_s"].items():
            latency = measured["latency_one_text"].get(way)
            lines.append(
                f"| {way} | {rate:.0f} | "
                + (f"{latency['p50_ms']:.1f} | {latency['p99_ms']:.1f} |" if latency else "- | - |")
            )
        lines.append("")
    lines += [
        "### The server under concurrent clients (one text a request)",
        "",
        "| server | clients | requests/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, levels in result["served"].items():
        lines += [
            f"| {name} | {level['clients']} | {level['requests_per_s']:.1f} | {level['p50_ms']:.0f} | "
            f"{level['p99_ms']:.0f} |"
            for level in levels
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=1600)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bertlab-serving")
    parser.add_argument("--name", default="serving")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    parts = prepared(args.workdir)
    sets = text_sets(args.texts)
    result = {
        "offline": {name: offline(parts, texts, args.repeats) for name, texts in sets.items()},
        "served": served(parts, sets["demo"], args.clients, args.requests, args.workdir),
        "int8": json.loads((parts["onnx"] / "onnx.json").read_text())["int8"],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "versions": library_versions(),
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
    }
    for measured in result["offline"].values():
        rates = measured["texts_per_s"]
        best = max((f"pipeline, batch {b}" for b in PIPELINE_BATCH_SIZES), key=rates.get)
        measured["int8_vs_best_pipeline"] = rates["predict, ONNX int8"] / rates[best]
    top = max(args.clients)
    by_clients = {
        name: next(level for level in levels if level["clients"] == top)
        for name, levels in result["served"].items()
    }
    result["server_vs_hand_written"] = (
        by_clients["bertlab serve, torch"]["requests_per_s"]
        / by_clients["hand-written FastAPI + pipeline()"]["requests_per_s"]
    )
    out = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    atomic_write_json(out, result)
    summary = "\n".join(
        [
            f"# Serving: {result['machine']['cores']} cores, {result['date']}",
            "",
            tables(result),
            "",
            "ONNX int8 / pipeline at its best batch: "
            + ", ".join(f"{name} {m['int8_vs_best_pipeline']:.2f}x" for name, m in result["offline"].items())
            + f"; int8 test {result['int8']['label']} {result['int8']['test']:.4f} against the run's "
            f"{result['int8']['run_test']:.4f}.",
            f"bertlab serve (torch) / the hand-written app at {top} clients: {result['server_vs_hand_written']:.2f}x.",
        ]
    )
    out.with_suffix(".md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
