"""Fixtures of the repository contract suite: each case runs once per store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support import fresh_database
from tests.support.contract import Backend, open_backend


@pytest.fixture(scope="package")
def contract_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A database of the contract suite's own (each test empties it)."""
    with fresh_database(pg_admin_dsn) as dsn:
        yield dsn


@pytest.fixture(params=["memory", "postgres"])
async def backend(request: pytest.FixtureRequest, contract_dsn: str) -> AsyncIterator[Backend]:
    """Each contract case runs once per store."""
    async with open_backend(request.param, contract_dsn) as opened:
        yield opened
