"""The ASGI app (FastAPI): a cascade behind HTTP, stateless between requests (replicas scale behind any
load balancer).

    POST /v1/predict     {"inputs": [[...], ...]} -> {"predictions": [{class, confidence, tier, escalated,
                         energy_j, energy_kind, energy_targets, energy_by_tier}], "energy_j", ...}
    POST /v1/embeddings  {"input": "text" | ["text", ...]} -> {"object": "list", "data": [{"embedding"}], ...}
    GET  /health         the cascade, its tiers and the load
    GET  /metrics        Prometheus text format (wattless.serve.metrics)

Bad input is a 4xx whose JSON names the problem ({"error": {"type", "message"}}); overload is 503 with
Retry-After; a request whose client goes away is cancelled and frees its slot.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from wattless.errors import ModelInputError
from wattless.serve.batching import BatchStats, Batcher, Overloaded
from wattless.serve.config import ServeSettings
from wattless.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics

__all__ = ["create_app", "PredictRequest", "EmbeddingsRequest"]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Any]


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str | list[str]
    model: str | None = None  # accepted for clients of other embedding APIs; the cascade decides


class _Problem(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers


class _ClientGone(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = _Problem(413, "body_too_large", f"the body is larger than {limit} bytes (split the request)")
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request, model: type[BaseModel], limit: int) -> Any:
    raw = await _read_body(request, limit)
    if not raw:
        raise _Problem(400, "malformed_json", "empty body: send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Problem(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(body)"
            parts.append(f"`{key}`: {'unknown field' if err['type'] == 'extra_forbidden' else err['msg']}")
        raise _Problem(422, "invalid_request", "; ".join(parts)) from None


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Any) -> Any:
    """``work``'s result, or _ClientGone once the client disconnects (``work`` is then cancelled)."""
    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise _ClientGone()


class _Service:
    """What the endpoints share: the cascade, its batcher and the metrics."""

    def __init__(self, cascade: Any, settings: ServeSettings) -> None:
        self.cascade, self.settings = cascade, settings
        self.metrics = ServeMetrics(cascade.tiers)
        stats = BatchStats(on_batch=lambda inputs, requests, seconds: self.metrics.batch.observe(inputs),
                           on_cancel=self.metrics.cancelled.inc)
        work = cascade.predict if cascade.kind == "classifier" else cascade.embed
        self.batcher = Batcher(work, batching=settings.batching, max_batch=settings.max_batch,
                               max_wait_s=settings.max_wait_ms / 1000, max_pending=settings.max_pending,
                               retry_after_s=settings.retry_after_s, stats=stats)

    def answer(self, endpoint: str, start: float, body: dict[str, Any], status: int = 200,
               reason: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
        self.metrics.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.metrics.errors.labels(endpoint, reason or "error").inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return JSONResponse(body, status_code=status, headers=headers)

    def problem(self, endpoint: str, start: float, p: _Problem) -> JSONResponse:
        return self.answer(endpoint, start, {"error": {"type": p.kind, "message": str(p)}}, p.status, p.kind, p.headers)

    def check_size(self, n: int) -> None:
        limit = self.settings.max_inputs_per_request
        if n > limit:
            raise _Problem(413, "batch_too_large", f"{n} inputs in one request; this server takes at most {limit} "
                                                   "(split the batch)")

    async def run(self, request: Request, x: Any) -> list[Any]:
        try:
            return await _unless_client_leaves(request, self.batcher.submit(x))
        except Overloaded as exc:
            raise _Problem(503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after_s)}) from None
        except (_ClientGone, _Problem):
            raise
        except Exception as exc:  # a tier failed on a checked batch: a bug, answered as one; the server goes on
            raise _Problem(500, "internal", f"{type(exc).__name__}: {exc}") from None


def _predict_body(cascade: Any, predictions: list[Any]) -> dict[str, Any]:
    return {"model": cascade.name, "object": "prediction.list", "predictions": [p.to_json() for p in predictions],
            "energy_j": float(sum(p.energy_j for p in predictions)), "energy_kind": "estimated",
            "escalated": sum(p.escalated for p in predictions)}


def _embeddings_body(cascade: Any, result: list[Any]) -> dict[str, Any]:
    tier = cascade.tiers[0].spec
    return {"object": "list", "model": cascade.name,
            "data": [{"object": "embedding", "index": i, "embedding": r.embedding, "energy_j": r.energy_j}
                     for i, r in enumerate(result)],
            "usage": {"prompt_tokens": sum(r.tokens for r in result), "total_tokens": sum(r.tokens for r in result)},
            "energy_j": float(sum(r.energy_j for r in result)), "energy_kind": "estimated", "energy_target": tier.target,
            "energy_targets": [tier.target]}


def _routes(app: FastAPI, service: _Service) -> None:
    cascade = service.cascade

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        try:
            if cascade.kind != "classifier":
                raise _Problem(400, "wrong_endpoint", f"this cascade serves a {cascade.kind}: POST /v1/embeddings")
            body = await _json_body(request, PredictRequest, service.settings.max_body_bytes)
            service.check_size(len(body.inputs))
            try:
                x = cascade.check(body.inputs)
            except ModelInputError as exc:
                raise _Problem(422, "invalid_input", str(exc)) from None
            predictions = await service.run(request, x)
        except _Problem as p:
            return service.problem("predict", start, p)
        except _ClientGone:
            return service.answer("predict", start, {"error": {"type": "cancelled", "message": "client left"}},
                                  499, "cancelled")
        service.metrics.record_predictions(predictions)
        return service.answer("predict", start, _predict_body(cascade, predictions))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        start = time.perf_counter()
        try:
            if cascade.kind != "sentence-encoder":
                raise _Problem(400, "wrong_endpoint", f"this cascade serves a {cascade.kind}: POST /v1/predict")
            body = await _json_body(request, EmbeddingsRequest, service.settings.max_body_bytes)
            sentences = [body.input] if isinstance(body.input, str) else body.input
            if not sentences:
                raise _Problem(422, "invalid_input", "`input` is an empty list: send at least one sentence")
            service.check_size(len(sentences))
            result = await service.run(request, cascade.check_sentences(sentences))
        except ModelInputError as exc:
            return service.problem("embeddings", start, _Problem(422, "invalid_input", str(exc)))
        except _Problem as p:
            return service.problem("embeddings", start, p)
        except _ClientGone:
            return service.answer("embeddings", start, {"error": {"type": "cancelled", "message": "client left"}},
                                  499, "cancelled")
        service.metrics.record_energy(0, sum(r.energy_j for r in result), len(result))
        return service.answer("embeddings", start, _embeddings_body(cascade, result))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "cascade": cascade.name, "kind": cascade.kind, "pending_inputs": service.batcher.pending,
                "max_pending_inputs": service.settings.max_pending, "batching": service.settings.batching,
                "tiers": [{"name": t.spec.name, "target": t.spec.target, "model": t.spec.model.name,
                           "threshold": None if abs(t.threshold) == float("inf") else t.threshold} for t in cascade.tiers]}

    @app.get("/metrics")
    async def metrics() -> Response:
        service.metrics.pending.set(service.batcher.pending)
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def create_app(cascade: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving ``cascade`` (a wattless.serve.Cascade, or any object with its ``predict``/``check``,
    ``tiers``, ``kind`` and ``name``); ``settings``: batching and admission (default: the cascade file's)."""
    settings = settings or cascade.spec.serve
    service = _Service(cascade, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(title=f"wattless serve: {cascade.name}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    _routes(app, service)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": {"type": "internal", "message": f"{type(exc).__name__}: {exc}"}}, status_code=500)

    return app
