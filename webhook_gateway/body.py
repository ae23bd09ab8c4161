"""Reading a request body inside the budget: reserve first, then read, never past the limit.

A declared Content-Length is reserved whole and read into one buffer of that size (one block
the allocator can hand back, rather than many scattered chunks); a chunked body is reserved a
step ahead of what has been read. Whatever goes wrong is a `BodyRefused` with a fixed message.
"""

from __future__ import annotations

from contextlib import suppress

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from webhook_gateway.budget import REQUEST_OVERHEAD_BYTES, Reservation

READ_STEP = 64 * 1024


class BodyRefused(Exception):
    """The body was not taken; `reason` is a metric label, the message a fixed text."""

    def __init__(self, reason: str, status: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


TOO_LARGE = ("too_large", 413, "body too large")
OVER_BUDGET = ("over_budget", 503, "too many deliveries in progress, retry")
INCOMPLETE = ("incomplete", 400, "body incomplete")


async def read_body(request: web.Request, limit: int, reservation: Reservation) -> bytes:
    """The raw body of at most `limit` bytes, reserved in `reservation` before it is read."""
    try:
        if request.content_length is not None:
            return await _read_declared(request, request.content_length, limit, reservation)
        return await _read_chunked(request, limit, reservation)
    except (ConnectionError, RequestPayloadError, HttpProcessingError):
        raise BodyRefused(*INCOMPLETE) from None


async def _read_declared(
    request: web.Request, length: int, limit: int, reservation: Reservation
) -> bytes:
    if length > limit:
        raise BodyRefused(*TOO_LARGE)
    if not reservation.take(length + REQUEST_OVERHEAD_BYTES, length):
        raise BodyRefused(*OVER_BUDGET)
    buffer = bytearray(length)
    got = 0
    with memoryview(buffer) as view:
        while got < length:
            chunk = await request.content.read(min(READ_STEP, length - got))
            if not chunk:
                raise BodyRefused(*INCOMPLETE)
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
    return bytes(buffer)


async def _read_chunked(request: web.Request, limit: int, reservation: Reservation) -> bytes:
    buffer = bytearray()
    while True:
        wanted = len(buffer) + READ_STEP + REQUEST_OVERHEAD_BYTES - reservation.held
        if wanted > 0 and not reservation.take(wanted, len(buffer) + READ_STEP):
            raise BodyRefused(*OVER_BUDGET)
        chunk = await request.content.read(READ_STEP)
        if not chunk:
            return bytes(buffer)
        if len(buffer) + len(chunk) > limit:
            raise BodyRefused(*TOO_LARGE)
        buffer += chunk


def discard_buffered(request: web.Request) -> None:
    """Drop what aiohttp already buffered of a body that will not be read: a refused
    connection's objects may wait for the garbage collector, its body bytes need not."""
    with suppress(Exception):
        while request.content.read_nowait(READ_STEP):
            pass
