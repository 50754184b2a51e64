"""Greedy IoU non-maximum suppression, vectorised per step."""
from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float, plus_one: bool = False,
        order: np.ndarray | None = None) -> np.ndarray:
    """Indices kept by greedy NMS, in selection (descending score) order.

    A box is suppressed when its IoU with an already kept box is ``>= iou_thresh``. ``plus_one``
    uses the ``(x2 - x1 + 1)`` area convention of the Star-Clouds reference. ``order``: the indices
    in the order the boxes are visited, best first; by default descending score with ties in score
    keeping the lower index first. (A port that must break exact ties as its reference does passes the
    reference's own ordering, e.g. ``np.argsort(scores)[::-1]``, whose tie order is numpy's.) The
    suppression of each kept box is one vectorised numpy step, so the cost is O(kept * n), never a
    Python loop over pairs.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    if n == 0:
        return np.zeros(0, np.int64)
    add = 1.0 if plus_one else 0.0
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + add) * (y2 - y1 + add)
    if order is None:
        order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    else:
        order = np.asarray(order, np.int64).reshape(-1)
        if len(order) != n or len(np.unique(order)) != n or (n and (order.min() < 0 or order.max() >= n)):
            raise ValueError(f"order must be a permutation of the {n} box indices")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + add)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + add)
        inter = iw * ih
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou >= iou_thresh)]
    return np.asarray(keep, np.int64)
