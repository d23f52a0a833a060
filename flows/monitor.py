"""The `monitor` flow: check the newest window of the prediction log against the training snapshot, publish the
report, and emit `foldstack.model.drifted` when a check says drift.

    check drift (run_monitor: reports/monitoring.json + .md + plots) -> Prefect artifacts (the report with its
    plots, the table of checks) -> W&B (a `monitor` run) -> on drift: the event the `retrain` deployment
    is triggered by

The `monitor` deployment (flows/deploy.py) runs it every `monitoring.schedule_minutes`; `foldstack monitor`
runs the same checks without Prefect. The event is about this params file's model (`model_resource_id`: its
artifacts directory) and carries the failed checks. It is emitted once per training data: a drift seen again
by a model trained on the same data as the one the event was emitted for is reported (artifacts, W&B, the
result) but not announced again, since retraining on that data once more would not fix it; a new snapshot
(the data changed, e.g. `foldstack feedback merge`) makes the next drift announce again. What was announced is
in `<artifacts>/flow/drift_announced.json`; delete it to announce the same drift again.
`monitoring.trigger_retrain: false` reports without emitting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.events import emit_event

from foldstack.common.files import read_json, write_json
from foldstack.config import DEFAULT_PARAMS_FILE, Config, load_config
from foldstack.ops.monitor_tracking import track_monitor_run
from foldstack.ops.monitoring.monitor import run_monitor
from foldstack.pipeline.stages import Layout
from tasks.monitor_report import publish_monitoring_artifacts

DRIFTED_EVENT = "foldstack.model.drifted"
ANNOUNCED_DRIFT_FILE = "flow/drift_announced.json"


def model_resource_id(cfg: Config) -> str:
    """The Prefect resource an event about this params file's model is about (what the retrain trigger matches):
    the artifacts directory the retrain writes the model to."""
    return f"foldstack.model.{cfg.resolve_path(cfg.runtime.artifacts_dir)}"


def trained_on(cfg: Config) -> str | None:
    """The data hash of the training snapshot the checks compared against (None before any training)."""
    snapshot = Layout.of(cfg).snapshot / "snapshot.json"
    try:
        return read_json(snapshot).get("data_hash")
    except (OSError, ValueError):
        return None


def _announced(cfg: Config) -> dict[str, Any]:
    try:
        return read_json(cfg.resolve_path(cfg.runtime.artifacts_dir) / ANNOUNCED_DRIFT_FILE)
    except (OSError, ValueError):
        return {}


def announce_drift(cfg: Config, report: dict[str, Any], params: str) -> dict[str, Any]:
    """Emit DRIFTED_EVENT for a drifted report, once per training data; says whether and why (not)."""
    if not cfg.monitoring.trigger_retrain:
        return {"emitted": False, "reason": "monitoring.trigger_retrain is false"}
    data_hash = trained_on(cfg)
    announced = _announced(cfg)
    if data_hash is not None and announced.get("data_hash") == data_hash:
        return {"emitted": False, "reason": f"announced already for the model trained on {data_hash[:12]} "
                                            f"(event {announced.get('event_id')}); waiting for new training data"}
    failed = [check for check in report["checks"] if check["verdict"] == "drift"]
    event = emit_event(
        event=DRIFTED_EVENT,
        resource={"prefect.resource.id": model_resource_id(cfg), "prefect.resource.name": cfg.registry.model_name},
        payload={"failed_checks": failed, "n_requests": report["n_requests"], "window": report.get("window"),
                 "model_version": report.get("model_version"), "data_hash": data_hash,
                 "report": str(cfg.resolve_path(cfg.monitoring.reports_dir) / "monitoring.json"),
                 "params": str(Path(params).resolve())},
    )
    event_id = str(event.id) if event else None
    write_json(cfg.resolve_path(cfg.runtime.artifacts_dir) / ANNOUNCED_DRIFT_FILE,
               {"data_hash": data_hash, "event_id": event_id, "model_version": report.get("model_version"),
                "failed_checks": [check["name"] for check in failed], "generated_at": report.get("generated_at")})
    return {"emitted": event is not None, "event_id": event_id, "failed_checks": [c["name"] for c in failed]}


# No caching: the log grows between runs with the same parameters.
@task(name="check-drift", cache_policy=NONE)
def check_drift(cfg: Config, window: int | None = None) -> dict[str, Any]:
    """Every check over the newest window of the prediction log; writes the report files."""
    return run_monitor(cfg, window=window)


@flow(name="monitor", log_prints=False)
def monitor(params: str = DEFAULT_PARAMS_FILE, window: int | None = None,
            overrides: list[str] | None = None) -> dict[str, Any]:
    """Check the prediction log against the training snapshot; publish the report; on drift, announce it.

    Returns the report (reports/monitoring.json's content) with `event`: whether DRIFTED_EVENT was emitted."""
    logger = get_run_logger()
    cfg = load_config(params, overrides or [])
    report = check_drift(cfg, window)
    publish_monitoring_artifacts(cfg, report)
    tracking = track_monitor_run(cfg, report)
    drifted = [check["name"] for check in report["checks"] if check["verdict"] == "drift"]
    logger.info("%d requests checked, %s; W&B: %s", report["n_requests"],
                f"drift in {', '.join(drifted)}" if drifted else "no drift", tracking["mode"])
    event = announce_drift(cfg, report, params) if report["drift_detected"] else {"emitted": False,
                                                                                   "reason": "no drift"}
    if report["drift_detected"]:
        logger.info("%s: %s", DRIFTED_EVENT, f"emitted ({event['event_id']})" if event["emitted"] else event["reason"])
    return {**report, "event": event}
