"""Benchmark helpers: the median wall time of a callable after warm-up calls, synchronising CUDA around each call; the
same for callables timed in turn, which compares them under the same machine state."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def synchronize(device: torch.device | None) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a no-op elsewhere)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1,
                   device: torch.device | None = None) -> float:
    """The median wall time of one callable (`interleaved_median_seconds` of it alone)."""
    return interleaved_median_seconds([fn], repeats, warmup, device)[0]


def interleaved_median_seconds(fns: list[Callable[[], object]], repeats: int, warmup: int = 1,
                               device: torch.device | None = None) -> list[float]:
    """The median wall time of each callable, timed in turn (a, b, c, a, b, c, ...), so that a shared machine's
    changing load falls on all of them alike. Each call starts with the caches the one before left: right for whole
    forwards, pessimistic for one memory-bound layer, whose input would be in cache after the layer before it."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(warmup + repeats):
        for fn, spent in zip(fns, times):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if i >= warmup:
                spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]
