"""Calls used by the integration tests: apply a delivery, read entitlements."""

from __future__ import annotations

from typing import Any

import asyncpg

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import entitlement_service_pb2 as pb
from tests.conftest import Harness
from tests.support import body, new_event_id


def subject(tag: str) -> str:
    """A user id no other test (or earlier run on the same database) uses."""
    return f"user_{tag}_{new_event_id()[4:12]}"


async def apply(
    h: Harness, payload: dict[str, Any], event_id: str | None = None
) -> sync_pb.ApplyBillingEventResponse:
    response: sync_pb.ApplyBillingEventResponse = await h.sync.ApplyBillingEvent(
        sync_pb.ApplyBillingEventRequest(
            event_id=event_id or new_event_id(),
            type=str(payload.get("type", "")),
            payload=body(payload),
        ),
        metadata=h.auth,
    )
    return response


async def entitlements(h: Harness, subject: str) -> pb.GetEntitlementsResponse:
    response: pb.GetEntitlementsResponse = await h.entitlements.GetEntitlements(
        pb.GetEntitlementsRequest(subject=subject)
    )
    return response


async def plan_of(h: Harness, subject: str) -> str:
    return (await entitlements(h, subject)).plan


async def can_use(h: Harness, subject: str, feature: str) -> pb.CanUseResponse:
    response: pb.CanUseResponse = await h.entitlements.CanUse(
        pb.CanUseRequest(subject=subject, feature=feature)
    )
    return response


def outcome_name(response: sync_pb.ApplyBillingEventResponse) -> str:
    return sync_pb.Outcome.Name(response.outcome)


async def sql_rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One query on a connection of its own (tests that look at stored rows)."""
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()
