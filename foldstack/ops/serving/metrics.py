"""The service's Prometheus metrics: requests, latency, predictions per class, model info and reloads."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from foldstack.ops.serving.state import LoadedModel

# Paths that get their own metric label; anything else is "other" so random URLs cannot grow the label set.
ENDPOINTS = ("/predict", "/health", "/metrics", "/docs", "/redoc", "/openapi.json")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """The Prometheus metrics of one app, in their own registry (several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, open fds
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
