"""Freed tensor memory kept for reuse instead of handed back to the kernel (glibc's malloc, Linux).

A forward of a diffusion UNet allocates and frees the same large activations over and over. glibc serves every block
above its mmap threshold (128 KiB, rising with use to at most 32 MiB) with a fresh mmap and returns it to the kernel
when freed, and trims the heap's free top beyond its trim threshold, so the next allocation faults every page in again,
zeroed. Fixed thresholds keep that memory in the process, as the allocators PyTorch's CPU performance guide recommends
(jemalloc, tcmalloc) do: the resident size stays at its peak between steps instead of dropping, and nothing else
changes (the same values, bit for bit). `benchmarks/freed_memory.py` measures it: 1.69 million page faults per process
timing the paper student's forwards against 0.33 million kept, and the float forward 0.93 s against 0.77 s.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc refuses more on 64-bit machines (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int

_kept = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold to its maximum and its trim threshold out of reach, once per process; True where
    that took effect, False elsewhere (macOS, musl: their allocators already reuse freed memory or have no knob) or
    with BIDISTILL_KEEP_FREED_MEMORY=0 in the environment (a long-lived process that should hand memory back)."""
    global _kept
    if _kept is None:
        _kept = False
        wanted = os.environ.get("BIDISTILL_KEEP_FREED_MEMORY", "1") != "0"
        if wanted and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(None)
            _kept = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and \
                bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept
