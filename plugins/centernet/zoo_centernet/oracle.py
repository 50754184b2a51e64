"""Ground truth encoded as the raw head outputs a perfect CenterNet would give (like its eval_oracle flags).

Boxes go through the same forward affine the preprocess used, onto the output grid; the heatmap
gets a high logit at each integer centre cell, ``wh`` the box size in grid units and ``reg`` the
sub-cell offset, so decode + inverse affine gives the boxes back.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from zoo_core.api.geometry import letterbox_boxes
from zoo_core.datasets.coco import CATEGORY_IDS

PEAK_LOGIT = 10.0
BACKGROUND_LOGIT = -20.0


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's training radius: the smallest of its three corner-shift bounds for ``min_overlap`` IoU."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + np.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return float(min(r1, r2, r3))


def encode_boxes(boxes_xyxy: np.ndarray, classes: Sequence[int], meta: Mapping, num_classes: int = 80,
                 heatmap: str = "onehot") -> list[np.ndarray]:
    """Encode image-pixel boxes as ``[hm logits (C,H,W), wh (2,H,W), reg (2,H,W)]`` float32.

    :param boxes_xyxy: (n, 4) ``[x1, y1, x2, y2]`` in original-image pixels.
    :param classes: n 0-based class indices.
    :param meta: the preprocess meta (``c``, ``s``, ``out_h``, ``out_w``).
    :param heatmap: ``"onehot"`` (a logit of +10 at each centre cell, -20 elsewhere) or
        ``"gaussian"`` (CenterNet's training target, sigmoid = exp(-d^2 / 2 sigma^2) around each
        centre with the training radius, as logits clipped to +-20).
    Later boxes overwrite earlier ones on a shared centre cell, like the training targets.
    """
    out_h, out_w = int(meta["out_h"]), int(meta["out_w"])
    grid = letterbox_boxes(boxes_xyxy, meta["c"], meta["s"], (out_h, out_w))
    prob = np.zeros((num_classes, out_h, out_w), np.float32)
    wh = np.zeros((2, out_h, out_w), np.float32)
    reg = np.zeros((2, out_h, out_w), np.float32)
    yy, xx = np.mgrid[0:out_h, 0:out_w]
    for (x1, y1, x2, y2), cls in zip(grid, classes):
        bw, bh = x2 - x1, y2 - y1
        if bw <= 0 or bh <= 0:
            continue
        ct = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32)
        cx = int(np.clip(np.floor(ct[0]), 0, out_w - 1))
        cy = int(np.clip(np.floor(ct[1]), 0, out_h - 1))
        if heatmap == "gaussian":
            radius = max(0, int(gaussian_radius(float(np.ceil(bh)), float(np.ceil(bw)))))
            sigma = (2 * radius + 1) / 6
            g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma * sigma))
            g[(np.abs(xx - cx) > radius) | (np.abs(yy - cy) > radius)] = 0
            np.maximum(prob[cls], g.astype(np.float32), out=prob[cls])
        elif heatmap == "onehot":
            prob[cls, cy, cx] = 1.0
        else:
            raise ValueError(f"heatmap must be 'onehot' or 'gaussian', not {heatmap!r}")
        wh[:, cy, cx] = (bw, bh)
        reg[:, cy, cx] = (ct[0] - cx, ct[1] - cy)
    if heatmap == "onehot":
        hm = np.where(prob > 0, np.float32(PEAK_LOGIT), np.float32(BACKGROUND_LOGIT)).astype(np.float32)
    else:
        p = np.clip(prob.astype(np.float64), 1e-9, 1 - 1e-9)
        hm = np.clip(np.log(p / (1 - p)), BACKGROUND_LOGIT, -BACKGROUND_LOGIT).astype(np.float32)
    return [hm, wh, reg]


def coco_boxes(annotations: Iterable[Mapping], valid_ids: Sequence[int] = CATEGORY_IDS):
    """Non-crowd COCO annotations as ``(boxes_xyxy (n, 4) float32, classes (n,) int)``.

    Categories outside ``valid_ids`` are dropped (the model cannot predict them).
    """
    index = {cid: i for i, cid in enumerate(valid_ids)}
    boxes, classes = [], []
    for ann in annotations:
        if ann.get("iscrowd", 0) or ann["category_id"] not in index:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes.append((x, y, x + w, y + h))
        classes.append(index[ann["category_id"]])
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)
