"""The receive deadline (grpc_api/receiving.py): one timer for every read cancels those past
their deadline and they are answered DEADLINE_EXCEEDED; a read cancelled by anyone else (the
caller went away, the server is stopping) stays cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from service.entrypoints.grpc_api.receiving import RECEIVE_TIMEOUT_MESSAGE, Receiving

pytestmark = pytest.mark.unit


class Aborted(Exception):
    pass


class Withheld:
    """A call whose request never arrives."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def read(self) -> Any:
        await asyncio.Event().wait()

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise Aborted


async def test_a_withheld_request_is_answered_deadline_exceeded() -> None:
    receiving = Receiving(slots=4, timeout=0.05)
    calls = [Withheld() for _ in range(3)]
    outcomes = await asyncio.gather(
        *(receiving.request(c) for c in calls),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert all(isinstance(o, Aborted) for o in outcomes)
    assert all(
        c.aborted == (grpc.StatusCode.DEADLINE_EXCEEDED, RECEIVE_TIMEOUT_MESSAGE) for c in calls
    )
    assert not receiving._reading  # every read let go of


async def test_a_read_cancelled_by_another_stays_cancelled() -> None:
    receiving = Receiving(slots=4, timeout=30)
    call = Withheld()
    task = asyncio.ensure_future(receiving.request(call))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.aborted is None
    assert not receiving._reading
