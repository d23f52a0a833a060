"""POST /feedback: the true label of a logged prediction.

    POST /feedback  {"request_id": "<from /predict>", "label": "<true label>"}
                    or {"items": [{"request_id": ..., "label": ...}, ...]}   -> {"recorded": n}

All or nothing: 404 when a request id is not in the prediction log (its flushed parts and the buffer not yet
written: feedback can follow a prediction at once), 422 when the body breaks the schema, a request id is
malformed or a label is not one of the served model's labels, 413 for a body over the cap, 400 for one that is
not UTF-8 JSON. Every refusal is one line `{"detail": ...}` naming the item (by index in "items").
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from foldstack.ops.monitoring.feedback import Feedback, FeedbackError, check_feedback, record_feedback
from foldstack.ops.monitoring.predlog import PredictionLog
from foldstack.ops.serving.parsing import json_type, read_capped
from foldstack.ops.serving.schemas import (FEEDBACK_MAX_BODY_BYTES, FEEDBACK_MAX_ITEMS, FEEDBACK_MAX_LABEL_CHARS,
                                           FeedbackResult, InputError, feedback_request_schema, refusals)
from foldstack.ops.serving.state import ModelHolder

_ITEM_FIELDS = ("request_id", "label")


def parse_feedback_body(body: bytes) -> tuple[list[Feedback], str]:
    """The items of a /feedback body and how to name one in a message ("items[i]" or "the body"), or an
    InputError: 400 not UTF-8 JSON, 422 breaking the schema (`feedback_request_schema`)."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(400, "the body is not valid UTF-8 JSON") from None
    if isinstance(payload, dict) and "items" in payload:
        if set(payload) != {"items"}:
            raise InputError(422, 'a body with "items" holds nothing else')
        items = payload["items"]
        if not isinstance(items, list) or not items:
            raise InputError(422, f'"items" must be a non-empty list, got {json_type(items)}'
                                  f'{" (empty)" if isinstance(items, list) else ""}')
        if len(items) > FEEDBACK_MAX_ITEMS:
            raise InputError(422, f'"items" holds {len(items)} items; at most {FEEDBACK_MAX_ITEMS} per request')
        return [_item(item, f"items[{i}]") for i, item in enumerate(items)], "items"
    return [_item(payload, "the body")], "the body"


def _item(value: object, where: str) -> Feedback:
    if not isinstance(value, dict) or set(value) != set(_ITEM_FIELDS):
        raise InputError(422, f'{where} must be an object with exactly "request_id" and "label" '
                              f'(or the body {{"items": [...]}})')
    for name in _ITEM_FIELDS:
        if not isinstance(value[name], str):
            raise InputError(422, f"{where}.{name} is {json_type(value[name])}, not a string")
    if not value["label"] or len(value["label"]) > FEEDBACK_MAX_LABEL_CHARS:
        raise InputError(422, f"{where}.label must have 1 to {FEEDBACK_MAX_LABEL_CHARS} characters")
    return Feedback(value["request_id"], value["label"])


def add_feedback(app: FastAPI, holder: ModelHolder, predlog: PredictionLog | None) -> None:
    @app.post("/feedback", response_model=FeedbackResult, responses=refusals(400, 404, 413, 422, 500),
              response_description="Every label was recorded",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": feedback_request_schema()}}}})
    async def feedback(request: Request):
        try:
            body = await read_capped(request, FEEDBACK_MAX_BODY_BYTES)
            items, where = parse_feedback_body(body)
            recorded = await run_in_threadpool(_record, holder, predlog, items, where)
        except (InputError, FeedbackError) as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        return {"recorded": recorded}


def _record(holder: ModelHolder, predlog: PredictionLog | None, items: list[Feedback], where: str) -> int:
    if predlog is None:
        raise FeedbackError("the prediction log is off (monitoring.log_predictions: false): no request id can "
                            "be found, so no feedback is taken", status=404)
    check_feedback(items, known=predlog.knows, labels=holder.model.bundle.label_map.names,
                   what="items[]" if where == "items" else "")
    record_feedback(Path(predlog.log_dir), items, source="api")
    return len(items)
