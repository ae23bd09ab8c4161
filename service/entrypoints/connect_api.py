"""`EntitlementService` and `UsageService` over HTTP (ENTITLEMENTS_HTTP_LISTEN): the Connect
protocol (unary over HTTP/1.1 with JSON or binary protobuf, and the server-streaming Watch),
gRPC-Web and gRPC, served by `connectrpc` on hypercorn in the service's own process and event
loop.

There is no rule here. Each handler calls the very `EntitlementServicer` or `UsageServicer`
method the gRPC server calls; the service's errors reach callers through the one table of the error
interceptor (`ServiceError.code` → status code, same message, same cut), renamed to Connect's
spelling of the same code; the read token is checked by the gRPC read-auth interceptor's own
comparison. So `curl`, a Connect-ES client and grpcurl get the same answers and the same codes.

In front of the connectrpc application stands connect_guard.ConnectGuard: the read token from
the headers before any body byte, the body's size and time, fixed error text and the
grpc_server_* count of every call. hypercorn's own bounds are set in http_server.py.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar, cast

from connectrpc.code import Code
from connectrpc.request import RequestContext

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1.entitlement_service_connect import EntitlementServiceASGIApplication
from entitlements.v1.usage_service_connect import UsageServiceASGIApplication
from service.config import ServiceSettings
from service.entrypoints import http_server
from service.entrypoints.connect_guard import BodyLimits, ConnectGuard, PublicErrors, routes
from service.entrypoints.connect_replies import CONNECT_CODES, GRPC_CODES, PublicError
from service.entrypoints.grpc_api.interceptors import (
    ENTITLEMENT_PREFIX,
    ReadAuthInterceptor,
    public_status,
)
from service.entrypoints.grpc_api.servicers import Context, EntitlementServicer
from service.entrypoints.grpc_api.usage_api import UsageServicer
from service.entrypoints.http_server import (
    DEFAULT_HEADER_TIMEOUT_SECONDS,
    App,
    HttpServer,
    serve_asgi,
)
from service.entrypoints.message_limits import (
    LIST_MAX_BYTES,
    LIST_METHODS,
    READ_MAX_BYTES,
    UNAUTHENTICATED_MESSAGE,
)
from service.entrypoints.rpc_metrics import series_for, uncounted

__all__ = [
    "CONNECT_CODES",
    "GRPC_CODES",
    "UNAUTHENTICATED_MESSAGE",
    "BodyLimits",
    "HttpServer",
    "asgi_app",
    "connect_error",
    "listen_socket",
    "start_configured_http",
    "start_http",
]

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


def connect_error(exc: Exception, method: str) -> PublicError:
    """The Connect error for what a servicer raised: what a gRPC caller is told
    (interceptors.public_status), in Connect's spelling of the same code."""
    status, message = public_status(exc, method)
    return PublicError(CONNECT_CODES.get(status, Code.INTERNAL), message)


class _Peer:
    """The part of a gRPC context the Watch stream reads: the caller's address, in gRPC's
    spelling ("ipv4:10.0.0.7:5123"), so per-client stream limits count both protocols alike."""

    def __init__(self, client_address: str | None) -> None:
        host, _, port = (client_address or "unknown:0").rpartition(":")
        family = "ipv6" if ":" in host else "ipv4"
        self._peer = f"{family}:[{host}]:{port}" if family == "ipv6" else f"{family}:{host}:{port}"

    def peer(self) -> str:
        return self._peer


async def _unary(
    call: Callable[[Req, Context], Awaitable[Res]],
    request: Req,
    ctx: RequestContext[Req, Res],
) -> Res:
    """One unary call of a gRPC servicer's method, its error made public."""
    try:
        return await call(request, cast(Context, _Peer(ctx.client_address)))
    except Exception as exc:
        raise connect_error(exc, ctx.method.name) from None


class ConnectEntitlements:
    """The generated `EntitlementService` protocol, answered by the gRPC servicer. The token
    and the count are the guard's (connect_guard.py); errors become public ones here."""

    def __init__(self, servicer: EntitlementServicer, metrics: bool = True) -> None:
        self._servicer = servicer
        self._series = series_for if metrics else uncounted

    async def can_use(
        self, request: pb.CanUseRequest, ctx: RequestContext[pb.CanUseRequest, pb.CanUseResponse]
    ) -> pb.CanUseResponse:
        return await _unary(self._servicer.CanUse, request, ctx)

    async def get_limits(
        self,
        request: pb.GetLimitsRequest,
        ctx: RequestContext[pb.GetLimitsRequest, pb.GetLimitsResponse],
    ) -> pb.GetLimitsResponse:
        return await _unary(self._servicer.GetLimits, request, ctx)

    async def check_limit(
        self,
        request: pb.CheckLimitRequest,
        ctx: RequestContext[pb.CheckLimitRequest, pb.CheckLimitResponse],
    ) -> pb.CheckLimitResponse:
        return await _unary(self._servicer.CheckLimit, request, ctx)

    async def get_entitlements(
        self,
        request: pb.GetEntitlementsRequest,
        ctx: RequestContext[pb.GetEntitlementsRequest, pb.GetEntitlementsResponse],
    ) -> pb.GetEntitlementsResponse:
        return await _unary(self._servicer.GetEntitlements, request, ctx)

    async def batch_can_use(
        self,
        request: pb.BatchCanUseRequest,
        ctx: RequestContext[pb.BatchCanUseRequest, pb.BatchCanUseResponse],
    ) -> pb.BatchCanUseResponse:
        return await _unary(self._servicer.BatchCanUse, request, ctx)

    async def list_plans(
        self,
        request: pb.ListPlansRequest,
        ctx: RequestContext[pb.ListPlansRequest, pb.ListPlansResponse],
    ) -> pb.ListPlansResponse:
        return await _unary(self._servicer.ListPlans, request, ctx)

    async def watch_entitlements(
        self,
        request: pb.WatchEntitlementsRequest,
        ctx: RequestContext[pb.WatchEntitlementsRequest, pb.WatchEntitlementsResponse],
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        series = self._series(ENTITLEMENT_PREFIX + ctx.method.name, True)
        try:
            peer = cast(Context, _Peer(ctx.client_address))
            async for message in self._servicer.WatchEntitlements(request, peer):
                series.sent += 1
                yield message
        except Exception as exc:
            raise connect_error(exc, ctx.method.name) from None


class ConnectUsage:
    """The generated `UsageService` protocol, answered by the gRPC port's `UsageServicer`
    (usage_api.py): the same use cases, the same validation, the same errors."""

    def __init__(self, servicer: UsageServicer) -> None:
        self._servicer = servicer

    async def consume(
        self,
        request: usage_pb.ConsumeRequest,
        ctx: RequestContext[usage_pb.ConsumeRequest, usage_pb.ConsumeResponse],
    ) -> usage_pb.ConsumeResponse:
        return await _unary(self._servicer.Consume, request, ctx)

    async def report_usage(
        self,
        request: usage_pb.ReportUsageRequest,
        ctx: RequestContext[usage_pb.ReportUsageRequest, usage_pb.ReportUsageResponse],
    ) -> usage_pb.ReportUsageResponse:
        return await _unary(self._servicer.ReportUsage, request, ctx)

    async def reserve(
        self,
        request: usage_pb.ReserveRequest,
        ctx: RequestContext[usage_pb.ReserveRequest, usage_pb.ReserveResponse],
    ) -> usage_pb.ReserveResponse:
        return await _unary(self._servicer.Reserve, request, ctx)

    async def commit_reservation(
        self,
        request: usage_pb.CommitReservationRequest,
        ctx: RequestContext[usage_pb.CommitReservationRequest, usage_pb.CommitReservationResponse],
    ) -> usage_pb.CommitReservationResponse:
        return await _unary(self._servicer.CommitReservation, request, ctx)

    async def release_reservation(
        self,
        request: usage_pb.ReleaseReservationRequest,
        ctx: RequestContext[
            usage_pb.ReleaseReservationRequest, usage_pb.ReleaseReservationResponse
        ],
    ) -> usage_pb.ReleaseReservationResponse:
        return await _unary(self._servicer.ReleaseReservation, request, ctx)

    async def get_usage(
        self,
        request: usage_pb.GetUsageRequest,
        ctx: RequestContext[usage_pb.GetUsageRequest, usage_pb.GetUsageResponse],
    ) -> usage_pb.GetUsageResponse:
        return await _unary(self._servicer.GetUsage, request, ctx)


def asgi_app(
    servicer: EntitlementServicer,
    usage: UsageServicer,
    read_tokens: Sequence[str],
    metrics: bool = True,
    limits: BodyLimits | None = None,
) -> ConnectGuard:
    """The ASGI application serving EntitlementService and UsageService over Connect,
    gRPC-Web and gRPC: connectrpc's, one per service and message cap (the reads' and the list
    methods'; UsageService's are reads'), behind the guard."""
    entitlements = ConnectEntitlements(servicer, metrics)

    def entitlements_app(read_max_bytes: int) -> App:
        app = EntitlementServiceASGIApplication(
            entitlements, interceptors=[PublicErrors()], read_max_bytes=read_max_bytes
        )
        return cast(App, app)

    reads, lists = entitlements_app(READ_MAX_BYTES), entitlements_app(LIST_MAX_BYTES)
    usage_app = cast(
        App,
        UsageServiceASGIApplication(
            ConnectUsage(usage), interceptors=[PublicErrors()], read_max_bytes=READ_MAX_BYTES
        ),
    )
    guarded = routes(
        [
            (
                pb.DESCRIPTOR.services_by_name["EntitlementService"],
                lambda name: lists if name in LIST_METHODS else reads,
            ),
            (usage_pb.DESCRIPTOR.services_by_name["UsageService"], lambda name: usage_app),
        ]
    )
    auth = ReadAuthInterceptor(list(read_tokens)) if read_tokens else None
    series = series_for if metrics else uncounted
    return ConnectGuard(guarded, reads, auth, limits or BodyLimits(), series)


def listen_socket(listen: str, reuse_port: bool = False) -> socket.socket:
    """ENTITLEMENTS_HTTP_LISTEN's listening socket (errors name the variable)."""
    return http_server.listen_socket(listen, "ENTITLEMENTS_HTTP_LISTEN", reuse_port)


async def start_http(
    listen: str,
    servicer: EntitlementServicer,
    usage: UsageServicer,
    read_tokens: Sequence[str],
    grace: float,
    *,
    reuse_port: bool = False,
    metrics: bool = True,
    limits: BodyLimits | None = None,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_SECONDS,
) -> HttpServer:
    """Serve EntitlementService and UsageService on `listen` in this event loop, until
    `stop()`."""
    sock = listen_socket(listen, reuse_port)
    app = asgi_app(servicer, usage, read_tokens, metrics, limits)
    return serve_asgi(app, sock, header_timeout=header_timeout, grace=grace, log=log)


async def start_configured_http(
    settings: ServiceSettings, servicer: EntitlementServicer, usage: UsageServicer
) -> HttpServer:
    """`start_http` on ENTITLEMENTS_HTTP_LISTEN with the service's settings (token, grace,
    body and header bounds)."""
    assert settings.http_listen is not None
    return await start_http(
        settings.http_listen,
        servicer,
        usage,
        settings.read_tokens,
        settings.grace_seconds,
        reuse_port=settings.reuse_port,
        metrics=settings.metrics,
        limits=BodyLimits(settings.http_body_timeout_seconds, settings.http_body_budget_bytes),
        header_timeout=settings.http_header_timeout_seconds,
    )
