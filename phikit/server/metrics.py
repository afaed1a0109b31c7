"""Prometheus metrics (vLLM-like names under `phikit:`) in the server's own `CollectorRegistry`.

Request-side values (tokens, latencies, finish reasons) are recorded by `runner.RequestRun` as outputs arrive; the
engine-side ones (running, waiting, KV usage, prefix-cache counts, aborts, rows per decode step) are read from
`Engine.stats()` on each scrape (`refresh`): gauges are set, the engine's cumulative counts are added as deltas, and
the rows of every decode step since the last scrape are observed into `phikit:iteration_decode_rows`.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)
ROWS_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """Every metric of one server."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.running = Gauge("phikit:num_requests_running", "Requests in the engine's slots", registry=r)
        self.waiting = Gauge("phikit:num_requests_waiting", "Requests waiting for a slot", registry=r)
        self.kv_usage = Gauge("phikit:kv_cache_usage_perc", "Fraction of the KV cache in use (0..1)", registry=r)
        self.prompt_tokens = Counter("phikit:prompt_tokens", "Prompt tokens submitted", registry=r)
        self.generation_tokens = Counter("phikit:generation_tokens", "Tokens generated", registry=r)
        self.request_success = Counter("phikit:request_success", "Choices finished, by finish reason",
                                       ["finished_reason"], registry=r)
        self.aborted = Counter("phikit:requests_aborted", "Requests aborted (client gone, or shutdown)", registry=r)
        self.prefix_queries = Counter("phikit:prefix_cache_queries", "Requests looked up in the prefix cache",
                                      registry=r)
        self.prefix_hits = Counter("phikit:prefix_cache_hits", "Requests that reused a cached prefix", registry=r)
        self.prefix_hit_tokens = Counter("phikit:prefix_cache_hit_tokens", "Prompt tokens taken from the prefix cache",
                                         registry=r)
        self.time_to_first_token = Histogram("phikit:time_to_first_token_seconds", "Arrival to first token",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram("phikit:inter_token_latency_seconds", "Time between tokens of a choice",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram("phikit:e2e_request_latency_seconds", "Arrival to the last token",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.decode_rows = Histogram("phikit:iteration_decode_rows", "Rows in each decode step", buckets=ROWS_BUCKETS,
                                     registry=r)
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def _add_delta(self, counter: Counter, name: str, total: Any) -> None:
        total = int(total or 0)
        delta = total - self._last.get(name, 0)
        if delta > 0:
            counter.inc(delta)
        self._last[name] = max(total, self._last.get(name, 0))

    def refresh(self, stats: Any) -> None:
        """Take the engine's `EngineStats` into the metrics (called on each scrape)."""
        with self._lock:
            self.running.set(getattr(stats, "running", 0))
            self.waiting.set(getattr(stats, "waiting", 0))
            self.kv_usage.set(float(getattr(stats, "kv_usage", 0.0)))
            self._add_delta(self.prefix_queries, "prefix_queries", getattr(stats, "prefix_queries", 0))
            self._add_delta(self.prefix_hits, "prefix_hits", getattr(stats, "prefix_hits", 0))
            self._add_delta(self.prefix_hit_tokens, "prefix_hit_tokens", getattr(stats, "prefix_hit_tokens", 0))
            self._add_delta(self.aborted, "aborted", getattr(stats, "aborted", 0))
            for rows in getattr(stats, "decode_rows_histogram", None) or ():
                self.decode_rows.observe(rows)

    def render(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
