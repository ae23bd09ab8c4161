"""The answers of the Connect listener's guard (connect_guard.py): what a refusal looks like in
each protocol, the fixed text of the protocol library's errors, and what a call ended with
(for its count), noted per call in a context variable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import quote

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from entitlements_common.refusals import RefusalLog
from service.entrypoints.http_server import Message, Send
from service.entrypoints.message_limits import public_message

log = logging.getLogger("service.entrypoints.connect_guard")
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
class Call:
    """One guarded call: its outcome as `PublicErrors.on_end` saw it, or as answered."""

    ended: bool = False
    code: grpc.StatusCode | None = None  # None: OK
    message: str | None = None
    answered: grpc.StatusCode | None = None  # a code seen in the response itself
    started: bool = False  # the response began


CALL: ContextVar[Call | None] = ContextVar("connect_call", default=None)


class Responses:
    """connectrpc's send(), on its way out: an error answered before a call started (a bad
    header, an unknown encoding) gets the fixed text of its code, and its code is noted."""

    def __init__(self, send: Send, call: Call) -> None:
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
                text = grpc_message(self._text(code))
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


class Reply:
    """A refusal written by the guard itself, in the protocol of the request's content type."""

    def __init__(self, send: Send, content_type: str, call: Call) -> None:
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
                (b"grpc-message", grpc_message(message)),
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


def grpc_message(text: str) -> bytes:
    """grpc-message's percent-encoding (gRPC over HTTP/2: printable ASCII but % stays)."""
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()
