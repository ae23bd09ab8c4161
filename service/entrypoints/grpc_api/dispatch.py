"""The gRPC port's method lookup: each call's handler found, guarded and wrapped in one plain
call, rather than through grpc.aio's interceptor chain.

grpc.aio runs server interceptors as a chain of coroutines: for every call, a coroutine and a
`functools.partial` per interceptor, one more coroutine per link, each awaited in turn, before
the handler runs. The service's own interceptors (error mapping and metrics, the auth guards)
never suspend: they look at the method and the metadata and return a handler. So they are
stages of `Dispatch`, a generic handler that grpc asks synchronously for each call's handler
(it is asked before the request is read, exactly as an interceptor is, so a denial still reads
nothing). Interceptors that do need to be one (tracing's) still are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import grpc

Handler = Any  # grpc.RpcMethodHandler, whose stubs are generic


class Stage(Protocol):
    """What an interceptor of ours does, synchronously: the handler to run for a call, given
    the one found (None: no such method)."""

    def apply(self, handler: Handler | None, details: grpc.HandlerCallDetails) -> Handler | None:
        """The handler for this call (the same, a wrapper of it, or a denial)."""
        ...


class Dispatch(grpc.GenericRpcHandler):
    """Every service of the port, registered here instead of on the server (the generated
    `add_*_to_server` functions take it as their server), and `stages` applied to each call's
    handler in the order interceptors listed in that order would apply: the first is the
    outermost."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self._stages = tuple(reversed(stages))  # innermost first, as the handler is built
        self._methods: dict[str, Handler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Handler]
    ) -> None:
        for name, handler in method_handlers.items():
            self._methods[f"/{service_name}/{name}"] = handler

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        # Generated code registers each service both ways; the method table above answers
        # first, these only for a service registered as generic handlers alone.
        self._generic.extend(handlers)

    def _found(self, details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._methods.get(details.method)
        if handler is None:
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    break
        return handler

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._found(handler_call_details)
        for stage in self._stages:
            handler = stage.apply(handler, handler_call_details)
        return handler
