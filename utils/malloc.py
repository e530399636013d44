"""Giving freed C-heap memory back to the system, at the few moments a job has just freed a lot of it.

glibc serves a large allocation (a numpy array of a proteome's lengths, a plan, a chunk's tensors) from its own mmap
and returns it on free, but after each such free it raises its mmap threshold to that size (up to 32 MiB), so later
arrays of that size come from the heap, where a freed block stays resident. Over a job of millions of proteins that
turned transient arrays into resident memory proportional to the proteome (benchmarks/memory_scaling.py).
malloc_trim(3) hands the free pages back. Fixing the threshold instead (mallopt) also worked, but then every batch's
activation tensors were mmap'd and zeroed afresh, which slowed the CPU job markedly (benchmarks/cpu_whole_process.py).
"""

from __future__ import annotations

import ctypes
import sys


def give_back_free_memory() -> None:
    """malloc_trim(0): free heap pages go back to the system. A no-op where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl and other C libraries: nothing to trim
        pass


def one_arena() -> None:
    """mallopt(M_ARENA_MAX, 1) for the main process: its threads (a lane per device starts that device's workers,
    pickling each order's sequences) then allocate from the main heap, which malloc_trim empties. In a thread's own
    arena the freed pickle (a dozen bytes a protein) stayed resident for the whole run, since malloc_trim does not
    shrink such an arena's top. The main process's threads mostly wait, so one arena costs them nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX (glibc's malloc.h)
    except (OSError, AttributeError):
        pass
