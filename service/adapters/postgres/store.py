"""The PostgreSQL store: plan state, deliveries, grants and the change log.

`Store` is put together from parts split by what they hold: the pool (base.py), applying a
delivery (delivery_store.py, with the SQL it runs in state_sql.py), grants (grant_store.py),
the change log (change_log.py) and operators' reads and housekeeping (operations_store.py).
What it returns and raises is in records.py.
"""

from __future__ import annotations

from service.adapters.postgres.base import CHANGES_CHANNEL
from service.adapters.postgres.change_log import ChangeLogStore
from service.adapters.postgres.grant_store import GrantStore
from service.adapters.postgres.operations_store import (
    SCRATCH_SCHEMA_PATTERN,
    OperationsStore,
    StoreSnapshot,
)
from service.adapters.postgres.records import (
    ApplyResult,
    ChangeBatch,
    DeliverySelector,
    HistoryRow,
    Outcome,
    ReplayResult,
    StoredDelivery,
    StoreUnavailable,
)

__all__ = [
    "CHANGES_CHANNEL",
    "SCRATCH_SCHEMA_PATTERN",
    "ApplyResult",
    "ChangeBatch",
    "DeliverySelector",
    "HistoryRow",
    "Outcome",
    "ReplayResult",
    "Store",
    "StoreSnapshot",
    "StoreUnavailable",
    "StoredDelivery",
]


class Store(OperationsStore, GrantStore, ChangeLogStore):
    """Plan state in PostgreSQL. Construct with `Store.open(dsn, catalog)`."""
