"""Paired comparison of two models scored on the same images with the same seeds: the mean per-image difference
and its 95% bootstrap confidence interval, resampling images and seeds (both with replacement, independently), so
the interval covers both the choice of test images and the training run's luck."""

from __future__ import annotations

import numpy as np


def paired_difference(candidate: np.ndarray, reference: np.ndarray, resamples: int = 10000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of candidate - reference; both (seeds, images), seed k of one paired with seed k of the
    other (same data order and noise draws) and image i with image i."""
    candidate, reference = np.asarray(candidate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if candidate.shape != reference.shape or candidate.ndim != 2:
        raise ValueError(f"paired scores must both be (seeds, images); got {candidate.shape} and {reference.shape}")
    diff = candidate - reference
    seeds, images = diff.shape
    rng = np.random.default_rng(seed)
    s = rng.integers(0, seeds, size=(resamples, seeds))
    i = rng.integers(0, images, size=(resamples, images))
    # mean over the resampled seeds x images grid of each draw, without materialising the grids
    means = diff[s[:, :, None], i[:, None, :]].mean(axis=(1, 2))
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(diff.mean()), float(low), float(high)
