"""The prediction log and feedback against a real `foldstack serve-model` process on 127.0.0.1: every /predict
text gets a request id and a log row, POST /feedback takes good labels (even before the row is flushed) and
refuses unknown ids (404) and foreign labels (422), a graceful stop writes the buffer, and a kill -9 loses
at most the buffer, never leaving a part that readers cannot read. Plus the logging overhead, measured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.batch_predict import predict_file_task
from foldstack.config import load_config
from foldstack.ops.monitoring import read_feedback, read_prediction_log
from foldstack.ops.monitoring.logfiles import part_files
from foldstack.ops.monitoring.predlog import OVERHEAD_BOUND_MS
from foldstack.ops.predict import predict_file
from foldstack.pipeline.stages import Layout, run_pipeline
from tests.conftest import write_params
from tests.paths import REPO_ROOT
from tests.processes import ServeModel, stop
from tests.unit.ops.test_serving import metric_value, wait_for

pytestmark = pytest.mark.slow
TEXTS = ["love it, works great", "broke after a day", "it is a lamp"]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, demo_csv) -> Path:
    directory = tmp_path_factory.mktemp("monitoring-train")
    cfg = load_config(write_params(directory, demo_csv))
    run_pipeline(cfg)
    return Layout.of(cfg).bundle


class Server(ServeModel):
    """`foldstack serve-model --model BUNDLE --params PARAMS` as a child process on a free loopback port."""

    def __init__(self, bundle: Path, params: Path):
        super().__init__("--model", str(bundle), "--params", str(params))

    def predict(self, texts: list[str]) -> list[str]:
        answer = self.client.post("/predict", json={"texts": texts})
        assert answer.status_code == 200, answer.text
        return [item["request_id"] for item in answer.json()["predictions"]]


def project(tmp_path: Path, demo_csv: Path, **monitoring) -> Path:
    return write_params(tmp_path, demo_csv, monitoring={"log_dir": "mon", **monitoring})


def test_predictions_are_logged_and_feedback_is_checked(bundle_dir, tmp_path, demo_csv):
    params = project(tmp_path, demo_csv, store_texts=True, flush_rows=1000, flush_seconds=3600)
    log_dir = tmp_path / "mon"
    with Server(bundle_dir, params) as server:
        ids = server.predict(TEXTS)
        assert len(set(ids)) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
        assert part_files(log_dir) == []  # buffered: nothing written yet (1000 rows or an hour)

        post = server.client.post
        good = post("/feedback", json={"request_id": ids[0], "label": "positive"})
        assert good.status_code == 200 and good.json() == {"recorded": 1}  # found in the buffer
        many = post("/feedback", json={"items": [{"request_id": ids[1], "label": "negative"},
                                                 {"request_id": ids[2], "label": "neutral"}]})
        assert many.status_code == 200 and many.json() == {"recorded": 2}

        unknown = post("/feedback", json={"request_id": "0" * 32, "label": "positive"})
        foreign = post("/feedback", json={"items": [{"request_id": ids[0], "label": "positive"},
                                                    {"request_id": ids[1], "label": "superb"}]})
        malformed = post("/feedback", json={"request_id": "not-an-id", "label": "positive"})
        extra = post("/feedback", json={"request_id": ids[0], "label": "positive", "note": "x"})
        assert [r.status_code for r in (unknown, foreign, malformed, extra)] == [404, 422, 422, 422]
        for refused in (unknown, foreign, malformed, extra):
            assert list(refused.json()) == ["detail"] and "\n" not in refused.json()["detail"]
        assert "no logged prediction has the request_id '000" in unknown.json()["detail"]
        assert foreign.json()["detail"].startswith("items[1]: the label 'superb' is not one of the model's labels")

        documented = server.client.get("/openapi.json").json()["paths"]["/feedback"]["post"]["responses"]
        assert sorted(documented) == ["200", "400", "404", "413", "422", "500"]
        scraped = server.client.get("/metrics").text  # /feedback has its own endpoint label, not "other"
        counted = {status: metric_value(scraped, "foldstack_http_requests_total", endpoint="/feedback", status=status)
                   for status in ("200", "404", "422")}
        assert counted == {"200": 2, "404": 1, "422": 3}
        server.process.send_signal(signal.SIGTERM)  # a graceful stop: the lifespan closes the log
        server.process.wait(timeout=30)

    frame = read_prediction_log(log_dir)
    assert frame["request_id"].tolist() == ids and frame["text"].tolist() == TEXTS
    assert set(frame["source"]) == {"serve"} and (frame["latency_ms"] > 0).all()
    assert np.allclose(frame.filter(like="proba_").sum(axis=1), 1.0)
    labels = read_feedback(log_dir).set_index("request_id")["label"].to_dict()
    assert labels == dict(zip(ids, ["positive", "negative", "neutral"]))  # refused requests wrote nothing


def test_kill_9_loses_at_most_the_buffer(bundle_dir, tmp_path, demo_csv):
    params = project(tmp_path, demo_csv, flush_rows=10, flush_seconds=3600, rows_per_file=100)
    log_dir = tmp_path / "mon"
    with Server(bundle_dir, params) as server:
        sent = [rid for _ in range(25) for rid in server.predict(["a text to log"])]
        wait_for(lambda: sum(pq.read_metadata(p).num_rows for p in part_files(log_dir)) == 20)
        time.sleep(0.3)  # the last 5 rows stay buffered: no 10 rows, no hour
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
    frame = read_prediction_log(log_dir)
    assert frame["request_id"].tolist() == sent[:20]  # what was flushed, whole; the 5 buffered rows are lost


def test_kill_9_during_writes_never_leaves_a_part_readers_cannot_read(bundle_dir, tmp_path, demo_csv):
    # flush_rows 1: a part is rewritten on nearly every request, so the kill very likely lands mid-write.
    params = project(tmp_path, demo_csv, flush_rows=1, flush_seconds=3600, rows_per_file=100)
    log_dir = tmp_path / "mon"
    sent: list[str] = []
    with Server(bundle_dir, params) as server:
        def hammer() -> None:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                while True:
                    try:
                        answer = client.post("/predict", json={"texts": TEXTS})
                    except httpx.TransportError:
                        return
                    sent.extend(item["request_id"] for item in answer.json()["predictions"])

        workers = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
        for worker in workers:
            worker.start()
        wait_for(lambda: len(sent) >= 150, seconds=120)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        for worker in workers:
            worker.join(timeout=15)
    parts = part_files(log_dir)
    assert parts and all(pq.read_metadata(p).num_rows <= 100 for p in parts)
    for path in parts:
        pq.read_table(path)  # every part a reader sees is a whole Parquet file
    frame = read_prediction_log(log_dir)
    assert 0 < len(frame) <= len(sent) + 3 * len(TEXTS) and frame["request_id"].is_unique
    # A restarted service starts a part of its own (and removes the killed writer's temporaries).
    with Server(bundle_dir, params) as server:
        again = server.predict(["after the crash"])
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
    assert not [p for p in (log_dir / "predictions").iterdir() if ".tmp-" in p.name]
    assert read_prediction_log(log_dir, last=1)["request_id"].tolist() == again


def measure_overhead(bundle: Path, tmp_path: Path, demo_csv: Path, requests: int = 400) -> dict[str, float]:
    """p50 / p99 client-side latency (ms) of one-text /predict requests to a logging and a non-logging server,
    sent alternately (so load on the machine hits both alike); returns the differences too."""
    logged_dir, plain_dir = tmp_path / "logged", tmp_path / "plain"
    logged_dir.mkdir()
    plain_dir.mkdir()
    logged = project(logged_dir, demo_csv, store_texts=True)
    plain = project(plain_dir, demo_csv, log_predictions=False)
    times: dict[str, list[float]] = {"logged": [], "plain": []}
    with Server(bundle, logged) as with_log, Server(bundle, plain) as without:
        for i in range(requests + 20):
            for name, server in (("logged", with_log), ("plain", without)):
                started = time.perf_counter()
                server.predict([f"request {i}: the kettle is fine but loud"])
                if i >= 20:  # warm-up
                    times[name].append((time.perf_counter() - started) * 1000)
    result = {f"{name}_p{q}": float(np.percentile(values, q)) for name, values in times.items() for q in (50, 99)}
    result["delta_p50"] = result["logged_p50"] - result["plain_p50"]
    result["delta_p99"] = result["logged_p99"] - result["plain_p99"]
    return result


def test_logging_costs_a_request_less_than_the_stated_bound(bundle_dir, tmp_path, demo_csv):
    figures = measure_overhead(bundle_dir, tmp_path, demo_csv, requests=200)
    print(figures)
    assert figures["delta_p50"] < OVERHEAD_BOUND_MS, figures


def test_batch_prediction_logs_with_source_predict_and_writes_the_request_ids(bundle_dir, tmp_path, demo_csv):
    cfg = load_config(project(tmp_path, demo_csv, store_texts=True))
    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "in.csv", index=False)
    assert predict_file(bundle_dir, tmp_path / "in.csv", tmp_path / "out.csv", monitoring=cfg.monitoring,
                        monitoring_root=cfg.resolve_path(".")) == 3
    out = pd.read_csv(tmp_path / "out.csv")
    frame = read_prediction_log(tmp_path / "mon")
    assert frame["request_id"].tolist() == out["request_id"].tolist() and set(frame["source"]) == {"predict"}
    assert frame["predicted"].tolist() == out["prediction"].tolist() and frame["text"].tolist() == TEXTS


def test_foldstack_predict_logs_what_the_params_ask_for(bundle_dir, tmp_path, demo_csv):
    """The command line passes the params' monitoring section: `foldstack predict` logs one row per text
    (source "predict", the ids its output carries); with log_predictions false it writes no log."""
    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "in.csv", index=False)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    def predict(params: Path, out: Path) -> None:
        done = subprocess.run([sys.executable, "-m", "foldstack.cli", "predict", str(bundle_dir),
                               str(tmp_path / "in.csv"), "-o", str(out), "--params", str(params)],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    predict(project(tmp_path, demo_csv, store_texts=True), tmp_path / "out.csv")
    out = pd.read_csv(tmp_path / "out.csv")
    frame = read_prediction_log(tmp_path / "mon")
    assert frame["request_id"].tolist() == out["request_id"].tolist() and set(frame["source"]) == {"predict"}
    assert frame["predicted"].tolist() == out["prediction"].tolist() and frame["text"].tolist() == TEXTS

    off = tmp_path / "off"
    off.mkdir()
    predict(write_params(off, demo_csv, monitoring={"log_dir": "mon", "log_predictions": False}), off / "out.csv")
    assert len(pd.read_csv(off / "out.csv")) == 3 and not (off / "mon").exists()


def test_the_batch_predict_task_logs_with_the_flow_params(bundle_dir, tmp_path, demo_csv):
    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "in.csv", index=False)
    params = project(tmp_path, demo_csv)
    scored = predict_file_task.fn(str(bundle_dir), str(tmp_path / "in.csv"), str(tmp_path / "out.parquet"), "text",
                                  64, "cpu", str(params), ["monitoring.sample_rate=1.0"])
    frame = read_prediction_log(tmp_path / "mon")
    assert scored["rows"] == 3 and len(frame) == 3 and set(frame["source"]) == {"predict"}
    assert frame["text"].isna().all()  # store_texts false: hashes and lengths only
    assert frame["request_id"].tolist() == pd.read_parquet(tmp_path / "out.parquet")["request_id"].tolist()
