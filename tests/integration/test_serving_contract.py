"""The service keeps the promises of its OpenAPI document: schemathesis generates requests from the document
(valid ones and ones that break it) against the app in-process, and every answer must be a documented
non-5xx whose body matches its schema; valid requests must be accepted and invalid ones refused. Plus the
inputs that once got a 500 or slipped past the document, one by one."""

from __future__ import annotations

import asyncio
import json
import re
import sys

import hypothesis
import jsonschema_rs
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from prometheus_client import CONTENT_TYPE_LATEST

from foldstack.config import load_config
from foldstack.ops.serving import (TEXT_PATTERN, WHITESPACE_RANGES, InputError, LoadedModel, ModelSource, ServingLimits,
                               create_app, parse_predict_body, predict_request_schema)
from foldstack.pipeline.stages import Layout, run_pipeline
from tests.conftest import write_params
from tests.unit.ops.test_serving import metric_value

LIMITS = ServingLimits(max_batch=8, max_text_chars=200)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, demo_csv):
    """One cheap ensemble (tf-idf LR + NB-SVM, logreg meta), trained once for this module."""
    directory = tmp_path_factory.mktemp("contract-train")
    cfg = load_config(write_params(directory, demo_csv))
    run_pipeline(cfg)
    return Layout.of(cfg).bundle


@pytest.fixture(scope="module")
def app(bundle_dir):
    return create_app(ModelSource(str(bundle_dir)), limits=LIMITS, reload_seconds=None)


@pytest.fixture(scope="module")
def client(app):
    # raise_server_exceptions=False: a 500 must reach the assertions as an answer, like a real client sees it.
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def node_id_for_schemathesis(request):
    # schemathesis 4.32's lazy schema reads and rewrites `request.node._nodeid`, which pytest 9.2 no longer
    # has (the id moved to `_id`); give it the attribute so it can label each operation's subtest.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


# ------------------------------------------------------------------------------------------- property
@schema.parametrize()
@hypothesis.settings(max_examples=50, deadline=None, database=None)
@pytest.mark.usefixtures("node_id_for_schemathesis")
def test_every_answer_keeps_the_documented_contract(case):
    # All of schemathesis' checks: no 5xx, status and content type documented, body matching its schema,
    # requests the schema allows accepted (so it allows nothing the server refuses) and ones it forbids refused.
    case.call_and_validate()


# Texts near the edges of what the server takes: every whitespace character, characters that look blank but
# are not whitespace to str.strip (zero-width space, BOM, Mongolian vowel separator, NUL), any other character
# UTF-8 can encode, and lengths around the limit.
_WHITESPACE = [chr(c) for lo, hi in WHITESPACE_RANGES for c in range(lo, hi + 1)]
_EDGY_CHARACTERS = st.one_of(st.sampled_from(_WHITESPACE + ["\u200b", "\ufeff", "\u180e", "\x00", "a"]),
                             st.characters(codec="utf-8"))
_EDGY_TEXTS = st.one_of(
    st.text(_EDGY_CHARACTERS, max_size=6),
    st.builds(lambda character, n: character * n, st.sampled_from([" ", "a", "\u00e9", "\U0001f600"]),
              st.integers(LIMITS.max_text_chars - 1, LIMITS.max_text_chars + 1)),
)
_EDGY_ITEMS = st.one_of(_EDGY_TEXTS, st.integers(), st.none(), st.lists(st.text(max_size=2), max_size=1))
_EDGY_BATCHES = st.one_of(st.lists(_EDGY_ITEMS, max_size=LIMITS.max_batch + 1),
                          st.integers(LIMITS.max_batch - 1, LIMITS.max_batch + 1).map(lambda n: ["ok"] * n))


@hypothesis.given(texts=_EDGY_BATCHES,
                  extra=st.dictionaries(st.sampled_from(["text", "lang"]), st.integers(), max_size=1))
@hypothesis.settings(max_examples=300, deadline=None, database=None)
def test_the_server_accepts_exactly_the_bodies_the_request_schema_allows(texts, extra):
    # jsonschema_rs (Rust's regex engine, what schemathesis validates with) reads the document's schema
    # independently of the server's Python checks; the two must agree on every body.
    validator = jsonschema_rs.validator_for(predict_request_schema(LIMITS))
    payload = {"texts": texts, **extra}
    try:
        parse_predict_body(json.dumps(payload).encode(), LIMITS)
        accepted = True
    except InputError as exc:
        assert exc.status == 422, exc
        accepted = False
    assert accepted == validator.is_valid(payload)


# -------------------------------------------------------------------------------------- one input each
def predict(client, body: bytes):
    return client.post("/predict", content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(("body", "message"), [
    (b'{"texts": ["\\ud800"]}', "texts[0] is not valid Unicode: an unpaired surrogate U+D800 at character 0"),
    (b'{"texts": ["ok", "a\\udc00b"]}', "texts[1] is not valid Unicode: an unpaired surrogate U+DC00 at character 1"),
    (b'{"texts": ["\\ude00\\ud83d"]}', "texts[0] is not valid Unicode: an unpaired surrogate U+DE00 at character 0"),
    (b'{"texts": ["ok", " \\t\\n "]}', "texts[1] is empty or only whitespace"),
    (b'{"texts": ["\\u0085"]}', "texts[0] is empty or only whitespace"),          # NEXT LINE
    (json.dumps({"texts": ["\u3000\u2028\u001f\u00a0"]}, ensure_ascii=False).encode(),
     "texts[0] is empty or only whitespace"),
    (b'{"texts": [""]}', "texts[0] is empty or only whitespace"),
    (b'{"\\ud800": 1, "texts": ["ok"]}', "unknown field(s) '\\ud800'"),          # echoed escaped, never raw
])
def test_invalid_unicode_and_blank_texts_are_a_422_naming_the_text(client, body, message):
    answer = predict(client, body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"detail": answer.json()["detail"]} and message in answer.json()["detail"]
    assert "\n" not in answer.json()["detail"]


def test_a_surrogate_pair_is_one_valid_character(client):
    answer = predict(client, b'{"texts": ["nice \\ud83d\\ude00"]}')
    assert answer.status_code == 200, answer.text


def test_a_body_that_is_not_utf8_is_a_400_naming_the_byte(client):
    # UTF-16 JSON, which json.loads would have taken on its own.
    answer = predict(client, '{"texts": ["ok"]}'.encode("utf-16-le"))
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("the body is not valid UTF-8 JSON")
    answer = predict(client, b'{"texts": ["caf\xe9"]}')
    assert answer.status_code == 400
    assert answer.json() == {"detail": "the body is not valid UTF-8 JSON: byte 15 (0xe9) is not UTF-8 "
                                       "(invalid continuation byte)"}


def call_asgi(app, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """The status of a POST /predict sent straight to the ASGI app, headers byte for byte as given (an HTTP
    client would normalise them); a 500 still counts as an answer when the app raises after sending it."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 50000),
             "server": ("testserver", 80)}
    try:
        asyncio.run(app(scope, receive, send))
    except Exception:
        pass
    return next(message["status"] for message in sent if message["type"] == "http.response.start")


def test_a_declared_length_in_other_digits_is_not_a_500(app):
    # "²".isdigit() is true but int("²") raises; ASGI servers decode headers as latin-1, so 0xb2 arrives as "²".
    body = b'{"texts": ["ok"]}'
    assert call_asgi(app, body, [(b"content-type", b"application/json"), (b"content-length", b"\xb2")]) == 200
    assert call_asgi(app, body, [(b"content-length", str(LIMITS.max_body_bytes + 1).encode())]) == 413


def test_the_metrics_answer_is_prometheus_text_as_documented(client, app):
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == CONTENT_TYPE_LATEST
    assert CONTENT_TYPE_LATEST.startswith("text/plain; version=")
    documented = app.openapi()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(documented) == [CONTENT_TYPE_LATEST]
    assert "# TYPE foldstack_http_requests_total counter" in answer.text


def test_every_answer_of_every_endpoint_is_documented(app):
    paths = app.openapi()["paths"]
    error = {"$ref": "#/components/schemas/ErrorDetail"}
    predict_answers = paths["/predict"]["post"]["responses"]
    assert sorted(predict_answers) == ["200", "400", "413", "422", "500"]
    for status in ("400", "413", "422", "500"):
        assert predict_answers[status]["content"]["application/json"]["schema"] == error
    assert predict_answers["200"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/PredictResult"}
    assert sorted(paths["/health"]["get"]["responses"]) == ["200", "500"]
    assert sorted(paths["/metrics"]["get"]["responses"]) == ["200", "500"]


def test_the_request_schema_states_the_servers_limits(app):
    body = app.openapi()["paths"]["/predict"]["post"]["requestBody"]
    texts = body["content"]["application/json"]["schema"]["properties"]["texts"]
    assert body["required"] is True
    assert (texts["minItems"], texts["maxItems"]) == (1, LIMITS.max_batch)
    assert (texts["items"]["minLength"], texts["items"]["maxLength"]) == (1, LIMITS.max_text_chars)
    assert texts["items"]["pattern"] == TEXT_PATTERN


def test_the_text_pattern_counts_whitespace_as_str_strip_does():
    # Over all of Unicode: the table behind the schema's pattern is exactly str.isspace, and a one-character
    # text matches the pattern exactly when str.strip() leaves something (which is the server's check).
    table = {c for lo, hi in WHITESPACE_RANGES for c in range(lo, hi + 1)}
    assert table == {c for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    pattern = re.compile(TEXT_PATTERN)
    disagree = [hex(c) for c in range(sys.maxunicode + 1)
                if bool(pattern.search(chr(c))) != bool(chr(c).strip())]
    assert disagree == []


def test_the_server_refuses_exactly_the_texts_the_pattern_refuses():
    for text in ["a", " a ", "\u0085a", "\u200b", "\ufeff", "\u0085", "\u00a0\u3000", "\x1c\x1d\x1e\x1f"]:
        body = json.dumps({"texts": [text]}).encode()
        if re.search(TEXT_PATTERN, text):
            assert parse_predict_body(body, LIMITS) == [text]
        else:
            with pytest.raises(InputError, match="only whitespace"):
                parse_predict_body(body, LIMITS)


def test_a_failing_model_is_a_one_line_json_500_counted_in_the_metrics(client, monkeypatch):
    def broken_predict(self, texts):
        raise RuntimeError("the model broke\non two lines")

    monkeypatch.setattr(LoadedModel, "predict", broken_predict)
    answer = predict(client, b'{"texts": ["ok"]}')
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal error (RuntimeError); the service log has the traceback"}
    monkeypatch.undo()
    # One 500 in the whole module: this one (the property test above made none).
    assert metric_value(client.get("/metrics").text, "foldstack_http_requests_total", endpoint="/predict",
                        status="500") == 1
