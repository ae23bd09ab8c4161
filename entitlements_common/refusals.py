"""Refused requests, logged as summaries: an attacker must not choose the log volume.

A listener that turns a request away (bad signature, wrong token, too large, too slow) calls
`RefusalLog.refused(reason)`. The first refusal of a reason in a window is logged at once;
the rest of that window are only counted and written as one summary line when the window ends
(at the next refusal after it, or at `flush()`). Counters kept elsewhere (Prometheus) stay
exact: this class decides log lines only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_WINDOW_SECONDS = 60.0


@dataclass
class _Window:
    started: float
    suppressed: int = 0


@dataclass
class RefusalLog:
    """Per-reason rate limit of WARNING lines: at most one line per reason per `window`
    seconds, plus one summary line of how many were not written."""

    logger: logging.Logger
    window: float = DEFAULT_WINDOW_SECONDS
    clock: Callable[[], float] = time.monotonic
    _windows: dict[str, _Window] = field(default_factory=dict)

    def refused(self, reason: str, detail: str = "") -> None:
        """Count one refusal of `reason` (a fixed string, never caller-controlled text);
        `detail` goes into the line when one is written."""
        now = self.clock()
        window = self._windows.get(reason)
        if window is not None and now - window.started < self.window:
            window.suppressed += 1
            return
        if window is not None and window.suppressed:
            self._summary(reason, window)
        self._windows[reason] = _Window(now)
        self.logger.warning("refused: %s%s", reason, f" ({detail})" if detail else "")

    def flush(self) -> None:
        """Write the summaries still pending (at shutdown)."""
        for reason, window in self._windows.items():
            if window.suppressed:
                self._summary(reason, window)
                window.suppressed = 0

    def _summary(self, reason: str, window: _Window) -> None:
        self.logger.warning(
            "refused: %s, %d more in the last %.0f s (not logged one by one)",
            reason,
            window.suppressed,
            self.window,
        )
