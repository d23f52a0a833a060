"""The monitor gauges on /metrics: read from the latest monitoring.json at each scrape, absent without one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from foldstack.ops.serving.metrics import MonitorReportCollector, ServiceMetrics

GENERATED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("foldstack_monitor")}


def report(drift: bool) -> dict:
    return {"drift_detected": drift, "n_requests": 500, "generated_at": GENERATED.isoformat(),
            "checks": [{"name": "text_length_psi", "statistic": 0.31, "verdict": "drift" if drift else "ok"},
                       {"name": "embedding_auc", "statistic": 0.52, "verdict": "ok"},
                       {"name": "accuracy_drop", "statistic": None, "verdict": "insufficient_data"}]}


def test_gauges_follow_the_latest_report(tmp_path):
    path = tmp_path / "reports" / "monitoring.json"
    metrics = ServiceMetrics(monitoring_report=path)
    assert samples(metrics) == {}  # no report yet: no monitor series
    path.parent.mkdir()
    path.write_text(json.dumps(report(drift=True)))
    found = samples(metrics)
    assert found[("foldstack_monitor_drift_detected", ())] == 1.0
    assert found[("foldstack_monitor_check_statistic", (("check", "text_length_psi"),))] == 0.31
    assert found[("foldstack_monitor_check_drift", (("check", "text_length_psi"),))] == 1.0
    assert found[("foldstack_monitor_check_drift", (("check", "embedding_auc"),))] == 0.0
    assert ("foldstack_monitor_check_statistic", (("check", "accuracy_drop"),)) not in found
    assert ("foldstack_monitor_check_drift", (("check", "accuracy_drop"),)) not in found
    assert found[("foldstack_monitor_window_requests", ())] == 500
    assert found[("foldstack_monitor_report_age_seconds", ())] > 0
    # A newer report replaces the values at the next scrape, with no restart.
    path.write_text(json.dumps(report(drift=False)))
    found = samples(metrics)
    assert found[("foldstack_monitor_drift_detected", ())] == 0.0
    assert found[("foldstack_monitor_check_drift", (("check", "text_length_psi"),))] == 0.0


def test_report_age_and_broken_reports(tmp_path):
    path = tmp_path / "monitoring.json"
    path.write_text(json.dumps(report(drift=False)))
    collector = MonitorReportCollector(path, clock=lambda: (GENERATED + timedelta(seconds=90)).timestamp())
    ages = [m for m in collector.collect() if m.name == "foldstack_monitor_report_age_seconds"]
    assert ages[0].samples[0].value == 90.0
    path.write_text(json.dumps({**report(drift=False), "generated_at": "yesterday"}))
    assert "foldstack_monitor_report_age_seconds" not in {m.name for m in collector.collect()}
    path.write_text("{half a fi")
    assert list(collector.collect()) == []
    assert samples(ServiceMetrics()) == {}  # no report path: no monitor series either
