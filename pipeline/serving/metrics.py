"""Prometheus metrics of the ingress, served as text at GET /metrics.

Each ingress replica keeps its own registry; with several replicas, scrape each (or use Ray's own
metrics export, which Ray Serve also feeds). Latency buckets are in seconds.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hybridrec_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.served = Counter("hybridrec_served_lists", "Lists served by arm", ["arm"], registry=r)
        self.latency = Histogram("hybridrec_request_seconds", "Recommend latency", ["arm"], buckets=BUCKETS, registry=r)
        self.stage = Histogram("hybridrec_stage_seconds", "Latency by stage", ["stage"], buckets=BUCKETS, registry=r)
        self.degraded = Counter("hybridrec_degraded", "Components dropped from a request", ["component", "reason"], registry=r)
        self.fallback = Counter("hybridrec_fallback", "Requests answered by the ingress popularity fallback", registry=r)
        self.ignored = Counter("hybridrec_ignored_history_items", "Unknown item ids ignored in histories", registry=r)
        self.items = Counter("hybridrec_live_items", "Item records accepted by POST /items", registry=r)
        self.events = Counter("hybridrec_events", "Events sent to POST /events and /feedback, by outcome",
                              ["outcome"], registry=r)  # accepted | duplicate | unknown_item | refused
        self.batch_rows = Histogram("hybridrec_batch_rows", "Requests computed together (fused topology)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.log_dropped = Gauge("hybridrec_eventlog_dropped", "Log records dropped (queue full)", ["log"], registry=r)

    def observe_timings(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage.labels(stage).observe(ms / 1e3)

    def render(self) -> bytes:
        return generate_latest(self.registry)
