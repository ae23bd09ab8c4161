"""`FakeEntitlementsClient` and its `Plan`: see `entitlements_client.testing`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Final

from entitlements_client._answers import (
    Decision,
    LimitCheck,
    Limits,
    LimitValue,
    MeterPeriod,
    Snapshot,
    limit_check,
)
from entitlements_client._errors import EntitlementsError, InvalidArgument, NotFound
from entitlements_client._usage import (
    INT64_MAX,
    Consumption,
    MeterUsage,
    Reservation,
    Settlement,
    Usage,
    UsageReport,
    commit_request,
    consume_request,
    report_request,
    reserve_request,
)

UNLIMITED: Final = "unlimited"


@dataclass(frozen=True)
class Plan:
    """A plan of the fake's catalog: its features and a value (or `UNLIMITED`) per limit."""

    features: Iterable[str] = ()
    limits: Mapping[str, int | str] = field(default_factory=dict)


def _value(value: int | str) -> LimitValue:
    return LimitValue(0, True) if value == UNLIMITED else LimitValue(int(value), False)


class FakeEntitlementsClient:
    """`EntitlementsClient` in memory. `metered` names the limits whose usage it counts."""

    def __init__(
        self,
        plans: Mapping[str, Plan],
        *,
        default_plan: str,
        metered: Iterable[str] = (),
        on_change: Callable[[str, Snapshot], object] | None = None,
    ) -> None:
        if default_plan not in plans:
            raise ValueError(f"default_plan {default_plan!r} is not one of the plans")
        self._plans = {name: (frozenset(p.features), dict(p.limits)) for name, p in plans.items()}
        self.features = frozenset().union(*(f for f, _ in self._plans.values()))
        self.limits = frozenset().union(*(set(lim) for _, lim in self._plans.values()))
        self.metered = frozenset(metered)
        self._default = default_plan
        self._on_change = on_change
        self._plan: dict[str, str] = {}
        self._feature: dict[tuple[str, str], bool] = {}
        self._limit: dict[tuple[str, str], LimitValue] = {}
        self._used: dict[tuple[str, str], int] = {}
        self._held: dict[str, tuple[str, str, int]] = {}  # reservation id -> subject, limit, n
        self._answers: dict[str, object] = {}  # idempotency key -> first answer
        self._version = 0
        self._failure: EntitlementsError | None = None
        self.synced = True

    # ---- what a test sets --------------------------------------------------------------------

    def set_plan(self, subject: str, plan: str) -> None:
        if plan not in self._plans:
            raise ValueError(f"unknown plan {plan!r}")
        self._plan[subject] = plan
        self._changed(subject)

    def set_feature(self, subject: str, feature: str, enabled: bool | None) -> None:
        """An override: grant (True) or withhold (False) `feature`; None removes it."""
        self._known(feature, self.features, "feature")
        if enabled is None:
            self._feature.pop((subject, feature), None)
        else:
            self._feature[(subject, feature)] = enabled
        self._changed(subject)

    def set_limit(self, subject: str, limit: str, value: int | str | None) -> None:
        """An override of a limit's value (`UNLIMITED` allowed); None removes it."""
        self._known(limit, self.limits, "limit")
        if value is None:
            self._limit.pop((subject, limit), None)
        else:
            self._limit[(subject, limit)] = _value(value)
        self._changed(subject)

    def set_usage(self, subject: str, limit: str, used: int) -> None:
        self._metered(limit)
        self._used[(subject, limit)] = used

    def fail_with(self, error: EntitlementsError | None) -> None:
        """Every call raises `error` from now on (None: answer again)."""
        self._failure = error

    # ---- the client's methods ----------------------------------------------------------------

    def start(self) -> None:
        self._check()

    def wait_synced(self, timeout: float = 10.0) -> bool:
        return self.synced

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeEntitlementsClient:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def can_use(self, subject: str, feature: str) -> bool:
        return self.check(subject, feature).allowed

    def check(self, subject: str, feature: str) -> Decision:
        self._check()
        self._known(feature, self.features, "feature")
        snap = self.snapshot(subject)
        overridden = self._feature.get((subject, feature))
        if overridden is not None:
            reason = "FEATURE_OVERRIDE_ENABLED" if overridden else "FEATURE_OVERRIDE_DISABLED"
        else:
            reason = "FEATURE_IN_PLAN" if feature in snap.features else "FEATURE_NOT_IN_PLAN"
        return Decision(feature in snap.features, snap.plan, reason)

    def snapshot(self, subject: str) -> Snapshot:
        self._check()
        plan = self._plan.get(subject, self._default)
        features, plan_limits = self._plans[plan]
        granted = {f for (s, f), on in self._feature.items() if s == subject and on}
        withheld = {f for (s, f), on in self._feature.items() if s == subject and not on}
        limits = {name: _value(v) for name, v in plan_limits.items()}
        limits.update({lim: v for (s, lim), v in self._limit.items() if s == subject})
        return Snapshot(
            subject=subject,
            plan=plan,
            features=frozenset((features | granted) - withheld),
            limits=limits,
            valid_until_ms=None,
            version=self._version,
            metered={m: MeterPeriod(m, None, None) for m in sorted(self.metered)},
        )

    def get_limits(self, subject: str) -> Limits:
        snap = self.snapshot(subject)
        return Limits(snap.plan, snap.limits)

    def check_limit(
        self, subject: str, limit: str, current_usage: int = 0, requested: int = 1
    ) -> LimitCheck:
        snap = self.snapshot(subject)
        if limit in self.metered and current_usage == 0:
            current_usage = self._in_use(subject, limit)
        return limit_check(snap, limit, current_usage, requested)

    def consume(
        self, subject: str, limit: str, amount: int = 1, idempotency_key: str | None = None
    ) -> Consumption:
        request = consume_request(subject, limit, amount, idempotency_key)
        value = self._meter(subject, limit)
        key = request.idempotency_key
        first = self._answers.get(key)
        if isinstance(first, Consumption):
            return replace(first, duplicate=True)
        fits = value.unlimited or self._in_use(subject, limit) + amount <= value.value
        if fits:
            self._used[(subject, limit)] = self._used.get((subject, limit), 0) + amount
        used, remaining = self._counts(subject, limit, value)
        answer = Consumption(fits, used, remaining, value.unlimited, value.value, None, False)
        self._answers[key] = answer
        return answer

    def report_usage(
        self,
        subject: str,
        limit: str,
        delta: int | None = None,
        set: int | None = None,
        idempotency_key: str | None = None,
    ) -> UsageReport:
        request = report_request(subject, limit, delta, set, idempotency_key)
        value = self._meter(subject, limit)
        first = self._answers.get(request.idempotency_key)
        if isinstance(first, UsageReport):
            return replace(first, duplicate=True)
        now = self._used.get((subject, limit), 0)
        self._used[(subject, limit)] = max(0, set if set is not None else now + (delta or 0))
        used, remaining = self._counts(subject, limit, value)
        answer = UsageReport(used, remaining, value.unlimited, value.value, None, False)
        self._answers[request.idempotency_key] = answer
        return answer

    def reserve(
        self,
        subject: str,
        limit: str,
        amount: int,
        ttl_seconds: int = 0,
        idempotency_key: str | None = None,
    ) -> Reservation:
        reserve_request(subject, limit, amount, ttl_seconds, idempotency_key)
        value = self._meter(subject, limit)
        fits = value.unlimited or self._in_use(subject, limit) + amount <= value.value
        reservation_id = f"rsv_{uuid.uuid4().hex}" if fits else None
        if reservation_id is not None:
            self._held[reservation_id] = (subject, limit, amount)
        used, remaining = self._counts(subject, limit, value)
        unlimited = value.unlimited
        return Reservation(fits, reservation_id, None, used, remaining, unlimited, None, False)

    def commit(self, reservation_id: str, amount: int) -> Settlement:
        commit_request(reservation_id, amount)
        subject, limit, held = self._take(reservation_id)
        if amount > held:
            self._held[reservation_id] = (subject, limit, held)
            raise InvalidArgument(f"amount must be at most the reserved {held}")
        self._used[(subject, limit)] = self._used.get((subject, limit), 0) + amount
        return self._settled(subject, limit)

    def release(self, reservation_id: str) -> Settlement:
        self._check()
        subject, limit, _ = self._take(reservation_id)
        return self._settled(subject, limit)

    def get_usage(self, subject: str) -> Usage:
        snap = self.snapshot(subject)
        meters = {}
        for name in sorted(self.metered):
            value = snap.limits[name]
            held = self._in_use(subject, name) - self._used.get((subject, name), 0)
            used, remaining = self._counts(subject, name, value)
            meters[name] = MeterUsage(
                name, used, held, remaining, value.unlimited, value.value, None, None
            )
        return Usage(subject, meters)

    # ---- inside ------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    @staticmethod
    def _known(name: str, known: frozenset[str], what: str) -> None:
        if name not in known:
            raise InvalidArgument(f"unknown {what} {name!r}")

    def _metered(self, limit: str) -> None:
        self._known(limit, self.limits, "limit")
        if limit not in self.metered:
            raise InvalidArgument(f"limit {limit!r} is not metered")

    def _meter(self, subject: str, limit: str) -> LimitValue:
        self._check()
        self._metered(limit)
        return self.snapshot(subject).limits[limit]

    def _in_use(self, subject: str, limit: str) -> int:
        held = sum(n for s, lim, n in self._held.values() if (s, lim) == (subject, limit))
        return self._used.get((subject, limit), 0) + held

    def _counts(self, subject: str, limit: str, value: LimitValue) -> tuple[int, int]:
        used = self._used.get((subject, limit), 0)
        if value.unlimited:
            return used, INT64_MAX
        return used, max(0, value.value - self._in_use(subject, limit))

    def _take(self, reservation_id: str) -> tuple[str, str, int]:
        found = self._held.pop(reservation_id, None)
        if found is None:
            raise NotFound(f"no reservation {reservation_id!r}")
        return found

    def _settled(self, subject: str, limit: str) -> Settlement:
        value = self.snapshot(subject).limits[limit]
        used, remaining = self._counts(subject, limit, value)
        return Settlement(used, remaining, value.unlimited)

    def _changed(self, subject: str) -> None:
        self._version += 1
        if self._on_change is not None:
            self._on_change(subject, self.snapshot(subject))
