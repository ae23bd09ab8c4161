"""An ASGI application on hypercorn in the running event loop, with hypercorn's own bounds set:
the Connect listener (connect_api.py) and the metrics listener (metrics_http.py) share it.

What hypercorn bounds here (per connection, whatever the caller sends):
* the request line and headers: 16 KiB (HTTP/1.1 `h11_max_incomplete_size`; HTTP/2 header
  list and inbound frame size alike), received within `header_timeout` of the connection
  opening or of the previous response (hypercorn's idle timer, `keep_alive_timeout`);
* request body chunks queued for the application: `max_app_queue_size` (4) chunks of at most
  64 KiB; past that hypercorn stops reading the socket (TCP back-pressure);
* HTTP/2: 100 concurrent streams per connection.
hypercorn's `read_timeout` stays off: it would cut a Watch stream whose caller is quiet. The
time to receive a body is bounded by the Connect guard (connect_guard.py) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

from hypercorn.asyncio import serve
from hypercorn.config import Config

from entitlements_common.settings import ConfigError
from service.entrypoints.launch import PortInUse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADER_BYTES = 16 * 1024
APP_QUEUE_CHUNKS = 4
H2_MAX_STREAMS = 100
H2_FRAME_BYTES = 16 * 1024  # HTTP/2's minimum maximum frame size
BACKLOG = 1024
DEFAULT_HEADER_TIMEOUT_SECONDS = 5.0
DRAIN_SECONDS = 5.0


@dataclass
class HttpServer:
    """A running listener; `stop()` lets calls in flight finish for `grace` seconds."""

    port: int
    _stop: asyncio.Event
    _task: asyncio.Task[None]

    async def stop(self, grace: float) -> None:
        self._stop.set()
        try:
            async with asyncio.timeout(grace + 1):
                await self._task
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def listen_socket(
    listen: str, variable: str, reuse_port: bool = False, *, in_use: bool = False
) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a ConfigError naming
    `variable`; `in_use`: PortInUse (exit code 4) when another process holds the port."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # --workers: every worker binds the same port on purpose
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
    except (OSError, ValueError) as exc:
        if in_use and isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            raise PortInUse(listen) from None
        raise ConfigError(
            f"{variable}={listen}: cannot listen there ({exc.__class__.__name__})"
        ) from None
    sock.setblocking(False)
    return sock


def bounded_config(fd: int, header_timeout: float, grace: float, log: logging.Logger) -> Config:
    """hypercorn's Config with every bound this module's docstring lists."""
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.accesslog = None
    config.errorlog = log  # one log line per event, through the service's logging
    config.graceful_timeout = grace
    config.keep_alive_timeout = header_timeout
    config.read_timeout = None
    config.h11_max_incomplete_size = HEADER_BYTES
    config.h2_max_header_list_size = HEADER_BYTES
    config.h2_max_inbound_frame_size = H2_FRAME_BYTES
    config.h2_max_concurrent_streams = H2_MAX_STREAMS
    config.max_app_queue_size = APP_QUEUE_CHUNKS
    config.backlog = BACKLOG
    return config


def serve_asgi(
    app: App,
    sock: socket.socket,
    *,
    header_timeout: float,
    grace: float,
    log: logging.Logger,
) -> HttpServer:
    """Serve `app` on the listening `sock` (closed here; hypercorn gets a duplicate) in the
    running loop, until `stop()`."""
    with sock:
        port = int(sock.getsockname()[1])
        fd = os.dup(sock.fileno())  # hypercorn owns (and closes) the descriptor it is given
    config = bounded_config(fd, header_timeout, grace, log)
    stop = asyncio.Event()
    # hypercorn's own ASGI types are TypedDicts; ours are plain mappings of the same events.
    task = asyncio.create_task(serve(cast(Any, drained(app)), config, shutdown_trigger=stop.wait))
    return HttpServer(port, stop, task)


async def lifespan(receive: Receive, send: Send) -> None:
    """ASGI lifespan, answered: nothing served here needs a start-up or a shutdown step."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


_draining: set[asyncio.Task[None]] = set()


def drained(app: App) -> App:
    """`app`, leaving hypercorn no request body queued when its response ends.

    hypercorn (0.18) hands body chunks to the application through a queue of
    `max_app_queue_size`. An application that answers without reading the whole body (a
    refused token, a body over its cap) leaves that queue full, and when the response ends
    hypercorn puts `http.disconnect` into it from within the final send: that send then waits
    forever, the connection stays in CLOSE_WAIT and its buffers are never freed. So from the
    final send on, what is left of the body is read and dropped until the disconnect (hypercorn
    closes a connection whose request was not read whole), for at most DRAIN_SECONDS."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        done = False  # the body was read whole, or the caller is gone
        drainer: asyncio.Task[None] | None = None

        def note(message: Message) -> Message:
            nonlocal done
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        async def tracked_receive() -> Message:
            return note(await receive())

        async def drain() -> None:
            async with asyncio.timeout(DRAIN_SECONDS):
                while not done:
                    note(await receive())

        async def tracked_send(message: Message) -> None:
            nonlocal drainer
            final = (
                message["type"] == "http.response.body" and not message.get("more_body", False)
            ) or (
                message["type"] == "http.response.trailers"
                and not message.get("more_trailers", False)
            )
            if final and not done and drainer is None:
                drainer = asyncio.create_task(drain())
            await send(message)

        try:
            await app(scope, tracked_receive, tracked_send)
        finally:
            if drainer is None and not done:  # no response: hypercorn answers 500 next
                drainer = asyncio.create_task(drain())
            if drainer is not None:
                _draining.add(drainer)
                drainer.add_done_callback(_forget)

    return wrapped


def _forget(task: asyncio.Task[None]) -> None:
    _draining.discard(task)
    if not task.cancelled():
        task.exception()  # a timeout or a closed connection: nothing to report
