"""The usage repository in memory (part of tests/support/fakes.py's unit of work): counters,
the answer each idempotency key got, reservations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from service.domain.consumption import Recorded
from service.domain.usage import Answer, Counter, Kind, Period, Reservation


@dataclass
class UsageData:
    counters: dict[tuple[str, str], Counter] = field(default_factory=dict)
    records: dict[tuple[str, str, str], Answer] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)

    def held(self, subject: str, meter: str, now_ms: int) -> int:
        return sum(
            r.amount
            for r in self.reservations.values()
            if r.subject == subject and r.meter == meter and r.holds_at(now_ms)
        )


class FakeUsage:
    """UsageRepository in memory (the unit of work's copy is the lock: it runs alone)."""

    def __init__(self, data: UsageData) -> None:
        self._data = data

    async def lock(
        self, subject: str, meter: str, period: Period, now_ms: int, key: str | None
    ) -> tuple[Counter, Answer | None]:
        counter = self._data.counters.setdefault((subject, meter), Counter(period))
        held = self._data.held(subject, meter, now_ms)
        prior = self._data.records.get((subject, meter, key)) if key else None
        return replace(counter, reserved=held), prior

    async def lock_many(
        self,
        counters: Sequence[tuple[str, str, Period]],
        calls: Sequence[tuple[str, str, str]],
        now_ms: int,
    ) -> tuple[dict[tuple[str, str], Counter], list[Answer | None]]:
        locked = {(s, m): (await self.lock(s, m, p, now_ms, None))[0] for s, m, p in counters}
        return locked, [self._data.records.get(call) for call in calls]

    async def save_many(self, records: Sequence[Recorded], at_ms: int) -> None:
        for r in records:
            await self.save(r.subject, r.meter, r.counter, r.kind, r.key, r.amount, r.answer, at_ms)

    async def save(
        self,
        subject: str,
        meter: str,
        counter: Counter,
        kind: Kind,
        key: str,
        amount: int,
        answer: Answer,
        at_ms: int,
    ) -> None:
        self._data.counters[(subject, meter)] = replace(counter, reserved=0)
        self._data.records[(subject, meter, key)] = answer

    async def hold(self, reservation: Reservation) -> None:
        self._data.reservations[reservation.reservation_id] = reservation

    async def reservation(self, reservation_id: str) -> Reservation | None:
        return self._data.reservations.get(reservation_id)

    async def finish(self, reservation_id: str, committed_amount: int | None) -> None:
        found = self._data.reservations.get(reservation_id)
        if found is not None:
            self._data.reservations[reservation_id] = replace(found, held=False)

    async def counters(self, subject: str, now_ms: int) -> dict[str, Counter]:
        return {
            meter: replace(c, reserved=self._data.held(subject, meter, now_ms))
            for (s, meter), c in self._data.counters.items()
            if s == subject
        }
