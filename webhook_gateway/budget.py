"""The budget of buffered body bytes: what callers send never decides what the gateway holds.

aiohttp caps one body (`client_max_size`) but not how many it buffers at once, so 300
connections each sending 1 MiB held 300 MiB. Every request reserves its bytes here BEFORE its
body is read — the declared Content-Length at once, a chunked body step by step — and a
request that does not fit is answered 503 without being read. A quarter of the budget is kept
for small bodies (Clerk deliveries are a few KiB), so a flood of large bodies cannot starve a
legitimate delivery. Reservations are released on every path (answer, timeout, disconnect).
"""

from __future__ import annotations

from dataclasses import dataclass

# A body up to this size may use the share kept for small bodies.
SMALL_BODY_BYTES = 64 * 1024
# Charged per request on top of its body: its headers and objects (bounds their number too).
REQUEST_OVERHEAD_BYTES = 2 * 1024
SMALL_SHARE_DIVISOR = 4


@dataclass
class BodyBudget:
    """Bytes reserved by bodies being read or handled, in one event loop (no locking)."""

    total: int
    in_use: int = 0
    large_in_use: int = 0
    # Set by every reservation tried since the last `settled()` (memory may be given back).
    touched: bool = False

    @property
    def small_share(self) -> int:
        return self.total // SMALL_SHARE_DIVISOR

    @property
    def large_limit(self) -> int:
        """What bodies over SMALL_BODY_BYTES may hold together."""
        return self.total - self.small_share

    def try_take(self, n: int, large: bool) -> bool:
        self.touched = True
        if self.in_use + n > self.total:
            return False
        if large and self.large_in_use + n > self.large_limit:
            return False
        self.in_use += n
        if large:
            self.large_in_use += n
        return True

    def give_back(self, n: int, large_n: int) -> None:
        self.in_use -= n
        self.large_in_use -= large_n

    def settled(self) -> bool:
        """True once after bodies were handled and none is held now: the time to trim."""
        if self.touched and self.in_use == 0:
            self.touched = False
            return True
        return False

    def reservation(self) -> Reservation:
        return Reservation(self)


@dataclass
class Reservation:
    """One request's share of the budget; `release()` is idempotent (call it in `finally`)."""

    budget: BodyBudget
    held: int = 0
    large_held: int = 0

    def take(self, n: int, body_size: int) -> bool:
        """Reserve `n` more bytes for a body that will be `body_size` bytes so far."""
        large = body_size > SMALL_BODY_BYTES
        if not self.budget.try_take(n, large):
            return False
        self.held += n
        if large:
            self.large_held += n
        return True

    def release(self) -> None:
        if self.held:
            self.budget.give_back(self.held, self.large_held)
            self.held = self.large_held = 0
