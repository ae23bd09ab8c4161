"""A bounded LRU of resolved entitlements, invalidated by PostgreSQL notifications.

The `generation` guard closes the read/invalidate race: a load that started before an
invalidation must not put its (possibly stale) result into the cache afterwards.
"""

from __future__ import annotations

from collections import OrderedDict

from service.application.records import CacheEntry


class EntitlementCache:
    def __init__(self, max_subjects: int) -> None:
        if max_subjects <= 0:
            raise ValueError("max_subjects must be positive")
        self.max_subjects = max_subjects
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self.generation = 0
        # False while the change listener is disconnected: nothing is served from the cache then.
        self.live = False
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, subject: str) -> CacheEntry | None:
        if not self.live:
            return None
        entry = self._entries.get(subject)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(subject)
        self.hits += 1
        return entry

    def put(self, subject: str, entry: CacheEntry, generation: int) -> bool:
        """Store `entry` unless an invalidation happened since `generation` was read."""
        if not self.live or generation != self.generation:
            return False
        self._entries[subject] = entry
        self._entries.move_to_end(subject)
        if len(self._entries) > self.max_subjects:
            self._entries.popitem(last=False)
        return True

    def replace(self, subject: str, entry: CacheEntry) -> None:
        """Swap an entry for one re-resolved from the same state (time passed, no new event)."""
        if subject in self._entries:
            self._entries[subject] = entry

    def invalidate(self, subject: str) -> None:
        self.generation += 1
        self._entries.pop(subject, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def set_live(self, live: bool) -> None:
        """Listener state changed: either way, notifications may have been missed."""
        self.clear()
        self.live = live
