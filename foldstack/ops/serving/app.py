"""The FastAPI app: the routes, the request metrics and the watcher that reloads a moved model.

    POST /predict   {"texts": ["...", ...]} -> labels, class probabilities, a request id per text, the model version
    POST /feedback  {"request_id": "...", "label": "..."} (or {"items": [...]}): the true label (feedback_routes.py)
    GET  /health    the loaded model's version, labels and where it came from
    GET  /metrics   Prometheus text format: requests, latency histogram, predictions per class, model info
    GET  /docs, /redoc   the API pages (Swagger UI, ReDoc), their scripts served from /static: no CDN (docs.py)

Bad input is always a 4xx, never a 500: a body that is too large is 413, one that is not UTF-8 JSON is 400,
a JSON body that breaks the schema or the limits (batch size, text length, a text that is only whitespace or
not valid Unicode) is 422. Every refusal is `{"detail": "<one line>"}` naming the problem and, for a text, its
index. The body is read with a byte cap before it is parsed, so a huge request cannot exhaust memory. The
OpenAPI document (/openapi.json) states every answer of every endpoint, and its request schema accepts exactly
what `parse_predict_body` accepts (tests/integration/test_serving_contract.py holds the two to that with schemathesis).

When the model is a registry reference (`production`, `latest`), a watcher thread re-resolves it every
`reload_seconds`; when the stage moved it loads (and verifies) the new bundle beside the old one and swaps
them in one assignment, so requests in flight finish on the model they started with. A new bundle that
fails to load or verify is refused, counted in `foldstack_model_reloads_total{result="failure"}`, and the
old model keeps serving.

With `monitoring` (the params' `monitoring` section; serve() passes the source's), each /predict appends its
texts' rows to the prediction log (foldstack.ops.monitoring.predlog: buffered, written off the request path,
flushed at shutdown), and /metrics carries the latest monitor report's verdicts
(`<reports_dir>/monitoring.json`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

from foldstack.ops.monitoring.predlog import PredictionLog
from foldstack.ops.serving.docs import add_offline_docs
from foldstack.ops.serving.feedback_routes import add_feedback
from foldstack.ops.serving.metrics import ENDPOINTS, ServiceMetrics
from foldstack.ops.serving.parsing import parse_predict_body, read_capped
from foldstack.ops.serving.schemas import (HealthReport, InputError, PredictResult, ServingLimits,
                                           predict_request_schema, refusals)
from foldstack.ops.serving.state import LoadedModel, ModelHolder, ModelSource

if TYPE_CHECKING:
    from foldstack.config.monitoring import MonitoringConfig

log = logging.getLogger("foldstack.ops.serving")


class PrometheusText(Response):
    media_type = CONTENT_TYPE_LATEST  # what a Prometheus scraper expects, and what the document states


def create_app(source: ModelSource, *, limits: ServingLimits | None = None, reload_seconds: float | None = 10.0,
               device: str = "cpu", monitoring: MonitoringConfig | None = None,
               monitoring_root: Path | None = None) -> FastAPI:
    """The FastAPI app; loads (and verifies) the model now, so a bad reference fails before serving.

    `monitoring`: log predictions and take feedback as it says, its paths relative to `monitoring_root` (the
    params file's directory; default the working directory). None: no prediction log (POST /feedback is a 404).
    """
    disable_created_metrics()  # the *_created series only double the size of every scrape

    limits = limits or ServingLimits()
    root = Path(monitoring_root) if monitoring_root is not None else Path.cwd()
    report = _under(root, monitoring.reports_dir) / "monitoring.json" if monitoring is not None else None
    metrics = ServiceMetrics(monitoring_report=report)
    holder = ModelHolder(source, device=device, on_change=metrics.model_changed)
    holder.load()
    check_for_new_model = _model_checker(holder, metrics)
    predlog = PredictionLog.from_config(monitoring, root) if monitoring is not None else None

    app = FastAPI(title="foldstack model service",
                  lifespan=_watching(holder, check_for_new_model, reload_seconds, predlog),
                  description="Stacked-ensemble text classification: POST /predict, POST /feedback, GET /health, "
                              "GET /metrics", docs_url=None, redoc_url=None)  # add_offline_docs: no CDN
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.limits = limits
    app.state.check_for_new_model = check_for_new_model
    app.state.predlog = predlog

    app.exception_handler(Exception)(_internal_error)
    _observe_requests(app, holder, metrics)
    _add_predict(app, holder, metrics, limits, predlog)
    add_feedback(app, holder, predlog)
    _add_health(app, holder, limits)
    _add_metrics(app, metrics)
    add_offline_docs(app)
    return app


# ------------------------------------------------------------------------------------------ lazy state
def _model_checker(holder: ModelHolder, metrics: ServiceMetrics) -> Callable[[], bool]:
    source = holder.source

    def check_for_new_model() -> bool:
        """Swap in the model the source points at now, if it moved; never raises (True when swapped)."""
        try:
            swapped = holder.refresh()
        except Exception as exc:  # keep serving the old model whatever went wrong with the new one
            metrics.reloads.labels("failure").inc()
            log.error("could not load the model %s points at now; still serving %s: %s",
                      source.ref, holder.model.version, exc)
            return False
        if swapped:
            metrics.reloads.labels("success").inc()
            log.warning("now serving %s (%s moved)", holder.model.version, source.ref)
        return swapped

    return check_for_new_model


def _under(root: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else root / path


def _watching(holder: ModelHolder, check_for_new_model: Callable[[], bool], reload_seconds: float | None,
              predlog: PredictionLog | None):
    """The app's lifespan: a watcher thread polls a movable source every `reload_seconds` while it serves;
    at shutdown the prediction log writes what it still buffers."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(reload_seconds):
            check_for_new_model()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = None
        if holder.source.movable and reload_seconds:
            watcher = threading.Thread(target=watch, name="foldstack-model-watcher", daemon=True)
            watcher.start()
        try:
            yield
        finally:
            stop.set()
            if watcher is not None:
                watcher.join(timeout=10)
            if predlog is not None:
                predlog.close()

    return lifespan


# --------------------------------------------------------------------------------------------- metrics
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Only a bug gets here (bad input is refused before the model sees it). Starlette logs the traceback
    # after this answer; the client gets the same one-line JSON shape as every other refusal.
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the service log has the "
                                   f"traceback"}, status_code=500)


def _observe_requests(app: FastAPI, holder: ModelHolder, metrics: ServiceMetrics) -> None:
    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.requests.labels(endpoint, request.method, str(status), holder.model.version).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------- routes
def _add_predict(app: FastAPI, holder: ModelHolder, metrics: ServiceMetrics, limits: ServingLimits,
                 predlog: PredictionLog | None) -> None:
    @app.post("/predict", response_model=PredictResult, responses=refusals(400, 413, 422, 500),
              response_description="A label, the class probabilities and a request id for each text, in the order "
                                   "sent",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": predict_request_schema(limits)}}}})
    async def predict(request: Request):
        started = time.perf_counter()
        try:
            body = await read_capped(request, limits.max_body_bytes)
            texts = parse_predict_body(body, limits)
        except InputError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        model = holder.model  # this request uses this model even if a reload swaps another in meanwhile
        result = await run_in_threadpool(model.predict, texts)  # each prediction gets a new request id
        if predlog is not None:
            _log_predictions(predlog, model, texts, result["predictions"], started)
        metrics.batch_size.observe(len(texts))
        for item in result["predictions"]:
            metrics.predictions.labels(str(item["label"]), model.version).inc()
        return result


def _log_predictions(predlog: PredictionLog, model: LoadedModel, texts: list[str], predictions: list[dict],
                     started: float) -> None:
    names = model.bundle.label_map.names
    proba = np.array([[item["probabilities"][n] for n in names] for item in predictions], dtype=np.float64)
    predlog.record([item["request_id"] for item in predictions], texts, [item["label"] for item in predictions],
                   proba, labels=names, model_version=model.version, bundle_id=model.bundle.manifest.get("bundle_id"),
                   latency_ms=(time.perf_counter() - started) * 1000.0)


def _add_health(app: FastAPI, holder: ModelHolder, limits: ServingLimits) -> None:
    source = holder.source

    @app.get("/health", response_model=HealthReport, responses=refusals(500),
             response_description="The model being served and the limits a /predict request must keep")
    def health():
        model = holder.model
        return {"status": "ok", "model_version": model.version, "bundle_id": model.bundle.manifest.get("bundle_id"),
                "labels": model.bundle.labels, "source": source.ref, "loaded_at": model.loaded_at,
                "limits": {"max_batch": limits.max_batch, "max_text_chars": limits.max_text_chars}}


def _add_metrics(app: FastAPI, metrics: ServiceMetrics) -> None:
    @app.get("/metrics", response_class=PrometheusText,
             responses={200: {"description": "The metrics in the Prometheus text exposition format",
                              "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
                        **refusals(500)})
    def prometheus_metrics():
        return PrometheusText(generate_latest(metrics.registry))
