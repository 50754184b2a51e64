"""Heatmap peak picking: 3x3 max-pool "NMS" and top-K, vectorised over the batch (numpy)."""
from __future__ import annotations

import numpy as np


def maxpool3x3(heat: np.ndarray) -> np.ndarray:
    """3x3, stride-1 max pool with -inf padding over the last two axes (same shape out)."""
    h = np.asarray(heat)
    pad = np.pad(h, [(0, 0)] * (h.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    rows = np.maximum(np.maximum(pad[..., :-2, :], pad[..., 1:-1, :]), pad[..., 2:, :])
    return np.maximum(np.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])


def keep_peaks(heat: np.ndarray) -> np.ndarray:
    """Zero every value that is not the maximum of its 3x3 neighbourhood (exact float equality)."""
    return np.where(maxpool3x3(heat) == heat, heat, 0).astype(heat.dtype, copy=False)


def topk_desc(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` along the last axis, descending (stable on ties: lower index first).

    Returns (values, indices); ``k`` is clipped to the axis length.
    """
    n = scores.shape[-1]
    k = min(int(k), n)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
        vals = np.take_along_axis(scores, part, -1)
        # stable descending by value, then ascending index
        order = np.lexsort((part, -vals), axis=-1)
        idx = np.take_along_axis(part, order, -1)
    else:
        idx = np.argsort(-scores, axis=-1, kind="stable")
    return np.take_along_axis(scores, idx, -1), idx
