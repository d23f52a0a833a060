"""Serving the production model over HTTP (FastAPI + uvicorn) with Prometheus metrics.

schemas (limits, wire format), parsing (reading a /predict body), state (the model and its swaps),
metrics (Prometheus), docs (/docs and /redoc without a CDN), app (the routes; its docstring states the HTTP
contract) and server (uvicorn).
"""

from foldstack.ops.serving.app import create_app
from foldstack.ops.serving.metrics import ServiceMetrics
from foldstack.ops.serving.parsing import parse_predict_body
from foldstack.ops.serving.schemas import (TEXT_PATTERN, WHITESPACE_RANGES, ErrorDetail, HealthReport, InputError,
                                           LimitsReport, Prediction, PredictResult, ServingLimits,
                                           predict_request_schema)
from foldstack.ops.serving.server import is_loopback, serve
from foldstack.ops.serving.state import LoadedModel, ModelHolder, ModelSource

__all__ = [
    "TEXT_PATTERN", "WHITESPACE_RANGES", "ErrorDetail", "HealthReport", "InputError", "LimitsReport", "LoadedModel",
    "ModelHolder", "ModelSource", "Prediction", "PredictResult", "ServiceMetrics", "ServingLimits", "create_app",
    "is_loopback", "parse_predict_body", "predict_request_schema", "serve",
]
