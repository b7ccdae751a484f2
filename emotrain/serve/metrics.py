"""The server's Prometheus metrics (``GET /metrics``), kept in the HTTP process.

Requests by endpoint and outcome, their latency, the requests waiting or in progress (the bounded queue's
depth), and per model batch: its size in requests and in turns and its model time. The batch figures come
back from the inference worker with each response; each batch is counted once, by its id.
"""

from __future__ import annotations

from collections import OrderedDict

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """One registry per server (not the library's global one: tests start several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("emotrain_requests", "HTTP requests by endpoint and outcome (ok, client_error, "
                                "too_large, busy, timeout, server_error, unauthorized)", ["endpoint", "outcome"],
                                registry=r)
        self.latency = Histogram("emotrain_request_seconds", "Time from admission to the response, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("emotrain_queue_depth", "Prediction requests admitted and not yet answered "
                                 "(waiting, decoding or in a batch)", registry=r)
        self.queue_limit = Gauge("emotrain_queue_limit", "The most prediction requests admitted at once (--queue)",
                                 registry=r)
        self.batch_requests = Histogram("emotrain_batch_requests", "Requests per batch of the inference worker",
                                        buckets=SIZE_BUCKETS, registry=r)
        self.batch_turns = Histogram("emotrain_batch_turns", "Turns per batch (each model's forward passes take "
                                     "at most --max-batch of them)", buckets=SIZE_BUCKETS, registry=r)
        self.model_seconds = Histogram("emotrain_model_seconds", "Model time per batch (forward passes of every "
                                       "model)", buckets=LATENCY_BUCKETS, registry=r)
        self.decode_seconds = Histogram("emotrain_decode_seconds", "Media decoding time per request",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self._seen: OrderedDict[str, None] = OrderedDict()

    def observe_batch(self, batch: dict) -> None:
        """Count a batch the first time one of its responses arrives."""
        batch_id = str(batch.get("id", ""))
        if not batch_id or batch_id in self._seen:
            return
        self._seen[batch_id] = None
        while len(self._seen) > 4096:
            self._seen.popitem(last=False)
        self.batch_requests.observe(batch.get("requests", 0))
        self.batch_turns.observe(batch.get("turns", 0))
        self.model_seconds.observe(batch.get("model_seconds", 0.0))

    def text(self) -> bytes:
        return generate_latest(self.registry)
