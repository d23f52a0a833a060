"""A monitor run in Weights & Biases: one W&B run (job type `monitor`) per `monitor` flow run.

It logs what `foldstack.ops.monitoring.monitor.run_monitor` returned, after the report files were written: the
verdict and the window as summary values (`monitor/drift_detected`, `monitor/n_requests`, ...), each check's
statistic as `monitor/<check>` (summary and history, so W&B's charts show a statistic across monitor runs), the
checks as a table, and the report's plots as images. Same modes, naming and Prefect link as the training runs
(foldstack.ops.tracking.Tracker): `WANDB_MODE=disabled` writes nothing; offline runs wait for `wandb sync`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from foldstack.config import Config
from foldstack.ops.tracking import Tracker

CHECK_COLUMNS = ("name", "kind", "statistic", "threshold", "verdict", "detail")


def check_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per check: name, kind, statistic (None when it could not be computed), threshold, verdict, detail."""
    return [{column: check.get(column) for column in CHECK_COLUMNS} for check in report.get("checks", [])]


def _statistics(report: Mapping[str, Any]) -> dict[str, float]:
    values = {}
    for check in report.get("checks", []):
        statistic = check.get("statistic")
        if isinstance(statistic, (int, float)) and math.isfinite(statistic):
            values[f"monitor/{check['name']}"] = float(statistic)
    return values


def plot_files(report: Mapping[str, Any], reports_dir: Path, root: Path) -> list[Path]:
    """The report's plots that exist: each path relative to the reports directory, else to the project."""
    found = []
    for relative in report.get("plots", []):
        for base in (reports_dir, root):
            if (base / relative).is_file():
                found.append(base / relative)
                break
    return found


def track_monitor_run(cfg: Config, report: Mapping[str, Any], *,
                      environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Log a monitor report in one W&B run; returns its mode, where it went and how many checks and plots."""
    with Tracker(cfg, job_type="monitor", environ=environ) as tracker:
        counts = {"checks": 0, "plots": 0}
        if tracker.active:
            import wandb  # deferred: wandb

            rows = check_rows(report)
            summary = {"monitor/drift_detected": bool(report.get("drift_detected")),
                       "monitor/n_requests": int(report.get("n_requests", 0)),
                       "monitor/n_feedback": int(report.get("n_feedback", 0)),
                       "monitor/model_version": str(report.get("model_version", "")),
                       "monitor/drifted_checks": [r["name"] for r in rows if r["verdict"] == "drift"],
                       **_statistics(report)}
            tracker.update_summary(summary)
            payload: dict[str, Any] = {"monitor/checks": wandb.Table(
                columns=list(CHECK_COLUMNS), data=[[row[c] for c in CHECK_COLUMNS] for row in rows]),
                **_statistics(report), "monitor/drift_detected": int(bool(report.get("drift_detected")))}
            reports_dir = cfg.resolve_path(cfg.monitoring.reports_dir)
            for png in plot_files(report, reports_dir, cfg.resolve_path(".")):
                payload[f"monitor/plots/{png.stem}"] = wandb.Image(str(png))
                counts["plots"] += 1
            tracker.run.log(payload)
            counts["checks"] = len(rows)
        return {"mode": tracker.mode, "run_dir": str(tracker.run_dir) if tracker.run_dir else None,
                "run_path": tracker.run_path, **counts}
