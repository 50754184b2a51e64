"""Bootstrap intervals of COCO AP / AP50 / AP75 from COCOeval's per-image evaluation records (``evalImgs``).

``COCOeval.evaluate`` matches detections to ground truth image by image and category by category; that
matching does not depend on which other images are scored. So each resample only re-runs the
*accumulate* step (area ``all``, 100 detections) on the records of its drawn images, with an image drawn
c times contributing c copies: the detections are ordered as COCOeval orders those copies (score
descending, ties by image, then copy, then the image's own order), precision and recall are the
cumulative counts, and the 101-point interpolated precision is averaged like ``summarize``. The result
equals COCOeval run on a dataset holding the copies as separate images (tested against it). All
categories of one resample are done at once (segmented cumulative sums and searches).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from zoo_core.datasets.bootstrap import bootstrap_info, percentile_interval, resample_counts

#: The metrics of the interval: ``STAT_NAMES`` entries and their IoU-threshold indices (None: all ten).
HEADLINE = {"AP": None, "AP50": 0, "AP75": 5}
_EPS = np.spacing(1)


@dataclass
class CocoImageRecords:
    """COCOeval's per-image matching for area ``all`` and the largest ``maxDets``, flattened.

    Detections are in COCOeval's accumulate order before the global sort: category, image (``imgIds``
    order), then the image's own score order. ``block`` numbers the runs of (category, score, image) in
    the sorted order, which is what orders the copies of a drawn image.
    """

    n_images: int
    n_categories: int
    cat: np.ndarray      # (D,) category index of each detection, in sorted order
    img: np.ndarray      # (D,) image index
    block: np.ndarray    # (D,) run id of (category, score, image), increasing
    tp: np.ndarray       # (T, D) matched and not ignored
    fp: np.ndarray       # (T, D) unmatched and not ignored
    npig: np.ndarray     # (K, I) not-ignored ground truth per category and image
    rec_thrs: np.ndarray  # (R,) recall thresholds


def coco_image_records(ev) -> CocoImageRecords:
    """The records of a finished COCOeval (``evaluate()`` done; needs ``ev.evalImgs``, as pycocotools keeps)."""
    p = ev.params
    eval_imgs = getattr(ev, "evalImgs", None)
    n_expected = len(p.catIds if p.useCats else [-1]) * len(p.areaRng) * len(p.imgIds)
    if not isinstance(eval_imgs, list) or len(eval_imgs) != n_expected or not all(
            e is None or (isinstance(e, dict) and "dtMatches" in e) for e in eval_imgs):
        raise ValueError("this COCOeval keeps no per-image records (evalImgs) in pycocotools' layout")
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    n_cat = len(p.catIds) if p.useCats else 1
    max_det = p.maxDets[-1]
    n_t = len(p.iouThrs)
    cats, imgs, scores, tps, fps = [], [], [], [], []
    npig = np.zeros((n_cat, n_img), dtype=np.int64)
    for k in range(n_cat):
        base = k * n_area * n_img  # area index 0 = "all"
        for i in range(n_img):
            e = eval_imgs[base + i]
            if e is None:
                continue
            npig[k, i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            s = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            if not s.size:
                continue
            dtm = np.asarray(e["dtMatches"])[:, :max_det]
            dtig = np.asarray(e["dtIgnore"])[:, :max_det].astype(bool)
            tps.append(np.logical_and(dtm, ~dtig))
            fps.append(np.logical_and(np.logical_not(dtm), ~dtig))
            scores.append(s)
            cats.append(np.full(s.size, k))
            imgs.append(np.full(s.size, i))
    if scores:
        cat, img, score = np.concatenate(cats), np.concatenate(imgs), np.concatenate(scores)
        tp, fp = np.concatenate(tps, axis=1), np.concatenate(fps, axis=1)
    else:
        cat = img = np.zeros(0, dtype=np.int64)
        score = np.zeros(0)
        tp = fp = np.zeros((n_t, 0), dtype=bool)
    # COCOeval's order: per category, a stable sort by descending score of the image-ordered list
    order = np.lexsort((np.arange(len(score)), -score, cat))
    cat, img, score, tp, fp = cat[order], img[order], score[order], tp[:, order], fp[:, order]
    new = np.ones(len(score), dtype=bool)
    new[1:] = (cat[1:] != cat[:-1]) | (score[1:] != score[:-1]) | (img[1:] != img[:-1])
    block = np.cumsum(new) - 1
    return CocoImageRecords(n_images=n_img, n_categories=n_cat, cat=cat, img=img, block=block, tp=tp, fp=fp,
                            npig=npig, rec_thrs=np.asarray(p.recThrs, dtype=np.float64))


def _segment_starts(cat: np.ndarray, n_cat: int) -> tuple[np.ndarray, np.ndarray]:
    start = np.searchsorted(cat, np.arange(n_cat), side="left")
    end = np.searchsorted(cat, np.arange(n_cat), side="right")
    return start, end


def resample_precision(rec: CocoImageRecords, counts: np.ndarray) -> np.ndarray:
    """``(T, R, K)`` interpolated precision of one resample (image counts ``(I,)``); -1 for a category without
    not-ignored ground truth among the drawn images (as COCOeval)."""
    n_t, n_r, n_k = rec.tp.shape[0], len(rec.rec_thrs), rec.n_categories
    out = -np.ones((n_t, n_r, n_k))
    npig = rec.npig @ counts
    rep = counts[rec.img]
    idx = np.repeat(np.arange(len(rec.img)), rep)
    copy = np.arange(len(idx)) - np.repeat(np.cumsum(rep) - rep, rep)
    idx = idx[np.lexsort((copy, rec.block[idx]))]  # within a (category, score, image) run: copy by copy
    cat = rec.cat[idx]
    start, end = _segment_starts(cat, n_k)
    valid = npig > 0
    if not len(idx):
        out[:, :, valid] = 0.0
        return out
    tp_all, fp_all = rec.tp[:, idx], rec.fp[:, idx]
    for k in np.flatnonzero((end > start) & valid):
        a, b = start[k], end[k]
        tp_c = np.cumsum(tp_all[:, a:b], axis=1, dtype=np.int32).astype(np.float64)  # counts: exact as floats
        fp_c = np.cumsum(fp_all[:, a:b], axis=1, dtype=np.int32).astype(np.float64)
        rc = tp_c / npig[k]
        pr = tp_c / (fp_c + tp_c + _EPS)
        env = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope (max to the right)
        for t in range(n_t):
            pos = np.searchsorted(rc[t], rec.rec_thrs, side="left")
            out[t, :, k] = np.where(pos < b - a, env[t, np.minimum(pos, b - a - 1)], 0.0)
    out[:, :, valid & (end == start)] = 0.0  # ground truth but no detection drawn
    out[:, :, ~valid] = -1.0
    return out


def headline(precision: np.ndarray) -> dict[str, float]:
    """AP / AP50 / AP75 of a ``(T, R, K)`` precision array, averaged as COCOeval's ``summarize``."""
    out = {}
    for name, t in HEADLINE.items():
        s = precision if t is None else precision[t:t + 1]
        s = s[s > -1]
        out[name] = float(np.mean(s)) if s.size else -1.0
    return out


def resampled_stats(rec: CocoImageRecords, counts: np.ndarray) -> dict[str, np.ndarray]:
    """AP / AP50 / AP75 of each resample (rows of ``counts``); NaN where no category has ground truth."""
    out = {k: np.full(counts.shape[0], np.nan) for k in HEADLINE}
    for r, row in enumerate(counts):
        for k, v in headline(resample_precision(rec, row)).items():
            out[k][r] = v if v > -1 else np.nan
    return out


def bootstrap_coco(ev, n: int, seed: int) -> tuple[dict[str, tuple], dict]:
    """``({metric: (lo, hi)}, info)``: 95% intervals of AP, AP50 and AP75 over ``n`` image resamples."""
    t0 = time.perf_counter()
    rec = coco_image_records(ev)
    counts = resample_counts(rec.n_images, n, seed)
    samples = resampled_stats(rec, counts)
    ci = {k: percentile_interval(v) for k, v in samples.items()}
    return ci, bootstrap_info(n, seed, rec.n_images, time.perf_counter() - t0, samples,
                              records="COCOeval evalImgs (area all, maxDets 100)")
