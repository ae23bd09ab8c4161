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
import re
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from types import SimpleNamespace
from typing import Any, cast

from connectrpc.code import Code
from connectrpc.request import RequestContext
from google.protobuf.descriptor import ServiceDescriptor

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1.entitlement_service_connect import EntitlementServiceASGIApplication
from entitlements.v1.usage_service_connect import UsageServiceASGIApplication
from service.config import ServiceSettings
from service.entrypoints import http_server
from service.entrypoints.connect_guard import BodyLimits, ConnectGuard, PublicErrors, routes
from service.entrypoints.connect_replies import CONNECT_CODES, GRPC_CODES, PublicError
from service.entrypoints.grpc_api.interceptors import ReadAuthInterceptor, public_status
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
    "connect_handlers",
    "listen_socket",
    "start_configured_http",
    "start_http",
]

log = logging.getLogger(__name__)


def connect_error(exc: Exception, method: str) -> PublicError:
    """The Connect error for what a servicer raised: what a gRPC caller is told
    (interceptors.public_status), in Connect's spelling of the same code."""
    status, message = public_status(exc, method)
    return PublicError(CONNECT_CODES.get(status, Code.INTERNAL), message)


class _Peer:
    """The caller's context a servicer reads (servicers.Context): the caller's address, in
    gRPC's spelling ("ipv4:10.0.0.7:5123"), so per-client stream limits count both protocols
    alike."""

    def __init__(self, client_address: str | None) -> None:
        host, _, port = (client_address or "unknown:0").rpartition(":")
        family = "ipv6" if ":" in host else "ipv4"
        self._peer = f"{family}:[{host}]:{port}" if family == "ipv6" else f"{family}:{host}:{port}"

    def peer(self) -> str:
        return self._peer


Series = Callable[[str, bool], Any]


def _handler(call: Callable[[Any, Context], Any], streaming: bool, series: Series) -> Any:
    """A Connect handler calling the servicer's gRPC method `call`; what it raises is made
    public (connect_error). A stream's messages are counted as gRPC's are."""
    if not streaming:

        async def unary(request: Any, ctx: RequestContext[Any, Any]) -> Any:
            try:
                return await call(request, _Peer(ctx.client_address))
            except Exception as exc:  # broad on purpose: every error made public, as gRPC's
                raise connect_error(exc, ctx.method.name) from None

        return unary

    async def stream(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
        counted = series(f"/{ctx.method.service_name}/{ctx.method.name}", True)
        try:
            async for message in call(request, _Peer(ctx.client_address)):
                counted.sent += 1
                yield message
        except Exception as exc:  # broad on purpose: every error made public, as gRPC's
            raise connect_error(exc, ctx.method.name) from None

    return stream


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def connect_handlers(servicer: object, service: ServiceDescriptor, series: Series) -> Any:
    """The generated Connect protocol of `service` (a snake_case method per RPC, as its ASGI
    application calls them), each answered by the servicer's method of the same RPC — made
    from the service's descriptor, the one table of its methods."""
    return SimpleNamespace(
        **{
            _snake(m.name): _handler(getattr(servicer, m.name), m.server_streaming, series)
            for m in service.methods
        }
    )


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
    series = series_for if metrics else uncounted
    entitlement_service = pb.DESCRIPTOR.services_by_name["EntitlementService"]
    usage_service = usage_pb.DESCRIPTOR.services_by_name["UsageService"]
    entitlements = connect_handlers(servicer, entitlement_service, series)

    def entitlements_app(read_max_bytes: int) -> App:
        app = EntitlementServiceASGIApplication(
            entitlements, interceptors=[PublicErrors()], read_max_bytes=read_max_bytes
        )
        return cast(App, app)

    reads, lists = entitlements_app(READ_MAX_BYTES), entitlements_app(LIST_MAX_BYTES)
    usage_app = cast(
        App,
        UsageServiceASGIApplication(
            connect_handlers(usage, usage_service, series),
            interceptors=[PublicErrors()],
            read_max_bytes=READ_MAX_BYTES,
        ),
    )
    guarded = routes(
        [
            (entitlement_service, lambda name: lists if name in LIST_METHODS else reads),
            (usage_service, lambda name: usage_app),
        ]
    )
    auth = ReadAuthInterceptor(list(read_tokens)) if read_tokens else None
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
