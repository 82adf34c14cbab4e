"""The server's Prometheus metrics, kept and rendered by ``prometheus_client`` (text exposition format 0.0.4).

Every served model has its own :class:`prometheus_client.CollectorRegistry`, so two servers in one
process (tests, an embedding application) never share counts, and nothing is added to the client's
process-wide default registry.  The ``*_created`` timestamps that ``prometheus_client`` keeps for
counters and histograms are left out of ``/metrics``: the exposed series are exactly those documented in
``docs/serving.md``.  Metric objects of ``prometheus_client`` lock their own updates, so the event loop
and the inference threads update them directly.
"""

from __future__ import annotations

from typing import Any, Iterator

from ..util import require

__all__ = ["LATENCY_BUCKETS_S", "ServerMetrics"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _WithoutCreated:
    """A collector view of a registry without the ``*_created`` samples (creation times, not measurements)."""

    def __init__(self, registry: Any):
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        for metric in self._registry.collect():  # fresh Metric objects on every collect: safe to filter
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class ServerMetrics:
    """What ``GET /metrics`` reports for one served model.

    ``inflight`` is a plain integer the app raises and lowers around each inference request; the gauge reads
    it when the metrics are rendered.
    """

    def __init__(self, model: str, max_batch: int):
        prom = require("prometheus_client", "serve")
        self.model = model
        self.inflight = 0
        self.registry = reg = prom.CollectorRegistry(auto_describe=True)
        # Registration order is the order of /metrics.
        self._requests = prom.Counter("acmix_inference_requests", "Inference requests answered, by outcome.",
                                      ["model", "outcome"], registry=reg)
        self._failures = prom.Counter("acmix_inference_failures", "Failed inference requests, by HTTP status.",
                                      ["model", "code"], registry=reg)
        self._latency = prom.Histogram("acmix_inference_request_duration_seconds",
                                       "Time from receiving a successful request to its response.", ["model"],
                                       buckets=LATENCY_BUCKETS_S, registry=reg).labels(model=model)
        self._queue = prom.Histogram("acmix_inference_queue_duration_seconds",
                                     "Time a request waited for its batch to start.", ["model"],
                                     buckets=LATENCY_BUCKETS_S, registry=reg).labels(model=model)
        edges = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, max(1, max_batch)})
        self._batch_size = prom.Histogram("acmix_inference_batch_size", "Rows per executed batch (merged requests).",
                                          ["model"], buckets=[float(e) for e in edges], registry=reg).labels(model=model)
        prom.Gauge("acmix_inference_inflight_requests", "Inference requests being handled now.", ["model"],
                   registry=reg).labels(model=model).set_function(lambda: self.inflight)
        # clients that left before their answer (not failures of the server)
        self._disconnects = prom.Counter(
            "acmix_client_disconnects", "Inference requests whose client left before the answer (queued work dropped).",
            ["model"], registry=reg).labels(model=model)
        self._refused = prom.Counter("acmix_connections_refused",
                                     "Connections answered 503 and closed (--max-connections).", ["model"],
                                     registry=reg).labels(model=model)
        self._header_timeouts = prom.Counter("acmix_header_timeouts",
                                             "Connections closed for not sending headers in time (--read-timeout-s).",
                                             ["model"], registry=reg).labels(model=model)
        self._success = self._requests.labels(model=model, outcome="success")
        self._failure = self._requests.labels(model=model, outcome="failure")  # both outcomes shown from the start
        self._exposition = _WithoutCreated(reg)
        self._render = prom.generate_latest

    def client_disconnected(self) -> None:
        self._disconnects.inc()

    def connection_refused(self) -> None:
        self._refused.inc()

    def header_timeout(self) -> None:
        self._header_timeouts.inc()

    def request_done(self, status: int, seconds: float) -> None:
        if status < 400:
            self._success.inc()
            self._latency.observe(seconds)
        else:
            self._failure.inc()
            self._failures.labels(model=self.model, code=str(status)).inc()

    def batch_executed(self, rows: int, queue_seconds: list[float]) -> None:
        self._batch_size.observe(rows)
        for q in queue_seconds:
            self._queue.observe(q)

    def render(self) -> str:
        """The Prometheus text format (0.0.4) of every metric."""
        return self._render(self._exposition).decode("utf-8")
