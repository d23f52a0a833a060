"""The `watch-data` flow: emit `foldstack.data.changed` when the training data is not what the last successful
training run used.

What "the last run used" is comes from DVC when the project has a `dvc.lock` (the md5 it recorded for the
validate stage's data dependency, `foldstack.ops.versioning.data_change`); otherwise from the train flow's own
record, written when it succeeds (`<artifacts>/flow/last_success.json`, the data file's sha256). On every
interval the `watch-data` deployment hashes the file again; on a difference it emits the event once (it
remembers what it announced in `<artifacts>/flow/announced.json`, so a slow retrain is not queued again on
every tick). The `retrain` deployment has a trigger on that event.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event

from foldstack.config import DEFAULT_PARAMS_FILE, Config, load_config
from foldstack.errors import DataError
from foldstack.common.files import read_json, sha256_file, sha256_json, write_json
from foldstack.ops.versioning import data_change

DATA_CHANGED_EVENT = "foldstack.data.changed"
LAST_SUCCESS_FILE = "flow/last_success.json"
ANNOUNCED_FILE = "flow/announced.json"


def data_resource_id(cfg: Config) -> str:
    """The Prefect resource an event about this params file's data is about (what the trigger matches)."""
    return f"foldstack.core.data.{cfg.resolve_path(cfg.data.path)}"


def data_source_sha256(cfg: Config) -> str:
    """The content hash of the training data as the snapshot records it (`source_sha256` of validate)."""
    path = cfg.resolve_path(cfg.data.path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found (data.path)")
    digest = sha256_file(path)
    if cfg.data.test_path:  # the same combination foldstack.core.data uses when a separate holdout file is given
        digest = sha256_json([digest, sha256_file(cfg.resolve_path(cfg.data.test_path))])
    return digest


def _artifact(cfg: Config, name: str) -> Path:
    return cfg.resolve_path(cfg.runtime.artifacts_dir) / name


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def record_successful_run(cfg: Config, data_summary: dict[str, Any]) -> None:
    """Called by the train flow at its end: the data hash a later change is measured against."""
    from prefect.runtime import flow_run

    write_json(_artifact(cfg, LAST_SUCCESS_FILE), {
        "source_sha256": data_summary["source_sha256"], "data_hash": data_summary["data_hash"],
        "data_path": str(cfg.resolve_path(cfg.data.path)), "flow_run_id": flow_run.id,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def data_versions(cfg: Config) -> tuple[str, str | None, str]:
    """(current content hash, the hash the last successful run trained on or None, where that came from)."""
    root = cfg.resolve_path(".")
    if (root / "dvc.lock").is_file():
        change = data_change(cfg, root)
        if change.current_md5 is None:
            raise DataError(f"{change.path}: data file not found (data.path)")
        return change.current_md5, change.locked_md5, "dvc.lock"
    last = _read(_artifact(cfg, LAST_SUCCESS_FILE))
    return data_source_sha256(cfg), (last["source_sha256"] if last else None), LAST_SUCCESS_FILE


@flow(name="watch-data", log_prints=False)
def watch_data(params: str = DEFAULT_PARAMS_FILE, overrides: list[str] | None = None) -> dict[str, Any]:
    """Compare the data's content hash with the last successful training run's; emit the event on a change."""
    logger = get_run_logger()
    cfg = load_config(params, overrides or [])
    current, trained_on, recorded_in = data_versions(cfg)
    if current == trained_on:
        logger.info("data unchanged since the last successful run (%s, per %s)", current[:12], recorded_in)
        return {"changed": False, "hash": current, "emitted": False, "recorded_in": recorded_in}
    announced = _read(_artifact(cfg, ANNOUNCED_FILE))
    if announced and announced.get("hash") == current:
        logger.info("data changed (%s), already announced; waiting for the retrain", current[:12])
        return {"changed": True, "hash": current, "emitted": False, "recorded_in": recorded_in}
    event = emit_event(
        event=DATA_CHANGED_EVENT,
        resource={"prefect.resource.id": data_resource_id(cfg), "prefect.resource.name": cfg.data.path},
        payload={"hash": current, "previous_hash": trained_on, "recorded_in": recorded_in,
                 "params": str(Path(params).resolve())},
    )
    write_json(_artifact(cfg, ANNOUNCED_FILE), {"hash": current, "event_id": str(event.id) if event else None})
    logger.info("data changed: %s -> %s; emitted %s", trained_on[:12] if trained_on else "never trained",
                current[:12], DATA_CHANGED_EVENT)
    return {"changed": True, "hash": current, "emitted": event is not None, "recorded_in": recorded_in}
