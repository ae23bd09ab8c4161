"""Prometheus metrics of the gateway, on a registry of its own (one per app)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class GatewayMetrics:
    registry: CollectorRegistry
    deliveries: Counter
    verification_failures: Counter
    forward_seconds: Histogram

    @classmethod
    def create(cls) -> GatewayMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            deliveries=Counter(
                "webhook_deliveries",
                "Webhook deliveries answered, by outcome and HTTP status.",
                ["outcome", "status"],
                registry=registry,
            ),
            verification_failures=Counter(
                "webhook_verification_failures",
                "Deliveries refused before forwarding, by reason.",
                ["reason"],
                registry=registry,
            ),
            forward_seconds=Histogram(
                "webhook_forward_seconds",
                "Time to forward a verified delivery to the service and get its answer.",
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                registry=registry,
            ),
        )
