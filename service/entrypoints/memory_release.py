"""Give freed heap memory back to the system (glibc only).

glibc keeps memory freed by the C parts (grpc core's receive buffers above all) in its arenas:
after a flood of large messages ends, the process stays as large as at its peak, so one flood
after another leaves every replica near its memory limit. `malloc_trim(0)` returns the free
pages; it runs every few seconds from a task (a no-op where the C library is not glibc).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_INTERVAL_SECONDS = 5.0


def _glibc_trim() -> Callable[[], int] | None:
    """glibc's malloc_trim, or None (musl, macOS: nothing to do)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> int:
        return int(trim(0))

    return release


TRIM = _glibc_trim()


def release_free_memory() -> bool:
    """Return free heap pages to the system now; False where that is not possible."""
    if TRIM is None:
        return False
    TRIM()
    return True


async def release_forever(interval: float = TRIM_INTERVAL_SECONDS) -> None:
    """Trim every `interval` seconds (in a thread: a large heap takes milliseconds)."""
    if TRIM is None:
        log.debug("not glibc: freed memory is left to the allocator")
        return
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(release_free_memory)
