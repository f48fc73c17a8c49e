"""Keep freed memory in the process, so that a control loop's allocations stop page-faulting.

Every MPPI solve allocates and frees arrays of about a megabyte (K candidates × H steps × the
state). glibc hands such blocks back to the kernel when they are freed (mmap / heap trimming),
so the next solve faults every page in again: on a 2-core AMD EPYC VM ~770 faults cost a
K = 512, H = 20 solve 14.5 ms at p50 instead of 12.5, and its p99 doubled (docs/decisions.md,
"The controller at 50 Hz with K = 512").
Raising glibc's mmap and trim thresholds is the usual real-time Linux set-up for a process that
loops on the same sizes (alongside `mlockall`, which needs privileges this does not). Not glibc
(musl, macOS): nothing happens.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap (glibc's largest mmap threshold on 64-bit)
MMAP_THRESHOLD = 32 << 20
#: freed memory at the top of the heap is kept up to this much
TRIM_THRESHOLD = 256 << 20


def keep_heap() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see module doc); whether it applied."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
