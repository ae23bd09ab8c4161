"""What stands in front of the connectrpc application on ENTITLEMENTS_HTTP_LISTEN: the read
token, the size and time of request bodies, the fixed public text of every error, and the
grpc_server_* count of every call (rpc_metrics.py), whatever the outcome.

In order, for a POST to a method of EntitlementService:
1. the read token (ENTITLEMENTS_READ_TOKEN) is checked from the headers, before any byte of the
   body is read (the gRPC port's own comparison, `ReadAuthInterceptor.accepts`);
2. a declared Content-Length over the method's cap (message_limits.py) is refused at once;
3. body bytes are counted as they arrive against that cap and, while more is awaited, against
   a per-process budget of body bytes in flight; the whole body must arrive within
   `body_timeout` seconds of the headers;
4. whatever the connectrpc library answers with text of its own (a JSON or protobuf parser's
   message, a decompressor's, a header's echo) is answered with fixed text instead: inside a
   call by the `PublicErrors` interceptor (`on_end` may replace the error), before a call
   starts by rewriting the error response on its way out (`_Responses`).
A refusal of steps 1-3 is a Connect error in the caller's protocol (Connect JSON with the
Connect HTTP status, a Connect end-of-stream message, or a gRPC/gRPC-Web trailers-only
response); each is counted under its code and logged through RefusalLog.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements_common.refusals import RefusalLog
from service.entrypoints.grpc_api.interceptors import ReadAuthInterceptor
from service.entrypoints.http_server import App, Message, Receive, Scope, Send, lifespan
from service.entrypoints.message_limits import (
    BODY_TIMEOUT_MESSAGE,
    BUSY_MESSAGE,
    NEEDS_HTTP2_MESSAGE,
    TOO_LARGE_MESSAGE,
    UNAUTHENTICATED_MESSAGE,
    max_message_bytes,
    public_message,
)
from service.entrypoints.rpc_metrics import RpcSeries

log = logging.getLogger(__name__)
refusals = RefusalLog(log)

# gRPC's status codes in Connect's spelling: the same codes, one name differs (CANCELLED).
CONNECT_CODES: Mapping[grpc.StatusCode, Code] = {
    **{s: Code[s.name] for s in grpc.StatusCode if s.name in Code.__members__},
    grpc.StatusCode.CANCELLED: Code.CANCELED,
}
GRPC_CODES: Mapping[Code, grpc.StatusCode] = {c: s for s, c in CONNECT_CODES.items()}
_BY_NUMBER = {s.value[0]: s for s in grpc.StatusCode}
# Connect's HTTP status of a code (the Connect protocol's table), and back for the answers
# connectrpc gives without a code (404, 405, 415: counted as UNIMPLEMENTED).
_HTTP_STATUS = {
    Code.CANCELED: 499,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.UNAUTHENTICATED: 401,
}
_CODE_OF_HTTP = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}
# Bytes a request body may carry beyond its message: the 5-byte envelope of the streaming
# protocols (one message per request here).
ENVELOPE_BYTES = 5


# The library's errors that are refusals of what a caller sent (logged as such).
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class PublicError(ConnectError):
    """A Connect error whose message is fixed text of ours, told to the caller as it is."""


def grpc_code(error: ConnectError) -> grpc.StatusCode:
    """The gRPC name of a Connect error's code (what the grpc_server_* series count)."""
    return GRPC_CODES.get(error.code, grpc.StatusCode.UNKNOWN)


def public_error(error: Exception) -> PublicError:
    """`error` as the caller may see it: ours as it is, the library's with fixed text."""
    if isinstance(error, PublicError):
        return error
    if not isinstance(error, ConnectError):
        log.error("unexpected error answering a Connect call", exc_info=error)
        return PublicError(Code.INTERNAL, public_message(grpc.StatusCode.INTERNAL))
    code = grpc_code(error)
    if code in _REFUSALS:
        refusals.refused(f"connect: {code.name} from the protocol library")
    return PublicError(error.code, public_message(code))


@dataclass(slots=True)
class _Call:
    """One guarded call: its outcome as `PublicErrors.on_end` saw it, or as answered."""

    ended: bool = False
    code: grpc.StatusCode | None = None  # None: OK
    message: str | None = None
    answered: grpc.StatusCode | None = None  # a code seen in the response itself
    started: bool = False  # the response began


_CALL: ContextVar[_Call | None] = ContextVar("connect_call", default=None)


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
        call = _CALL.get()
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


class ConnectGuard:
    """The ASGI application in front of connectrpc's (see the module docstring)."""

    def __init__(
        self,
        apps: Mapping[str, App],
        auth: ReadAuthInterceptor | None,
        limits: BodyLimits,
        series: Callable[[str, bool], RpcSeries],
    ) -> None:
        service = pb.DESCRIPTOR.services_by_name["EntitlementService"]
        self._methods = {
            f"/{service.full_name}/{m.name}": (m.name, m.server_streaming) for m in service.methods
        }
        self._apps = apps  # by method name; "" for anything else (404, 405)
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
        method = self._methods.get(scope["path"])
        if method is None or scope["method"] != "POST":
            await self._apps[""](scope, receive, send)  # connectrpc's 404 / 405, uncounted
            return
        name, streaming = method
        series = self._series(scope["path"], streaming)
        started = series.start()
        call = _Call()
        token = _CALL.set(call)
        try:
            await self._guarded(name, scope, receive, send, call)
        finally:
            _CALL.reset(token)
            if call.ended:
                code = call.code
            elif call.answered is not None:
                code = None if call.answered is grpc.StatusCode.OK else call.answered
            else:
                code = grpc.StatusCode.CANCELLED
            series.done(code, started)

    async def _guarded(
        self, name: str, scope: Scope, receive: Receive, send: Send, call: _Call
    ) -> None:
        headers = _headers(scope)
        reply = _Reply(send, headers.get("content-type", ""), call)
        if self._auth is not None and not self._auth.accepts(headers.get("authorization")):
            refusals.refused("connect: missing or wrong bearer token", name)
            await reply.error(Code.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
            return
        if reply.family == "grpc" and "http.response.trailers" not in scope.get("extensions", {}):
            refusals.refused("connect: gRPC over HTTP/1.1", name)
            await reply.error(Code.UNIMPLEMENTED, NEEDS_HTTP2_MESSAGE)
            return
        cap = max_message_bytes(name) + ENVELOPE_BYTES
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            refusals.refused("connect: declared body over the method's cap", name)
            await reply.error(Code.RESOURCE_EXHAUSTED, TOO_LARGE_MESSAGE)
            return
        body = _Body(self, receive, cap, asyncio.get_running_loop().time())
        app = self._apps.get(name, self._apps[""])
        try:
            await app(scope, body.receive, _Responses(send, call).send)
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


class _Responses:
    """connectrpc's send(), on its way out: an error answered before a call started (a bad
    header, an unknown encoding) gets the fixed text of its code, and its code is noted."""

    def __init__(self, send: Send, call: _Call) -> None:
        self._send = send
        self._call = call
        self._held: Message | None = None
        self._body = b""

    async def send(self, message: Message) -> None:
        call = self._call
        if message["type"] == "http.response.start":
            call.started = True
            headers = list(message.get("headers", []))
            status = dict(headers).get(b"grpc-status")
            if status is not None:  # gRPC trailers-only: the status rides in the headers
                number = int(status) if status.isdigit() else 2
                code = _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
                call.answered = code
                text = _grpc_message(self._text(code))
                message = {
                    **message,
                    "headers": [(k, v) for k, v in headers if k != b"grpc-message"]
                    + ([(b"grpc-message", text)] if code is not grpc.StatusCode.OK else []),
                }
            elif message["status"] != 200:
                call.answered = _CODE_OF_HTTP.get(message["status"], grpc.StatusCode.UNIMPLEMENTED)
                self._held = message  # a Connect error: rewritten once its body is whole
                return
            else:
                call.answered = grpc.StatusCode.OK
        elif message["type"] == "http.response.body" and self._held is not None:
            self._body += message.get("body", b"")
            if message.get("more_body", False):
                return
            await self._rewritten()
            return
        await self._send(message)

    def _text(self, code: grpc.StatusCode) -> str:
        call = self._call
        if call.ended and call.code is code and call.message is not None:
            return call.message
        return public_message(code)

    async def _rewritten(self) -> None:
        start, body = self._held, self._body
        assert start is not None
        self._held = None
        try:
            code_name = json.loads(body)["code"]
            code = GRPC_CODES[Code(code_name)]
        except (ValueError, KeyError, TypeError):
            code = None  # an HTTP error without a Connect body (404, 405, 415): as it is
        if code is not None:
            self._call.answered = code
            body = json.dumps({"code": code_name, "message": self._text(code)}).encode()
            start = {
                **start,
                "headers": [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
                + [(b"content-length", str(len(body)).encode())],
            }
        await self._send(start)
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


class _Reply:
    """A refusal written by the guard itself, in the protocol of the request's content type."""

    def __init__(self, send: Send, content_type: str, call: _Call) -> None:
        self._send = send
        self._call = call
        self._content_type = content_type
        if content_type.startswith("application/grpc-web"):
            self.family = "grpc-web"
        elif content_type.startswith("application/grpc"):
            self.family = "grpc"
        elif content_type.startswith("application/connect+"):
            self.family = "connect-stream"
        else:
            self.family = "connect"

    async def error(self, code: Code, message: str) -> None:
        self._call.started = True
        self._call.answered = GRPC_CODES[code]
        status, body = 200, b""
        if self.family in ("grpc", "grpc-web"):
            headers = [
                (b"content-type", self._content_type.encode()),
                (b"grpc-status", str(GRPC_CODES[code].value[0]).encode()),
                (b"grpc-message", _grpc_message(message)),
            ]
        elif self.family == "connect-stream":
            end = json.dumps({"error": {"code": code.value, "message": message}}).encode()
            body = bytes([2]) + len(end).to_bytes(4, "big") + end
            headers = [(b"content-type", self._content_type.encode())]
        else:
            status = _HTTP_STATUS.get(code, 500)
            body = json.dumps({"code": code.value, "message": message}).encode()
            headers = [(b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers this guard reads (the first of each name)."""
    found: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        name = key.decode("latin-1").lower()
        if name in ("authorization", "content-type", "content-length") and name not in found:
            found[name] = value.decode("latin-1")
    return found


def _grpc_message(text: str) -> bytes:
    """grpc-message's percent-encoding (gRPC over HTTP/2: printable ASCII but % stays)."""
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()
