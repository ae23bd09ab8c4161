"""The service's Prometheus series, on prometheus-client's default registry.

`/metrics` on ENTITLEMENTS_METRICS_LISTEN serves them (service/entrypoints/metrics_http.py).
With `--workers N` every worker writes them to PROMETHEUS_MULTIPROC_DIR and the supervisor
serves one scrape of all: each gauge says how its workers' values add up (`multiprocess_mode`,
ignored by a single process).

The RPC series are the standard gRPC server ones (the names Grafana's gRPC dashboards expect).
Nothing here is touched per call: RPCs are counted in plain numbers and published, and gauges
set, by a sampler once a second (entrypoints/metrics_http.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from service.domain.deliveries import Outcome

# ---- per RPC (counted by entrypoints/rpc_metrics.py) ------------------------------------------
RPC_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
RPC_STARTED = Counter("grpc_server_started", "RPCs started on the server.", RPC_LABELS)
RPC_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, by status code.",
    (*RPC_LABELS, "grpc_code"),
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status (a stream: its whole life).",
    RPC_LABELS,
    buckets=RPC_SECONDS_BUCKETS,
)
RPC_MESSAGES_SENT = Counter("grpc_server_msg_sent", "Messages sent on server streams.", RPC_LABELS)

# ---- the process (entrypoints/garbage_collection.py) ------------------------------------------
GC_PAUSE_SECONDS = Histogram(
    "entitlements_gc_pause_seconds",
    "Pauses of Python's cycle collector, by generation (0: young; 2: full).",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)

# ---- plan state and reads --------------------------------------------------------------------
DELIVERIES = Counter(
    "entitlements_deliveries", "Billing deliveries answered, by outcome.", ["outcome"]
)
UNKNOWN_PLANS = Counter(
    "entitlements_unknown_plan_deliveries",
    "Deliveries naming a plan slug the catalog lacks (given the default plan, or held back "
    "under ENTITLEMENTS_UNKNOWN_PLAN=keep; noted on them, listed by `entitlements status`).",
)
READ_FAILURES = Counter(
    "entitlements_read_failures",
    "Subjects whose stored state could not be resolved; answered with the default plan",
)
CACHE_HITS = Counter("entitlements_cache_hits", "Reads answered from the local cache.")
CACHE_MISSES = Counter(
    "entitlements_cache_misses", "Reads the local cache could not answer (loaded from PostgreSQL)."
)
CACHE_SUBJECTS = Gauge(
    "entitlements_cache_subjects", "Subjects held in the local cache.", multiprocess_mode="livesum"
)
CACHE_LIVE = Gauge(
    "entitlements_cache_live",
    "1 while the cache may answer (its change listener is connected), else 0.",
    multiprocess_mode="livemin",
)

# ---- the change stream -----------------------------------------------------------------------
WATCH_MESSAGE_FAILURES = Counter(
    "entitlements_watch_message_failures",
    "Watch messages that could not be built from stored state; sent with the default plan",
)
WATCH_LAG = Gauge(
    "entitlements_watch_lag_seconds",
    "How far behind the change stream may be: everything committed earlier has been streamed",
    multiprocess_mode="livemax",
)
WATCH_STREAMS = Gauge(
    "entitlements_watch_streams", "Open WatchEntitlements streams", multiprocess_mode="livesum"
)
LISTENER_CONNECTED = Gauge(
    "entitlements_change_listener_connected",
    "1 while the NOTIFY listener holds its PostgreSQL session, else 0.",
    multiprocess_mode="livemin",
)

# ---- the database pool -----------------------------------------------------------------------
POOL_IN_USE = Gauge(
    "entitlements_db_pool_connections_in_use",
    "Pooled PostgreSQL connections lent out right now.",
    multiprocess_mode="livesum",
)
POOL_OPEN = Gauge(
    "entitlements_db_pool_connections_open",
    "Pooled PostgreSQL connections open (idle and in use).",
    multiprocess_mode="livesum",
)
POOL_MAX = Gauge(
    "entitlements_db_pool_connections_max",
    "The most connections the pool may open.",
    multiprocess_mode="livesum",
)

# ---- outbound change notifications (application/notify_delivery.py) ----------------------------
NOTIFY_ATTEMPTS = Counter(
    "entitlements_notification_attempts",
    "Change-notification POSTs by outcome (delivered, retry, gone = 410) and deliveries given "
    "up (failed).",
    ["outcome"],
)
NOTIFY_OLDEST_PENDING = Gauge(
    "entitlements_notification_oldest_pending_seconds",
    "Age of the oldest change notification not yet delivered (0: none pending).",
    multiprocess_mode="livemax",
)


class PrometheusEvents:
    """The application's OperatorEvents, counted in the series above."""

    def delivery_answered(self, outcome: Outcome) -> None:
        DELIVERIES.labels(outcome.name).inc()

    def unknown_plan(self) -> None:
        UNKNOWN_PLANS.inc()

    def read_failed(self) -> None:
        READ_FAILURES.inc()

    def watch_message_failed(self) -> None:
        WATCH_MESSAGE_FAILURES.inc()

    def notification_attempt(self, outcome: str, count: int = 1) -> None:
        NOTIFY_ATTEMPTS.labels(outcome).inc(count)
