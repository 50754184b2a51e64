"""WIDER FACE evaluation (easy / medium / hard AP), REFERENCE 3.6.

The algorithm is the one of the wondervictor Python evaluator (WV), which the Ascend / chenjun2hao copy
runs at IoU 0.4:

* scores are min-max normalised over all images at once (max starts at 0, min at 1);
* IoU uses the "+1" pixel convention on ``x2 = x + w``, ``y2 = y + h`` corners;
* predictions are matched in file order to their first best-IoU face; a hit on a face outside the
  setting's ``gt_list`` removes the prediction from the proposals; a repeat hit is a false positive;
* for each of 1000 thresholds ``1 - (t+1)/1000`` and each image, the *last* box in file order whose
  score passes gives the row (proposals so far, faces recalled so far);
* AP is the VOC all-point area under the precision envelope.

``evaluate_wider`` is the numpy-vectorised implementation; ``evaluate_wider_reference`` a plain
per-image port with the original loops, kept as the oracle and the speed baseline. Both give identical
floats. Two degenerate cases are defined here rather than left to a division by zero: if every score
is the same value, every normalised score is 1 (WV produces NaN scores and AP 0), and a setting with
no kept faces has AP NaN; both raise a ``WiderEvalWarning``.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from zoo_core.api.errors import ZooError

from .ground_truth import SETTINGS, WiderGroundTruth

THRESH_NUM = 1000
Key = tuple[str, str]
Preds = Mapping[Key, tuple[np.ndarray, np.ndarray]]


class WiderEvalWarning(UserWarning):
    """A degenerate evaluation input (constant scores, a setting without faces, extra predictions)."""


def thresholds() -> np.ndarray:
    """The 1000 score thresholds ``1 - (t+1)/1000``, descending (``0.999 … 0.0``)."""
    return 1.0 - np.arange(1, THRESH_NUM + 1, dtype=np.int64) / THRESH_NUM


@dataclass
class WiderResult:
    """APs and PR curves of one evaluation; arrays are indexed by threshold (see ``thresholds()``)."""

    iou_thresh: float
    ap: dict[str, float]
    precision: dict[str, np.ndarray]
    recall: dict[str, np.ndarray]
    proposals: dict[str, np.ndarray]
    true_positives: dict[str, np.ndarray]
    num_faces: dict[str, int]
    thresholds: np.ndarray = field(default_factory=thresholds)

    def summary(self) -> str:
        """The three AP lines in the reference evaluators' layout."""
        return "\n".join(f"{s.capitalize():<6} Val AP: {self.ap[s]}" for s in SETTINGS)

    def as_dict(self) -> dict:
        """A JSON-friendly summary (no curves)."""
        return {"iou_thresh": self.iou_thresh, "ap": dict(self.ap), "num_faces": dict(self.num_faces)}


def _gather(preds: Preds, gt: WiderGroundTruth) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated ``(boxes_xywh float64 (n,4), scores float64 (n,))`` per gt image, in gt order."""
    out = []
    missing = []
    for _, _, event, stem in gt.iter_images():
        item = preds.get((event, stem))
        if item is None:
            missing.append(f"{event}/{stem}")
            continue
        boxes = np.asarray(item[0], dtype=np.float64)
        scores = np.asarray(item[1], dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
            raise ZooError(f"predictions for {event}/{stem}: boxes must be (n, 4) and scores (n,), got "
                           f"{boxes.shape} and {scores.shape}")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ZooError(f"predictions for {event}/{stem} contain a non-finite value")
        out.append((boxes, scores))
    if missing:
        raise ZooError(f"no predictions for {len(missing)} of {gt.num_images} images (first: {missing[0]})",
                       hint="read the tree with read_prediction_tree(..., missing='empty') to count them as empty")
    extra = len(preds) - len(out)
    if extra > 0:
        warnings.warn(f"{extra} prediction entries are not images of the ground truth; ignored (they do not "
                      "enter the score normalisation)", WiderEvalWarning, stacklevel=3)
    return out


def _warn_constant() -> None:
    warnings.warn("all prediction scores are equal: min-max normalisation is undefined; every normalised "
                  "score is set to 1", WiderEvalWarning, stacklevel=3)


def _warn_no_faces(setting: str) -> None:
    warnings.warn(f"setting {setting!r} has no kept faces: AP is NaN", WiderEvalWarning, stacklevel=3)


def _result(iou_thresh: float, counts: dict[str, tuple[np.ndarray, np.ndarray, int]], voc_ap) -> WiderResult:
    ap, prec, rec, props, tps, faces = {}, {}, {}, {}, {}, {}
    for s, (n_prop, n_tp, count_face) in counts.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = n_tp / n_prop
            recall = n_tp / count_face if count_face else np.full(THRESH_NUM, np.nan)
        if count_face == 0:
            _warn_no_faces(s)
        ap[s] = float(voc_ap(recall, precision)) if count_face else float("nan")
        prec[s], rec[s], props[s], tps[s], faces[s] = precision, recall, n_prop, n_tp, count_face
    return WiderResult(iou_thresh=float(iou_thresh), ap=ap, precision=prec, recall=rec, proposals=props,
                       true_positives=tps, num_faces=faces)


# ----------------------------------------------------------------------------------------------------------
# vectorised implementation


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def _best_gt(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each prediction (xyxy), the IoU to and index of its first best gt (xyxy), "+1" convention."""
    px1, py1, px2, py2 = (pred[:, i:i + 1] for i in range(4))
    gx1, gy1, gx2, gy2 = gt[:, 0], gt[:, 1], gt[:, 2], gt[:, 3]
    iw = np.minimum(px2, gx2) - np.maximum(px1, gx1) + 1
    ih = np.minimum(py2, gy2) - np.maximum(py1, gy1) + 1
    inter = iw * ih
    area_p = (px2 - px1 + 1) * (py2 - py1 + 1)
    area_g = (gx2 - gx1 + 1) * (gy2 - gy1 + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where((iw > 0) & (ih > 0), inter / (area_p + area_g - inter), 0.0)
    arg = np.argmax(iou, axis=1)
    return iou[np.arange(len(arg)), arg], arg


@dataclass
class WiderImageRecords:
    """The per-image matching of one WIDER evaluation, before the score normalisation.

    Which prediction hits which face does not depend on the scores; the normalised scores only decide which
    predictions pass each threshold. So :func:`image_rows` turns these records into per-image
    ``(proposals, true positives)`` rows for any normalisation ``(hi, lo)``, which is what a bootstrap over
    images needs (:func:`zoo_core.datasets.widerface.bootstrap_wider`). Arrays over predictions are in gt
    image order, each image's predictions in file order.
    """

    iou_thresh: float
    n_pred: np.ndarray               # (n_img,) predictions per image
    scores: np.ndarray               # (total,) raw scores
    active: np.ndarray               # (n_img,) the image has predictions and faces
    proposal: dict[str, np.ndarray]  # setting -> (total,) counts as a proposal
    first: dict[str, np.ndarray]     # setting -> (total,) first hit of a kept face
    faces: dict[str, np.ndarray]     # setting -> (n_img,) kept faces per image

    @property
    def n_images(self) -> int:
        return len(self.n_pred)

    def score_range(self) -> tuple[float, float]:
        """``(hi, lo)`` of the min-max normalisation over all images (max starts at 0, min at 1)."""
        if not len(self.scores):
            return 0.0, 1.0
        return max(0.0, float(self.scores.max())), min(1.0, float(self.scores.min()))


def wider_image_records(preds: Preds, gt: WiderGroundTruth, iou_thresh: float = 0.5) -> WiderImageRecords:
    """Match ``preds`` to ``gt`` image by image (see :func:`evaluate_wider` for the arguments)."""
    items = _gather(preds, gt)
    n_pred = np.array([len(s) for _, s in items], dtype=np.int64)
    n_gt = np.array([len(b) for ev in gt.boxes for b in ev], dtype=np.int64)
    pred_start = np.concatenate(([0], np.cumsum(n_pred)))
    gt_start = np.concatenate(([0], np.cumsum(n_gt)))
    total = int(pred_start[-1])

    scores = np.concatenate([s for _, s in items]) if total else np.zeros(0)
    boxes = np.concatenate([b for b, _ in items]) if total else np.zeros((0, 4))
    corners = boxes.copy()
    corners[:, 2:] += corners[:, :2]
    gt_corners = [b.astype(np.float64) for ev in gt.boxes for b in ev]
    for g in gt_corners:
        g[:, 2:] += g[:, :2]

    best_iou = np.full(total, -np.inf)
    best_gt = np.full(total, gt_start[-1], dtype=np.int64)  # a sentinel face, never kept, for inactive images
    active = (n_pred > 0) & (n_gt > 0)
    for i in np.flatnonzero(active):
        a, b = pred_start[i], pred_start[i + 1]
        best_iou[a:b], arg = _best_gt(corners[a:b], gt_corners[i])
        best_gt[a:b] = arg + gt_start[i]

    hit = best_iou >= iou_thresh
    proposal, first_hit, faces = {}, {}, {}
    for s in SETTINGS:
        keep = [k for ev in gt.keep[s] for k in ev]
        kept = np.zeros(int(gt_start[-1]) + 1, dtype=bool)
        if keep and sum(len(k) for k in keep):
            kept[np.concatenate([k + gt_start[i] for i, k in enumerate(keep)])] = True
        faces[s] = np.array([len(k) for k in keep], dtype=np.int64)
        kept_hit = hit & kept[best_gt]
        proposal[s] = ~(hit & ~kept[best_gt])
        first = np.zeros(total, dtype=bool)
        hit_idx = np.flatnonzero(kept_hit)
        _, first_pos = np.unique(best_gt[hit_idx], return_index=True)
        first[hit_idx[first_pos]] = True
        first_hit[s] = first
    return WiderImageRecords(iou_thresh=float(iou_thresh), n_pred=n_pred, scores=scores, active=active,
                             proposal=proposal, first=first_hit, faces=faces)


def _last_passing(rec: WiderImageRecords, hi: float, lo: float) -> np.ndarray:
    """``last[i, t]``: global index of the last box of image i whose normalised score passes threshold t, or -1."""
    total = len(rec.scores)
    scores = np.ones_like(rec.scores) if hi == lo else (rec.scores - lo) / (hi - lo)
    image_of = np.repeat(np.arange(rec.n_images), rec.n_pred)
    first_t = THRESH_NUM - np.searchsorted(thresholds()[::-1], scores, side="right")
    last = np.full((rec.n_images, THRESH_NUM + 1), -1, dtype=np.int64)
    np.maximum.at(last, (image_of, first_t), np.arange(total, dtype=np.int64))
    last = np.maximum.accumulate(last[:, :THRESH_NUM], axis=1)
    last[~rec.active] = -1
    return last


def _per_image(flags: np.ndarray, starts: np.ndarray, last: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(n_img, T)``: ``flags[image start : last + 1].sum()`` per image and threshold (0 where not valid)."""
    cs = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
    return np.where(valid, cs[last + 1] - cs[starts][:, None], 0)


def image_rows(rec: WiderImageRecords, hi: float, lo: float, setting: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``(proposals, true positives)``, each ``(n_img, 1000)``, under the normalisation ``(hi, lo)``.

    Summed over images they are the evaluation's counts (what :func:`evaluate_wider` turns into AP).
    """
    last = _last_passing(rec, hi, lo)
    starts = np.concatenate(([0], np.cumsum(rec.n_pred)))[:-1]
    valid = last >= 0
    return (_per_image(rec.proposal[setting], starts, last, valid),
            _per_image(rec.first[setting], starts, last, valid))


def evaluate_wider(preds: Preds, gt: WiderGroundTruth, iou_thresh: float = 0.5) -> WiderResult:
    """Evaluate WIDER FACE predictions: AP and PR curves for easy, medium and hard.

    ``preds`` maps ``(event, stem)`` to ``(boxes_xywh (n, 4), scores (n,))`` in file order, for every
    image of ``gt`` (use ``read_prediction_tree``; images without detections map to empty arrays).
    ``iou_thresh`` is 0.5 for the official protocol; the chenjun2hao / Ascend numbers use 0.4.
    """
    return evaluate_records(wider_image_records(preds, gt, iou_thresh))


def evaluate_records(rec: WiderImageRecords) -> WiderResult:
    """AP and PR curves of matched records (:func:`wider_image_records`), normalised over all images."""
    hi, lo = rec.score_range()
    if len(rec.scores) and hi == lo:
        _warn_constant()
    last = _last_passing(rec, hi, lo)
    starts = np.concatenate(([0], np.cumsum(rec.n_pred)))[:-1]
    valid = last >= 0
    counts = {}
    for s in SETTINGS:
        n_prop = _per_image(rec.proposal[s], starts, last, valid).sum(axis=0)
        n_tp = _per_image(rec.first[s], starts, last, valid).sum(axis=0)
        counts[s] = (n_prop.astype(np.float64), n_tp.astype(np.float64), int(rec.faces[s].sum()))
    return _result(rec.iou_thresh, counts, _voc_ap)


# ----------------------------------------------------------------------------------------------------------
# per-image reference implementation (oracle and speed baseline)


def _voc_ap_loop(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1])


def _overlaps_by_gt(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(n, k) IoU, one gt column at a time, "+1" convention."""
    out = np.zeros((len(pred), len(gt)))
    area_p = (pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)
    for k in range(len(gt)):
        area_g = (gt[k, 2] - gt[k, 0] + 1) * (gt[k, 3] - gt[k, 1] + 1)
        iw = np.minimum(pred[:, 2], gt[k, 2]) - np.maximum(pred[:, 0], gt[k, 0]) + 1
        ih = np.minimum(pred[:, 3], gt[k, 3]) - np.maximum(pred[:, 1], gt[k, 1]) + 1
        ok = (iw > 0) & (ih > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[ok, k] = iw[ok] * ih[ok] / (area_p[ok] + area_g - iw[ok] * ih[ok])
    return out


def _image_eval(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray, iou_thresh: float):
    p = pred.copy()
    p[:, 2] += p[:, 0]
    p[:, 3] += p[:, 1]
    g = gt.copy()
    g[:, 2] += g[:, 0]
    g[:, 3] += g[:, 1]
    overlaps = _overlaps_by_gt(p[:, :4], g)
    recall_flags = np.zeros(len(g))
    proposal_flags = np.ones(len(p))
    pred_recall = np.zeros(len(p))
    for h in range(len(p)):
        row = overlaps[h]
        best, j = row.max(), row.argmax()
        if best >= iou_thresh:
            if ignore[j] == 0:
                recall_flags[j] = -1
                proposal_flags[h] = -1
            elif recall_flags[j] == 0:
                recall_flags[j] = 1
        pred_recall[h] = np.count_nonzero(recall_flags == 1)
    return pred_recall, proposal_flags


def _image_pr(scores: np.ndarray, pred_recall: np.ndarray, proposal_flags: np.ndarray) -> np.ndarray:
    rows = np.zeros((THRESH_NUM, 2))
    for t in range(THRESH_NUM):
        thr = 1 - (t + 1) / THRESH_NUM
        passing = np.where(scores >= thr)[0]
        if len(passing):
            r = passing[-1]
            rows[t, 0] = np.count_nonzero(proposal_flags[:r + 1] == 1)
            rows[t, 1] = pred_recall[r]
    return rows


def evaluate_wider_reference(preds: Preds, gt: WiderGroundTruth, iou_thresh: float = 0.5) -> WiderResult:
    """The same evaluation as ``evaluate_wider``, image by image with the original loops (slow).

    Used as the oracle in tests and as the baseline in ``benchmarks/bench_wider_eval.py``.
    """
    items = _gather(preds, gt)
    hi, lo = 0.0, 1.0
    for _, s in items:
        if len(s):
            hi, lo = max(hi, float(s.max())), min(lo, float(s.min()))
    constant = any(len(s) for _, s in items) and hi == lo
    if constant:
        _warn_constant()
    normed = []
    for b, s in items:
        ns = np.ones_like(s) if constant else (s - lo) / (hi - lo)
        normed.append(np.column_stack([b, ns]))

    gt_images = [(b.astype(np.float64), e, j) for e, ev in enumerate(gt.boxes) for j, b in enumerate(ev)]
    counts = {}
    for setting in SETTINGS:
        pr = np.zeros((THRESH_NUM, 2))
        count_face = 0
        for pred, (gt_boxes, e, j) in zip(normed, gt_images):
            keep = gt.keep[setting][e][j]
            count_face += len(keep)
            if len(gt_boxes) == 0 or len(pred) == 0:
                continue
            ignore = np.zeros(len(gt_boxes))
            if len(keep):
                ignore[keep] = 1
            pred_recall, proposal_flags = _image_eval(pred, gt_boxes, ignore, iou_thresh)
            pr += _image_pr(pred[:, 4], pred_recall, proposal_flags)
        counts[setting] = (pr[:, 0], pr[:, 1], count_face)
    return _result(iou_thresh, counts, _voc_ap_loop)
