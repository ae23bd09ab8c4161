"""Housekeeping: keep the change log bounded (a watcher resuming from before it gets
OUT_OF_RANGE), scrub personal data from payloads older than their retention, roll up recorded
usage calls older than theirs, and drop scratch schemas an interrupted verify left behind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from service.application.ports import Operations, StoreUnavailable

log = logging.getLogger(__name__)

PASS_SECONDS = 60.0


async def housekeeping_pass(
    operations: Operations,
    change_log_retention_seconds: float,
    payload_retention_seconds: float,
    usage_retention_seconds: float = 90 * 24 * 3600.0,
) -> None:
    """One pass; each job is supervised on its own: an error is logged and the others (and the
    next pass) still run, so privacy scrubbing and pruning never stop silently."""
    jobs: tuple[tuple[str, Callable[[], Awaitable[int | list[str]]]], ...] = (
        (
            "prune the change log",
            lambda: operations.prune_change_log(change_log_retention_seconds),
        ),
        ("scrub old payloads", lambda: operations.scrub_older_than(payload_retention_seconds)),
        ("drop abandoned verify schemas", operations.drop_abandoned_scratch_schemas),
        ("roll up old usage records", lambda: operations.roll_up_usage(usage_retention_seconds)),
    )
    for what, job in jobs:
        try:
            done = await job()
        except StoreUnavailable:
            continue
        except Exception:  # broad on purpose: one failed job must not stop the others
            log.exception("housekeeping: could not %s; retrying next pass", what)
            continue
        if done:
            log.info("housekeeping: %s: %s", what, done if isinstance(done, int) else len(done))


async def run_housekeeping(
    operations: Operations,
    change_log_retention_seconds: float,
    payload_retention_seconds: float,
    usage_retention_seconds: float = 90 * 24 * 3600.0,
) -> None:
    while True:
        await housekeeping_pass(
            operations,
            change_log_retention_seconds,
            payload_retention_seconds,
            usage_retention_seconds,
        )
        await asyncio.sleep(PASS_SECONDS)
