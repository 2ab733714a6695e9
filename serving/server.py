"""The HTTP server of a trained run (`python main.py serve`): /predict answered in dynamic batches, health,
readiness, info and Prometheus metrics, limits on what a request may hold, and an optional API key."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from records.measure import library_versions
from serving.predict import Predictor

logger = logging.getLogger("bertlab")

API_KEY_VARIABLE = (
    "BERTLAB_API_KEY"  # read when --api-key is not given, so the key stays out of process lists
)
OPEN_ROUTES = ("/health",)  # answered without the API key: a liveness probe carries none


@dataclass(frozen=True)
class Limits:
    """What a request may hold and how requests are batched (413 past the first three)."""

    max_body_bytes: int = 1_000_000
    max_inputs: int = 256  # inputs in one request
    max_text_chars: int = 20_000  # characters in one text (a pair's texts each)
    max_batch: int = 32  # inputs of concurrent requests run together; a larger request runs alone, whole
    # how long the first queued input waits for others to join its batch: none by default, since the requests
    # that arrive while the model computes form the next batch anyway, and a lone request is not held up
    max_wait_ms: float = 0.0


class Item(BaseModel):
    """One input: a text, and its second text for a run trained on pairs (a question's context for QA)."""

    model_config = ConfigDict(extra="forbid")
    text: str
    pair: str | None = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: str | Item | list[str | Item] = Field(
        description="a text, {text, pair}, or a list of them; a list is answered with a list in its order"
    )
    top_k: int = Field(1, ge=1, le=1000, description="classification: also list the k most likely labels")


# how pydantic names the shapes an input may take, in the path of an error
SHAPE_NAMES = {"str", "Item", "list[union[str,Item]]"}


class RequestError(Exception):
    """A request the server answers with `status` and one line, going on with the next."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Pending:
    texts: list[str]
    pairs: list[str] | None
    top_k: int
    answer: asyncio.Future


class Batcher:
    """Runs the inputs of concurrent requests together: every request queued while the model computed the last
    batch, up to `max_batch` inputs, the first waiting at most `max_wait_ms` for more; each request's future gets
    exactly its own answers, in its order. The model runs on one thread beside the event loop, which goes on
    accepting requests meanwhile."""

    def __init__(self, limits: Limits, batch_sizes: Histogram):
        self.limits, self.batch_sizes = limits, batch_sizes
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.held: Pending | None = None  # a request too big to join the last batch: it opens the next
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertlab-model")
        self.predict: Callable[[list[str], int, list[str] | None], list[dict]] | None = None

    async def submit(self, texts: list[str], pairs: list[str] | None, top_k: int) -> list[dict]:
        answer = asyncio.get_running_loop().create_future()
        await self.queue.put(Pending(texts, pairs, top_k, answer))
        return await answer

    async def gather(self) -> list[Pending]:
        """The next batch: the first pending request, then those that arrive within max_wait_ms while the
        inputs stay within max_batch (one that would pass it opens the next batch)."""
        loop = asyncio.get_running_loop()
        batch = [self.held or await self.queue.get()]
        self.held = None
        size, deadline = len(batch[0].texts), loop.time() + self.limits.max_wait_ms / 1000
        while size < self.limits.max_batch:
            if self.queue.empty():
                try:
                    pending = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                except TimeoutError:
                    break
            else:
                pending = self.queue.get_nowait()
            if size + len(pending.texts) > self.limits.max_batch:
                self.held = pending
                break
            batch.append(pending)
            size += len(pending.texts)
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.gather()
            for top_k in dict.fromkeys(p.top_k for p in batch):  # the model answers one top_k at a time
                group = [p for p in batch if p.top_k == top_k]
                texts = [text for p in group for text in p.texts]
                pairs = [pair for p in group for pair in p.pairs] if group[0].pairs is not None else None
                self.batch_sizes.observe(len(texts))
                try:
                    rows = await loop.run_in_executor(self.executor, self.predict, texts, top_k, pairs)
                except Exception as err:  # the model's failure is these requests', never the server's
                    logger.exception("prediction failed")
                    for p in group:
                        if not p.answer.done():
                            p.answer.set_exception(err)
                    continue
                start = 0
                for p in group:
                    # a request cancelled meanwhile (its client gone) is left as it is
                    if not p.answer.done():
                        p.answer.set_result(rows[start : start + len(p.texts)])
                    start += len(p.texts)


class Metrics:
    """The Prometheus series of one server, in a registry of its own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bertlab_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "bertlab_prediction_errors", "predictions that failed inside the model", registry=self.registry
        )
        self.latency = Histogram(
            "bertlab_request_seconds",
            "time from a request's arrival to its answer",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch_inputs = Histogram(
            "bertlab_batch_inputs",
            "inputs the model ran together",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )


class BodyLimit:
    """Refuses (413) a request body over `max_bytes`, declared or streamed, before the app reads any of it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self.too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self.too_large(scope, receive, send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def too_large(self, scope, receive, send):
        await error_response(413, f"the body is over {self.max_bytes:,} bytes (--max-body-bytes)")(
            scope, receive, send
        )


class GuardAndCount:
    """Refuses (401) a request without the API key, on every route but OPEN_ROUTES, before its body is read; counts
    every answer and its time by route and status. Plain ASGI, since Starlette's middleware class starts a task
    for every request."""

    def __init__(self, app, api_key: str | None, metrics: Metrics, routes: set[str]):
        self.app, self.api_key, self.metrics, self.routes = app, api_key, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, path, answered = time.perf_counter(), scope["path"], []

        async def counted(message):
            if message["type"] == "http.response.start":
                answered.append(message["status"])
            await send(message)

        if self.api_key is not None and path not in OPEN_ROUTES and not authorized(scope, self.api_key):
            await error_response(
                401,
                "missing or wrong API key: send the header Authorization: Bearer <key>",
                {"WWW-Authenticate": "Bearer"},
            )(scope, receive, counted)
        else:
            await self.app(scope, receive, counted)
        route = path if path in self.routes else "other"  # unknown paths share one series
        self.metrics.requests.labels(route, str(answered[0] if answered else 500)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def validation_message(err: RequestValidationError) -> str:
    """Pydantic's complaint in one line: where in the body, and what is wrong. Of the errors an input gives
    against each shape it may take, the one that went deepest names the mistake."""
    errors = err.errors()
    if errors[0]["type"] == "json_invalid":
        return "the body is not valid JSON"

    def where(error: dict) -> list[str]:  # the path in the body, without pydantic's names of the shapes tried
        return [str(part) for part in error["loc"][1:] if not (isinstance(part, str) and part in SHAPE_NAMES)]

    deepest = max(errors, key=lambda error: len(where(error)))
    if where(deepest) == ["inputs"] and deepest["loc"][-1] in SHAPE_NAMES:  # no shape fits at all
        return 'inputs: give a text, {"text": ..., "pair": ...}, or a list of them'
    return f"{'.'.join(where(deepest)) or 'body'}: {deepest['msg']}"


def inputs_of(
    request: PredictRequest, trained_on_pairs: bool, limits: Limits
) -> tuple[list[str], list[str] | None]:
    """The request's texts (and pairs), checked against the run and the limits."""
    items = request.inputs if isinstance(request.inputs, list) else [request.inputs]
    items = [Item(text=item) if isinstance(item, str) else item for item in items]
    if not items:
        raise RequestError(422, "inputs: the list is empty")
    if len(items) > limits.max_inputs:
        raise RequestError(
            413,
            f"inputs: {len(items)} inputs, more than the {limits.max_inputs} a request may hold "
            "(--max-inputs)",
        )
    for i, item in enumerate(items):
        where = f"inputs.{i}" if isinstance(request.inputs, list) else "inputs"
        if (item.pair is not None) != trained_on_pairs:
            raise RequestError(
                422,
                f'{where}: this run reads pairs of texts: give {{"text": ..., "pair": ...}}'
                if trained_on_pairs
                else f"{where}: this run reads single texts: give no pair",
            )
        for name, text in (("text", item.text), ("pair", item.pair)):
            if text is None:
                continue
            if not text.strip():
                raise RequestError(422, f"{where}.{name}: the text is empty")
            if len(text) > limits.max_text_chars:
                raise RequestError(
                    413,
                    f"{where}.{name}: {len(text):,} characters, more than the "
                    f"{limits.max_text_chars:,} a text may hold (--max-text-chars)",
                )
    return [item.text for item in items], ([item.pair for item in items] if trained_on_pairs else None)


def run_info(predictor: Predictor, backend: str) -> dict:
    record = predictor.record
    return {
        "run_id": record["run_id"],
        "strategy": record["strategy"],
        "model": record["model"],
        "task": record["task"],
        "labels": predictor.label_names,
        "thresholds": (record.get("decision") or {}).get("thresholds"),
        "temperature": (record.get("calibration") or {}).get("temperature"),
        "max_length": predictor.cfg.model.max_length,
        "reads_pairs": predictor.columns.get("pair") is not None,
        "backend": backend,
        "scores": {
            "validation": record["best_metric"],
            "test": record.get("test", {}).get(predictor.task.main_metric),
        },
        "versions": {"trained": record["versions"], "serving": library_versions()},
    }


@dataclass
class ServerState:
    predictor: Predictor | None = None
    failure: str | None = None


def build_app(
    load: Callable[[], Predictor],
    limits: Limits = Limits(),
    api_key: str | None = None,
    backend: str = "torch",
    on_load_failure: Callable[[], None] = lambda: None,
) -> FastAPI:
    """The app: it starts answering at once and loads the run (`load`) on a thread meanwhile; /ready and
    /predict say 503 until it has."""
    metrics, state = Metrics(), ServerState()
    batcher = Batcher(limits, metrics.batch_inputs)

    def load_run() -> None:
        try:
            state.predictor = load()
        except Exception as err:  # the server cannot serve: it says why and stops
            state.failure = f"{type(err).__name__}: {err}"
            logger.error("the run could not be loaded: %s", state.failure)
            on_load_failure()
            return
        batcher.predict = state.predictor.predict
        logger.info("ready: %s", state.predictor.describe())

    @asynccontextmanager
    async def lifespan(app):
        loading = asyncio.get_running_loop().run_in_executor(batcher.executor, load_run)
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        batcher.executor.shutdown(wait=True)

    app = FastAPI(title="bertlab", description="Predictions of a trained bertlab run.", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError):
        return error_response(422, validation_message(err))

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError):
        return error_response(err.status, str(err))

    add_routes(app, state, batcher, metrics, limits, backend)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(GuardAndCount, api_key=api_key, metrics=metrics, routes={r.path for r in app.routes})
    return app


def add_routes(
    app: FastAPI, state: ServerState, batcher: Batcher, metrics: Metrics, limits: Limits, backend: str
) -> None:
    """/health, /ready, /info, /metrics and /predict."""

    def not_ready() -> JSONResponse:
        return error_response(
            503, f"the run failed to load: {state.failure}" if state.failure else "the run is still loading"
        )

    @app.get("/health", summary="The server is alive (no API key needed)")
    async def health():
        return {"status": "alive"}

    @app.get("/ready", summary="The run is loaded: 503 until then")
    async def ready():
        return {"status": "ready"} if state.predictor else not_ready()

    @app.get(
        "/info", summary="The run served: its id, strategy, task, labels, thresholds, temperature, versions"
    )
    async def info():
        return run_info(state.predictor, backend) if state.predictor else not_ready()

    @app.get("/metrics", summary="Prometheus metrics: requests, errors, latency, batch sizes")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", summary="Predict on one input or a list, in the shape `predict` gives")
    async def predict(request: PredictRequest):
        if state.predictor is None:
            return not_ready()
        texts, pairs = inputs_of(request, state.predictor.columns.get("pair") is not None, limits)
        try:
            rows = await batcher.submit(texts, pairs, request.top_k)
        except Exception:
            metrics.errors.inc()
            return error_response(
                500, "the prediction failed inside the model; the server log has the details"
            )
        return rows if isinstance(request.inputs, list) else rows[0]


def authorized(scope, api_key: str) -> bool:
    given = dict(scope["headers"]).get(b"authorization", b"")
    return hmac.compare_digest(given, f"Bearer {api_key}".encode())


def serve(
    load: Callable[[], Predictor],
    host: str,
    port: int,
    limits: Limits,
    api_key: str | None,
    backend: str = "torch",
) -> int:
    """Serve until SIGTERM or Ctrl-C, which finish the requests in flight first; 0 then, 1 when the run could not
    be loaded."""
    import uvicorn

    failed = []

    def stop_on_failure() -> None:
        failed.append(True)
        server.should_exit = True

    app = build_app(load, limits, api_key, backend, stop_on_failure)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    # uvicorn raises the signal again once it has drained; a handler of our own keeps that from killing the
    # process, so a drained SIGTERM ends with status 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    logger.info(
        "serving on http://%s:%d (docs at /docs)%s", host, port, "; API key required" if api_key else ""
    )
    server.run()
    return 1 if failed else 0
