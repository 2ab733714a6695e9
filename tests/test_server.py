"""`python main.py serve`: a real uvicorn server on a free loopback port, talked to over HTTP. Every task answers
as `predict` does; concurrent clients each get their own answers out of shared batches; bad requests get their
status and one line while the server goes on; readiness, the API key, metrics and a drained SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pandas as pd
import pytest

import main
from conftest import ROOT, labelled_rows, small_config
from serving.onnx import onnx_predictor
from serving.predict import Predictor
from serving.server import Batcher, Limits, build_app
from test_every_task_and_strategy import task_data

KEY = "test-key-1234"
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT_S = 60  # the longest any test waits for a server to come up or a run to load


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, status: int = 200, headers: dict | None = None, process=None) -> httpx.Response:
    """Poll `url` until it answers `status`, for at most WAIT_S seconds."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {process.stderr.read()}")
        with contextlib.suppress(httpx.TransportError):
            response = httpx.get(url, headers=headers, timeout=5)
            if response.status_code == status:
                return response
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer {status} within {WAIT_S} s")


@contextlib.contextmanager
def serving_in_thread(app):
    """The app under a real uvicorn server on a free loopback port, in a thread of this process."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT_S)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict:
    """One trained run of each task (full fine-tuning, at a rate the tiny model learns at), each in its own
    output folder."""
    folder = tmp_path_factory.mktemp("served")
    pd.DataFrame(labelled_rows(per_class=30)).to_csv(folder / "tickets.csv", index=False)
    config = small_config(
        folder, tiny_model_dir, folder / "tickets.csv", training={"num_epochs": 3, "learning_rate": 3e-3}
    )
    found = {}
    for task in ("classification", "multi_label", "regression", "token_classification", "question_answering"):
        overrides = [] if task == "classification" else task_data(task, folder)
        if task in ("classification", "multi_label", "regression"):  # a head the tiny model learns with
            overrides += ["model.head.type=linear", "model.head.pooling=mean"]
        output = folder / task
        assert (
            main.main(["--config", str(config), "--strategy", "full", f"output.dir={output}", *overrides])
            == 0
        )
        found[task] = {"config": config, "output": output, "overrides": overrides}
    return found


def alike(a, b) -> bool:
    """The same answer, numbers to float32 precision: a text batched with others pads differently."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(alike(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(alike(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-5, abs=1e-6)
    return a == b


def inputs_for(task: str) -> list:
    if task == "regression":
        return [
            {"text": "my parcel is late", "pair": "where is the courier"},
            {"text": "refund my money", "pair": "password locked"},
        ]
    if task == "question_answering":
        return [
            {"text": "what is locked?", "pair": "my password is locked and my parcel is late"},
            {"text": "where is the box?", "pair": "the courier left the box at the door"},
        ]
    return [
        "my parcel is late please",
        "refund the charge on my invoice",
        "password locked why",
        "i paid twice",
    ]


@pytest.mark.parametrize(
    "task", ["classification", "multi_label", "regression", "token_classification", "question_answering"]
)
def test_every_task_answers_as_predict_does(runs, task):
    predictor = Predictor.from_run("best", runs[task]["output"])
    inputs = inputs_for(task)
    texts = [i["text"] if isinstance(i, dict) else i for i in inputs]
    pairs = [i["pair"] for i in inputs] if isinstance(inputs[0], dict) else None
    expected = json.loads(json.dumps(predictor.predict(texts, 2, pairs)))  # as JSON carries it
    with serving_in_thread(build_app(lambda: predictor)) as url:
        wait_for(f"{url}/ready")
        listed = httpx.post(f"{url}/predict", json={"inputs": inputs, "top_k": 2}, timeout=WAIT_S)
        single = httpx.post(f"{url}/predict", json={"inputs": inputs[1], "top_k": 2}, timeout=WAIT_S)
        info = httpx.get(f"{url}/info").json()
    assert listed.status_code == 200 and alike(listed.json(), expected)
    assert alike(single.json(), listed.json()[1])
    assert (
        info["task"] == task and info["run_id"] == predictor.record["run_id"] and info["backend"] == "torch"
    )
    assert info["reads_pairs"] == (pairs is not None)


@pytest.mark.parametrize(
    "task", ["classification", "multi_label", "regression", "token_classification", "question_answering"]
)
def test_every_task_answers_the_same_on_onnx_and_is_served_on_it(runs, task):
    inputs = inputs_for(task)
    texts = [i["text"] if isinstance(i, dict) else i for i in inputs]
    pairs = [i["pair"] for i in inputs] if isinstance(inputs[0], dict) else None
    expected = json.loads(
        json.dumps(Predictor.from_run("best", runs[task]["output"]).predict(texts, 2, pairs))
    )
    on_onnx = onnx_predictor("best", runs[task]["output"])  # exported into the run's folder on first use
    assert alike(json.loads(json.dumps(on_onnx.predict(texts, 2, pairs))), expected)
    with serving_in_thread(build_app(lambda: on_onnx, backend="onnx")) as url:
        wait_for(f"{url}/ready")
        served = httpx.post(f"{url}/predict", json={"inputs": inputs, "top_k": 2}, timeout=WAIT_S).json()
        assert httpx.get(f"{url}/info").json()["backend"] == "onnx"
    assert alike(served, expected)


def test_batches_never_mix_answers_and_stay_within_max_batch():
    seen = []

    def predict(texts, top_k, pairs):
        seen.append(len(texts))
        time.sleep(0.01)  # the model is busy while more requests queue
        return [{"echo": text, "top_k": top_k} for text in texts]

    async def clients():
        batcher = Batcher(
            Limits(max_batch=8, max_wait_ms=20), type("H", (), {"observe": lambda self, n: None})()
        )
        batcher.predict = predict
        worker = asyncio.create_task(batcher.run())
        requests = [[f"client {c} text {i}" for i in range(1 + c % 3)] for c in range(40)]
        answers = await asyncio.gather(
            *(batcher.submit(texts, None, 1 + c % 2) for c, texts in enumerate(requests))
        )
        worker.cancel()
        return requests, answers

    async def one_gone():  # a request whose caller gave up while its batch ran: the others still get theirs
        batcher = Batcher(
            Limits(max_batch=8, max_wait_ms=20), type("H", (), {"observe": lambda self, n: None})()
        )
        batcher.predict = predict
        worker = asyncio.create_task(batcher.run())
        gone = asyncio.create_task(batcher.submit(["gone"], None, 1))
        kept = asyncio.create_task(batcher.submit(["kept"], None, 1))
        await asyncio.sleep(0.005)
        gone.cancel()
        answer = await asyncio.wait_for(kept, WAIT_S)  # bounded: a dead batcher would answer nothing
        after = await asyncio.wait_for(batcher.submit(["after"], None, 1), WAIT_S)
        worker.cancel()
        return answer, after

    assert asyncio.run(one_gone()) == ([{"echo": "kept", "top_k": 1}], [{"echo": "after", "top_k": 1}])
    requests, answers = asyncio.run(clients())
    for c, (texts, answer) in enumerate(zip(requests, answers)):
        assert answer == [{"echo": text, "top_k": 1 + c % 2} for text in texts]
    assert max(seen) <= 8 and max(seen) > 3  # requests were run together, never past max_batch


def test_ready_is_503_until_the_run_is_loaded_and_a_failed_load_says_why(runs):
    gate, stopped = threading.Event(), []

    def slow_load():
        assert gate.wait(WAIT_S)
        return Predictor.from_run("best", runs["classification"]["output"])

    with serving_in_thread(build_app(slow_load)) as url:
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503 and ready.json() == {"error": "the run is still loading"}
        assert httpx.post(f"{url}/predict", json={"inputs": "a parcel"}).status_code == 503
        gate.set()
        wait_for(f"{url}/ready")
        assert httpx.post(f"{url}/predict", json={"inputs": "a parcel"}).status_code == 200

    def broken_load():
        raise OSError("no such checkpoint")

    with serving_in_thread(build_app(broken_load, on_load_failure=lambda: stopped.append(1))) as url:
        failed = wait_for(f"{url}/ready", 503)
        assert "failed to load: OSError: no such checkpoint" in failed.json()["error"]
    assert stopped == [1]


@pytest.fixture(scope="module")
def server(runs):
    """`python main.py serve` in its own process, with an API key, small limits and a long batching wait."""
    port = free_port()
    settings = runs["classification"]
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "serve",
            "--config",
            str(settings["config"]),
            f"output.dir={settings['output']}",
            "--port",
            str(port),
            "--max-inputs",
            "8",
            "--max-text-chars",
            "500",
            "--max-body-bytes",
            "4000",
            "--max-wait-ms",
            "200",
            "--max-batch",
            "16",
        ],
        env={**os.environ, "BERTLAB_API_KEY": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/ready", headers=AUTH, process=process)
    yield {"url": url, "process": process, "predictor": Predictor.from_run("best", settings["output"])}
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=WAIT_S)  # and closes its pipes


def test_32_concurrent_clients_each_get_their_own_answers(server):
    texts = [row["text"] for row in labelled_rows(per_class=11, seed=5)][
        :32
    ]  # new texts of the three classes
    expected = server["predictor"].predict(texts)

    async def clients():
        async with httpx.AsyncClient(base_url=server["url"], headers=AUTH, timeout=WAIT_S) as client:
            return await asyncio.gather(*(client.post("/predict", json={"inputs": text}) for text in texts))

    answers = asyncio.run(clients())
    assert all(a.status_code == 200 for a in answers)
    for answer, own in zip(answers, expected):
        assert answer.json()["predicted_label"] == own["predicted_label"]
        assert answer.json()["probability"] == pytest.approx(own["probability"], abs=1e-5)
    assert len({round(a.json()["probability"], 4) for a in answers}) > 16  # the answers do tell texts apart
    metrics = httpx.get(f"{server['url']}/metrics", headers=AUTH).text
    batched = [line for line in metrics.splitlines() if line.startswith("bertlab_batch_inputs_bucket")]
    ones = next(float(line.split()[-1]) for line in batched if 'le="1.0"' in line)
    total = next(float(line.split()[-1]) for line in batched if 'le="+Inf"' in line)
    assert total > ones  # some batch ran several clients' texts together


@pytest.mark.parametrize(
    "body, headers, status, message",
    [
        ({"inputs": "a parcel"}, {}, 401, "missing or wrong API key"),
        ({"inputs": "a parcel"}, {"Authorization": "Bearer wrong"}, 401, "missing or wrong API key"),
        ({"input": "a parcel"}, AUTH, 422, "inputs: Field required"),
        ({"inputs": 5}, AUTH, 422, 'inputs: give a text, {"text": ..., "pair": ...}, or a list of them'),
        ({"inputs": [{"txt": "a"}]}, AUTH, 422, "inputs.0.text: Field required"),
        ({"inputs": "   "}, AUTH, 422, "inputs.text: the text is empty"),
        (
            {"inputs": {"text": "a", "pair": "b"}},
            AUTH,
            422,
            "inputs: this run reads single texts: give no pair",
        ),
        ({"inputs": "a", "top_k": 0}, AUTH, 422, "top_k: Input should be greater than or equal to 1"),
        (
            {"inputs": ["a"] * 9},
            AUTH,
            413,
            "inputs: 9 inputs, more than the 8 a request may hold (--max-inputs)",
        ),
        ({"inputs": "a" * 501}, AUTH, 413, "inputs.text: 501 characters, more than the 500 a text may hold"),
        ({"inputs": "a " * 3000}, AUTH, 413, "the body is over 4,000 bytes (--max-body-bytes)"),
        ("{not json", AUTH, 422, "the body is not valid JSON"),
    ],
)
def test_a_bad_request_gets_its_status_and_one_line_and_the_server_goes_on(
    server, body, headers, status, message
):
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(
        f"{server['url']}/predict",
        content=content,
        headers={"Content-Type": "application/json", **headers},
        timeout=WAIT_S,
    )
    assert response.status_code == status and message in response.json()["error"]
    good = httpx.post(f"{server['url']}/predict", json={"inputs": "a parcel"}, headers=AUTH, timeout=WAIT_S)
    assert good.status_code == 200 and "predicted_label" in good.json()


def test_only_health_answers_without_the_key(server):
    assert httpx.get(f"{server['url']}/health").json() == {"status": "alive"}
    for route in ("/ready", "/info", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{server['url']}{route}").status_code == 401
        assert httpx.get(f"{server['url']}{route}", headers=AUTH).status_code == 200


def test_sigterm_answers_the_requests_in_flight_then_exits_0(server):
    async def in_flight():
        async with httpx.AsyncClient(base_url=server["url"], headers=AUTH, timeout=WAIT_S) as client:
            sent = [
                asyncio.create_task(client.post("/predict", json={"inputs": f"parcel {i}"})) for i in range(4)
            ]
            await asyncio.sleep(0.1)  # the batcher holds them up to 200 ms, waiting for more
            server["process"].send_signal(signal.SIGTERM)
            return await asyncio.gather(*sent)

    answers = asyncio.run(in_flight())
    assert [a.status_code for a in answers] == [200] * 4
    assert server["process"].wait(WAIT_S) == 0


def test_serve_refuses_a_run_that_is_not_there_in_one_line(runs, capsys):
    settings = runs["classification"]
    assert (
        main.main(
            [
                "serve",
                "--config",
                str(settings["config"]),
                f"output.dir={settings['output']}",
                "--run",
                "no-such-run",
            ]
        )
        == 2
    )
    assert main.main(["serve", "--config", str(settings["config"]), "--port", "70000"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert (
        len(errors) == 2 and "no-such-run" in errors[0] and errors[1].startswith("error: --port: got 70000")
    )
    assert main.main(["serve", "--config", str(settings["config"]), "--max-batch", "0"]) == 2
    assert "--max-batch: got 0, allowed: a number of at least 1" in capsys.readouterr().err
