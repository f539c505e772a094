"""Process-level tuning for compute processes (workers and benchmarks).

glibc returns every large free block to the kernel and maps fresh pages for
the next one, so a backward pass over big activations spends a noticeable
share of its time in page faults. Keeping freed memory in the heap (a fixed
32 MiB mmap threshold and a high trim threshold) removed about 7% of the
time of a bert-base path on this CPU. It changes no result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit
TRIM_THRESHOLD = 1 << 30


def tune_malloc() -> bool:
    """Apply the glibc settings; returns False where glibc is not in use."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError):
        return False
    log.debug("malloc tuned: %s", ok)
    return ok


REPLY_MMAP_THRESHOLD = 1 << 20


def map_large_blocks(threshold: int = REPLY_MMAP_THRESHOLD) -> bool:
    """Serve blocks from ``threshold`` bytes up with mmap, returned to the kernel on free.

    For the HTTP frontend, whose threads each build reply buffers of several
    MB: with glibc's dynamic threshold those came from per-thread arenas and
    stayed there (a gunicorn worker plateaued at 358 MB instead of 45 MB in
    bench/memory_soak.py). Setting the threshold also ends the dynamic raise.
    Returns False where glibc is not in use.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, threshold) == 1
    except (OSError, AttributeError):
        return False
