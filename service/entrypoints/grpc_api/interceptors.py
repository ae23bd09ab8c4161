"""Metrics, auth, error mapping and logging for every RPC, in one place.

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
from service.entrypoints.rpc_metrics import RpcSeries, series_for

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
    """Maps exceptions to status codes; logs each call's duration at debug level.

    The wrapped handler of each registered method is built once and reused: CanUse sits on
    every caller's hot path, so nothing per call is allocated here that need not be.
    """

    def __init__(self) -> None:
        self._wrapped: dict[Handler, Handler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            wrapped = _with_error_mapping(handler, handler_call_details.method)
            if not handler_call_details.method.startswith(BILLING_SYNC_PREFIX):
                # Read-side handlers are the registered ones; write-side ones may be per-call
                # denials from the auth interceptor, which must not pile up here.
                self._wrapped[handler] = wrapped
        return wrapped


def _with_error_mapping(handler: Handler, method: str) -> Handler:
    async def fail(exc: Exception, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(*public_status(exc, method))

    inner_unary: Any = handler.unary_unary
    inner_stream: Any = handler.unary_stream

    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        start = time.perf_counter() if log.isEnabledFor(logging.DEBUG) else 0.0
        if request is UNDECODABLE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_MESSAGE)
        try:
            return await inner_unary(request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await fail(exc, context)
        finally:
            if start:
                log.debug("%s %.2f ms", method, (time.perf_counter() - start) * 1000)

    async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        if request is UNDECODABLE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_MESSAGE)
        try:
            async for response in inner_stream(request, context):
                yield response
        except aio.AbortError:
            raise
        except Exception as exc:
            await fail(exc, context)

    return _wrap(handler, unary, streaming, _tolerant(handler.request_deserializer))


class MetricsInterceptor(aio.ServerInterceptor):
    """The standard gRPC server series for every RPC: grpc_server_started_total,
    grpc_server_handled_total (by code) and grpc_server_handling_seconds.

    It goes before the auth and error interceptors, so it counts the code every caller saw,
    a denial or an undecodable request included. Wrapped read-side handlers are reused, as
    the error interceptor's are."""

    def __init__(self) -> None:
        self._wrapped: dict[Handler, Handler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or (handler.unary_unary is None and handler.unary_stream is None):
            return handler  # unknown (UNIMPLEMENTED) or client-streaming (reflection only)
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            method = handler_call_details.method
            wrapped = _with_metrics(handler, series_for(method, handler.unary_stream is not None))
            if not method.startswith(BILLING_SYNC_PREFIX):  # as in ErrorInterceptor
                self._wrapped[handler] = wrapped
        return wrapped


def _with_metrics(handler: Handler, series: RpcSeries) -> Handler:
    inner_unary: Any = handler.unary_unary
    inner_stream: Any = handler.unary_stream

    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        series.started.inc()
        started = time.perf_counter()
        code: grpc.StatusCode | None = None
        try:
            return await inner_unary(request, context)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except aio.AbortError:
            code = context.code()
            raise
        except Exception:
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            series.done(code or context.code(), started)

    async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        series.started.inc()
        started = time.perf_counter()
        code: grpc.StatusCode | None = None
        try:
            async for response in inner_stream(request, context):
                series.sent.inc()
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except aio.AbortError:
            code = context.code()
            raise
        except Exception:
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            series.done(code or context.code(), started)

    return _wrap(handler, unary, streaming)


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
        handler = await continuation(handler_call_details)
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
