"""CenterNet ctdet decoding in numpy, batched (REFERENCE 2.7 and 2.8).

``ctdet_decode`` turns raw head outputs into the global top-K boxes in output-grid units;
``decode_batch`` also maps them back to original-image pixels through the inverse letterbox affine.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from zoo_core.api.geometry import unletterbox_boxes
from zoo_core.api.peaks import keep_peaks, topk_desc, topk_peaks
from zoo_core.api.types import Detections


def sigmoid32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Logistic function of float32 logits in float32 arithmetic, ``1 / (1 + exp(-x))`` (REFERENCE 2.11 item 5:
    the peak test compares these values exactly).

    As torch's CPU ``sigmoid`` computes it: ``exp(-x)`` rounded to float32, ``1 + e`` and the reciprocal each
    rounded to float32. So it saturates where the reference does (1.0 from x = 16.64, where ``1 + e`` rounds to
    1; a sigmoid rounded once from float64 reaches 1.0 only at 17.33, and two neighbouring logits of 16.7 and
    17.5 are one peak for the reference and two different scores there). The exponential is float64's rounded
    once, which is monotone where numpy's float32 ``exp`` steps back by 1-2 ulps near 0; torch's (Sleef's)
    differs from it by an ulp on a few percent of values. Monotone non-decreasing over every float32 input
    (checked exhaustively): :func:`zoo_core.api.peaks.topk_peaks` relies on that to search the logits and
    score only the values it reads. ``out``: a float32 array of ``x``'s shape to write into.
    """
    e = np.negative(np.asarray(x, np.float32), dtype=np.float64)
    with np.errstate(over="ignore"):  # exp(-x) = inf below x = -88.7 in float32: the sigmoid is 0 there
        np.exp(e, out=e)
        e32 = e.astype(np.float32)
    e32 += np.float32(1.0)
    if out is None:
        return np.reciprocal(e32, out=e32)
    return np.reciprocal(e32, out=out)


def _top_peaks_one(hm_logits: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, classes, positions) of one image's global top-K peaks (per image: cache-sized arrays).

    Per-class top-K then global top-K orders by (score desc, class asc, position asc), which is
    the flat order of (C, H*W); :func:`zoo_core.api.peaks.topk_peaks` gives it from the logits,
    scoring only the values it reads, and the two-stage reference path (the sigmoid of the whole
    map, pooled) runs when it cannot decide.
    """
    logits = np.asarray(hm_logits, np.float32)
    c, h, w = logits.shape
    fast = topk_peaks(logits, K, score=sigmoid32)
    if fast is not None:
        scores, flat = fast
        return scores, flat // (h * w), flat % (h * w)
    heat = keep_peaks(sigmoid32(logits))
    k1 = min(int(K), h * w)
    cls_scores, cls_inds = topk_desc(heat.reshape(c, h * w), k1)
    scores, flat = topk_desc(cls_scores.reshape(c * k1), int(K))
    return scores, flat // k1, cls_inds.reshape(c * k1)[flat]


def ctdet_decode(hm_logits: np.ndarray, wh: np.ndarray, reg: np.ndarray | None, K: int = 100) -> np.ndarray:
    """Decode a batch of raw CenterNet heads.

    :param hm_logits: (B, C, H, W) heatmap logits (sigmoid is applied here, in float32).
    :param wh: (B, 2, H, W) box sizes in grid units (channel 0 = w, 1 = h).
    :param reg: (B, 2, H, W) sub-cell centre offsets, or ``None`` (then centres get +0.5).
    :param K: number of detections kept per image.
    :returns: (B, K', 6) float32 ``[x1, y1, x2, y2, score, class_0based]`` in grid units, rows in
        descending score, ``K' = min(K, C*H*W)``. Per-class top-K first, then the global top-K over
        the ``C*K`` candidates, exactly as the reference; ties go to the lower class, then the lower
        position.
    """
    hm_logits = np.asarray(hm_logits)
    b, _, h, w = hm_logits.shape
    picked = [_top_peaks_one(hm_logits[i], int(K)) for i in range(b)]
    scores = np.stack([p[0] for p in picked])
    classes = np.stack([p[1] for p in picked])
    inds = np.stack([p[2] for p in picked])
    ys = (inds // w).astype(np.float32)
    xs = (inds % w).astype(np.float32)

    def gather(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float32).reshape(b, t.shape[1], h * w)
        return np.take_along_axis(t, inds[:, None, :], axis=2)

    if reg is not None:
        off = gather(reg)
        xs = xs + off[:, 0]
        ys = ys + off[:, 1]
    else:
        xs = xs + np.float32(0.5)
        ys = ys + np.float32(0.5)
    size = gather(wh)
    half_w = size[:, 0] / np.float32(2)
    half_h = size[:, 1] / np.float32(2)
    return np.stack([xs - half_w, ys - half_h, xs + half_w, ys + half_h,
                     scores.astype(np.float32), classes.astype(np.float32)], axis=2)


def grid_to_image(boxes: np.ndarray, meta: Mapping) -> np.ndarray:
    """Map (n, 4) grid-unit corners to original-image pixels with the inverse affine of ``meta``.

    ``meta`` holds ``c``, ``s``, ``out_h`` and ``out_w`` as written by the preprocess. The point is
    float32, the matrix float64 and the result is stored as float32 (REFERENCE 2.11 item 8).
    """
    return unletterbox_boxes(boxes, meta["c"], meta["s"], (int(meta["out_h"]), int(meta["out_w"])))


def decode_batch(hm_logits: np.ndarray, wh: np.ndarray, reg: np.ndarray | None,
                 metas: Sequence[Mapping], K: int = 100) -> list[Detections]:
    """Decode one batch into per-image :class:`Detections` in original-image pixels.

    Labels are 0-based class indices; rows keep the decoder's descending-score order. No score
    threshold and no clipping are applied.
    """
    if len(metas) != len(hm_logits):
        raise ValueError(f"{len(metas)} metas for a batch of {len(hm_logits)} outputs")
    dets = ctdet_decode(hm_logits, wh, reg, K)
    out = []
    for row, meta in zip(dets, metas):
        boxes = grid_to_image(row[:, :4], meta)
        out.append(Detections(boxes, row[:, 4], row[:, 5].astype(np.int32)))
    return out
