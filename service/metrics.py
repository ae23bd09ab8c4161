"""The service's own Prometheus series (exposed on a metrics endpoint by the server)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

READ_FAILURES = Counter(
    "entitlements_read_failures",
    "Subjects whose stored state could not be resolved; answered with the default plan",
)
WATCH_MESSAGE_FAILURES = Counter(
    "entitlements_watch_message_failures",
    "Watch messages that could not be built from stored state; sent with the default plan",
)
WATCH_LAG = Gauge(
    "entitlements_watch_lag_seconds",
    "How far behind the change stream may be: everything committed earlier has been streamed",
)
WATCH_STREAMS = Gauge("entitlements_watch_streams", "Open WatchEntitlements streams")
