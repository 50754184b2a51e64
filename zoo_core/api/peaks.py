"""Heatmap peak picking: 3x3 max-pool "NMS" and top-K, vectorised over the batch (numpy)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


def maxpool3x3(heat: np.ndarray) -> np.ndarray:
    """3x3, stride-1 max pool with -inf padding over the last two axes (same shape out).

    Separable: a vertical then a horizontal running max of three written into two preallocated
    buffers (no padded copy, no temporaries); ``max`` is exact, so the result equals the padded
    3x3 max bit for bit.
    """
    h = np.asarray(heat)
    rows = np.empty_like(h)
    if h.shape[-2] > 1:
        np.maximum(h[..., 1:, :], h[..., :-1, :], out=rows[..., 1:, :])
        rows[..., 0, :] = h[..., 0, :]
        np.maximum(rows[..., :-1, :], h[..., 1:, :], out=rows[..., :-1, :])
    else:
        rows[...] = h
    out = np.empty_like(h)
    if h.shape[-1] > 1:
        np.maximum(rows[..., 1:], rows[..., :-1], out=out[..., 1:])
        out[..., 0] = rows[..., 0]
        np.maximum(out[..., :-1], rows[..., 1:], out=out[..., :-1])
    else:
        out[...] = rows
    return out


_KERNEL_3X3 = np.ones((3, 3), np.uint8)


def _neighbourhood_max(heat: np.ndarray) -> np.ndarray:
    """The 3x3 maximum of every value (as :func:`maxpool3x3`), by OpenCV's dilation, one plane at a
    time, for float32/float64 maps without NaN (about 4x faster); :func:`maxpool3x3` otherwise.

    Equal to :func:`maxpool3x3` as values; a zero's sign may differ (OpenCV picks either of -0.0 and
    +0.0), which no ``==`` test sees. NaN would not propagate as in numpy, so maps holding one take
    the numpy path.
    """
    if heat.dtype not in (np.float32, np.float64) or heat.ndim < 2 or heat.size == 0 or np.isnan(heat).any():
        return maxpool3x3(heat)
    import cv2

    planes = np.ascontiguousarray(heat).reshape(-1, *heat.shape[-2:])
    out = np.empty_like(planes)
    for plane, dst in zip(planes, out, strict=True):
        got = cv2.dilate(plane, _KERNEL_3X3, dst=dst, borderType=cv2.BORDER_CONSTANT, borderValue=-np.inf)
        if not np.shares_memory(got, dst):  # OpenCV chose another buffer: copy it in
            dst[...] = got
    return out.reshape(heat.shape)


def keep_peaks(heat: np.ndarray) -> np.ndarray:
    """Zero every value that is not the maximum of its 3x3 neighbourhood (exact float equality)."""
    heat = np.asarray(heat)
    return np.where(_neighbourhood_max(heat) == heat, heat, 0).astype(heat.dtype, copy=False)


def topk_desc(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` along the last axis, descending (stable on ties: lower index first).

    Returns (values, indices); ``k`` is clipped to the axis length.
    """
    n = scores.shape[-1]
    k = min(int(k), n)
    if k < n:
        flat = scores.reshape(-1, n)
        rows = np.empty((flat.shape[0], k), np.int64)
        for r, row in enumerate(flat):
            kth = row[np.argpartition(-row, k - 1)[k - 1]]
            above = np.flatnonzero(row > kth)
            # argpartition picks arbitrary members of a tie at the k-th value; take the lowest indices
            cand = np.concatenate([above, np.flatnonzero(row == kth)[: k - above.size]])
            rows[r] = cand[np.lexsort((cand, -row[cand]))]
        idx = rows.reshape((*scores.shape[:-1], k))
    else:
        idx = np.argsort(-scores, axis=-1, kind="stable")
    return np.take_along_axis(scores, idx, -1), idx


def dense_topk_peaks(heat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``topk_desc(keep_peaks(heat).reshape(-1), k)`` for one map ``heat`` of any shape (an output
    grid small enough to pool whole, e.g. CenterFace's 200x200), without sorting the zeros.

    The map is pooled whole and the ``k`` are picked among its peaks above zero (ties: lower flat
    index first, as :func:`topk_desc`); when fewer than ``k`` peaks are above zero the zeroed map is
    ranked as a whole, so zeros and negative peaks rank exactly as they do there.
    """
    heat = np.asarray(heat)
    flat = heat.reshape(-1)
    is_peak = _neighbourhood_max(heat).reshape(-1) == flat
    cand = np.flatnonzero(is_peak & (flat > 0))
    if cand.size < min(int(k), flat.size):
        return topk_desc(np.where(is_peak, flat, 0).astype(heat.dtype, copy=False), k)
    vals, pos = topk_desc(flat[cand], k)
    return vals, cand[pos]


Score = Callable[[np.ndarray], np.ndarray]


def _is_peak(heat: np.ndarray, flat_idx: np.ndarray, score: Score | None = None) -> np.ndarray:
    """For each flat index of ``heat`` (C, H, W): is its score the maximum of its 3x3 neighbourhood's?

    The neighbourhood maximum is taken on the raw values and scored once: for a monotone ``score``
    the score of the largest value is the largest score.
    """
    _c, h, w = heat.shape
    vals = heat.reshape(-1)[flat_idx]
    ci, rem = np.divmod(flat_idx, h * w)
    yi, xi = np.divmod(rem, w)
    pooled = vals.copy()
    for dy in (-1, 0, 1):
        yy = yi + dy
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            xx = xi + dx
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            nb = heat[ci[ok], yy[ok], xx[ok]]
            np.maximum(pooled[ok], nb, out=nb)
            pooled[ok] = nb
    if score is None:
        return pooled == vals
    return score(pooled) == score(vals)


def _group_maxima(heat2d: np.ndarray, rows: int) -> tuple[np.ndarray, int]:
    """Maxima of the ``rows x 1`` column groups of ``heat2d`` (R, W): group ``(b, x)`` holds rows
    ``b*rows .. b*rows+rows-1`` of column ``x``; the last ``R % rows`` rows are groups of one element.
    Returns the maxima (main groups first, flattened ``(R // rows, W)``, then the tail's elements) and
    the number of main groups. It is an element-wise ``np.maximum`` of whole rows (``rows - 1`` calls over
    every group's j-th row, NaN propagating as in ``max``), which runs near memory speed, unlike a row
    maximum (a reduction over the last axis) or numpy's reduction over the middle axis (~25 % slower)."""
    r, w = heat2d.shape
    full = (r // rows) * rows
    bands = heat2d[:full].reshape(r // rows, rows, w)
    acc = bands[:, 0].copy()
    for j in range(1, rows):
        np.maximum(acc, bands[:, j], out=acc)
    main = acc.reshape(-1)
    return np.concatenate([main, heat2d[full:].reshape(-1)]), main.size


_INF_KEY = int(np.float32(np.inf).view(np.int32))


def _key(x: np.float32) -> int:
    """float32 -> int, order-preserving (-0.0 sorts just below +0.0)."""
    b = int(np.float32(x).view(np.int32))
    return b if b >= 0 else -(b & 0x7FFFFFFF) - 1


def _unkey(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, np.int64)
    bits = np.where(keys >= 0, keys, (-(keys + 1)) | 0x80000000)
    return bits.astype(np.uint32).view(np.float32)


def _level_set(score: Score, x: np.float32) -> tuple[np.float32, np.float32]:
    """The float32 interval ``[lo, hi]`` around ``x`` on which a monotone ``score`` equals ``score(x)``
    (e.g. the logits whose float32 sigmoid rounds to the same value, or the whole saturated tail).

    The next 16 keys each way, then a 256-way search over the order-preserving integer keys of
    float32: a few small ``score`` calls.
    """
    t = score(np.asarray([x], np.float32))[0]

    def edge(a: int, b: int) -> int:
        """The last key from ``a`` (inside the level set) towards ``b`` (inclusive) still inside it."""
        step = 1 if b > a else -1
        near = True  # a level set is mostly a few ulps wide: the next 16 keys first
        while a != b:
            span = abs(b - a)
            n = min(16 if near else 256, span)
            offsets = np.arange(1, n + 1, dtype=np.int64)
            probes = a + step * (offsets if near else offsets * span // n)
            near = False
            outside = np.flatnonzero(score(_unkey(probes)) != t)
            if outside.size == 0:
                a = int(probes[-1])
                continue
            j = int(outside[0])
            a = a if j == 0 else int(probes[j - 1])
            b = int(probes[j]) - step
        return a

    k = _key(x)
    lo, hi = edge(k, -_INF_KEY - 1), edge(k, _INF_KEY)
    return _unkey(np.asarray([lo]))[0], _unkey(np.asarray([hi]))[0]


def topk_peaks(heat: np.ndarray, k: int, oversample: int = 4, chunk: int = 4096, group_rows: int = 32,
               score: Score | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Top-``k`` of ``keep_peaks(heat)`` flattened, for one image ``heat`` of shape (C, H, W).

    Same result as ``topk_desc(keep_peaks(heat).reshape(-1), k)`` (value descending, lower flat
    index first on ties) without pooling the whole map. A threshold ``t`` (the ``oversample * k``-th
    largest maximum of the map's ``group_rows x 1`` column groups) splits the map: the 3x3 peak test
    runs on the values ``> t`` (all of them lie in the fewer than ``oversample * k`` groups whose
    maximum is ``> t``, so only those groups are read), and, when they hold fewer than ``k`` peaks, on
    the values ``== t`` in index order (a chunk of the map at a time) until ``k`` are found. Every
    peak left out ranks below the ones found, so the answer is exact. A plateau (a constant background, as an
    oracle's) therefore costs a chunk, not the whole map. Returns ``None`` when it cannot decide
    cheaply (too few peaks ``>= t``, ``t <= 0``, NaN, or so many values above ``t`` that pooling the
    whole map is cheaper): the caller then takes the full path.

    ``score``: an element-wise, monotone non-decreasing float32 map (a sigmoid of logits). ``heat``
    then holds its float32 (or float16) inputs and the result is that of ``keep_peaks(score(heat))``,
    with ``score`` evaluated only on the values read: the search runs on raw values, ``t``'s score
    level is widened to the raw interval that has that score (saturated logits share a score, and
    their ties rank by index), and the returned values are scores. Two distinct raw values that score
    equal are equal here, as they are on the scored map.
    """
    heat = np.asarray(heat)
    c, h, w = heat.shape
    k = min(int(k), heat.size)
    g = max(1, int(group_rows))
    groups, n_main = _group_maxima(heat.reshape(c * h, w), g)
    m = oversample * k
    if k < 1 or m >= groups.size:
        return None
    lowest = groups.min()
    if np.isnan(lowest):  # a NaN group hides its other values from the threshold
        return None
    if np.count_nonzero(groups > lowest) < m:  # a plateau (an oracle's background): t is its level
        t = lowest  # (and argpartition over thousands of equal values is slow)
    else:
        t = groups[np.argpartition(groups, groups.size - m)[groups.size - m]]
    if score is None:
        if not t > 0:
            return None
        lo = hi = t
    else:  # (the level set is searched over float32 values: other inputs take the full path)
        if heat.dtype not in (np.float16, np.float32) or not np.isfinite(t):
            return None
        if not score(np.asarray([t], heat.dtype))[0] > 0:
            return None
        lo, hi = _level_set(score, t)
    flat = heat.reshape(-1)
    hot = np.flatnonzero(groups > hi)
    main, tail = hot[hot < n_main], hot[hot >= n_main]
    band, col = np.divmod(main, w)
    rows = band[:, None] * g + np.arange(g)
    members = np.concatenate([(rows * w + col[:, None]).reshape(-1), tail - n_main + n_main * g])
    above = np.sort(members[flat[members] > hi])
    if above.size > flat.size // 8:
        return None
    found = [above[_is_peak(heat, above, score)]]
    need = k - found[0].size
    if need > 0:
        span = 16 * chunk  # the map is searched for the level ``t`` a span at a time, in index order
        for start_ in range(0, flat.size, span):
            part_ = flat[start_:start_ + span]
            level = part_ == t if lo == hi else (part_ >= lo) & (part_ <= hi)
            equal = np.flatnonzero(level) + start_
            for start in range(0, equal.size, chunk):
                part = equal[start:start + chunk]
                peaks = part[_is_peak(heat, part, score)][:need]
                found.append(peaks)
                need -= peaks.size
                if need <= 0:
                    break
            if need <= 0:
                break
        if need > 0:
            return None
    cand = np.concatenate(found)
    vals = flat[cand] if score is None else score(flat[cand])
    order = np.lexsort((cand, -vals))[:k]
    return vals[order], cand[order]
