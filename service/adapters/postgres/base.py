"""The pool every part of the store runs its work on (see StoreBase)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self, TypeVar

import asyncpg

from service.adapters.postgres.connect_errors import connect_explained
from service.adapters.postgres.migrate import migrate, require_migrated
from service.application.ports import StoreUnavailable

T = TypeVar("T")
if TYPE_CHECKING:
    Conn = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
else:
    Conn = asyncpg.pool.PoolConnectionProxy

CHANGES_CHANNEL = "entitlements_changed"

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,
)
_PING_FAILURES: tuple[type[BaseException], ...] = (StoreUnavailable, *UNAVAILABLE_ERRORS)
_RETRYABLE_TX_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


async def _no_reset(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Skip asyncpg's per-release reset round trip: this store keeps no session state
    (no session locks, cursors, LISTEN or SET on pooled connections)."""


@dataclass(frozen=True)
class PoolStats:
    in_use: int
    open: int
    max: int


class StoreBase:
    """The connection pool and its rules: unavailability becomes `StoreUnavailable`, deadlocks
    and serialisation failures are retried. The store's parts build on this."""

    def __init__(self, pool: asyncpg.Pool, dsn: str = "", channel: str = CHANGES_CHANNEL) -> None:
        self._pool = pool
        self.dsn = dsn
        self._channel = channel
        self.calls = 0  # units of database work (pooled-connection uses); tests count them

    @classmethod
    async def open(
        cls, dsn: str, *, min_size: int = 2, max_size: int = 10, migrate_schema: bool = True
    ) -> Self:
        """Connect and migrate (or, with `migrate_schema=False`, refuse a database that lacks a
        migration: `SchemaBehind`). A first connection that fails raises `StoreUnavailable`, or
        `DatabaseUrlInvalid` for a URL that cannot be read, saying why (connect_errors.py)."""
        pool = await connect_explained(
            lambda: asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=10,
                timeout=5,
                reset=_no_reset,
            ),
            dsn,
        )
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                if migrate_schema:
                    await migrate(conn)
                else:
                    await require_migrated(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, dsn)

    async def close(self) -> None:
        await self._pool.close()

    def pool_stats(self) -> PoolStats:
        """Connections lent out, open and allowed (for the pool gauges)."""
        size = self._pool.get_size()
        return PoolStats(size - self._pool.get_idle_size(), size, self._pool.get_max_size())

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        try:
            async with self._pool.acquire(timeout=5) as conn:
                yield conn
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(f"database unavailable ({type(exc).__name__})") from exc

    async def _run(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `work` on a pooled connection; retry deadlocks/serialisation failures."""
        self.calls += 1
        for attempt in range(5):
            try:
                async with self._connection() as conn:
                    return await work(conn)
            except _RETRYABLE_TX_ERRORS:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def ping(self) -> bool:
        try:
            async with self._connection() as conn:
                await conn.fetchval("SELECT 1", timeout=2)
            return True
        except _PING_FAILURES:
            return False
