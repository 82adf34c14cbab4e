"""Prometheus text-format metrics (exposition format 0.0.4), without a client library.

Counters and histograms are updated from the event loop and from the
inference thread, so each update holds a lock.
"""

from __future__ import annotations

import math
import threading

__all__ = ["Histogram", "ServerMetrics"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _fmt(v: float) -> str:
    return "+Inf" if v == math.inf else repr(float(v))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, esc)) + "}"


class Histogram:
    """Cumulative buckets with upper bounds ``buckets`` (``+Inf`` added), plus sum and count."""

    def __init__(self, buckets: tuple[float, ...]):
        self.bounds = tuple(sorted(buckets)) + (math.inf,)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: dict[str, str]) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip(self.bounds, self.counts):
            cumulative += n
            out.append(f"{name}_bucket{_labels({**labels, 'le': _fmt(bound)})} {cumulative}")
        out.append(f"{name}_sum{_labels(labels)} {_fmt(self.sum)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


class ServerMetrics:
    """What ``GET /metrics`` reports for one served model."""

    def __init__(self, model: str, max_batch: int):
        self.model = model
        self._lock = threading.Lock()
        self.success = 0
        self.failures: dict[str, int] = {}  # HTTP status -> count
        self.latency = Histogram(LATENCY_BUCKETS_S)
        edges = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, max(1, max_batch)})
        self.batch_size = Histogram(tuple(float(e) for e in edges))
        self.queue = Histogram(LATENCY_BUCKETS_S)
        self.inflight = 0
        self.client_disconnects = 0  # clients that left before their answer (not failures of the server)
        self.connections_refused = 0  # connections over --max-connections
        self.header_timeouts = 0  # connections closed for not finishing their headers in time

    def client_disconnected(self) -> None:
        with self._lock:
            self.client_disconnects += 1

    def connection_refused(self) -> None:
        with self._lock:
            self.connections_refused += 1

    def header_timeout(self) -> None:
        with self._lock:
            self.header_timeouts += 1

    def request_done(self, status: int, seconds: float) -> None:
        with self._lock:
            if status < 400:
                self.success += 1
                self.latency.observe(seconds)
            else:
                self.failures[str(status)] = self.failures.get(str(status), 0) + 1

    def batch_executed(self, rows: int, queue_seconds: list[float]) -> None:
        with self._lock:
            self.batch_size.observe(rows)
            for q in queue_seconds:
                self.queue.observe(q)

    def render(self) -> str:
        m = {"model": self.model}
        with self._lock:
            lines = [
                "# HELP acmix_inference_requests_total Inference requests answered, by outcome.",
                "# TYPE acmix_inference_requests_total counter",
                f"acmix_inference_requests_total{_labels({**m, 'outcome': 'success'})} {self.success}",
            ]
            lines += [f"acmix_inference_requests_total{_labels({**m, 'outcome': 'failure'})} {sum(self.failures.values())}"]
            lines += [
                "# HELP acmix_inference_failures_total Failed inference requests, by HTTP status.",
                "# TYPE acmix_inference_failures_total counter",
            ]
            lines += [f"acmix_inference_failures_total{_labels({**m, 'code': code})} {n}"
                      for code, n in sorted(self.failures.items())]
            lines += [
                "# HELP acmix_inference_request_duration_seconds Time from receiving a successful request to its response.",
                "# TYPE acmix_inference_request_duration_seconds histogram",
                *self.latency.lines("acmix_inference_request_duration_seconds", m),
                "# HELP acmix_inference_queue_duration_seconds Time a request waited for its batch to start.",
                "# TYPE acmix_inference_queue_duration_seconds histogram",
                *self.queue.lines("acmix_inference_queue_duration_seconds", m),
                "# HELP acmix_inference_batch_size Rows per executed batch (merged requests).",
                "# TYPE acmix_inference_batch_size histogram",
                *self.batch_size.lines("acmix_inference_batch_size", m),
                "# HELP acmix_inference_inflight_requests Inference requests being handled now.",
                "# TYPE acmix_inference_inflight_requests gauge",
                f"acmix_inference_inflight_requests{_labels(m)} {self.inflight}",
                "# HELP acmix_client_disconnects_total Inference requests whose client left before the answer "
                "(queued work dropped).",
                "# TYPE acmix_client_disconnects_total counter",
                f"acmix_client_disconnects_total{_labels(m)} {self.client_disconnects}",
                "# HELP acmix_connections_refused_total Connections answered 503 and closed (--max-connections).",
                "# TYPE acmix_connections_refused_total counter",
                f"acmix_connections_refused_total{_labels(m)} {self.connections_refused}",
                "# HELP acmix_header_timeouts_total Connections closed for not sending headers in time "
                "(--read-timeout-s).",
                "# TYPE acmix_header_timeouts_total counter",
                f"acmix_header_timeouts_total{_labels(m)} {self.header_timeouts}",
            ]
        return "\n".join(lines) + "\n"
