"""Auth, error mapping, metrics and logging for every RPC, in one place.

Servicers raise domain exceptions; this module turns them into AIP-193 status codes with a human
message, so no traceback or exception text ever reaches a caller.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc import aio

from entitlements_common.refusals import RefusalLog
from entitlements_common.settings import split_secrets
from service.domain.errors import ServiceError
from service.entrypoints.grpc_api.receiving import Receiving, capped_deserializer
from service.entrypoints.rpc_metrics import RpcSeries, series_for, uncounted

log = logging.getLogger(__name__)

BILLING_SYNC_PREFIX = "/entitlements.v1.BillingSyncService/"
ENTITLEMENT_PREFIX = "/entitlements.v1.EntitlementService/"
USAGE_PREFIX = "/entitlements.v1.UsageService/"
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


Behaviour: TypeAlias = "Callable[[Any, aio.ServicerContext[Any, Any]], Any]"


def _request_streaming(
    handler: Handler,
    unary: Behaviour,
    streaming: Behaviour,
    deserializer: Callable[[bytes], Any] | None,
) -> Handler:
    """`handler` registered as request-streaming with `unary`/`streaming` as its behaviour
    (its response kind kept), so grpc reads no request by itself (receiving.py)."""
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            streaming,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_unary_rpc_method_handler(
        unary, request_deserializer=deserializer, response_serializer=handler.response_serializer
    )


class ErrorInterceptor(aio.ServerInterceptor):
    """Maps exceptions to status codes, counts every call in the standard gRPC server series
    (with `metrics`), logs each call's duration at debug level, and takes in each request
    through `receiving` (a bounded number at once, each within its method's cap).

    One wrapper does all of it, rather than an interceptor each: each interceptor is a
    coroutine and a wrapper more on every call, and CanUse sits on every caller's hot path. It
    goes before the auth interceptors, so it counts the code every caller was answered with, a
    denial or an undecodable request included. The wrapped handler of each registered method
    is built once and reused, so nothing per call is allocated here that need not be.
    """

    def __init__(self, receiving: Receiving, metrics: bool = False) -> None:
        self._wrapped: dict[Handler, Handler] = {}
        self._series = series_for if metrics else uncounted
        self._receiving = receiving

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
            if not handler.request_streaming:
                series = self._series(method, handler.unary_stream is not None)
                wrapped = _with_error_mapping(handler, method, series, self._receiving)
            elif handler.request_deserializer is None:
                # An auth denial (_deny: reads nothing, so it has no deserializer); counted
                # like the call it answers.
                series = self._series(method, handler.response_streaming)
                wrapped = _counted_denial(handler, series)
            else:
                return handler  # reflection (client streaming): left as it is, uncounted
            if not method.startswith(BILLING_SYNC_PREFIX):
                # Read-side handlers are the registered ones; write-side ones may be per-call
                # denials from the auth interceptor, which must not pile up here.
                self._wrapped[handler] = wrapped
        return wrapped


def _with_error_mapping(
    handler: Handler, method: str, series: RpcSeries, receiving: Receiving
) -> Handler:
    async def fail(exc: Exception, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(*public_status(exc, method))

    inner_unary: Any = handler.unary_unary
    inner_stream: Any = handler.unary_stream

    async def unary(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        started = series.start()
        cancelled = False
        try:
            request = await receiving.request(context)
            return await inner_unary(request, context)
        except aio.AbortError:
            raise
        except asyncio.CancelledError:
            cancelled = True
            raise
        except Exception as exc:  # broad on purpose: the one place errors become public statuses
            await fail(exc, context)
        finally:
            series.done(grpc.StatusCode.CANCELLED if cancelled else context.code(), started)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %.2f ms", method, (time.perf_counter() - started) * 1000)

    async def streaming(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        started = series.start()
        cancelled = False
        try:
            request = await receiving.request(context)
            async for response in inner_stream(request, context):
                series.sent += 1
                yield response
        except aio.AbortError:
            raise
        except (asyncio.CancelledError, GeneratorExit):
            cancelled = True
            raise
        except Exception as exc:  # broad on purpose: the one place errors become public statuses
            await fail(exc, context)
        finally:
            series.done(grpc.StatusCode.CANCELLED if cancelled else context.code(), started)

    capped = capped_deserializer(handler.request_deserializer, method)
    return _request_streaming(handler, unary, streaming, capped)


def _counted_denial(handler: Handler, series: RpcSeries) -> Handler:
    inner_unary: Any = handler.stream_unary
    inner_stream: Any = handler.stream_stream

    async def unary(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        started = series.start()
        try:
            return await inner_unary(requests, context)
        finally:
            series.done(context.code(), started)

    async def streaming(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        started = series.start()
        try:
            async for response in inner_stream(requests, context):
                yield response
        finally:
            series.done(context.code(), started)

    return _request_streaming(handler, unary, streaming, None)


class _BearerAuth(aio.ServerInterceptor):
    """Guards the methods under `prefix` with `authorization: Bearer <token>`, any of several
    accepted tokens (a rotation), compared in constant time with every one (no early exit)."""

    prefix: str | tuple[str, ...] = ""
    refusal = "gRPC call without a valid bearer token"

    def __init__(self, tokens: list[str]) -> None:
        # Denials are logged as summaries (an attacker must not choose the log volume).
        self._refusals = RefusalLog(log)
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
            # A registered method's name (one of a fixed few), never the caller's text.
            self._refusals.refused(self.refusal, handler_call_details.method)
            return self._denied(
                handler, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid credentials"
            )
        return handler


class BillingAuthInterceptor(_BearerAuth):
    """Guards BillingSyncService with `authorization: Bearer <secret>`; without a configured
    secret every call is FAILED_PRECONDITION "Server config error"."""

    prefix = BILLING_SYNC_PREFIX
    refusal = "BillingSyncService call without the sync secret"

    def __init__(self, secret: str | None) -> None:
        super().__init__(split_secrets(secret))

    def _unconfigured(self, handler: Handler) -> Handler:
        return self._denied(handler, grpc.StatusCode.FAILED_PRECONDITION, CONFIG_ERROR_MESSAGE)


class ReadAuthInterceptor(_BearerAuth):
    """Guards EntitlementService and UsageService with ENTITLEMENTS_READ_TOKEN when set (open
    otherwise)."""

    prefix = (ENTITLEMENT_PREFIX, USAGE_PREFIX)
    refusal = "EntitlementService or UsageService call without a valid read token"


def _deny(handler: Handler, code: grpc.StatusCode, message: str) -> Handler:
    """A handler answering `code` without reading the request: grpc reads (buffers) the request
    of a unary-request handler before calling it, so the denial is request-streaming and never
    iterates its requests; the caller's message is never taken in."""

    async def unary(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def streaming(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    return _request_streaming(handler, unary, streaming, None)
