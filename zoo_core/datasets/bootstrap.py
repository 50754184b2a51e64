"""Bootstrap over images, shared by the dataset kinds (``bootstrap=N``, ``bootstrap_seed``).

A resample draws ``n_images`` images with replacement; it is represented by its *counts* (how often each
image was drawn), so a kind's evaluator can weight per-image records instead of re-running from scratch.
The interval is the percentile interval (2.5th and 97.5th percentiles of the N resampled metrics).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: What ``info["bootstrap"]["method"]`` says.
METHOD = "percentile bootstrap over images (resampled with replacement), 95% interval"


def resample_counts(n_images: int, n: int, seed: int) -> np.ndarray:
    """``(n, n_images)`` int64: how many times each image is drawn in each of ``n`` resamples.

    Deterministic for ``(n_images, n, seed)`` (numpy ``default_rng(seed)``); each row sums to ``n_images``.
    """
    rng = np.random.default_rng(seed)
    if n_images == 0:
        return np.zeros((n, 0), dtype=np.int64)
    draws = rng.integers(0, n_images, size=(n, n_images))
    counts = np.zeros((n, n_images), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), n_images), draws.ravel()), 1)
    return counts


def percentile_interval(values: np.ndarray) -> tuple[float | None, float | None]:
    """The 95% percentile interval of resampled metric values, NaNs (undefined resamples) left out;
    ``(None, None)`` when every resample is undefined."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return None, None
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_info(n: int, seed: int, n_images: int, seconds: float, samples: Mapping[str, np.ndarray],
                   **extra: Any) -> dict[str, Any]:
    """The ``metrics.json["bootstrap"]`` record: N, seed, images, method, time and undefined resamples."""
    undefined = {k: int((~np.isfinite(np.asarray(v, dtype=np.float64))).sum()) for k, v in samples.items()}
    info = {"n": int(n), "seed": int(seed), "images": int(n_images), "method": METHOD,
            "seconds": round(float(seconds), 3), **extra}
    if any(undefined.values()):
        info["undefined_resamples"] = {k: c for k, c in undefined.items() if c}
    return info
