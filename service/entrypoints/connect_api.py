"""`EntitlementService` over HTTP (ENTITLEMENTS_HTTP_LISTEN): the Connect protocol (unary over
HTTP/1.1 with JSON or binary protobuf, and the server-streaming Watch), gRPC-Web and gRPC,
served by `connectrpc` on hypercorn in the service's own process and event loop.

There is no rule here. Each handler calls the very `EntitlementServicer` method the gRPC
server calls; the service's errors reach callers through the one table of the error
interceptor (`ServiceError.code` → status code, same message, same cut), renamed to Connect's
spelling of the same code; the read token is checked by the gRPC read-auth interceptor's own
comparison. So `curl`, a Connect-ES client and grpcurl get the same answers and the same codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from hypercorn.asyncio import serve
from hypercorn.config import Config

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1.entitlement_service_connect import EntitlementServiceASGIApplication
from entitlements_common.settings import ConfigError
from service.entrypoints.grpc_api.interceptors import (
    ENTITLEMENT_PREFIX,
    ReadAuthInterceptor,
    public_status,
)
from service.entrypoints.grpc_api.servicers import Context, EntitlementServicer
from service.entrypoints.rpc_metrics import series_for, uncounted

log = logging.getLogger(__name__)

# gRPC's status codes in Connect's spelling: the same codes, one name differs (CANCELLED).
CONNECT_CODES: Mapping[grpc.StatusCode, Code] = {
    **{s: Code[s.name] for s in grpc.StatusCode if s.name in Code.__members__},
    grpc.StatusCode.CANCELLED: Code.CANCELED,
}
GRPC_CODES: Mapping[Code, grpc.StatusCode] = {c: s for s, c in CONNECT_CODES.items()}
UNAUTHENTICATED_MESSAGE = "missing or invalid credentials"

Req = TypeVar("Req")
Res = TypeVar("Res")


def connect_error(exc: Exception, method: str) -> ConnectError:
    """The Connect error for what a servicer raised: what a gRPC caller is told
    (interceptors.public_status), in Connect's spelling of the same code."""
    status, message = public_status(exc, method)
    return ConnectError(CONNECT_CODES.get(status, Code.INTERNAL), message)


def _grpc_code(error: ConnectError) -> grpc.StatusCode:
    """The gRPC name of a Connect error's code (what the grpc_server_* series count)."""
    return GRPC_CODES.get(error.code, grpc.StatusCode.UNKNOWN)


class _Peer:
    """The part of a gRPC context the Watch stream reads: the caller's address, in gRPC's
    spelling ("ipv4:10.0.0.7:5123"), so per-client stream limits count both protocols alike."""

    def __init__(self, client_address: str | None) -> None:
        host, _, port = (client_address or "unknown:0").rpartition(":")
        family = "ipv6" if ":" in host else "ipv4"
        self._peer = f"{family}:[{host}]:{port}" if family == "ipv6" else f"{family}:{host}:{port}"

    def peer(self) -> str:
        return self._peer


class ConnectEntitlements:
    """The generated `EntitlementService` protocol, answered by the gRPC servicer."""

    def __init__(
        self, servicer: EntitlementServicer, read_tokens: Sequence[str], metrics: bool = True
    ) -> None:
        self._servicer = servicer
        self._auth = ReadAuthInterceptor(list(read_tokens)) if read_tokens else None
        self._series = series_for if metrics else uncounted

    def _authorize(self, ctx: RequestContext[Any, Any]) -> None:
        if self._auth is None:
            return
        if not self._auth.accepts(ctx.request_headers.get("authorization")):
            log.warning(
                "rejected %s%s: missing or wrong bearer token", ENTITLEMENT_PREFIX, ctx.method.name
            )
            raise ConnectError(Code.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

    async def _unary(
        self,
        call: Callable[[Req, Context], Awaitable[Res]],
        request: Req,
        ctx: RequestContext[Req, Res],
    ) -> Res:
        # Counted in the same grpc_server_* series as the gRPC port's calls of the method.
        series = self._series(ENTITLEMENT_PREFIX + ctx.method.name, False)
        started = series.start()
        code: grpc.StatusCode | None = None
        try:
            self._authorize(ctx)
            return await call(request, cast(Context, _Peer(ctx.client_address)))
        except ConnectError as exc:
            code = _grpc_code(exc)
            raise
        except Exception as exc:
            error = connect_error(exc, ctx.method.name)
            code = _grpc_code(error)
            raise error from None
        finally:
            series.done(code, started)

    async def can_use(
        self, request: pb.CanUseRequest, ctx: RequestContext[pb.CanUseRequest, pb.CanUseResponse]
    ) -> pb.CanUseResponse:
        return await self._unary(self._servicer.CanUse, request, ctx)

    async def get_limits(
        self,
        request: pb.GetLimitsRequest,
        ctx: RequestContext[pb.GetLimitsRequest, pb.GetLimitsResponse],
    ) -> pb.GetLimitsResponse:
        return await self._unary(self._servicer.GetLimits, request, ctx)

    async def check_limit(
        self,
        request: pb.CheckLimitRequest,
        ctx: RequestContext[pb.CheckLimitRequest, pb.CheckLimitResponse],
    ) -> pb.CheckLimitResponse:
        return await self._unary(self._servicer.CheckLimit, request, ctx)

    async def get_entitlements(
        self,
        request: pb.GetEntitlementsRequest,
        ctx: RequestContext[pb.GetEntitlementsRequest, pb.GetEntitlementsResponse],
    ) -> pb.GetEntitlementsResponse:
        return await self._unary(self._servicer.GetEntitlements, request, ctx)

    async def batch_can_use(
        self,
        request: pb.BatchCanUseRequest,
        ctx: RequestContext[pb.BatchCanUseRequest, pb.BatchCanUseResponse],
    ) -> pb.BatchCanUseResponse:
        return await self._unary(self._servicer.BatchCanUse, request, ctx)

    async def list_plans(
        self,
        request: pb.ListPlansRequest,
        ctx: RequestContext[pb.ListPlansRequest, pb.ListPlansResponse],
    ) -> pb.ListPlansResponse:
        return await self._unary(self._servicer.ListPlans, request, ctx)

    async def watch_entitlements(
        self,
        request: pb.WatchEntitlementsRequest,
        ctx: RequestContext[pb.WatchEntitlementsRequest, pb.WatchEntitlementsResponse],
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        series = self._series(ENTITLEMENT_PREFIX + ctx.method.name, True)
        started = series.start()
        code: grpc.StatusCode | None = None
        try:
            self._authorize(ctx)
            peer = cast(Context, _Peer(ctx.client_address))
            async for message in self._servicer.WatchEntitlements(request, peer):
                series.sent += 1
                yield message
        except ConnectError as exc:
            code = _grpc_code(exc)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            error = connect_error(exc, ctx.method.name)
            code = _grpc_code(error)
            raise error from None
        finally:
            series.done(code, started)


def asgi_app(
    servicer: EntitlementServicer, read_tokens: Sequence[str], metrics: bool = True
) -> EntitlementServiceASGIApplication:
    """The ASGI application serving EntitlementService over Connect, gRPC-Web and gRPC."""
    return EntitlementServiceASGIApplication(ConnectEntitlements(servicer, read_tokens, metrics))


@dataclass
class HttpServer:
    """The running HTTP listener; `stop()` lets calls in flight finish for `grace` seconds."""

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


def listen_socket(listen: str, reuse_port: bool = False) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a ConfigError naming
    ENTITLEMENTS_HTTP_LISTEN."""
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
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"ENTITLEMENTS_HTTP_LISTEN={listen}: cannot listen there ({exc.__class__.__name__})"
        ) from None
    sock.setblocking(False)
    return sock


async def start_http(
    listen: str,
    servicer: EntitlementServicer,
    read_tokens: Sequence[str],
    grace: float,
    *,
    reuse_port: bool = False,
    metrics: bool = True,
) -> HttpServer:
    """Serve EntitlementService on `listen` in this event loop, until `stop()`."""
    with listen_socket(listen, reuse_port) as sock:
        port = int(sock.getsockname()[1])
        fd = os.dup(sock.fileno())  # hypercorn owns (and closes) the descriptor it is given
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.accesslog = None
    config.errorlog = log  # one log line per event, through the service's logging
    config.graceful_timeout = grace
    config.keep_alive_timeout = 75.0
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(asgi_app(servicer, read_tokens, metrics), config, shutdown_trigger=stop.wait)
    )
    return HttpServer(port, stop, task)
