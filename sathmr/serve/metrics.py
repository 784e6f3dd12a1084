"""Prometheus metrics of one server process (``GET /metrics``), with prometheus_client.

Every server has its own registry, so several apps in one process (tests, Ray replicas on one node)
never share counters. Under Ray Serve each replica reports its own (``X-Sathmr-Worker`` tells which
answered); a Prometheus scrape of each replica's ``/metrics`` sums them.
"""

from __future__ import annotations

from sathmr.common.optional import require

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, max_batch_size: int):
        pc = require("prometheus_client")
        self._pc = pc
        self.registry = reg = pc.CollectorRegistry()
        self.requests = pc.Counter("sathmr_requests", "HTTP requests by route and status code", ["route", "code"],
                                   registry=reg)
        self.errors = pc.Counter("sathmr_errors", "Inference requests refused or failed, by reason", ["reason"],
                                 registry=reg)
        self.latency = pc.Histogram("sathmr_request_latency_seconds", "POST /v1/infer: body received to answer ready",
                                    buckets=LATENCY_BUCKETS, registry=reg)
        buckets = sorted({1, *(2 ** k for k in range(max_batch_size.bit_length() + 1) if 2 ** k <= max_batch_size),
                          max_batch_size})
        self.batch_size = pc.Histogram("sathmr_batch_size", "Images per network batch", buckets=buckets, registry=reg)
        self.batch_seconds = pc.Histogram("sathmr_batch_seconds", "Network and post-processing time of one batch",
                                          buckets=LATENCY_BUCKETS, registry=reg)
        self.queue_depth = pc.Gauge("sathmr_queue_depth", "Requests waiting for a batch", registry=reg)
        self.in_flight = pc.Gauge("sathmr_requests_in_flight", "Inference requests being handled", registry=reg)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
