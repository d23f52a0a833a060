"""Serving the production model over HTTP (FastAPI + uvicorn) with Prometheus metrics.

    POST /predict   {"texts": ["...", ...]} -> labels, class probabilities and the model version
    GET  /health    the loaded model's version, labels and where it came from
    GET  /metrics   Prometheus text format: requests, latency histogram, predictions per class, model info

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
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel

from foldstack.errors import FoldstackError

if TYPE_CHECKING:
    from foldstack.bundle import Bundle
    from foldstack.config import Config

log = logging.getLogger("foldstack.ops.serving")

# Paths that get their own metric label; anything else is "other" so random URLs cannot grow the label set.
_ENDPOINTS = ("/predict", "/health", "/metrics", "/docs", "/openapi.json")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# Every character str.isspace() counts as whitespace, which is what str.strip() (and so the model's
# normalise_text) removes: besides ASCII whitespace, U+001C..U+001F, U+0085 NEXT LINE and the Unicode spaces.
# The request schema's pattern and the server's check are both built from this one table, so they cannot
# disagree; a test compares it with str.isspace over all of Unicode.
WHITESPACE_RANGES = ((0x09, 0x0D), (0x1C, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                     (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000))
# "Holds a character that is not whitespace", in the \uXXXX syntax that ECMA-262 (JSON Schema's regex
# dialect), Python's re and Rust's regex all read the same way.
TEXT_PATTERN = "[^" + "".join(f"\\u{lo:04x}" if lo == hi else f"\\u{lo:04x}-\\u{hi:04x}"
                              for lo, hi in WHITESPACE_RANGES) + "]"
_HAS_CONTENT = re.compile(TEXT_PATTERN)


class InputError(FoldstackError):
    """A request the service refuses; carries the HTTP status (4xx) to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServingLimits:
    """What one /predict request may hold."""

    max_batch: int = 64
    max_text_chars: int = 10_000

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_text_chars < 1:
            raise ValueError(f"serving limits must be positive, got {self}")

    @property
    def max_body_bytes(self) -> int:
        # JSON may escape one character as \uXXXX\uXXXX (12 bytes, a surrogate pair); plus quoting and commas.
        return self.max_batch * (self.max_text_chars * 12 + 8) + 1024


# ------------------------------------------------------------------------------------------- wire format
# What the endpoints answer, as pydantic models so the OpenAPI document states it and FastAPI checks the
# answers against it.
class ErrorDetail(BaseModel):
    """Every answer that is not a 200: one line saying what is wrong (for a text, its index in "texts")."""

    detail: str


class Prediction(BaseModel):
    label: str | int
    probabilities: dict[str, float]


class PredictResult(BaseModel):
    model_version: str
    labels: list[str | int]
    predictions: list[Prediction]


class LimitsReport(BaseModel):
    max_batch: int
    max_text_chars: int


class HealthReport(BaseModel):
    status: Literal["ok"]
    model_version: str
    bundle_id: str | None
    labels: list[str | int]
    source: str
    loaded_at: str
    limits: LimitsReport


def predict_request_schema(limits: ServingLimits) -> dict[str, Any]:
    """The JSON schema of a /predict body: exactly what `parse_predict_body` accepts."""
    return {
        "type": "object", "required": ["texts"], "additionalProperties": False,
        "properties": {"texts": {
            "type": "array", "minItems": 1, "maxItems": limits.max_batch,
            "items": {"type": "string", "minLength": 1, "maxLength": limits.max_text_chars, "pattern": TEXT_PATTERN,
                      "description": "Valid Unicode (no unpaired surrogate) holding at least one character "
                                     "that is not whitespace (as Python's str.isspace counts it)"}}},
    }


def _refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "The body is not UTF-8 JSON",
        413: "The body is larger than the limits allow (see /health)",
        422: "The JSON breaks the request schema or the limits: what and, for a text, which index",
        500: "A bug in the service, never the client's input (e.g. the model failed on texts it accepted); "
             "the service log has the traceback",
    }
    return {status: {"model": ErrorDetail, "description": meaning[status]} for status in statuses}


def parse_predict_body(body: bytes, limits: ServingLimits) -> list[str]:
    """The texts of a /predict body, or an InputError (400 not UTF-8 JSON, 422 wrong shape or out of limits).

    Every message is one line and quotes nothing of the client's beyond ASCII-escaped field names, so the
    error answer can always be encoded (a lone surrogate echoed back would make the answer itself fail).
    """
    try:
        # Decoded here rather than by json.loads, which would also take UTF-16 and UTF-32 (RFC 8259: UTF-8 only).
        document = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(400, f"the body is not valid UTF-8 JSON: byte {exc.start} (0x{body[exc.start]:02x}) "
                              f"is not UTF-8 ({exc.reason})") from None
    try:
        payload = json.loads(document)
    except (ValueError, RecursionError) as exc:
        raise InputError(400, f"the body is not valid UTF-8 JSON: {_one_line(exc)}") from None
    if not isinstance(payload, dict) or "texts" not in payload:
        raise InputError(422, 'expected a JSON object {"texts": ["a text", ...]}')
    unknown = sorted(set(payload) - {"texts"})
    if unknown:
        named = ", ".join(_quoted(name) for name in unknown[:5]) + (f" and {len(unknown) - 5} more"
                                                                     if len(unknown) > 5 else "")
        raise InputError(422, f'unknown field(s) {named}; the body holds only "texts"')
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise InputError(422, f'"texts" must be a list of strings, got {_json_type(texts)}')
    if not texts:
        raise InputError(422, '"texts" is empty: send at least one text')
    if len(texts) > limits.max_batch:
        raise InputError(422, f'"texts" holds {len(texts)} texts; at most {limits.max_batch} per request')
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(422, f"texts[{i}] is {_json_type(text)}, not a string")
        if len(text) > limits.max_text_chars:
            raise InputError(422, f"texts[{i}] has {len(text)} characters; at most {limits.max_text_chars}")
        _check_unicode(i, text)
        if not _HAS_CONTENT.search(text):
            raise InputError(422, f"texts[{i}] is empty or only whitespace")
    return texts


def _check_unicode(index: int, text: str) -> None:
    """Refuse a text holding an unpaired surrogate: JSON can spell one ("\\ud800") but it is not Unicode text,
    and the transformer kinds fail on it (hashing a text as UTF-8 for the embedding cache raises
    UnicodeEncodeError, the tokenizers a TypeError), which would be a 500."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(422, f"texts[{index}] is not valid Unicode: an unpaired surrogate "
                              f"U+{ord(text[exc.start]):04X} at character {exc.start}") from None


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, which is what the client sent (not Python's name for it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "an object", list: "an array", str: "a string"}[type(value)]


def _quoted(name: str, limit: int = 40) -> str:
    quoted = ascii(name)
    return quoted if len(quoted) <= limit else quoted[:limit] + "...'"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# ----------------------------------------------------------------------------------------------- model
class ModelSource:
    """Where the served model comes from: a bundle directory (fixed) or a registry reference (can move)."""

    def __init__(self, ref: str, cfg: Config | None = None):
        self.ref = str(ref)
        self.cfg = cfg
        self.movable = not (Path(self.ref) / "manifest.json").is_file()
        if self.movable and cfg is None:
            raise FoldstackError(f"{self.ref!r} is not a bundle directory; a registry reference needs the params "
                                 f"(registry settings)")

    def locate(self) -> tuple[Path, str]:
        """(bundle path, version) the reference points at now."""
        from foldstack.ops.registry import resolve_model_version

        return resolve_model_version(self.ref, self.cfg)


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle
    version: str
    path: Path
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def predict(self, texts: list[str]) -> dict[str, Any]:
        proba = self.bundle.predict_proba(texts)  # normalised by the bundle, as its training data was
        names = self.bundle.label_map.names
        labels = self.bundle.label_map.decode(proba.argmax(axis=1))
        return {
            "model_version": self.version,
            "labels": self.bundle.labels,
            "predictions": [{"label": label, "probabilities": {n: float(p) for n, p in zip(names, row, strict=True)}}
                            for label, row in zip(labels, proba, strict=True)],
        }


class ModelHolder:
    """The model being served; `refresh()` swaps in a new one when the source moved."""

    def __init__(self, source: ModelSource, *, device: str = "cpu",
                 on_change: Callable[[LoadedModel | None, LoadedModel], None] | None = None):
        self.source = source
        self.device = device
        self.on_change = on_change
        self._model: LoadedModel | None = None
        self._lock = threading.Lock()  # one load at a time; readers never wait (they read one attribute)
        self._refused: tuple[str, str] | None = None  # (version, error) of a bundle that failed to load

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise RuntimeError("no model loaded yet; call load() first")
        return self._model

    def load(self) -> LoadedModel:
        path, version = self.source.locate()
        return self._swap(path, version)

    def _swap(self, path: Path, version: str) -> LoadedModel:
        from foldstack.bundle import load_bundle

        with self._lock:
            loaded = LoadedModel(load_bundle(path, device=self.device), version, path)  # verifies every hash
            previous, self._model = self._model, loaded
        if self.on_change:
            self.on_change(previous, loaded)
        return loaded

    def refresh(self) -> bool:
        """Load the model the source points at now if it changed; True when a new model was swapped in.

        Raises when the new bundle cannot be loaded (the old model stays); a version that failed once is
        not retried until the source points elsewhere, so a broken promotion does not reload every poll.
        """
        if not self.source.movable:
            return False
        path, version = self.source.locate()
        if self._model is not None and version == self._model.version and path == self._model.path:
            return False
        if self._refused and self._refused[0] == version:
            return False
        try:
            self._swap(path, version)
        except Exception as exc:
            self._refused = (version, str(exc))
            raise
        self._refused = None
        return True


# --------------------------------------------------------------------------------------------- metrics
class ServiceMetrics:
    """The Prometheus metrics of one app, in their own registry (several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, open fds
        self.requests = Counter("foldstack_http_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status", "model_version"], registry=self.registry)
        self.latency = Histogram("foldstack_http_request_duration_seconds", "Time to answer a request",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("foldstack_predictions", "Predicted texts by predicted class",
                                   ["label", "model_version"], registry=self.registry)
        self.batch_size = Histogram("foldstack_predict_batch_texts", "Texts per /predict request",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.model_info = Gauge("foldstack_model_info", "The model being served (value 1)",
                                ["model_name", "model_version", "bundle_id"], registry=self.registry)
        self.reloads = Counter("foldstack_model_reloads", "Model reloads after the registry stage moved",
                               ["result"], registry=self.registry)

    def model_changed(self, previous: LoadedModel | None, current: LoadedModel) -> None:
        if previous is not None:
            self.model_info.remove(*self._info_labels(previous))
        self.model_info.labels(*self._info_labels(current)).set(1)

    @staticmethod
    def _info_labels(model: LoadedModel) -> tuple[str, str, str]:
        registry = model.bundle.manifest.get("registry", {})
        return registry.get("name", "bundle"), model.version, model.bundle.manifest.get("bundle_id", "")


# ------------------------------------------------------------------------------------------------- app
def create_app(source: ModelSource, *, limits: ServingLimits | None = None, reload_seconds: float | None = 10.0,
               device: str = "cpu") -> FastAPI:
    """The FastAPI app; loads (and verifies) the model now, so a bad reference fails before serving."""
    from contextlib import asynccontextmanager

    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

    class PrometheusText(Response):
        media_type = CONTENT_TYPE_LATEST  # what a Prometheus scraper expects, and what the document states

    disable_created_metrics()  # the *_created series only double the size of every scrape

    limits = limits or ServingLimits()
    metrics = ServiceMetrics()
    holder = ModelHolder(source, device=device, on_change=metrics.model_changed)
    holder.load()
    stop = threading.Event()

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

    def watch() -> None:
        while not stop.wait(reload_seconds):
            check_for_new_model()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        watcher = None
        if source.movable and reload_seconds:
            watcher = threading.Thread(target=watch, name="foldstack-model-watcher", daemon=True)
            watcher.start()
        try:
            yield
        finally:
            stop.set()
            if watcher is not None:
                watcher.join(timeout=10)

    app = FastAPI(title="foldstack model service", lifespan=lifespan,
                  description="Stacked-ensemble text classification: POST /predict, GET /health, GET /metrics")
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.limits = limits
    app.state.check_for_new_model = check_for_new_model

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # Only a bug gets here (bad input is refused before the model sees it). Starlette logs the traceback
        # after this answer; the client gets the same one-line JSON shape as every other refusal.
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the service log has the "
                                       f"traceback"}, status_code=500)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        endpoint = request.url.path if request.url.path in _ENDPOINTS else "other"
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.requests.labels(endpoint, request.method, str(status), holder.model.version).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    @app.post("/predict", response_model=PredictResult, responses=_refusals(400, 413, 422, 500),
              response_description="A label and the class probabilities for each text, in the order sent",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": predict_request_schema(limits)}}}})
    async def predict(request: Request):
        try:
            body = await _read_capped(request, limits.max_body_bytes)
            texts = parse_predict_body(body, limits)
        except InputError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        model = holder.model  # this request uses this model even if a reload swaps another in meanwhile
        result = await run_in_threadpool(model.predict, texts)
        metrics.batch_size.observe(len(texts))
        for item in result["predictions"]:
            metrics.predictions.labels(str(item["label"]), model.version).inc()
        return result

    @app.get("/health", response_model=HealthReport, responses=_refusals(500),
             response_description="The model being served and the limits a /predict request must keep")
    def health():
        model = holder.model
        return {"status": "ok", "model_version": model.version, "bundle_id": model.bundle.manifest.get("bundle_id"),
                "labels": model.bundle.labels, "source": source.ref, "loaded_at": model.loaded_at,
                "limits": {"max_batch": limits.max_batch, "max_text_chars": limits.max_text_chars}}

    @app.get("/metrics", response_class=PrometheusText,
             responses={200: {"description": "The metrics in the Prometheus text exposition format",
                              "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
                        **_refusals(500)})
    def prometheus_metrics():
        return PrometheusText(generate_latest(metrics.registry))

    return app


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    # isascii: "²".isdigit() is true too, and int() refuses it.
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise InputError(413, f"the body has {declared} bytes; at most {limit} are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(source: ModelSource, *, host: str = "127.0.0.1", port: int = 8000, limits: ServingLimits | None = None,
          reload_seconds: float | None = 10.0, device: str = "cpu", log_level: str = "info") -> None:
    """Run the service with uvicorn until interrupted (one worker: the model is loaded once)."""
    import uvicorn

    if not is_loopback(host):
        log.warning("serving on %s: the service has no authentication; put it behind a proxy that has", host)
    app = create_app(source, limits=limits, reload_seconds=reload_seconds, device=device)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
