"""The HTTP service, started with uvicorn on 127.0.0.1: predictions, health, Prometheus metrics, 4xx on bad
input, picking up a promotion, refusing a modified bundle, and the `foldstack serve-model` command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from foldstack.errors import BundleError
from foldstack.ops.registry import GitModelRegistry
from foldstack.ops.serving import InputError, ModelSource, ServingLimits, create_app, parse_predict_body
from tests.processes import ServeModel, free_port, wait_for  # noqa: F401  (free_port, wait_for: imported from here too)
from tests.unit.ops.test_registry import registry_project, train_bundles

LIMITS = ServingLimits(max_batch=8, max_text_chars=200)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_csv):
    return train_bundles(tmp_path_factory.mktemp("serving-train"), demo_csv)


@pytest.fixture
def registry_cfg(tmp_path, trained):
    """A registry with v0.1.0 (production) and v0.2.0 (registered, not promoted)."""
    cfg = registry_project(tmp_path / "repo", trained)
    registry = GitModelRegistry.from_config(cfg)
    registry.register(trained.worse)
    registry.register(trained.better)
    registry.promote("v0.1.0", reason="test")
    return cfg


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 in a background thread, stopped (bounded) on exit."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        return self.client

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the server did not stop"


def metric_value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ------------------------------------------------------------------------------------------ unit: input
@pytest.mark.parametrize(("body", "status", "message"), [
    (b"not json", 400, "not valid UTF-8 JSON"),
    (b"\xff\xfe\x00", 400, "not valid UTF-8 JSON"),
    (b"[" * 50_000, 400, "not valid UTF-8 JSON"),         # nesting deep enough to overflow the parser
    (b'["a"]', 422, "expected a JSON object"),
    (b'{"text": "a"}', 422, "expected a JSON object"),
    (b'{"texts": ["a"], "extra": 1}', 422, "unknown field"),
    (b'{"texts": "a"}', 422, "must be a list"),
    (b'{"texts": []}', 422, "is empty"),
    (json.dumps({"texts": ["a"] * 9}).encode(), 422, "at most 8 per request"),
    (b'{"texts": ["a", 3]}', 422, "texts[1] is a number, not a string"),
    (b'{"texts": ["a", null]}', 422, "texts[1] is null, not a string"),
    (b'{"texts": [["a"]]}', 422, "texts[0] is an array, not a string"),
    (b'{"texts": {"a": 1}}', 422, '"texts" must be a list of strings, got an object'),
    (json.dumps({"texts": ["x" * 201]}).encode(), 422, "at most 200"),
    (b'{"texts": [" \\n\\t"]}', 422, "empty or only whitespace"),
    (b'{"texts": ["\\u0085"]}', 422, "texts[0] is empty or only whitespace"),
    (b'{"texts": ["\\ud800"]}', 422, "texts[0] is not valid Unicode: an unpaired surrogate U+D800"),
    ('{"texts": ["ok"]}'.encode("utf-16"), 400, "not valid UTF-8 JSON: byte 0"),
])
def test_bad_bodies_are_refused_with_a_4xx(body, status, message):
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        parse_predict_body(body, LIMITS)
    assert caught.value.status == status


def test_a_good_body_parses():
    assert parse_predict_body('{"texts": ["ok", "déjà vu 👍"]}'.encode(), LIMITS) == ["ok", "déjà vu 👍"]


# ---------------------------------------------------------------------------------------- the service
def test_service_predicts_reports_metrics_and_follows_production(registry_cfg):
    app = create_app(ModelSource("production", registry_cfg), limits=LIMITS, reload_seconds=0.2)
    with ServerThread(app) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["model_version"] == "v0.1.0"
        assert health["labels"] == ["negative", "neutral", "positive"]

        answer = client.post("/predict", json={"texts": ["love it, works great", "broke after a day"]})
        assert answer.status_code == 200
        body = answer.json()
        assert body["model_version"] == "v0.1.0" and len(body["predictions"]) == 2
        for item in body["predictions"]:
            assert item["label"] in body["labels"]
            assert sum(item["probabilities"].values()) == pytest.approx(1.0)
            assert max(item["probabilities"], key=item["probabilities"].get) == item["label"]

        bad = [client.post("/predict", content=b"{oops"), client.post("/predict", json={"texts": []}),
               client.post("/predict", json={"texts": ["x" * 201]}), client.post("/predict", json={"texts": [1]}),
               client.post("/predict", content=b"x" * (LIMITS.max_body_bytes + 1)),
               client.get("/predict"), client.get("/nowhere")]
        assert [r.status_code for r in bad] == [400, 422, 422, 422, 413, 405, 404]
        assert all("detail" in r.json() for r in bad)

        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert metric_value(text, "foldstack_http_requests_total", endpoint="/predict", status="200",
                            model_version="v0.1.0") == 1
        assert metric_value(text, "foldstack_http_requests_total", endpoint="/predict", status="422") == 3
        assert metric_value(text, "foldstack_http_requests_total", endpoint="other", status="404") == 1
        # /predict was asked 7 times: 1 answered, 5 refused, 1 GET (405).
        assert metric_value(text, "foldstack_http_request_duration_seconds_count", endpoint="/predict") == 7
        predicted = sum(metric_value(text, "foldstack_predictions_total", label=label, model_version="v0.1.0")
                        for label in body["labels"])
        assert predicted == 2
        assert metric_value(text, "foldstack_model_info", model_version="v0.1.0") == 1
        assert "process_resident_memory_bytes" in text
        assert not any(line.split("{")[0].endswith("_created") for line in text.splitlines())

        # Production moves: the service loads v0.2.0 without a restart.
        GitModelRegistry.from_config(registry_cfg).promote("v0.2.0", reason="test")
        wait_for(lambda: client.get("/health").json()["model_version"] == "v0.2.0")
        assert client.post("/predict", json={"texts": ["fine"]}).json()["model_version"] == "v0.2.0"
        text = client.get("/metrics").text
        assert metric_value(text, "foldstack_model_info", model_version="v0.2.0") == 1
        assert metric_value(text, "foldstack_model_info", model_version="v0.1.0") == 0
        assert metric_value(text, "foldstack_model_reloads_total", result="success") == 1


def test_a_modified_bundle_is_never_served(registry_cfg):
    registry = GitModelRegistry.from_config(registry_cfg)
    # No watcher thread: the test triggers the check itself, so the bundle is modified exactly between the
    # promotion (which verifies it) and the service's reload.
    app = create_app(ModelSource("production", registry_cfg), limits=LIMITS, reload_seconds=None)
    with ServerThread(app) as client:
        registry.promote("v0.2.0", reason="test")
        stored = registry.bundle_path(registry.get("v0.2.0"))
        victim = next(p for p in sorted((stored / "base").rglob("*")) if p.is_file())
        victim.write_bytes(victim.read_bytes() + b" ")
        assert app.state.check_for_new_model() is False
        assert metric_value(client.get("/metrics").text, "foldstack_model_reloads_total", result="failure") == 1
        assert app.state.check_for_new_model() is False, "a refused version is not reloaded every poll"
        assert client.get("/health").json()["model_version"] == "v0.1.0"
        assert client.post("/predict", json={"texts": ["fine"]}).status_code == 200
    # And a service cannot start on it.
    with pytest.raises(BundleError, match="sha256 does not match"):
        create_app(ModelSource("production", registry_cfg), limits=LIMITS)


def test_a_bundle_directory_is_served_as_it_is(trained, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(trained.better, bundle)
    source = ModelSource(str(bundle))
    assert not source.movable
    app = create_app(source, limits=LIMITS, reload_seconds=0.2)
    with ServerThread(app) as client:
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert client.get("/health").json()["model_version"] == manifest["bundle_id"]


def test_serve_model_command_binds_loopback(registry_cfg, tmp_path):
    with ServeModel("--params", str(registry_cfg.resolve_path("params.yaml")), startup_s=90) as server:
        port = server.port
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["model_version"] == "v0.1.0"
        connections = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout \
            if shutil.which("ss") else f"127.0.0.1:{port}"
        assert f"127.0.0.1:{port}" in connections and f"0.0.0.0:{port}" not in connections
