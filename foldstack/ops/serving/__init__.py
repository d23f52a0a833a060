"""Serving the production model over HTTP (FastAPI + uvicorn) with Prometheus metrics.

schemas (limits, wire format), parsing (reading a /predict body), feedback_routes (POST /feedback), state
(the model and its swaps),
metrics (Prometheus), docs (/docs and /redoc without a CDN), app (the routes; its docstring states the HTTP
contract) and server (uvicorn).
"""

from foldstack.ops.serving.app import create_app
from foldstack.ops.serving.metrics import ServiceMetrics
from foldstack.ops.serving.parsing import parse_predict_body
from foldstack.ops.serving.feedback_routes import parse_feedback_body
from foldstack.ops.serving.schemas import (TEXT_PATTERN, WHITESPACE_RANGES, ErrorDetail, FeedbackResult, HealthReport,
                                           InputError, LimitsReport, Prediction, PredictResult, ServingLimits,
                                           feedback_request_schema, predict_request_schema)
from foldstack.ops.serving.server import is_loopback, serve
from foldstack.ops.serving.state import LoadedModel, ModelHolder, ModelSource

__all__ = [
    "TEXT_PATTERN", "WHITESPACE_RANGES", "ErrorDetail", "FeedbackResult", "HealthReport", "InputError", "LimitsReport", "LoadedModel",
    "ModelHolder", "ModelSource", "Prediction", "PredictResult", "ServiceMetrics", "ServingLimits", "create_app",
    "feedback_request_schema", "is_loopback", "parse_feedback_body", "parse_predict_body", "predict_request_schema",
    "serve",
]
