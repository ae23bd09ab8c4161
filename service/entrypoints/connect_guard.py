"""What stands in front of the connectrpc application on ENTITLEMENTS_HTTP_LISTEN: the read
token, the size and time of request bodies, the fixed public text of every error, and the
grpc_server_* count of every call (rpc_metrics.py), whatever the outcome.

In order, for a POST to a method of EntitlementService or UsageService:
1. the read token (ENTITLEMENTS_READ_TOKEN) is checked from the headers, before any byte of the
   body is read (the gRPC port's own comparison, `ReadAuthInterceptor.accepts`);
2. a declared Content-Length over the method's cap (message_limits.py) is refused at once;
3. body bytes are counted as they arrive against that cap and, while more is awaited, against
   a per-process budget of body bytes in flight; the whole body must arrive within
   `body_timeout` seconds of the headers;
4. whatever the connectrpc library answers with text of its own (a JSON or protobuf parser's
   message, a decompressor's, a header's echo) is answered with fixed text instead: inside a
   call by the `PublicErrors` interceptor (`on_end` may replace the error), before a call
   starts by rewriting the error response on its way out (connect_replies.Responses).
A refusal of steps 1-3 is a Connect error in the caller's protocol (Connect JSON with the
Connect HTTP status, a Connect end-of-stream message, or a gRPC/gRPC-Web trailers-only
response); each is counted under its code and logged through RefusalLog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.request import RequestContext
from google.protobuf.descriptor import ServiceDescriptor

from service.entrypoints.connect_replies import (
    CALL,
    Call,
    PublicError,
    Reply,
    Responses,
    grpc_code,
    public_error,
    refusals,
)
from service.entrypoints.grpc_api.interceptors import ReadAuthInterceptor
from service.entrypoints.http_server import App, Message, Receive, Scope, Send, lifespan
from service.entrypoints.message_limits import (
    BODY_TIMEOUT_MESSAGE,
    BUSY_MESSAGE,
    NEEDS_HTTP2_MESSAGE,
    TOO_LARGE_MESSAGE,
    UNAUTHENTICATED_MESSAGE,
    request_cap,
)
from service.entrypoints.rpc_metrics import RpcSeries

# Bytes a request body may carry beyond its message: the 5-byte envelope of the streaming
# protocols (one message per request here).
ENVELOPE_BYTES = 5


class PublicErrors:
    """A connectrpc metadata interceptor, first in the chain: its `on_end` sees every call's
    outcome (the handler's, the decoder's, the decompressor's, a deadline) and replaces any
    error that is not ours with the fixed text of its code; it notes the outcome for the
    count."""

    async def on_start(self, ctx: RequestContext[Any, Any]) -> None:
        return None

    async def on_end(
        self, token: None, ctx: RequestContext[Any, Any], error: Exception | None
    ) -> None:
        public = None if error is None else public_error(error)
        call = CALL.get()
        if call is not None:
            call.ended = True
            call.code = None if public is None else grpc_code(public)
            call.message = None if public is None else public.message
        if public is not None and public is not error:
            raise public


@dataclass(frozen=True)
class BodyLimits:
    """Bounds on request bodies: seconds to receive one, bytes in flight in this process."""

    timeout: float = 10.0
    budget: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class Route:
    """One guarded method: its bare name (for logs), whether it streams its answer, the
    largest request message it takes (message_limits.request_cap), the connectrpc app for it."""

    name: str
    streaming: bool
    cap: int
    app: App


def routes(
    services: Sequence[tuple[ServiceDescriptor, Callable[[str], App]]],
) -> dict[str, Route]:
    """Every method of `services` by its path ("/package.Service/Method"), each with its cap
    and the app its service's factory gives for that method's name."""
    found: dict[str, Route] = {}
    for service, app_for in services:
        for m in service.methods:
            path = f"/{service.full_name}/{m.name}"
            found[path] = Route(m.name, m.server_streaming, request_cap(path), app_for(m.name))
    return found


class ConnectGuard:
    """The ASGI application in front of connectrpc's (see the module docstring)."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        fallback: App,
        auth: ReadAuthInterceptor | None,
        limits: BodyLimits,
        series: Callable[[str, bool], RpcSeries],
    ) -> None:
        self._routes = routes  # by path
        self._fallback = fallback  # anything else: connectrpc's 404 / 405, uncounted
        self._auth = auth
        self._limits = limits
        self._series = series
        self.in_flight = 0  # body bytes received and not yet handed on whole

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close"})
            return
        route = self._routes.get(scope["path"])
        if route is None or scope["method"] != "POST":
            await self._fallback(scope, receive, send)  # connectrpc's 404 / 405, uncounted
            return
        series = self._series(scope["path"], route.streaming)
        started = series.start()
        call = Call()
        token = CALL.set(call)
        try:
            await self._guarded(route, scope, receive, send, call)
        finally:
            CALL.reset(token)
            if call.ended:
                code = call.code
            elif call.answered is not None:
                code = None if call.answered is grpc.StatusCode.OK else call.answered
            else:
                code = grpc.StatusCode.CANCELLED
            series.done(code, started)

    async def _guarded(
        self, route: Route, scope: Scope, receive: Receive, send: Send, call: Call
    ) -> None:
        name = route.name
        headers = _headers(scope)
        reply = Reply(send, headers.get("content-type", ""), call)
        if self._auth is not None and not self._auth.accepts(headers.get("authorization")):
            refusals.refused("connect: missing or wrong bearer token", name)
            await reply.error(Code.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
            return
        if reply.family == "grpc" and "http.response.trailers" not in scope.get("extensions", {}):
            refusals.refused("connect: gRPC over HTTP/1.1", name)
            await reply.error(Code.UNIMPLEMENTED, NEEDS_HTTP2_MESSAGE)
            return
        cap = route.cap + ENVELOPE_BYTES
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            refusals.refused("connect: declared body over the method's cap", name)
            await reply.error(Code.RESOURCE_EXHAUSTED, TOO_LARGE_MESSAGE)
            return
        body = _Body(self, receive, cap, asyncio.get_running_loop().time())
        try:
            await route.app(scope, body.receive, Responses(send, call).send)
        except Exception as exc:  # connectrpc re-raises what is not a ConnectError
            if not call.started:
                error = public_error(exc)
                await reply.error(error.code, error.message)
        finally:
            body.release()


class _Body:
    """One request's receive(), counting its body against the cap, the budget and the
    deadline; after the body, receive() is passed through (connectrpc watches it for a
    disconnect)."""

    def __init__(self, guard: ConnectGuard, receive: Receive, cap: int, started: float) -> None:
        self._guard = guard
        self._receive = receive
        self._cap = cap
        self._deadline = started + guard._limits.timeout
        self._received = 0
        self._held = 0
        self._done = False

    async def receive(self) -> Message:
        if self._done:
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            refusals.refused("connect: request body not received in time")
            raise PublicError(Code.DEADLINE_EXCEEDED, BODY_TIMEOUT_MESSAGE) from None
        if message["type"] != "http.request":
            self.release()
            return message
        size = len(message.get("body", b""))
        self._received += size
        if self._received > self._cap:
            refusals.refused("connect: body over the method's cap")
            raise PublicError(Code.RESOURCE_EXHAUSTED, TOO_LARGE_MESSAGE)
        if not message.get("more_body", False):
            self.release()  # whole: connectrpc decodes it at once and drops the bytes
            return message
        # Held while more is awaited: only these bytes count against the budget, so a body
        # that arrives whole (every small call) is never refused as busy.
        if self._guard.in_flight + size > self._guard._limits.budget:
            refusals.refused("connect: body budget of the process spent")
            raise PublicError(Code.RESOURCE_EXHAUSTED, BUSY_MESSAGE)
        self._guard.in_flight += size
        self._held += size
        return message

    def release(self) -> None:
        self._done = True
        self._guard.in_flight -= self._held
        self._held = 0


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers this guard reads (the first of each name)."""
    found: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        name = key.decode("latin-1").lower()
        if name in ("authorization", "content-type", "content-length") and name not in found:
            found[name] = value.decode("latin-1")
    return found
