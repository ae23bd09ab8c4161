"""The body budget's arithmetic: the share kept for small bodies, release, settling."""

from __future__ import annotations

import pytest

from entitlements_common.settings import ConfigError
from webhook_gateway.budget import SMALL_BODY_BYTES, BodyBudget
from webhook_gateway.config import GatewaySettings

pytestmark = pytest.mark.unit

MIB = 1024 * 1024


def test_large_bodies_cannot_take_the_small_share() -> None:
    budget = BodyBudget(16 * MIB)
    large = [budget.reservation() for _ in range(13)]
    taken = [r.take(MIB, MIB) for r in large]
    assert taken == [True] * 12 + [False]  # 12 MiB: three quarters of 16
    small = budget.reservation()
    assert small.take(4096, 4096)  # a Clerk delivery still fits
    assert budget.in_use == 12 * MIB + 4096 and budget.large_in_use == 12 * MIB


def test_small_bodies_may_use_the_whole_budget_but_never_more() -> None:
    budget = BodyBudget(MIB)
    r = budget.reservation()
    assert r.take(MIB - 10, SMALL_BODY_BYTES)
    assert not r.take(11, SMALL_BODY_BYTES)
    assert r.take(10, SMALL_BODY_BYTES) and budget.in_use == MIB


def test_release_gives_back_everything_once() -> None:
    budget = BodyBudget(4 * MIB)
    r = budget.reservation()
    assert r.take(MIB, MIB) and r.take(1000, MIB + 1000)
    r.release()
    r.release()
    assert (budget.in_use, budget.large_in_use) == (0, 0)
    assert budget.settled() and not budget.settled()  # once per burst


def test_a_refused_reservation_holds_nothing_and_counts_as_activity() -> None:
    budget = BodyBudget(MIB)
    r = budget.reservation()
    assert not r.take(2 * MIB, 2 * MIB)
    assert r.held == 0 and budget.in_use == 0 and budget.settled()


def test_not_settled_while_a_body_is_held() -> None:
    budget = BodyBudget(MIB)
    r = budget.reservation()
    assert r.take(100, 100) and not budget.settled()
    r.release()
    assert budget.settled()


def test_defaults_and_variables() -> None:
    s = GatewaySettings.from_env({})
    assert (s.max_body_bytes, s.max_inflight_bytes) == (MIB, 16 * MIB)
    s = GatewaySettings.from_env(
        {"GATEWAY_MAX_BODY_BYTES": "262144", "GATEWAY_MAX_INFLIGHT_BYTES": "1048576"}
    )
    assert (s.max_body_bytes, s.max_inflight_bytes) == (262144, MIB)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"GATEWAY_MAX_BODY_BYTES": "1MiB"}, "GATEWAY_MAX_BODY_BYTES"),
        ({"GATEWAY_MAX_BODY_BYTES": "10"}, "GATEWAY_MAX_BODY_BYTES"),
        ({"GATEWAY_MAX_BODY_BYTES": "\u00b2"}, "GATEWAY_MAX_BODY_BYTES"),
        ({"GATEWAY_MAX_INFLIGHT_BYTES": "-1"}, "GATEWAY_MAX_INFLIGHT_BYTES"),
        ({"GATEWAY_MAX_INFLIGHT_BYTES": "1048576"}, "GATEWAY_MAX_INFLIGHT_BYTES"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        GatewaySettings.from_env(env)
