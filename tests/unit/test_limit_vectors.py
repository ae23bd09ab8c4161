"""No second copy of a server rule left to drift: CheckLimit's rule, as shared test vectors
(tests/fixtures/limit_check_vectors.json), run against the service's domain function and the
Python client's local answer; both must give every case's expected outcome. The integration
side (tests/integration/test_client_parity.py) runs them through the real service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from entitlements_client import EntitlementsError, LimitValue, Snapshot
from entitlements_client._answers import limit_check
from service.domain import catalog
from service.domain.errors import ServiceError
from service.domain.limits import limit_decision, require_limit_request
from service.domain.resolution import Entitlements, EntitlementStatus

pytestmark = pytest.mark.unit

VECTORS = Path(__file__).parents[1] / "fixtures" / "limit_check_vectors.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text())["cases"]


def _service(case: dict[str, Any]) -> dict[str, Any]:
    """The service's outcome: what CheckLimit answers, or its refusal's code."""
    limits = {k: catalog.LimitValue(v["value"], v["unlimited"]) for k, v in case["limits"].items()}
    plan = catalog.Plan("p", 1, frozenset(), limits)
    ent = Entitlements("user_v", plan, EntitlementStatus.DEFAULT, None, 1, frozenset(), limits)
    try:
        require_limit_request(limits, case["limit"], case["current_usage"], case["requested"])
        d = limit_decision(ent, case["limit"], case["current_usage"], case["requested"])
    except ServiceError as exc:
        return {"error": exc.code}
    return {
        "allowed": d.allowed,
        "limit": d.limit.value,
        "remaining": d.remaining,
        "unlimited": d.limit.unlimited,
    }


def _client(case: dict[str, Any]) -> dict[str, Any]:
    """The Python client's local outcome for the same subject and check."""
    limits = {k: LimitValue(v["value"], v["unlimited"]) for k, v in case["limits"].items()}
    snap = Snapshot("user_v", "p", frozenset(), limits, None, 1)
    try:
        a = limit_check(snap, case["limit"], case["current_usage"], case["requested"])
    except EntitlementsError as exc:
        return {"error": exc.code}
    return {
        "allowed": a.allowed,
        "limit": a.limit,
        "remaining": a.remaining,
        "unlimited": a.unlimited,
    }


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_service_and_client_give_the_vectors_outcome(case: dict[str, Any]) -> None:
    assert _service(case) == case["expect"]
    assert _client(case) == case["expect"]


def test_the_vectors_cover_refusals_and_the_drift_once_seen() -> None:
    refused = [c for c in CASES if "error" in c["expect"]]
    assert any(c["current_usage"] < 0 for c in refused)  # -5 was "allowed, remaining 15"
    assert any(c["limit"] not in c["limits"] for c in refused)
    assert any(c["limits"][next(iter(c["limits"]))]["unlimited"] for c in CASES)
