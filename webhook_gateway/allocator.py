"""Give freed body memory back to the OS (glibc only; a no-op elsewhere, e.g. musl).

glibc raises its mmap threshold each time a large mmapped block is freed, so after a burst of
1 MiB bodies later ones come from the heap, where freed memory stays in the process: RSS rose
with each wave of a flood and never came back. Fixing the threshold keeps every block of
128 KiB or more in its own mapping, unmapped when freed; `trim()` after a burst returns the
heap's free pages too.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger("entitlements.gateway")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 128 * 1024

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return None
        try:
            libc = ctypes.CDLL(name)
            libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
            libc.mallopt  # noqa: B018
            libc.malloc_trim  # noqa: B018
        except (OSError, AttributeError):
            return None
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        _libc = libc
    return _libc


def fix_mmap_threshold() -> bool:
    """Keep blocks of 128 KiB and more out of the heap; False when not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def trim() -> None:
    """Return the heap's free pages to the OS (after a burst of bodies)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


TRIM_INTERVAL_SECONDS = 5.0


async def trim_when_settled(
    settled: Callable[[], bool], interval: float = TRIM_INTERVAL_SECONDS
) -> None:
    """Every `interval`, when a burst is over (`settled()`), free what it left and trim."""
    while True:
        await asyncio.sleep(interval)
        if settled():
            gc.collect()  # a refused connection's objects are cycles: free them first
            trim()
