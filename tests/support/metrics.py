"""Reading a Prometheus /metrics page the way Prometheus does (prometheus-client's parser)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One series' value (0 when absent, as Prometheus treats a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpc(method: str, service: str = "entitlements.v1.EntitlementService") -> dict[str, str]:
    return {"grpc_service": service, "grpc_method": method}


def scrape_until(url: str, condition: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """Scrape until `condition` holds (gauges are sampled once a second); the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if condition(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)
