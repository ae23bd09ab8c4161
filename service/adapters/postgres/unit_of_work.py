"""The unit of work on PostgreSQL: one pooled connection, one transaction, the repositories
over it (deliveries, subjects, grants, overrides). Deadlocks and serialisation failures re-run
the work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from service.adapters.postgres.base import Conn, StoreBase
from service.adapters.postgres.deliveries import PgDeliveries
from service.adapters.postgres.grants import PgGrants
from service.adapters.postgres.overrides import PgOverrides
from service.adapters.postgres.subjects import PgSubjects, load_subject_states
from service.application.ports import UnitOfWork
from service.domain.resolution import SubjectState

T = TypeVar("T")


class PgUnitOfWork:
    def __init__(self, conn: Conn, channel: str) -> None:
        self.deliveries = PgDeliveries(conn)
        self.subjects = PgSubjects(conn, channel)
        self.grants = PgGrants(conn)
        self.overrides = PgOverrides(conn)


class PgTransactions(StoreBase):
    """`Transactions` and `StateReader` over the pool."""

    async def run(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        async def in_transaction(conn: Conn) -> T:
            async with conn.transaction():
                return await work(PgUnitOfWork(conn, self._channel))

        return await self._run(in_transaction)

    async def load_states(self, subjects: Sequence[str]) -> dict[str, SubjectState]:
        """The stored state of each subject (unknown subjects get an empty state)."""
        unique = list(dict.fromkeys(subjects))

        async def work(conn: Conn) -> dict[str, SubjectState]:
            return await load_subject_states(conn, unique)

        return await self._run(work)
