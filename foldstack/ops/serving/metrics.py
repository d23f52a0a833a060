"""The service's Prometheus metrics: requests, latency, predictions per class, model info and reloads, and the
latest `foldstack monitor` verdicts.

The monitor gauges are read from `<reports_dir>/monitoring.json` at each scrape (`MonitorReportCollector`),
so a monitor run in another process (the `monitor` deployment, `foldstack monitor`) shows on the service's
/metrics without a restart. No report (or an unreadable one): no monitor series at all.

    foldstack_monitor_drift_detected             1 when the latest report found drift, else 0
    foldstack_monitor_check_statistic{check}     each check's statistic (left out: insufficient data)
    foldstack_monitor_check_drift{check}         1 drift, 0 ok (left out: insufficient data)
    foldstack_monitor_window_requests            the requests the latest report checked
    foldstack_monitor_report_age_seconds         now minus the report's generated_at
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from foldstack.ops.serving.state import LoadedModel

# Paths that get their own metric label; anything else is "other" so random URLs cannot grow the label set.
ENDPOINTS = ("/predict", "/feedback", "/health", "/metrics", "/docs", "/redoc", "/openapi.json")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """The Prometheus metrics of one app, in their own registry (several apps can live in one process)."""

    def __init__(self, monitoring_report: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, open fds
        if monitoring_report is not None:
            self.registry.register(MonitorReportCollector(Path(monitoring_report)))
        self.requests = Counter("foldstack_http_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status", "model_version"], registry=self.registry)
        self.latency = Histogram("foldstack_http_request_duration_seconds", "Time to answer a request",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("foldstack_predictions", "Predicted texts by predicted class",
                                   ["label", "model_version"], registry=self.registry)
        self.batch_size = Histogram("foldstack_predict_batch_texts", "Texts per /predict request",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.model_info = Gauge("foldstack_model_info", "The model being served (value 1)",
                                ["model_name", "model_version", "bundle_id"], registry=self.registry)
        self.reloads = Counter("foldstack_model_reloads", "Model reloads after the registry stage moved",
                               ["result"], registry=self.registry)

    def model_changed(self, previous: LoadedModel | None, current: LoadedModel) -> None:
        if previous is not None:
            self.model_info.remove(*self._info_labels(previous))
        self.model_info.labels(*self._info_labels(current)).set(1)

    @staticmethod
    def _info_labels(model: LoadedModel) -> tuple[str, str, str]:
        registry = model.bundle.manifest.get("registry", {})
        return registry.get("name", "bundle"), model.version, model.bundle.manifest.get("bundle_id", "")


class MonitorReportCollector(Collector):
    """The latest monitoring.json as gauges, read at scrape time (see the module docstring)."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        self.path = path
        self.clock = clock

    def describe(self) -> list:
        return []  # the series depend on the file: nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self._read()
        if report is None:
            return
        yield GaugeMetricFamily("foldstack_monitor_drift_detected", "1 when the latest monitor report found drift",
                                value=1.0 if report.get("drift_detected") else 0.0)
        statistic = GaugeMetricFamily("foldstack_monitor_check_statistic", "Each monitor check's statistic",
                                      labels=["check"])
        verdict = GaugeMetricFamily("foldstack_monitor_check_drift", "1 when a monitor check says drift, 0 ok",
                                    labels=["check"])
        for check in report.get("checks") or []:
            name, value = str(check.get("name", "")), check.get("statistic")
            if isinstance(value, (int, float)) and math.isfinite(value):
                statistic.add_metric([name], float(value))
            if check.get("verdict") in ("drift", "ok"):
                verdict.add_metric([name], 1.0 if check["verdict"] == "drift" else 0.0)
        yield statistic
        yield verdict
        if isinstance(report.get("n_requests"), int):
            yield GaugeMetricFamily("foldstack_monitor_window_requests", "Requests the latest monitor report checked",
                                    value=float(report["n_requests"]))
        age = self._age(report.get("generated_at"))
        if age is not None:
            yield GaugeMetricFamily("foldstack_monitor_report_age_seconds", "Seconds since the latest monitor report",
                                    value=age)

    def _read(self) -> dict[str, Any] | None:
        try:
            report = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not written yet, or not JSON: no monitor series
            return None
        return report if isinstance(report, dict) else None

    def _age(self, generated_at: Any) -> float | None:
        try:
            stamp = datetime.fromisoformat(str(generated_at))
        except ValueError:
            return None
        if stamp.tzinfo is None:
            return None
        return max(0.0, self.clock() - stamp.timestamp())
