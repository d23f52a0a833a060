"""Reading a /predict body: a byte cap before parsing, then every check the request schema states.

Bad input is always a 4xx (an InputError), never a 500, and every message is one line.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from foldstack.ops.serving.schemas import HAS_CONTENT, InputError, ServingLimits

if TYPE_CHECKING:
    from fastapi import Request


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
        raise InputError(422, f'"texts" must be a list of strings, got {json_type(texts)}')
    if not texts:
        raise InputError(422, '"texts" is empty: send at least one text')
    if len(texts) > limits.max_batch:
        raise InputError(422, f'"texts" holds {len(texts)} texts; at most {limits.max_batch} per request')
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(422, f"texts[{i}] is {json_type(text)}, not a string")
        if len(text) > limits.max_text_chars:
            raise InputError(422, f"texts[{i}] has {len(text)} characters; at most {limits.max_text_chars}")
        _check_unicode(i, text)
        if not HAS_CONTENT.search(text):
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


def json_type(value: Any) -> str:
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


async def read_capped(request: Request, limit: int) -> bytes:
    """The request's body, or a 413 InputError as soon as it is known to exceed `limit` bytes."""
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
