"""The delivery repository's contract on both stores (see test_repositories.py): stored once
by event id, outcomes and notes, scrubbing, the log read in event-id order, and stored text
bounded the same way."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from service.application.ports import UnitOfWork
from service.application.records import DeliverySelector, StoredDelivery
from service.domain.deliveries import Outcome
from service.domain.privacy import SCRUBBED
from tests.support.contract import T0, Backend, S, delivery

pytestmark = pytest.mark.integration


async def test_a_delivery_is_added_once_and_read_back(backend: Backend) -> None:
    d, e = delivery("evt_1")

    async def add(uow: UnitOfWork) -> tuple[bool, bool, bool]:
        first = await uow.deliveries.add(d, e, True)
        again = await uow.deliveries.add(d, e, True)
        recorded = await uow.deliveries.record(d, e, Outcome.IGNORED, ["x"])
        return first, again, recorded

    assert await backend.store.run(add) == (True, False, False)

    async def read(uow: UnitOfWork) -> tuple[StoredDelivery | None, StoredDelivery | None]:
        return await uow.deliveries.get("evt_1"), await uow.deliveries.get("evt_none")

    stored, missing = await backend.store.run(read)
    assert missing is None
    assert stored is not None
    assert (stored.event_id, stored.type, stored.payload, stored.outcome) == (
        "evt_1", "subscriptionItem.active", d.payload, "PENDING",
    )  # fmt: skip
    assert stored.received_at == datetime.fromtimestamp(T0 / 1000, UTC)
    assert (stored.signed_at_ms, stored.source) == (T0 - 5, "webhook")
    assert stored.as_delivery() == d
    assert await backend.probe.delivery("evt_1") == ("PENDING", [], S)


async def test_record_stores_a_final_outcome_once(backend: Backend) -> None:
    d, e = delivery("evt_r", subject=None)

    async def record(uow: UnitOfWork) -> tuple[bool, bool]:
        first = await uow.deliveries.record(d, e, Outcome.UNPARSEABLE, ["bad body"])
        return first, await uow.deliveries.add(d, e, False)

    assert await backend.store.run(record) == (True, False)
    assert await backend.probe.delivery("evt_r") == ("UNPARSEABLE", ["bad body"], None)


async def test_finish_mark_and_subject_of(backend: Backend) -> None:
    d, e = delivery("evt_f", subject=None)

    async def work(uow: UnitOfWork) -> tuple[str | None, str | None, str | None]:
        await uow.deliveries.add(d, e, False)
        before = await uow.deliveries.subject_of("evt_f")
        await uow.deliveries.finish("evt_f", Outcome.STALE, ["older"], S)
        after = await uow.deliveries.subject_of("evt_f")
        return before, after, await uow.deliveries.subject_of("x")

    assert await backend.store.run(work) == (None, S, None)
    assert await backend.probe.delivery("evt_f") == ("STALE", ["older"], S)

    async def mark(uow: UnitOfWork) -> str | None:
        await uow.deliveries.mark("evt_f", Outcome.IGNORED, "owned elsewhere")
        got = await uow.deliveries.get("evt_f")
        return None if got is None else got.outcome

    assert await backend.store.run(mark) == "IGNORED"
    assert await backend.probe.delivery("evt_f") == ("IGNORED", ["older", "owned elsewhere"], S)


async def test_scrubbing_removes_personal_data_from_one_or_a_subjects_payloads(
    backend: Backend,
) -> None:
    def body(n: int) -> bytes:
        return json.dumps({"data": {"id": f"u{n}", "email": "a@example.com"}}).encode()

    stored = {
        "evt_s1": delivery("evt_s1", S, body(1)),
        "evt_s2": delivery("evt_s2", S, body(2)),
        "evt_o1": delivery("evt_o1", "user_other", body(3)),
        "evt_o2": delivery("evt_o2", "user_other", b"not json"),
    }

    async def work(uow: UnitOfWork) -> list[bytes]:
        for d, e in stored.values():
            await uow.deliveries.add(d, e, False)
        await uow.deliveries.scrub_subject(S)
        await uow.deliveries.scrub("evt_o2")
        return [got.payload for i in stored if (got := await uow.deliveries.get(i))]

    scrubbed = {"id": "u1", "email": SCRUBBED}
    payloads = await backend.store.run(work)
    assert json.loads(payloads[0]) == {"data": scrubbed}
    assert json.loads(payloads[1])["data"]["email"] == SCRUBBED
    assert payloads[2:] == [body(3), b""]  # another subject's kept; not JSON: dropped whole


async def test_the_log_is_read_in_event_id_order_by_selector(backend: Backend) -> None:
    async def work(uow: UnitOfWork) -> None:
        for n in (3, 1, 4, 2):
            d, e = delivery(f"evt_{n}", S if n % 2 else "user_other")
            await uow.deliveries.add(d, e, False)
        d, e = delivery("evt_0", None)
        await uow.deliveries.record(d, e, Outcome.UNPARSEABLE, ["bad"])

    await backend.store.run(work)
    everything, mine = DeliverySelector(), DeliverySelector(subject=S)
    bad = DeliverySelector(unparseable=True)
    counts = [await backend.store.count_deliveries(s) for s in (everything, mine, bad)]
    assert counts == [5, 2, 1]

    async def ids(selector: DeliverySelector, after: str, limit: int) -> list[str]:
        page = await backend.store.deliveries_page(selector, after, limit)
        assert all(isinstance(d, StoredDelivery) for d in page)
        return [d.event_id for d in page]

    assert await ids(everything, "", 3) == ["evt_0", "evt_1", "evt_2"]
    assert await ids(everything, "evt_2", 3) == ["evt_3", "evt_4"]
    assert await ids(mine, "evt_1", 10) == ["evt_3"]
    assert await ids(bad, "", 10) == ["evt_0"]
    assert await ids(everything, "evt_4", 10) == []


async def test_recorded_text_is_bounded_alike(backend: Backend) -> None:
    """A type or note too long to be worth keeping is cut (1000 characters), NUL replaced."""
    long_type = "x" * 1500
    d, e = delivery("evt_long", None, type_=long_type)

    async def work(uow: UnitOfWork) -> str | None:
        await uow.deliveries.record(d, e, Outcome.IGNORED, ["n" * 1500, "a\x00b"])
        await uow.deliveries.mark("evt_long", Outcome.IGNORED, "m" * 1200)
        got = await uow.deliveries.get("evt_long")
        return None if got is None else got.type

    assert await backend.store.run(work) == "x" * 1000
    assert await backend.probe.delivery("evt_long") == (
        "IGNORED", ["n" * 1000, "a\ufffdb", "m" * 1000], None,
    )  # fmt: skip
