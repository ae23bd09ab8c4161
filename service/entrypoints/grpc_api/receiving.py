"""How the gRPC port takes in a request message: a bounded number at once, each within its
method's cap (service/entrypoints/message_limits.py), within a deadline.

grpc core has one server-wide receive limit (grpc.max_receive_message_length, the largest
method cap) and buffers a message up to it as soon as the application asks for it, opening
the stream's flow-control window to whatever size the caller announced. grpc.aio asks for a
unary request before the handler runs, so every stream of every connection could hold one
such buffer, however many Watch streams or withheld messages there are. The error
interceptor therefore registers every method as request-streaming (grpc then reads nothing by
itself) and takes the one request here: at most `slots` messages are being received at once
(a stream waiting for a slot holds no more than its HTTP/2 window), a message that does not
arrive within `timeout` seconds frees its slot, and one larger than its method's cap is
refused before it is parsed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc
from grpc import aio

from service.entrypoints.message_limits import TOO_LARGE_MESSAGE, request_cap

RECEIVE_TIMEOUT_SECONDS = 10.0
UNDECODABLE_MESSAGE = "the request is not a valid message (a string field that is not UTF-8?)"
NO_REQUEST_MESSAGE = "the call carried no request message"
RECEIVE_TIMEOUT_MESSAGE = "the request message did not arrive in time"


class _Refused:
    """Stands for a request the deserializer refused, so the call can be answered cleanly."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message


_LATE = object()  # a read the deadline ended
UNDECODABLE = _Refused(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_MESSAGE)


TOO_LARGE = _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_LARGE_MESSAGE)


def capped_deserializer(
    deserializer: Callable[[bytes], Any] | None, method: str
) -> Callable[[bytes], Any] | None:
    """A deserializer that never raises (grpc would log a traceback and answer UNKNOWN) and
    refuses a message over the method's cap before parsing it (parsing costs a multiple)."""
    if deserializer is None:
        return None
    inner = deserializer
    cap = request_cap(method)

    def deserialize(data: bytes) -> Any:
        if len(data) > cap:
            return TOO_LARGE
        try:
            return inner(data)
        except Exception:  # broad on purpose: whatever a hostile message makes protobuf raise,
            return UNDECODABLE  # it is INVALID_ARGUMENT; no log (a caller must not choose it)

    return deserialize


class Receiving:
    """At most `slots` request messages being received at once, each within `timeout`.

    The deadline is kept by one timer for all reads rather than one per call (asyncio.timeout
    puts a timer in the loop's heap for every call, cancelled a moment later, and the heap
    fills with them): a read still waiting when the timer looks (every quarter of the timeout,
    at most a second) past its deadline is cancelled and answered DEADLINE_EXCEEDED.

    The slots are a counter, not an asyncio.Semaphore: this runs on every call, and
    `async with semaphore` costs three coroutines and a generator on each (README, Benchmarks:
    what the service still adds per CanUse call). A free slot is taken without suspending; with none
    free a call waits in line (first come, first served) and a slot given back goes straight
    to the first in line."""

    def __init__(self, slots: int, timeout: float | None = None) -> None:
        self.slots = slots
        self._free = slots
        self._line: deque[asyncio.Future[None]] = deque()  # calls waiting for a slot
        self._timeout = RECEIVE_TIMEOUT_SECONDS if timeout is None else timeout
        self._every = min(1.0, self._timeout / 4)
        # Reads in progress, with when each is due; the timer takes out those it cancels, so a
        # read cancelled while still in here was cancelled by someone else.
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._watching: asyncio.TimerHandle | None = None

    @property
    def free(self) -> int:
        """Slots free now (for tests)."""
        return self._free

    async def _wait_in_line(self) -> None:
        """Wait until a slot is handed over (it is then this call's)."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed a slot, then cancelled
                self._give_back()
            else:
                self._line.remove(turn)
            raise

    def _give_back(self) -> None:
        """A slot is free: to the first call in line still waiting, else back to the count."""
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1

    def _watch(self) -> None:
        """Cancel the reads past their deadline; look again while any is in progress."""
        self._watching = None
        if not self._reading:
            return
        now = time.monotonic()
        for task in [task for task, due in self._reading.items() if due <= now]:
            del self._reading[task]
            task.cancel()
        self._watching = asyncio.get_running_loop().call_later(self._every, self._watch)

    async def request(self, context: aio.ServicerContext[Any, Any]) -> Any:
        """The call's one request message; aborts the call when it is refused, missing or
        late. (One coroutine, with the read inline: this runs on every call.)"""
        if self._free > 0 and not self._line:
            self._free -= 1
        else:
            await self._wait_in_line()
        try:
            task = asyncio.current_task()
            assert task is not None
            self._reading[task] = time.monotonic() + self._timeout  # the loop's clock
            if self._watching is None:
                self._watching = asyncio.get_running_loop().call_later(self._every, self._watch)
            try:
                request = await context.read()
            except asyncio.CancelledError:
                if task in self._reading:  # not the timer's
                    raise
                task.uncancel()
                request = _LATE
            finally:
                self._reading.pop(task, None)
        finally:
            self._give_back()
        if request is _LATE:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, RECEIVE_TIMEOUT_MESSAGE)
        if isinstance(request, _Refused):
            await context.abort(request.code, request.message)
        if request is aio.EOF:
            try:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, NO_REQUEST_MESSAGE)
            except aio.AbortError:
                raise
            except Exception:  # broad on purpose: whatever grpc raises, the call is over
                # No status can be sent: grpc ended the call itself (a message over the
                # receive limit, answered RESOURCE_EXHAUSTED; or the caller went away).
                # Nothing to log: a caller must not choose the log volume.
                raise asyncio.CancelledError from None
        return request
