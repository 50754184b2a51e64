"""Bootstrap intervals of WIDER FACE Easy / Medium / Hard AP from the per-image matching records.

The matching (which prediction hits which face) is done once. A resample weights each image's
``(proposals, true positives)`` rows by how often it was drawn, which is exactly the evaluation of a set
holding those copies. Only the min-max score normalisation depends on the resample (its highest and lowest
score): resamples are grouped by their ``(hi, lo)`` and the rows computed once per group, so every
resampled AP equals :func:`evaluate_wider` run on the resampled images.
"""
from __future__ import annotations

import time

import numpy as np

from zoo_core.datasets.bootstrap import bootstrap_info, percentile_interval, resample_counts

from .evaluation import THRESH_NUM, WiderImageRecords, image_rows
from .ground_truth import SETTINGS


def _voc_ap_rows(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """VOC all-point AP of each row (the vectorised ``_voc_ap`` of the evaluator)."""
    r = recall.shape[0]
    mrec = np.hstack([np.zeros((r, 1)), recall, np.ones((r, 1))])
    mpre = np.hstack([np.zeros((r, 1)), precision, np.zeros((r, 1))])
    mpre = np.maximum.accumulate(mpre[:, ::-1], axis=1)[:, ::-1]
    step = mrec[:, 1:] - mrec[:, :-1]
    with np.errstate(invalid="ignore"):
        return np.where(step != 0, step * mpre[:, 1:], 0.0).sum(axis=1)


def _ranges(rec: WiderImageRecords, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per resample, the ``(hi, lo)`` of the score normalisation over its drawn images."""
    starts = np.concatenate(([0], np.cumsum(rec.n_pred)))[:-1]
    has = rec.n_pred > 0
    img_max = np.full(rec.n_images, -np.inf)
    img_min = np.full(rec.n_images, np.inf)
    if has.any():
        img_max[has] = np.maximum.reduceat(rec.scores, starts[has])
        img_min[has] = np.minimum.reduceat(rec.scores, starts[has])
    drawn = counts > 0
    hi = np.maximum(0.0, np.where(drawn, img_max, -np.inf).max(axis=1, initial=-np.inf))
    lo = np.minimum(1.0, np.where(drawn, img_min, np.inf).min(axis=1, initial=np.inf))
    return hi, lo


def resampled_ap(rec: WiderImageRecords, counts: np.ndarray) -> dict[str, np.ndarray]:
    """AP per setting of each resample (rows of ``counts``, see :func:`resample_counts`); NaN where a
    resample has no kept face of the setting."""
    n = counts.shape[0]
    out = {s: np.full(n, np.nan) for s in SETTINGS}
    hi, lo = _ranges(rec, counts)
    pairs, group = np.unique(np.stack([hi, lo], axis=1), axis=0, return_inverse=True)
    group = group.reshape(-1)
    w_all = counts.astype(np.float64)
    for g, (h, low) in enumerate(pairs):
        rows = np.flatnonzero(group == g)
        w = w_all[rows]
        for s in SETTINGS:
            prop, tp = image_rows(rec, float(h), float(low), s)
            n_prop = w @ prop.astype(np.float64)
            n_tp = w @ tp.astype(np.float64)
            faces = w @ rec.faces[s].astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                precision = n_tp / n_prop
                recall = n_tp / faces[:, None]
            ap = _voc_ap_rows(recall, precision)
            ap[faces == 0] = np.nan
            out[s][rows] = ap
    return out


def bootstrap_wider(rec: WiderImageRecords, n: int, seed: int) -> tuple[dict[str, tuple], dict]:
    """``({setting: (lo, hi)}, info)``: 95% intervals of Easy / Medium / Hard AP over ``n`` image resamples."""
    t0 = time.perf_counter()
    counts = resample_counts(rec.n_images, n, seed)
    samples = resampled_ap(rec, counts)
    ci = {s: percentile_interval(v) for s, v in samples.items()}
    info = bootstrap_info(n, seed, rec.n_images, time.perf_counter() - t0, samples,
                          thresholds=THRESH_NUM, iou_thresh=rec.iou_thresh)
    return ci, info
