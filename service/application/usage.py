"""Use cases of metered limits (SPEC §10.1): consume, report, reserve / commit / release, and
read usage. Each write is one unit of work that locks the subject's counter of that limit; the
rules (the period, what fits, what a reservation holds) are the domain's (domain/usage.py).

The limit's value and the period come from the subject's entitlements as now resolved (the
plan with its overrides, the entitling item's billing period), read just before the unit of
work: a plan change committed in between applies from the next call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from service.application.consume_queue import ConsumeQueue
from service.application.ports import Clock, Transactions, UnitOfWork, UsageReader
from service.application.reads import EntitlementReader
from service.domain.bounds import INT64_MAX, echo
from service.domain.catalog import Catalog, LimitValue
from service.domain.consumption import ConsumeCall
from service.domain.errors import InvalidArgument, NotFound
from service.domain.resolution import Entitlements
from service.domain.subjects import require_subject
from service.domain.usage import (
    Answer,
    Counter,
    Kind,
    Period,
    Reservation,
    applied,
    period_at,
    reservation_ttl_ms,
)

MAX_KEY_BYTES = 255


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One metered limit's usage now (GetUsage, and the usage shown with entitlements)."""

    limit: str
    counter: Counter
    value: LimitValue

    @property
    def remaining(self) -> int:
        return self.counter.remaining(self.value)


def _checked_key(key: str) -> str:
    if not key or len(key.encode("utf-8", "replace")) > MAX_KEY_BYTES or not key.isprintable():
        raise InvalidArgument(
            f"idempotency_key is required: 1 to {MAX_KEY_BYTES} bytes of printable characters"
        )
    return key


def _checked_amount(amount: int, what: str = "amount", minimum: int = 1) -> int:
    if not minimum <= amount <= INT64_MAX:
        raise InvalidArgument(f"{what} must be {minimum} or more")
    return amount


class Usage:
    def __init__(
        self,
        transactions: Transactions,
        reads: EntitlementReader,
        counters: UsageReader,
        catalog: Catalog,
        clock: Clock,
    ) -> None:
        self._tx = transactions
        self._reads = reads
        self._counters = counters
        self._catalog = catalog
        self._clock = clock
        self._queue = ConsumeQueue(transactions, clock)

    def metered(self, limit: str) -> str:
        if limit not in self._catalog.meters:
            if limit in self._catalog.limit_names:
                raise InvalidArgument(f"limit {echo(limit)} is not metered")
            raise InvalidArgument(f"unknown limit {echo(limit)}")
        return limit

    async def _terms(self, subject: str, limit: str) -> tuple[Entitlements, LimitValue, Period]:
        """The subject's entitlements now, the limit's value and its current period."""
        ent = (await self._reads.get(require_subject(subject))).entitlements
        period = period_at(self._catalog.meters[limit], self._clock.now_ms(), ent.billing)
        return ent, ent.limits[limit], period

    async def consume(self, subject: str, limit: str, amount: int, key: str) -> tuple[Answer, bool]:
        """Record `amount` when it fits (atomic); the answer and whether it is a retry's.
        Calls waiting at the same moment share one transaction (consume_queue.py)."""
        self.metered(limit)
        _checked_amount(amount)
        _checked_key(key)
        _, value, period = await self._terms(subject, limit)
        return await self._queue.consume(ConsumeCall(subject, limit, amount, key, value, period))

    async def report(
        self, subject: str, limit: str, delta: int | None, total: int | None, key: str
    ) -> tuple[Answer, bool]:
        """Record usage without a check: add `delta` or set the period's `total`."""
        self.metered(limit)
        if (delta is None) == (total is None):
            raise InvalidArgument("give exactly one of delta and set")
        if total is not None:
            _checked_amount(total, "set", minimum=0)
        if delta is not None and not -INT64_MAX <= delta <= INT64_MAX:
            raise InvalidArgument("delta is beyond int64")
        _checked_key(key)
        _, value, period = await self._terms(subject, limit)

        async def work(uow: UnitOfWork) -> tuple[Answer, bool]:
            now = self._clock.now_ms()
            counter, prior = await uow.usage.lock(subject, limit, period, now, key)
            if prior is not None:
                return prior, True
            kind, amount = (Kind.SET, total) if total is not None else (Kind.REPORT, delta)
            assert amount is not None
            after = applied(counter.at(now, period), kind, amount)
            answer = Answer.of(after, value, True)
            await uow.usage.save(subject, limit, after, kind, key, amount, answer, now)
            return answer, False

        return await self._tx.run(work)

    async def reserve(
        self, subject: str, limit: str, amount: int, ttl_seconds: int, key: str
    ) -> tuple[Answer, bool]:
        """Hold `amount` units when they fit; they count as used until committed, released
        or expired."""
        self.metered(limit)
        _checked_amount(amount)
        _checked_key(key)
        ttl_ms = reservation_ttl_ms(ttl_seconds)
        if ttl_ms is None:
            raise InvalidArgument("ttl_seconds must be 1 to 86400 (0: 300)")
        _, value, period = await self._terms(subject, limit)

        async def work(uow: UnitOfWork) -> tuple[Answer, bool]:
            now = self._clock.now_ms()
            counter, prior = await uow.usage.lock(subject, limit, period, now, key)
            if prior is not None:
                return prior, True
            counter = counter.at(now, period)
            fits = value.unlimited or counter.used + counter.reserved + amount <= value.value
            if not fits:
                answer = Answer.of(counter, value, False)
                await uow.usage.save(subject, limit, counter, Kind.RESERVE, key, 0, answer, now)
                return answer, False
            reservation = Reservation(
                "rsv_" + uuid.uuid4().hex, subject, limit, amount, now + ttl_ms
            )
            await uow.usage.hold(reservation)
            held = replace(counter, reserved=counter.reserved + amount)
            answer = Answer.of(
                held, value, True, reservation.reservation_id, reservation.expires_at_ms
            )
            await uow.usage.save(subject, limit, counter, Kind.RESERVE, key, amount, answer, now)
            return answer, False

        return await self._tx.run(work)

    async def finish(self, reservation_id: str, amount: int | None) -> Answer:
        """Commit (`amount` units recorded, at most those reserved) or release (None) a
        reservation. Finishing one already finished changes nothing and answers the usage;
        committing one that expired still records what the work used."""
        if not reservation_id:
            raise InvalidArgument("reservation_id is required")
        if amount is not None:
            _checked_amount(amount, minimum=0)

        async def locked(uow: UnitOfWork) -> Reservation:
            reservation = await uow.usage.reservation(reservation_id)
            if reservation is None:
                raise NotFound(f"no reservation {echo(reservation_id)}")
            return reservation

        first = await self._tx.run(locked)  # whose it is: their terms are read outside
        _, value, period = await self._terms(first.subject, first.meter)

        async def work(uow: UnitOfWork) -> Answer:
            reservation = await locked(uow)
            if amount is not None and amount > reservation.amount:
                raise InvalidArgument(f"amount must be at most the reserved {reservation.amount}")
            now = self._clock.now_ms()
            counter, _ = await uow.usage.lock(
                reservation.subject, reservation.meter, period, now, None
            )
            counter = counter.at(now, period)
            if not reservation.held:
                return Answer.of(counter, value, True)
            if reservation.holds_at(now):  # what it held is no longer held
                counter = replace(counter, reserved=max(0, counter.reserved - reservation.amount))
            kind = Kind.RELEASE if amount is None else Kind.COMMIT
            counter = applied(counter, kind, amount or 0)
            answer = Answer.of(counter, value, True, reservation_id)
            await uow.usage.finish(reservation_id, amount)
            await uow.usage.save(
                reservation.subject,
                reservation.meter,
                counter,
                kind,
                f"{kind.value}:{reservation_id}",
                amount or 0,
                answer,
                now,
            )
            return answer

        return await self._tx.run(work)

    async def usage(
        self, subject: str, entitlements: Entitlements | None = None
    ) -> list[MeterUsage]:
        """Every metered limit's usage in its current period (a meter never used: 0);
        `entitlements`: the subject's, when the caller has just read them."""
        ent = entitlements or (await self._reads.get(require_subject(subject))).entitlements
        now = self._clock.now_ms()
        stored = await self._counters.counters(subject, now) if self._catalog.meters else {}
        found = []
        for limit, reset in sorted(self._catalog.meters.items()):
            period = period_at(reset, now, ent.billing)
            counter = stored.get(limit, Counter(period)).at(now, period)
            found.append(MeterUsage(limit, counter, ent.limits[limit]))
        return found
