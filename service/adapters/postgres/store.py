"""The PostgreSQL adapter put together: one pool serving the unit of work and state reads
(unit_of_work.py), the change log (change_log.py) and operators' reads and housekeeping
(operations.py) and the usage of metered limits (usage.py). Open with `Store.open(dsn)`: it
connects and migrates."""

from __future__ import annotations

from service.adapters.postgres.base import CHANGES_CHANNEL
from service.adapters.postgres.change_log import ChangeLogStore
from service.adapters.postgres.notifications import NotifyStore
from service.adapters.postgres.operations import (
    SCRATCH_SCHEMA_PATTERN,
    OperationsStore,
    StoreSnapshot,
)
from service.adapters.postgres.unit_of_work import PgTransactions
from service.adapters.postgres.usage import UsageStore

__all__ = ["CHANGES_CHANNEL", "SCRATCH_SCHEMA_PATTERN", "Store", "StoreSnapshot"]


class Store(OperationsStore, ChangeLogStore, PgTransactions, UsageStore, NotifyStore):
    """Plan state in PostgreSQL: implements Transactions, StateReader, Operations, ChangeLog,
    UsageReader."""
