"""The local cache and its freshness rules (pure: no I/O; the clients' base, _base.py, feeds
it from the watch stream and asks it before every check).

The freshness contract (SPEC §9, §10.5): the service sends a heartbeat on the watch stream at
least every second, carrying how far behind the stream may be (`lag`). A local answer is given
only while the last heartbeat, aged by the time since it arrived plus that lag, is within
`max_staleness`; otherwise the client asks the service (and raises if that fails).

Heartbeats also say what the answers depend on: the change log (`log_id`, new when the
service's database is wiped, replaced or restored) and the catalog (`catalog_fingerprint`).
When either changes every local answer is dropped. And they carry the server's clock: an
answer's `valid_until` is judged on it (this machine's clock corrected by the offset seen),
so a client whose clock is off never answers past a period end the server has passed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements_client._answers import LimitCheck, Snapshot, answers_locally, limit_check
from entitlements_client._errors import ClientConfigError, InvalidArgument

DEFAULT_MAX_STALENESS = 5.0
# The service beats every second: a bound below two beats would flicker between local and RPC.
MIN_MAX_STALENESS = 2.0


def _system_time() -> float:
    """This machine's wall clock (looked up at each call, so a test can move it)."""
    return time.time()


class LocalCache:
    """Subject → Snapshot, bounded LRU, fed by the watch stream; trusted only while `synced`.

    `clock` is a monotonic clock in seconds, `wall_clock` this machine's time in seconds
    (tests pass their own)."""

    def __init__(
        self,
        max_subjects: int = 100_000,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        if max_staleness < MIN_MAX_STALENESS:
            raise ClientConfigError(
                f"max_staleness must be at least {MIN_MAX_STALENESS} s "
                "(heartbeats come every second)"
            )
        self.max_subjects = max_subjects
        self.max_staleness = max_staleness
        self._clock = clock
        self.entries: OrderedDict[str, Snapshot] = OrderedDict()
        # The newest entitlements version the stream showed per subject: an RPC answer older
        # than it (from a replica that has not seen the change yet) is never cached.
        self._watched: OrderedDict[str, int] = OrderedDict()
        self.generation = 0
        self.resume_version: int | None = None
        self.features: frozenset[str] = frozenset()
        # The catalog's metered limits, as every snapshot lists them (kept across subjects,
        # so that one snapshot missing them never lets a metered check be answered here).
        self.metered: frozenset[str] = frozenset()
        # What the answers held depend on, as the stream last said (SPEC §10.5).
        self.log_id = ""
        self.catalog_fingerprint = ""
        # Set when a heartbeat showed another catalog: ListPlans must be read again (the
        # client does it) before local answers are trusted.
        self.catalog_stale = False
        # The server's wall clock minus this machine's, in ms, from the last heartbeat.
        self.clock_offset_ms = 0.0
        self._wall = wall_clock or _system_time
        self._heard_at: float | None = None  # monotonic time of the stream's last message
        # Local answers are trusted until this monotonic instant: last heartbeat + bound - its
        # lag; -inf while the stream is not caught up.
        self._trust_until = float("-inf")

    # ---- freshness -------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """True only while a local answer cannot be older than `max_staleness`."""
        return self._clock() <= self._trust_until

    # ---- answers ----------------------------------------------------------------------------

    def fresh(self, subject: str) -> Snapshot | None:
        """The snapshot when it may answer now, else None (then the client asks the service)."""
        # The hot path of every local check: one clock read, one dict lookup.
        if self._clock() > self._trust_until:
            return None
        snap = self.entries.get(subject)
        if snap is None:
            return None
        until = snap.valid_until_ms
        if until is not None and self.server_now_ms() >= until:
            return None
        return snap

    def server_now_ms(self) -> float:
        """The server's time now, as this machine's clock corrected by the heartbeats."""
        return self._wall() * 1000 + self.clock_offset_ms

    def decide(self, snap: Snapshot, feature: str) -> bool:
        """The local answer for `feature`; an unknown feature is an error, as on the server."""
        if feature in snap.features:
            return True
        if feature in self.features:
            return False
        raise InvalidArgument(f"unknown feature {feature!r}")

    def limit_answer(
        self, snap: Snapshot, limit: str, current_usage: int, requested: int
    ) -> LimitCheck | None:
        """The local answer for a limit check, or None when only the service may answer it:
        a metered limit, whose usage moves with every consumption anywhere (SPEC §10.1)."""
        if not answers_locally(snap, limit, self.metered):
            return None
        return limit_check(snap, limit, current_usage, requested)

    def put_from_rpc(self, snap: Snapshot, generation: int) -> None:
        """Cache an RPC answer unless the stream moved on since it was asked for, or showed a
        newer version of this subject (the RPC may have reached a replica that lags)."""
        if self._trust_until == float("-inf") or generation != self.generation:
            return
        if snap.version < self._watched.get(snap.subject, 0):
            return
        self._store(snap)

    # ---- the stream ---------------------------------------------------------------------------

    def apply(self, message: pb.WatchEntitlementsResponse) -> Snapshot | None:
        """One watch message: a change (its snapshot is returned, for `on_change`), or a
        heartbeat ("caught up", with the lag; None is returned)."""
        self.generation += 1
        self._heard_at = self._clock()
        if message.subject:
            snap = Snapshot.from_message(message.entitlements)
            self._watched[snap.subject] = max(snap.version, self._watched.get(snap.subject, 0))
            self._watched.move_to_end(snap.subject)
            if len(self._watched) > 2 * self.max_subjects:
                self._watched.popitem(last=False)
            self._store(snap)
            self.resume_version = message.version
            return snap
        if message.HasField("server_time"):
            self.clock_offset_ms = message.server_time.ToMilliseconds() - self._wall() * 1000
        self._check_identity(message.log_id, message.catalog_fingerprint)
        if not self.catalog_stale:
            lag = message.lag.ToMilliseconds() / 1000 if message.HasField("lag") else 0.0
            self._trust_until = self._clock() + self.max_staleness - lag
        self.resume_version = message.version
        return None

    def _check_identity(self, log_id: str, fingerprint: str) -> None:
        """Drop every local answer when the change log or the catalog is not the one they came
        from (a wiped or restored database; a service restarted with another catalog)."""
        log_changed = bool(log_id and self.log_id and log_id != self.log_id)
        catalog_changed = bool(
            fingerprint and self.catalog_fingerprint and fingerprint != self.catalog_fingerprint
        )
        if log_changed or catalog_changed:
            self._forget()
        if catalog_changed:
            self.catalog_stale = True
        self.log_id = log_id or self.log_id
        self.catalog_fingerprint = fingerprint or self.catalog_fingerprint

    def plans_loaded(self, plans: pb.ListPlansResponse) -> None:
        """ListPlans' answer: the features any check may name, and the catalog's fingerprint."""
        self.features = frozenset(plans.features)
        if plans.catalog_fingerprint and plans.catalog_fingerprint != self.catalog_fingerprint:
            if self.catalog_fingerprint:
                self._forget()
                self.metered = frozenset()  # the new catalog's snapshots name its meters
            self.catalog_fingerprint = plans.catalog_fingerprint
        self.catalog_stale = False

    def _forget(self) -> None:
        self._trust_until = float("-inf")
        self.generation += 1
        self.entries.clear()
        self._watched.clear()

    def _store(self, snap: Snapshot) -> None:
        if not self.metered.issuperset(snap.metered):
            self.metered = self.metered.union(snap.metered)
        self.entries[snap.subject] = snap
        self.entries.move_to_end(snap.subject)
        if len(self.entries) > self.max_subjects:
            self.entries.popitem(last=False)

    def lost(self) -> None:
        """The stream broke: stop trusting the cache until it has caught up again."""
        self._trust_until = float("-inf")
        self.generation += 1

    def reset(self) -> None:
        """The resume point is gone (OUT_OF_RANGE: pruned, or of a change log the service no
        longer follows): forget everything, watch from now."""
        self._forget()
        self.resume_version = None
        self.log_id = ""

    def watch_request(self) -> pb.WatchEntitlementsRequest:
        request = pb.WatchEntitlementsRequest()
        if self.resume_version is not None:
            request.since_version = self.resume_version
            request.log_id = self.log_id
        return request

    def stream_started(self) -> None:
        self._heard_at = self._clock()

    def silent_too_long(self) -> bool:
        """Nothing heard on the stream for longer than `max_staleness` (the service sends a
        heartbeat every second): the path is presumed dead and the stream is restarted."""
        heard = self._heard_at
        return heard is not None and self._clock() - heard > self.max_staleness
