"""CPU memory: keep large allocations on the heap during training (glibc only), and measure a process's peak.

glibc gives every allocation above its mmap threshold (at most 32 MB) fresh pages from the
kernel and returns them when freed, so each training step pays first-touch page faults on
its large activation and gradient buffers again and again; at the tiny preset that cost
about a third of a CPU step in our measurements (bench/results.md). Turning mmap off for
malloc and not trimming the heap lets the buffers be reused. The memory stays with the
process until it exits, which is what a training process wants anyway. A no-op elsewhere.
"""

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
LEAN_MMAP_THRESHOLD = 1 << 20

_applied = False


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Apply glibc ``mallopt`` settings in order; True when every one was accepted (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(libc.mallopt(option, value) == 1 for option, value in settings)
    except (OSError, AttributeError):
        return False


def keep_large_allocations_on_heap() -> bool:
    """Apply once per process; True when glibc accepted the settings."""
    global _applied
    if not _applied:
        _applied = _mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**30))
    return _applied


def return_freed_memory() -> bool:
    """The opposite trade, for a run under a memory budget: every allocation of 1 MB or more gets its own pages
    and gives them back when freed, so the peak is what is alive at once. glibc's default raises this threshold
    as it goes (up to 32 MB), and the freed activation and gradient buffers below it stay with the process in
    pieces: measured at tiny, batch 4 x 1024, 8-bit AdamW with checkpointing, peak RSS 2.20 GB with this,
    3.47 GB with glibc's default and 4.30 GB keeping everything on the heap. True when glibc accepted it."""
    return _mallopt((M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD))
