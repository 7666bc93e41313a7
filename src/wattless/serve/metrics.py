"""The server's Prometheus metrics (prometheus_client), one registry per app.

    wattless_requests_total{endpoint, status}            requests answered, by HTTP status
    wattless_request_errors_total{endpoint, reason}      4xx and 5xx answers, by reason
    wattless_request_latency_seconds{endpoint}           histogram, arrival to answer
    wattless_inputs_total{tier}                          inputs each tier ran (tier 0: every input)
    wattless_escalations_total{tier}                     inputs escalated past this tier
    wattless_estimated_energy_joules_total{tier, target} estimated joules spent on each tier's target
    wattless_estimated_energy_joules_all_tiers_total     the same summed over the tiers
    wattless_cancelled_requests_total                    requests whose client went away before the answer
    wattless_batch_inputs                                histogram of inputs per batch run
    wattless_pending_inputs                              inputs admitted and not yet answered

With `wattless serve --workers N` each worker process keeps its own registry: a scrape reads the worker
that answered it (scrape each replica, as behind any load balancer).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServeMetrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    def __init__(self, tiers: list[Any]) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("wattless_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.errors = Counter("wattless_request_errors", "Requests answered with an error", ["endpoint", "reason"],
                              registry=r)
        self.latency = Histogram("wattless_request_latency_seconds", "Arrival to answer", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS_S, registry=r)
        self.inputs = Counter("wattless_inputs", "Inputs each tier ran", ["tier"], registry=r)
        self.escalations = Counter("wattless_escalations", "Inputs escalated past this tier", ["tier"], registry=r)
        self.energy = Counter("wattless_estimated_energy_joules", "Estimated joules spent on each tier's target",
                              ["tier", "target"], registry=r)
        self.energy_total = Counter("wattless_estimated_energy_joules_all_tiers",
                                    "Estimated joules spent, summed over the tiers", registry=r)
        self.cancelled = Counter("wattless_cancelled_requests", "Requests whose client went away", registry=r)
        self.batch = Histogram("wattless_batch_inputs", "Inputs per batch run", buckets=_BATCH_BUCKETS, registry=r)
        self.pending = Gauge("wattless_pending_inputs", "Inputs admitted and not yet answered", registry=r)
        self._tiers = [(t.spec.name, t.spec.target) for t in tiers]
        for name, target in self._tiers:  # every series exists from the first scrape, at zero
            self.inputs.labels(name), self.escalations.labels(name), self.energy.labels(name, target)

    def record_predictions(self, predictions: list[Any]) -> None:
        for p in predictions:
            for t, energy_j in enumerate(p.energy_by_tier_j):
                name, target = self._tiers[t]
                self.inputs.labels(name).inc()
                self.energy.labels(name, target).inc(energy_j)
                if t < p.tier:
                    self.escalations.labels(name).inc()
            self.energy_total.inc(p.energy_j)

    def record_energy(self, tier: int, energy_j: float, inputs: int) -> None:
        name, target = self._tiers[tier]
        self.inputs.labels(name).inc(inputs)
        self.energy.labels(name, target).inc(energy_j)
        self.energy_total.inc(energy_j)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
