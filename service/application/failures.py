"""A background loop's run of failures, logged once with its traceback (not once per retry),
and its end reported: the change follower and the notifier retry forever, and an operator
must see why once, not a line a second."""

from __future__ import annotations

import logging


class FailureRun:
    def __init__(self, what: str, log: logging.Logger | None = None) -> None:
        self._what = what
        self._log = log or logging.getLogger(__name__)
        self._count = 0

    def failed(self, doing: str) -> None:
        """Call from an `except` block."""
        self._count += 1
        if self._count == 1:
            self._log.warning("%s %s; retrying", self._what, doing, exc_info=True)
        else:
            self._log.debug("%s %s (%d in a row)", self._what, doing, self._count, exc_info=True)

    def recovered(self) -> None:
        if self._count:
            self._log.warning("%s recovered after %d failed attempts", self._what, self._count)
            self._count = 0
