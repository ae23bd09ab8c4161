"""The port's method lookup (dispatch.py) applies our interceptors' logic exactly as grpc.aio's
chain would: the first listed outermost, each call's metadata seen, a method of no service
passed through as None; services registered either way are found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from service.entrypoints.grpc_api.dispatch import Dispatch
from service.entrypoints.grpc_api.interceptors import BillingAuthInterceptor, ErrorInterceptor
from service.entrypoints.grpc_api.receiving import Receiving

pytestmark = pytest.mark.unit

SECRET = "s" * 32


@dataclass
class Details:
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


class Tag:
    """A stage recording the handler it was given, and handing on a tagged one."""

    def __init__(self, name: str, seen: list[tuple[str, Any]]) -> None:
        self.name, self.seen = name, seen

    def apply(self, handler: Any, details: grpc.HandlerCallDetails) -> Any:
        self.seen.append((self.name, handler))
        return None if handler is None else (self.name, handler)


async def answer(request: Any, context: Any) -> str:
    return "answer"


def registered(dispatch: Dispatch, service: str, method: str) -> Any:
    handler: Any = grpc.unary_unary_rpc_method_handler(answer)
    dispatch.add_registered_method_handlers(service, {method: handler})
    return handler


def test_first_stage_is_outermost_as_with_interceptors() -> None:
    seen: list[tuple[str, Any]] = []
    dispatch = Dispatch([Tag("outer", seen), Tag("inner", seen)])
    handler = registered(dispatch, "pkg.S", "M")
    assert dispatch.service(Details("/pkg.S/M")) == ("outer", ("inner", handler))
    assert [name for name, _ in seen] == ["inner", "outer"]


def test_unknown_method_goes_through_every_stage_as_none() -> None:
    seen: list[tuple[str, Any]] = []
    dispatch = Dispatch([Tag("outer", seen), Tag("inner", seen)])
    registered(dispatch, "pkg.S", "M")
    assert dispatch.service(Details("/pkg.S/Other")) is None
    assert seen == [("inner", None), ("outer", None)]


def test_generic_handlers_answer_what_the_table_does_not() -> None:
    dispatch = Dispatch([])
    handler: Any = grpc.unary_unary_rpc_method_handler(answer)
    dispatch.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("pkg.G", {"M": handler})]
    )
    assert dispatch.service(Details("/pkg.G/M")) is handler
    assert dispatch.service(Details("/pkg.G/N")) is None


def test_service_interceptors_as_stages_guard_and_wrap_per_call() -> None:
    """The auth stage sees each call's metadata; the error stage wraps what it returns, its
    wrapper built once per registered handler."""
    dispatch = Dispatch([ErrorInterceptor(Receiving(128)), BillingAuthInterceptor(SECRET)])
    read = registered(dispatch, "entitlements.v1.EntitlementService", "CanUse")
    sync = registered(dispatch, "entitlements.v1.BillingSyncService", "Grant")
    can_use = Details("/entitlements.v1.EntitlementService/CanUse")
    first = dispatch.service(can_use)
    assert first is not None and first.unary_unary is not answer
    assert first is dispatch.service(can_use) and first is not read
    grant = "/entitlements.v1.BillingSyncService/Grant"
    denied: Any = dispatch.service(Details(grant))
    allowed: Any = dispatch.service(Details(grant, (("authorization", f"Bearer {SECRET}"),)))
    assert denied is not None and allowed is not None
    # Every call is received within bounds (request-streaming wrappers, receiving.py).
    assert denied.stream_unary is not allowed.stream_unary
    assert sync is not allowed
