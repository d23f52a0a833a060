"""The `monitor` flow against a real Prefect server, and the loop it closes.

* On a tiny trained project whose prediction log holds another domain's texts, the flow writes the report
  files, publishes the markdown report (its plots embedded) and the table of checks under their stable keys,
  logs a W&B run (offline) and emits `foldstack.model.drifted` once, with the failed checks; an in-domain
  window emits nothing (read back from the server: artifacts and events).
* Slow: `foldstack server` and `foldstack serve` as processes; a run of the served `monitor` deployment sees
  the drift, its event triggers a `retrain` run that completes, and a second event during that run queues a
  run (AwaitingConcurrencySlot) instead of running two at once.

The prediction log is written here as the on-disk contract says (Parquet parts under <log_dir>/predictions),
with the tiny model's own predictions.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import base64  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from prefect import get_client  # noqa: E402
from prefect.artifacts import Artifact  # noqa: E402
from prefect.events import Event  # noqa: E402
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from flows.monitor import ANNOUNCED_DRIFT_FILE, DRIFTED_EVENT, announce_drift, model_resource_id, monitor  # noqa: E402
from foldstack.bundle import load_bundle  # noqa: E402
from foldstack.common.files import read_json  # noqa: E402
from foldstack.config import load_config  # noqa: E402
from foldstack.core.demo import make_demo_frame  # noqa: E402
from foldstack.pipeline.stages import Layout, run_pipeline  # noqa: E402
from tasks.monitor_report import MONITORING_CHECKS_KEY, MONITORING_REPORT_KEY, embed_images  # noqa: E402
from tests.conftest import write_params  # noqa: E402
from tests.flows.prefect_workers import drain_prefect_workers  # noqa: E402
from tests.flows.test_prefect_cli import TINY, _emit, _wait_for, served  # noqa: E402

MONITOR = "monitor/monitor"
WINDOW = 120
# Checks over a small window (the minimum below it, so a 120-request window gets verdicts); texts logged, so the
# text checks run; the embedding check on a tiny BERT made on the fly (no download, seconds on a CPU).
MONITORING = {"window_requests": WINDOW, "min_requests": 50, "schedule_minutes": 1440, "store_texts": True,
              "checks": {"embedding_model": "tiny:0", "embedding_reference": 200}}

# Another domain: city-council news, longer than the reviews and in words the reviews never use.
TOPICS = ["council", "harbour", "budget", "tram line", "library", "election", "bridge", "school board"]
VERBS = ["approved", "postponed", "debated", "rejected", "funded", "audited", "redrew", "announced"]
DETAILS = ["after a lengthy public consultation", "despite objections from residents", "by a narrow margin",
           "following the quarterly audit", "ahead of the municipal elections", "with support from the province"]


def news_texts(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"The {rng.choice(TOPICS)} committee {rng.choice(VERBS)} the proposal {rng.choice(DETAILS)}."
                     for _ in range(int(rng.integers(3, 7)))) for _ in range(n)]


def write_prediction_log(cfg, texts: list[str], *, seq: int = 0, hours_ago: float = 0.0) -> Path:
    """One Parquet part of the prediction log (the contract's columns, texts stored), the tiny bundle's
    predictions: one request a second, ending `hours_ago` hours before now."""
    bundle = load_bundle(Layout.of(cfg).bundle)
    proba = bundle.predict_proba(texts)
    start = datetime.now(timezone.utc) - timedelta(hours=hours_ago, seconds=len(texts))
    frame = pd.DataFrame({
        "request_id": [uuid.uuid4().hex for _ in texts],
        "time": pd.to_datetime([start + timedelta(seconds=i) for i in range(len(texts))], utc=True),
        "model_version": bundle.version, "bundle_id": bundle.manifest["bundle_id"],
        "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
        "text_chars": np.array([len(t) for t in texts], dtype=np.int32),
        "text_words": np.array([len(t.split()) for t in texts], dtype=np.int32),
        "text": texts,
        "predicted": bundle.label_map.decode(proba.argmax(axis=1)),
        "confidence": proba.max(axis=1).astype(np.float64),
        **{f"proba_{name}": proba[:, i].astype(np.float64) for i, name in enumerate(bundle.label_map.names)},
        "latency_ms": 3.0, "source": "serve",
    })
    directory = cfg.resolve_path(cfg.monitoring.log_dir) / "predictions"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"part-{start.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{seq}.parquet"
    frame.to_parquet(path.with_suffix(".tmp"), index=False)
    path.with_suffix(".tmp").replace(path)
    return path


def trained_project(directory: Path, demo_csv: Path, **sections) -> Path:
    params = write_params(directory, demo_csv, **TINY, monitoring=MONITORING, **sections)
    run_pipeline(load_config(params))
    return params


def drifted_events(client) -> list:
    page = client.read_events(EventFilter(event=EventNameFilter(name=[DRIFTED_EVENT]),
                                          occurred=EventOccurredFilter(since=datetime.now(timezone.utc)
                                                                       - timedelta(hours=1))), limit=50)
    return page.events


# ------------------------------------------------------------------------------------ without a server
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


def test_the_report_embeds_its_local_pngs_within_the_budget(tmp_path):
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "monitoring" / "a.png").write_bytes(PNG)
    (tmp_path / "monitoring" / "b.png").write_bytes(PNG)
    text = "![a](monitoring/a.png) ![b](monitoring/b.png) ![gone](monitoring/gone.png) ![web](https://x/y.png)"
    encoded = base64.b64encode(PNG).decode("ascii")
    assert embed_images(text, tmp_path).count(f"(data:image/png;base64,{encoded})") == 2
    one = embed_images(text, tmp_path, budget=len(encoded))  # room for the first only: the second by its path
    assert one.count("data:image/png") == 1 and f"`{tmp_path / 'monitoring' / 'b.png'}` (too large" in one
    assert "![gone](monitoring/gone.png)" in one and "![web](https://x/y.png)" in one  # left as they were


def test_trigger_retrain_false_reports_without_emitting(tmp_path, demo_csv):
    cfg = load_config(write_params(tmp_path, demo_csv, monitoring={"trigger_retrain": False}))
    report = {"drift_detected": True, "n_requests": 100, "checks": [{"name": "oov_rate_increase", "verdict": "drift"}]}
    assert announce_drift(cfg, report, "params.yaml") == {"emitted": False,
                                                          "reason": "monitoring.trigger_retrain is false"}
    assert not (cfg.resolve_path(cfg.runtime.artifacts_dir) / ANNOUNCED_DRIFT_FILE).exists()


# ------------------------------------------------------------------------------------ the flow itself
@pytest.fixture(scope="module")
def prefect_api():
    """A throw-away Prefect server (a real one, on loopback) and database for this module's fast test."""
    drain_prefect_workers()  # none left from an earlier module's server may carry this module's events
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_the_monitor_flow_publishes_the_report_and_announces_drift_once(prefect_api, tmp_path, demo_csv,
                                                                         monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", "/nonexistent/netrc")
    params = trained_project(tmp_path, demo_csv)
    cfg = load_config(params)
    in_domain = make_demo_frame(rows=WINDOW, seed=7)["text"].tolist()
    write_prediction_log(cfg, in_domain, seq=0, hours_ago=1)

    calm = monitor(params=str(params))
    assert not calm["drift_detected"] and calm["event"] == {"emitted": False, "reason": "no drift"}
    assert calm["n_requests"] == WINDOW
    report_file = cfg.resolve_path(cfg.monitoring.reports_dir) / "monitoring.json"
    assert read_json(report_file)["generated_at"] == calm["generated_at"]

    write_prediction_log(cfg, news_texts(WINDOW), seq=1)  # the newest window: another domain only
    drifted = monitor(params=str(params))
    assert drifted["drift_detected"] and drifted["event"]["emitted"]
    failed = [check["name"] for check in drifted["checks"] if check["verdict"] == "drift"]
    assert failed and drifted["event"]["failed_checks"] == failed

    markdown = Artifact.get(MONITORING_REPORT_KEY)
    assert markdown.type == "markdown" and "DRIFT" in markdown.description
    if drifted["plots"]:
        assert "data:image/png;base64," in markdown.data  # the plots travel inside the artifact
    table = Artifact.get(MONITORING_CHECKS_KEY)
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert [row["name"] for row in rows] == [check["name"] for check in drifted["checks"]]
    assert {row["verdict"] for row in rows} >= {"drift"}
    assert set(rows[0]) >= {"name", "statistic", "threshold", "verdict"}

    # The same drift again, on the same training data: reported, not announced twice.
    again = monitor(params=str(params))
    assert again["drift_detected"] and not again["event"]["emitted"]
    assert "announced already" in again["event"]["reason"]
    with get_client(sync_client=True) as client:
        events = _wait_for("the drifted event is not on the server", lambda: drifted_events(client), 30, 0.5)
        history = client.read_artifacts(artifact_filter=None, limit=50)
    assert len(events) == 1
    (event,) = events
    assert event.resource.id == model_resource_id(cfg)
    assert [check["name"] for check in event.payload["failed_checks"]] == failed
    assert read_json(cfg.resolve_path(cfg.runtime.artifacts_dir) / ANNOUNCED_DRIFT_FILE)["event_id"] == str(event.id)
    assert sum(a.key == MONITORING_REPORT_KEY for a in history) == 3  # one report per run: the UI's history

    runs = sorted((cfg.resolve_path(cfg.tracking.dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 3, "one W&B run per monitor run"
    assert list((runs[-1] / "files" / "media" / "table").glob("monitor/checks_*.table.json"))


# ------------------------------------------------------------------------------------------- the loop
def _monitor_deployment(client):
    try:
        return client.read_deployment_by_name(MONITOR)
    except ObjectNotFound:
        return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; POSIX signals")
def test_drift_seen_by_the_served_monitor_retrains_once_and_a_second_event_waits(tmp_path, demo_csv):
    # No schedule makes a run within the test: watch-data every hour, monitor every day, the weekly cron.
    params = trained_project(tmp_path, demo_csv, runtime={"watch_interval_seconds": 3600})
    cfg = load_config(params)
    write_prediction_log(cfg, news_texts(WINDOW))
    for spec in cfg.base_models:  # the retrain trains the folds again: reused, it would end before a second event
        shutil.rmtree(Layout.of(cfg).base(spec.name))
    with served(tmp_path, params) as it:
        client = it.client
        deployment = _wait_for("foldstack serve registered no monitor deployment",
                               lambda: _monitor_deployment(client), 60, log=it.serve_log)
        assert [s.schedule.interval.total_seconds() for s in deployment.schedules] == [1440 * 60]
        # retrain's triggers are automations: one on each event, each for this params file's resource.
        expects = {event: trigger.match.model_dump() for automation in client.read_automations()
                   for trigger in [automation.trigger] for event in trigger.expect}
        assert expects[DRIFTED_EVENT] == {"prefect.resource.id": model_resource_id(cfg)}
        # The served monitor, run now as a person would from the UI: it sees the drift and emits the event.
        check = client.create_flow_run_from_deployment(deployment.id)
        checked = _wait_for("the monitor run did not complete",
                            lambda: (run := client.read_flow_run(check.id)).state.is_final() and run,
                            90, 0.2, log=it.serve_log)
        assert checked.state.is_completed(), checked.state.message
        triggered = lambda: [r for r in it.runs() if not r.auto_scheduled]  # noqa: E731
        (first,) = _wait_for("the drifted event created no retrain run", triggered, 60, 0.2, log=it.serve_log)
        assert first.parameters == {"params": str(params.resolve())}
        first = _wait_for("the triggered retrain did not start",
                          lambda: (run := client.read_flow_run(first.id)).state.is_running() and run, 60, 0.2,
                          log=it.serve_log)
        # A second drift event while it runs: its run waits for the first one's slot.
        _emit(Event(event=DRIFTED_EVENT, resource={"prefect.resource.id": model_resource_id(cfg)},
                    payload={"failed_checks": [{"name": "a later drift"}]}))
        second = _wait_for("the second event created no run", lambda: (runs := triggered())[1:] and runs[1], 30, 0.2)
        queued = _wait_for("the second run was never refused a slot (AwaitingConcurrencySlot)",
                           lambda: [s for s in client.read_flow_run_states(second.id)
                                    if s.name == "AwaitingConcurrencySlot"], 60, 0.2, log=it.serve_log)
        _wait_for("the queued retrain did not complete", lambda: client.read_flow_run(second.id).state.is_completed(),
                  120, 0.5, log=it.serve_log)
        first, second = client.read_flow_run(first.id), client.read_flow_run(second.id)
        assert len(triggered()) == 2  # one run per event
        events = drifted_events(client)
    announced = min(events, key=lambda event: event.occurred)
    assert announced.related and any(r.id == f"prefect.flow-run.{check.id}" for r in announced.related)  # the monitor's
    print(f"\nfoldstack.model.drifted -> retrain run created {(first.created - announced.occurred).total_seconds():.1f}"
          f" s later, started {(first.start_time - announced.occurred).total_seconds():.1f} s later")
    assert first.state.is_completed()
    assert queued[0].timestamp < first.end_time <= second.start_time  # refused while the first ran, then ran
    assert len(events) == 2 and {e.resource.id for e in events} == {model_resource_id(cfg)}
    assert read_json(Layout.of(cfg).root / "flow" / "last_success.json")["flow_run_id"] == str(second.id)
