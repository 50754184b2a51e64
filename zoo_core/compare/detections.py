"""Match the detections of two backends on one image: same class and IoU >= 0.99, greedily by score.

Two detections are "the same detection" when they have the same label and their boxes overlap with
IoU at least ``iou`` (0.99 by default: a box shifted by a few tenths of a pixel, not a neighbour).
Reference detections are taken in descending score order; each takes the unmatched candidate
detection of its class with the highest IoU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zoo_core.api.types import Detections

DEFAULT_IOU = 0.99


def _ordered(boxes: np.ndarray) -> np.ndarray:
    """``[x1, y1, x2, y2]`` with ``x1 <= x2``, ``y1 <= y2`` (a decoder may emit inverted boxes from a
    negative size; matching must still see them as the same box)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), ``[x1, y1, x2, y2]``, continuous areas."""
    a, b = _ordered(a), _ordered(b)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    # two identical degenerate boxes (zero area) are the same box
    same = np.all(a[:, None, :] == b[None, :, :], axis=2)
    return np.where(same, 1.0, iou)


def match(ref: Detections, cand: Detections, iou: float = DEFAULT_IOU) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of matched reference / candidate detections (see the module docstring)."""
    if not len(ref) or not len(cand):
        return []
    ious = iou_matrix(ref.boxes, cand.boxes)
    ious[ref.labels[:, None] != cand.labels[None, :]] = -1.0
    taken = np.zeros(len(cand), bool)
    pairs = []
    for i in np.argsort(-ref.scores, kind="stable"):
        row = np.where(taken, -1.0, ious[i])
        j = int(np.argmax(row))
        if row[j] >= iou:
            taken[j] = True
            pairs.append((int(i), j))
    return pairs


@dataclass
class ImageMatch:
    """One image: how many detections each side has, how many matched, how far the matched ones moved
    (``None`` when none matched: there is no shift to measure)."""

    id: str
    reference: int
    candidate: int
    matched: int
    max_box_shift: float | None
    max_score_change: float | None
    max_extras_change: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "reference": self.reference, "candidate": self.candidate, "matched": self.matched,
               "max_box_shift": self.max_box_shift, "max_score_change": self.max_score_change}
        if self.max_extras_change:
            out["max_extras_change"] = self.max_extras_change
        return out


def match_image(item_id: str, ref: Detections, cand: Detections, iou: float = DEFAULT_IOU) -> ImageMatch:
    """Match one image's detections; box shift is the largest coordinate difference in pixels."""
    pairs = match(ref, cand, iou)
    shift: float | None = None
    score: float | None = None
    extras: dict[str, float] = {}
    if pairs:
        i, j = (np.asarray(x) for x in zip(*pairs))
        shift = float(np.abs(ref.boxes[i].astype(np.float64) - cand.boxes[j]).max())
        score = float(np.abs(ref.scores[i].astype(np.float64) - cand.scores[j]).max())
        for k in sorted(set(ref.extras) & set(cand.extras)):
            a, b = ref.extras[k][i], cand.extras[k][j]
            if a.shape == b.shape and a.size:
                extras[k] = float(np.abs(a.astype(np.float64) - b).max())
    return ImageMatch(item_id, len(ref), len(cand), len(pairs), shift, score, extras)


@dataclass
class MatchSummary:
    """Every image's :class:`ImageMatch` and their totals.

    ``match_rate`` = matched / the larger of the two detection counts, summed over images: 1.0 when
    every detection of either side has its twin on the other.
    """

    iou: float = DEFAULT_IOU
    images: list[ImageMatch] = field(default_factory=list)

    def add(self, m: ImageMatch) -> None:
        self.images.append(m)

    def as_dict(self, per_image: bool = True) -> dict[str, Any]:
        ims = self.images
        matched = sum(m.matched for m in ims)
        ref = sum(m.reference for m in ims)
        cand = sum(m.candidate for m in ims)
        larger = sum(max(m.reference, m.candidate) for m in ims)
        worst = max(ims, key=lambda m: (max(m.reference, m.candidate) - m.matched, m.max_box_shift or 0.0),
                    default=None)
        shifts = [m.max_box_shift for m in ims if m.max_box_shift is not None]
        changes = [m.max_score_change for m in ims if m.max_score_change is not None]
        out: dict[str, Any] = {
            "match_rate": matched / larger if larger else 1.0,
            "matched": matched, "reference": ref, "candidate": cand, "iou": self.iou,
            # None (null) when no detection matched: no shift was measured (0 would read as perfect agreement)
            "max_box_shift": max(shifts, default=None),
            "max_score_change": max(changes, default=None),
            "images_fully_matched": sum(m.matched == m.reference == m.candidate for m in ims),
            "worst_image": worst.id if worst is not None else None,
        }
        extras = sorted({k for m in ims for k in m.max_extras_change})
        if extras:
            out["max_extras_change"] = {k: max(m.max_extras_change.get(k, 0.0) for m in ims) for k in extras}
        if per_image:
            out["per_image"] = [m.as_dict() for m in ims]
        return out
