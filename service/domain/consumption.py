"""Consume calls that share one transaction (group commit, SPEC §10.1): they are applied one
after another, in the order they arrived, each exactly as if it had run alone — so batching
changes how many round trips the calls cost, never what any of them answers.

A key already answered (stored before, or earlier in the same batch) gets that answer again and
counts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.domain.catalog import LimitValue
from service.domain.usage import Answer, Counter, Kind, Period


@dataclass(frozen=True, slots=True)
class ConsumeCall:
    """One Consume, with the terms read just before it: the limit's value and its period."""

    subject: str
    meter: str
    amount: int
    key: str
    limit: LimitValue
    period: Period


@dataclass(frozen=True, slots=True)
class Recorded:
    """One call to store: the counter after it, what it was and what it answered."""

    subject: str
    meter: str
    counter: Counter
    kind: Kind
    key: str
    amount: int
    answer: Answer


def consume_in_order(
    calls: Sequence[ConsumeCall],
    counters: Mapping[tuple[str, str], Counter],
    priors: Sequence[Answer | None],
    now_ms: int,
) -> tuple[list[tuple[Answer, bool]], list[Recorded]]:
    """Each call's answer (and whether it is a retry's), and the records to store, from the
    locked `counters` and the answer each call's key got before (`priors`, aligned)."""
    current = dict(counters)
    answered: dict[tuple[str, str, str], Answer] = {}
    results: list[tuple[Answer, bool]] = []
    records: list[Recorded] = []
    for call, prior in zip(calls, priors, strict=True):
        ident = (call.subject, call.meter, call.key)
        first = prior or answered.get(ident)
        if first is not None:
            results.append((first, True))
            continue
        pair = (call.subject, call.meter)
        after, decision = current[pair].at(now_ms, call.period).consume(call.limit, call.amount)
        current[pair] = after
        answer = Answer.of(after, call.limit, decision.allowed)
        answered[ident] = answer
        recorded = call.amount if decision.allowed else 0
        records.append(
            Recorded(call.subject, call.meter, after, Kind.CONSUME, call.key, recorded, answer)
        )
        results.append((answer, False))
    return results, records
