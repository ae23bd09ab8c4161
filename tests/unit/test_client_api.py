"""The client library's public surface, pinned (as httpx and the Temporal SDK keep theirs):
`__all__` is exactly this list; every module behind it is private; the repository's own code
(the CLI, bench, scripts) imports only public names; the sync and async clients (and the
testing fakes) have the same methods with the same parameters; every exception carries the
gRPC code name it stands for."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import grpc
import pytest

import entitlements_client
from entitlements_client import testing

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "python" / "entitlements_client"

PUBLIC = [
    "AdminClient",
    "AlreadyExists",
    "AsyncEntitlementsClient",
    "Cancelled",
    "CatalogCheck",
    "ClerkPlan",
    "ClientConfigError",
    "Consumption",
    "DeadlineExceeded",
    "Decision",
    "EntitlementsClient",
    "EntitlementsError",
    "FailedPrecondition",
    "History",
    "HistoryEntry",
    "Internal",
    "InvalidArgument",
    "LimitCheck",
    "LimitValue",
    "Limits",
    "MeterPeriod",
    "MeterUsage",
    "NotFound",
    "OutOfRange",
    "Override",
    "OverrideChange",
    "PermissionDenied",
    "PlanChange",
    "ReconcileProgress",
    "Reconciliation",
    "ReplayProgress",
    "ReplayedDelivery",
    "Reservation",
    "ResourceExhausted",
    "Settlement",
    "Snapshot",
    "StateDifference",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Usage",
    "UsageReport",
    "VerifyProgress",
    "connect",
    "error_from_rpc",
]
ERRORS = {
    "InvalidArgument": "INVALID_ARGUMENT",
    "NotFound": "NOT_FOUND",
    "AlreadyExists": "ALREADY_EXISTS",
    "PermissionDenied": "PERMISSION_DENIED",
    "Unauthenticated": "UNAUTHENTICATED",
    "ResourceExhausted": "RESOURCE_EXHAUSTED",
    "FailedPrecondition": "FAILED_PRECONDITION",
    "OutOfRange": "OUT_OF_RANGE",
    "Unavailable": "UNAVAILABLE",
    "DeadlineExceeded": "DEADLINE_EXCEEDED",
    "Cancelled": "CANCELLED",
    "Unimplemented": "UNIMPLEMENTED",
    "Internal": "INTERNAL",
}


def test_all_is_pinned_and_every_name_resolves() -> None:
    assert entitlements_client.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(entitlements_client, name) is not None, name


def test_every_module_but_the_package_and_testing_is_private() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    public = {m for m in modules if not m.startswith("_")}
    assert public == {"testing"}, public


def test_the_repositorys_own_code_imports_public_names_only() -> None:
    """The CLI, the benchmarks and the scripts use what an app would use."""
    wrong: list[str] = []
    for folder in ("entitlements_cli", "bench", "scripts", "webhook_gateway", "service"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "entitlements_client":
                    wrong += [f"{path}: {a.name}" for a in node.names if a.name not in PUBLIC]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "entitlements_client."
                ):
                    wrong.append(f"{path}: {node.module}")
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                    wrong += [f"{path}: {n}" for n in names if n.startswith("entitlements_client.")]
    assert not wrong, wrong


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_") or name in ("__enter__", "__aenter__")
    }


def _shape(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    """Parameters (name, kind, default): what a caller sees, annotations aside."""
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def test_sync_and_async_clients_have_the_same_methods_and_parameters() -> None:
    sync = _methods(entitlements_client.EntitlementsClient)
    aio = _methods(entitlements_client.AsyncEntitlementsClient)
    sync["__aenter__"] = sync.pop("__enter__")
    assert sync.keys() == aio.keys()
    for name in sync:
        assert _shape(sync[name]) == _shape(aio[name]), name
        assert inspect.iscoroutinefunction(
            getattr(entitlements_client.AsyncEntitlementsClient, name)
        ), name
    assert {"start", "wait_synced", "close", "can_use", "check_limit", "consume"} <= sync.keys()
    init = inspect.signature(entitlements_client.EntitlementsClient)
    assert _shape(init) == _shape(inspect.signature(entitlements_client.AsyncEntitlementsClient))


def test_the_fakes_have_the_real_clients_methods_and_parameters() -> None:
    for real, fake in (
        (entitlements_client.EntitlementsClient, testing.FakeEntitlementsClient),
        (entitlements_client.AsyncEntitlementsClient, testing.AsyncFakeEntitlementsClient),
    ):
        real_methods, fake_methods = _methods(real), _methods(fake)
        assert real_methods.keys() <= fake_methods.keys(), real
        for name, signature in real_methods.items():
            assert _shape(fake_methods[name]) == _shape(signature), (real, name)


def test_every_error_carries_its_grpc_code_name() -> None:
    base = entitlements_client.EntitlementsError
    for name, code in ERRORS.items():
        cls = getattr(entitlements_client, name)
        assert issubclass(cls, base) and cls.code == code
        assert code in grpc.StatusCode.__members__
    # Backward compatible where it costs nothing: bad input was a ValueError before.
    assert issubclass(entitlements_client.InvalidArgument, ValueError)
    config = entitlements_client.ClientConfigError
    assert issubclass(config, entitlements_client.FailedPrecondition)
    assert issubclass(config, ValueError)
