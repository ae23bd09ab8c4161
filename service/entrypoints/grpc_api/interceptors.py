"""Auth, error mapping, metrics and logging for every RPC, in one place.

Servicers raise domain exceptions; this module turns them into AIP-193 status codes with a human
message, so no traceback or exception text ever reaches a caller.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc import aio

from entitlements_common.settings import split_secrets
from service.domain.errors import ServiceError
from service.entrypoints.rpc_metrics import UNCOUNTED, RpcSeries, series_for, uncounted

log = logging.getLogger(__name__)

BILLING_SYNC_PREFIX = "/entitlements.v1.BillingSyncService/"
CONFIG_ERROR_MESSAGE = "Server config error"

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


def _status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The one mapping from the service's error tree to status codes (None: a bug)."""
    if isinstance(exc, ServiceError):
        return grpc.StatusCode[exc.code], exc.public_message()
    return None


# Messages sent to callers are cut to this many characters (values they echo are cut sooner).
MAX_MESSAGE_CHARS = 500


def public_status(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """What a caller of `method` is told of `exc`, whatever the protocol (gRPC here, Connect in
    connect_api.py): the error tree's code and message, cut; a bug is logged and answered
    INTERNAL "internal error", so no exception text reaches a caller."""
    mapped = _status_for(exc)
    if mapped is None:
        log.error("Error processing %s", method, exc_info=exc)
        return grpc.StatusCode.INTERNAL, "internal error"
    code, message = mapped
    if code is grpc.StatusCode.UNAVAILABLE:
        log.warning("%s: %s (%s)", method, message, exc)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    return code, message


UNDECODABLE_MESSAGE = "the request is not a valid message (a string field that is not UTF-8?)"


class _Undecodable:
    """Stands for a request the deserializer refused, so the call can be answered cleanly."""


UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that never raises: grpc would log a traceback and answer UNKNOWN."""
    if deserializer is None:
        return None
    inner = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return inner(data)
        except Exception:
            return UNDECODABLE

    return deserialize


def _wrap(
    handler: Handler,
    unary: Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]] | None = None,
    streaming: Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]] | None = None,
    deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    request_deserializer = deserializer or handler.request_deserializer
    if handler.unary_unary is not None and unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None and streaming is not None:
        return grpc.unary_stream_rpc_method_handler(
            streaming,
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class ErrorInterceptor(aio.ServerInterceptor):
    """Maps exceptions to status codes, counts every call in the standard gRPC server series
    (with `metrics`), and logs each call's duration at debug level.

    One wrapper does both, rather than a metrics interceptor of its own: each interceptor is a
    coroutine and a wrapper more on every call, and CanUse sits on every caller's hot path. It
    goes before the auth interceptors, so it counts the code every caller was answered with, a
    denial or an undecodable request included. The wrapped handler of each registered method
    is built once and reused, so nothing per call is allocated here that need not be.
    """

    def __init__(self, metrics: bool = False) -> None:
        self._wrapped: dict[Handler, Handler] = {}
        self._series = series_for if metrics else uncounted

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        return self.apply(await continuation(handler_call_details), handler_call_details)

    def apply(
        self, handler: Handler | None, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        """The handler to run: `handler` wrapped (the server runs this as a stage of
        dispatch.Dispatch, synchronously, rather than as an interceptor)."""
        if handler is None:
            return None
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            method = handler_call_details.method
            if handler.unary_unary is None and handler.unary_stream is None:
                series = UNCOUNTED  # client streaming: reflection only, left as it is
            else:
                series = self._series(method, handler.unary_stream is not None)
            wrapped = _with_error_mapping(handler, method, series)
            if not method.startswith(BILLING_SYNC_PREFIX):
                # Read-side handlers are the registered ones; write-side ones may be per-call
                # denials from the auth interceptor, which must not pile up here.
                self._wrapped[handler] = wrapped
        return wrapped


def _with_error_mapping(handler: Handler, method: str, series: RpcSeries) -> Handler:
    async def fail(exc: Exception, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(*public_status(exc, method))

    inner_unary: Any = handler.unary_unary
    inner_stream: Any = handler.unary_stream

    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        started = series.start()
        cancelled = False
        try:
            if request is UNDECODABLE:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_MESSAGE)
            return await inner_unary(request, context)
        except aio.AbortError:
            raise
        except asyncio.CancelledError:
            cancelled = True
            raise
        except Exception as exc:
            await fail(exc, context)
        finally:
            series.done(grpc.StatusCode.CANCELLED if cancelled else context.code(), started)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %.2f ms", method, (time.perf_counter() - started) * 1000)

    async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        started = series.start()
        cancelled = False
        try:
            if request is UNDECODABLE:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_MESSAGE)
            async for response in inner_stream(request, context):
                series.sent += 1
                yield response
        except aio.AbortError:
            raise
        except (asyncio.CancelledError, GeneratorExit):
            cancelled = True
            raise
        except Exception as exc:
            await fail(exc, context)
        finally:
            series.done(grpc.StatusCode.CANCELLED if cancelled else context.code(), started)

    return _wrap(handler, unary, streaming, _tolerant(handler.request_deserializer))


ENTITLEMENT_PREFIX = "/entitlements.v1.EntitlementService/"


class _BearerAuth(aio.ServerInterceptor):
    """Guards the methods under `prefix` with `authorization: Bearer <token>`, any of several
    accepted tokens (a rotation), compared in constant time with every one (no early exit)."""

    prefix = ""

    def __init__(self, tokens: list[str]) -> None:
        self._accepted = [f"Bearer {t}".encode() for t in tokens]
        # One denial handler per registered handler and code, so none is built per call.
        self._denials: dict[tuple[Handler, grpc.StatusCode], Handler] = {}

    def _denied(self, handler: Handler, code: grpc.StatusCode, message: str) -> Handler:
        denial = self._denials.get((handler, code))
        if denial is None:
            denial = self._denials[(handler, code)] = _deny(handler, code, message)
        return denial

    def accepts(self, authorization: str | bytes | None) -> bool:
        """Whether an `authorization` header value is one of the accepted ones (any protocol:
        connect_api.py asks the same question of an HTTP header)."""
        presented = authorization.encode() if isinstance(authorization, str) else authorization
        matches = [hmac.compare_digest(presented or b"", expected) for expected in self._accepted]
        return any(matches)

    def _presented_ok(self, details: grpc.HandlerCallDetails) -> bool:
        presented: str | bytes | None = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                presented = value
        return self.accepts(presented)

    def _unconfigured(self, handler: Handler) -> Handler:
        return handler

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        return self.apply(await continuation(handler_call_details), handler_call_details)

    def apply(
        self, handler: Handler | None, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        """The handler to run: `handler`, or a denial (a stage of dispatch.Dispatch)."""
        if handler is None or not handler_call_details.method.startswith(self.prefix):
            return handler
        if not self._accepted:
            return self._unconfigured(handler)
        if not self._presented_ok(handler_call_details):
            log.warning("rejected %s: missing or wrong bearer token", handler_call_details.method)
            return self._denied(
                handler, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid credentials"
            )
        return handler


class BillingAuthInterceptor(_BearerAuth):
    """Guards BillingSyncService with `authorization: Bearer <secret>`; without a configured
    secret every call is FAILED_PRECONDITION "Server config error"."""

    prefix = BILLING_SYNC_PREFIX

    def __init__(self, secret: str | None) -> None:
        super().__init__(split_secrets(secret))

    def _unconfigured(self, handler: Handler) -> Handler:
        return self._denied(handler, grpc.StatusCode.FAILED_PRECONDITION, CONFIG_ERROR_MESSAGE)


class ReadAuthInterceptor(_BearerAuth):
    """Guards EntitlementService with ENTITLEMENTS_READ_TOKEN when set (open otherwise)."""

    prefix = ENTITLEMENT_PREFIX


def _deny(handler: Handler, code: grpc.StatusCode, message: str) -> Handler:
    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    return _wrap(handler, unary, streaming)
