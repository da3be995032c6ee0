"""Keeping the worker's resident memory close to what it actually holds.

Measured (bench/scale.py): with 100,000 customers the records took about 40 MB and
every Python object together about 60 MB, yet the worker's RSS was 430 MB. The rest
was memory glibc had been given back but kept: large fetch and producer buffers,
allocated and freed over and over by two threads, raise glibc's dynamic mmap
threshold and spread over per-thread arenas, so freed space stays in the heap.
Fixing the threshold, capping the arenas and trimming now and then returns it.

The threshold is 4 MB, not lower: at 128 KB every producer batch (512 KB) and
produce request was a fresh mmap, zeroed by the kernel page by page and unmapped
again. Measured with bench/throughput.py (200k events, two interleaved pairs): 565k
page faults and 1.5-1.7 s of system time per run at 128 KB, 150-210k and 0.4-0.7 s
at 4 MB, 10.7-10.8k vs 12.6-13.2k events/s; 100k customers: 204 MB RSS either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # glibc only (not musl)
        libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def tune_allocator(mmap_threshold_bytes: int = 4 * 1024 * 1024, arenas: int = 2) -> bool:
    """Large buffers straight from mmap (returned on free), at most ``arenas`` heaps. False if not glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes)) and bool(_LIBC.mallopt(_M_ARENA_MAX, arenas))


def release_free_memory() -> None:
    """Gives the free pages at the top and inside the heaps back to the system (glibc ``malloc_trim``)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def collect_garbage_rarely() -> None:
    """Freezes what is alive now and makes the collector run 140 times less often.

    Call once the long-lived objects exist (the worker's services, a replay's history).
    The per-event objects form no reference cycles, so collecting finds nothing while it
    walks everything alive: at the default threshold (every 700 allocations) that took a
    sixth of the worker's time and a few percent of a replay's.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
