"""How this process's C heap gives memory back, set once at process start (main process and workers).

glibc serves a large allocation (a numpy array of a proteome's lengths, a batch's tensors) from its own mmap and
returns it on free, but after each such free it raises its mmap threshold to that size (up to 32 MiB), so the next
arrays of that size come from the heap, where a freed block stays resident. Over a job of millions of proteins that
turned transient arrays into resident memory proportional to the proteome (benchmarks/memory_scaling.py). Setting
the threshold explicitly turns the dynamic raise off (mallopt(3)): large blocks keep going back when freed.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number, <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value, now fixed


def return_large_blocks_on_free() -> None:
    """Fix glibc's mmap threshold (see module docstring). A no-op where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # musl and other C libraries: nothing to set
        pass
