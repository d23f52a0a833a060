"""What the service accepts and answers: the limits, the wire format and the refusals.

The request schema's text pattern and the server's own check (foldstack.ops.serving.parsing) are both built
from WHITESPACE_RANGES, so the OpenAPI document states exactly what the service accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from foldstack.errors import FoldstackError
from foldstack.ops.monitoring.feedback import REQUEST_ID_PATTERN

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
HAS_CONTENT = re.compile(TEXT_PATTERN)


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
    request_id: str = Field(description="This text's id (32 lowercase hex digits): send it to POST /feedback with "
                                        "the true label", pattern=REQUEST_ID_PATTERN)


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


class FeedbackResult(BaseModel):
    recorded: int = Field(description="How many labels were recorded (every item of the request)")


# One feedback label: at most this many items per request, labels at most this long.
FEEDBACK_MAX_ITEMS = 1000
FEEDBACK_MAX_LABEL_CHARS = 200
FEEDBACK_MAX_BODY_BYTES = FEEDBACK_MAX_ITEMS * (FEEDBACK_MAX_LABEL_CHARS * 12 + 80) + 1024


def feedback_request_schema() -> dict[str, Any]:
    """The JSON schema of a /feedback body: one {request_id, label}, or {"items": [...]} of them."""
    item = {"type": "object", "required": ["request_id", "label"], "additionalProperties": False,
            "properties": {
                "request_id": {"type": "string", "pattern": REQUEST_ID_PATTERN,
                               "description": "The request_id /predict returned for the text"},
                "label": {"type": "string", "minLength": 1, "maxLength": FEEDBACK_MAX_LABEL_CHARS,
                          "description": "The true label, one of the model's labels (GET /health), as a string"}}}
    batch = {"type": "object", "required": ["items"], "additionalProperties": False,
             "properties": {"items": {"type": "array", "minItems": 1, "maxItems": FEEDBACK_MAX_ITEMS,
                                      "items": item}}}
    return {"oneOf": [item, batch]}


def refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entries of the refusals an endpoint can answer with."""
    meaning = {
        400: "The body is not UTF-8 JSON",
        404: "A request id is not in the prediction log (never logged, not sampled, or logging is off)",
        413: "The body is larger than the limits allow (see /health)",
        422: "The JSON breaks the request schema or the limits: what and, for a text, which index",
        500: "A bug in the service, never the client's input (e.g. the model failed on texts it accepted); "
             "the service log has the traceback",
    }
    return {status: {"model": ErrorDetail, "description": meaning[status]} for status in statuses}
