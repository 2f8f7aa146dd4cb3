"""Benchmark helper: the median wall time of a callable after warm-up calls, synchronising CUDA around each call."""

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
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
