"""CenterFace decoders for the two model families (REFERENCE 3.1-3.3), numpy only, batched.

Family A (Star-Clouds ONNX): threshold, clip-then-extend boxes in input pixels, box-relative
landmarks, greedy "+1" IoU-NMS, map back by the stretch factors.
Family B (chenjun2hao / Ascend): 3x3 peak keep, top-K, boxes and landmarks in grid units with
no +0.5, map back through the inverse letterbox affine.

Both return :class:`zoo_core.api.types.Detections` per image, boxes ``[x1, y1, x2, y2]`` in
original-image pixels sorted by descending score, ``extras["landmarks"]`` (n, 10) as
``x0, y0, ..., x4, y4``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo_core.api.errors import InputError
from zoo_core.api.geometry import affine_points, get_affine_transform
from zoo_core.api.nms import nms
from zoo_core.api.peaks import dense_topk_peaks
from zoo_core.api.types import Detections

STRIDE = 4


def _as_batch(a: np.ndarray, channels: int, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1] != channels:
        raise ValueError(f"{name} must be (N, {channels}, h, w), got {a.shape}")
    return a


def starclouds_candidates(heat, scale, offset, lms, input_hw: Sequence[int], threshold: float):
    """Family-A candidates of a batch, before NMS, in input pixels.

    Inputs are the raw outputs (N,1,h,w), (N,2,h,w) [h, w], (N,2,h,w) [y, x], (N,10,h,w)
    [(y, x) pairs]; ``input_hw`` is the network input (H_in, W_in). Returns
    ``(batch_index, boxes (M,4) float32, scores (M,) float32, landmarks (M,10) float32)`` with
    candidates in row-major heatmap order per image (``heat > threshold``).
    """
    heat = _as_batch(heat, 1, "heatmap")
    scale = _as_batch(scale, 2, "scale")
    offset = _as_batch(offset, 2, "offset")
    lms = _as_batch(lms, 10, "landmarks")
    h_in, w_in = float(input_hw[0]), float(input_hw[1])
    b, r, c = np.nonzero(heat[:, 0] > threshold)
    bh = np.exp(scale[b, 0, r, c].astype(np.float64)) * STRIDE
    bw = np.exp(scale[b, 1, r, c].astype(np.float64)) * STRIDE
    cy = (r + offset[b, 0, r, c].astype(np.float64) + 0.5) * STRIDE
    cx = (c + offset[b, 1, r, c].astype(np.float64) + 0.5) * STRIDE
    x1 = np.minimum(np.maximum(0.0, cx - bw / 2), w_in)
    y1 = np.minimum(np.maximum(0.0, cy - bh / 2), h_in)
    x2 = np.minimum(x1 + bw, w_in)
    y2 = np.minimum(y1 + bh, h_in)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    lm = lms[b, :, r, c].astype(np.float64).reshape(-1, 5, 2)
    pts = np.empty_like(lm)
    pts[:, :, 0] = lm[:, :, 1] * bw[:, None] + x1[:, None]
    pts[:, :, 1] = lm[:, :, 0] * bh[:, None] + y1[:, None]
    return b, boxes, heat[b, 0, r, c].astype(np.float32), pts.reshape(-1, 10).astype(np.float32)


def decode_starclouds(heat, scale, offset, lms, metas: Sequence[dict], threshold: float = 0.05,
                      nms_iou: float = 0.3) -> list[Detections]:
    """Decode a family-A batch into one :class:`Detections` per image (original-image pixels).

    Each meta needs ``input_shape`` ([3, H_in, W_in]) and ``scale_h`` / ``scale_w``
    (``H_in/h``, ``W_in/w``). NMS: greedy, descending score, "+1" areas, suppress at IoU >= ``nms_iou``;
    candidates are visited in ``np.argsort(scores)[::-1]`` order (the reference's), so boxes with exactly equal
    scores are visited in the order numpy's default sort leaves them, reversed, as in the reference.
    """
    heat = _as_batch(heat, 1, "heatmap")
    n = heat.shape[0]
    if len(metas) != n:
        raise ValueError(f"{len(metas)} metas for a batch of {n}")
    in_hw = [tuple(m["input_shape"][-2:]) for m in metas]
    out = []
    if len(set(in_hw)) != 1:
        for i in range(n):
            out += decode_starclouds(heat[i:i + 1], scale[i:i + 1], offset[i:i + 1], lms[i:i + 1],
                                     metas[i:i + 1], threshold, nms_iou)
        return out
    b, boxes, scores, pts = starclouds_candidates(heat, scale, offset, lms, in_hw[0], threshold)
    starts = np.searchsorted(b, np.arange(n + 1))
    for i, meta in enumerate(metas):
        sl = slice(starts[i], starts[i + 1])
        bx, sc, lm = boxes[sl], scores[sl], pts[sl]
        # the reference's own ordering of the float32 scores, so exact ties resolve as the reference's do
        keep = nms(bx, sc, nms_iou, plus_one=True, order=np.argsort(sc)[::-1])
        bx, sc, lm = bx[keep], sc[keep], lm[keep]
        sw, sh = starclouds_scales(meta)
        bx = bx.copy()
        lm = lm.copy()
        bx[:, 0::2] /= sw
        bx[:, 1::2] /= sh
        lm[:, 0::2] /= sw
        lm[:, 1::2] /= sh
        out.append(Detections(bx, sc, np.zeros(len(sc), np.int32), {"landmarks": lm}))
    return out


def starclouds_scales(meta: dict) -> tuple[float, float]:
    """``(scale_w, scale_h)`` of one family-A meta. With ``orig_hw`` (every meta the pipeline makes) they must
    be exactly ``input_shape / orig_hw``, the values :func:`~zoo_centerface.preprocess.preprocess_starclouds`
    writes (a Python float division, exact through JSON): an edited ``meta.jsonl`` (``"scale_h": 0.5`` for 1.0)
    is an :class:`InputError` naming the image, the key and the value, never boxes mapped to the wrong place.
    (The core refuses a scale that is not a positive number: ``zoo_core`` meta checks.)"""
    orig = meta.get("orig_hw")
    if orig is not None:
        h_in, w_in = meta["input_shape"][-2:]
        for key, size, side in (("scale_h", h_in, orig[0]), ("scale_w", w_in, orig[1])):
            want = size / side
            if meta[key] != want:
                raise InputError(f"image {meta.get('id')!r}: meta[{key!r}] {meta[key]!r} is not input_shape / orig_hw "
                                 f"= {size}/{side} = {want!r}, as preprocess writes it",
                                 hint="the inputs' meta.jsonl was changed: run stage=preprocess again")
    return float(meta["scale_w"]), float(meta["scale_h"])


def ascend_grid_dets(hm, wh, hm_offset, lms, k: int = 200):
    """Family-B top-K detections of a batch in grid units.

    Returns ``(boxes (N,K,4), scores (N,K), landmarks (N,K,10))`` float32, descending score per
    image. Channels: ``wh`` [w, h] (log, grid/4), ``hm_offset`` [x, y], landmarks (x, y) pairs
    relative to the peak centre; no +0.5.
    """
    hm = _as_batch(hm, 1, "hm")
    wh = _as_batch(wh, 2, "wh")
    hm_offset = _as_batch(hm_offset, 2, "hm_offset")
    lms = _as_batch(lms, 10, "landmarks")
    n, _, h, w = hm.shape
    picked = [dense_topk_peaks(hm[i, 0].astype(np.float32, copy=False), k) for i in range(n)]
    scores = np.stack([p[0] for p in picked])
    ind = np.stack([p[1] for p in picked])
    rows = (ind // w).astype(np.float32)
    cols = (ind % w).astype(np.float32)

    def gather(a):
        flat = a.reshape(n, a.shape[1], h * w)
        return np.stack([np.take(flat[i], ind[i], axis=1) for i in range(n)]).astype(np.float32, copy=False)

    off = gather(hm_offset)
    size = np.exp(gather(wh)) * np.float32(STRIDE)
    cx = cols + off[:, 0]
    cy = rows + off[:, 1]
    half_w = size[:, 0] / np.float32(2)
    half_h = size[:, 1] / np.float32(2)
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)
    lm = gather(lms).reshape(n, 5, 2, -1)
    pts = np.stack([lm[:, :, 0] + cx[:, None], lm[:, :, 1] + cy[:, None]], axis=2)
    pts = pts.transpose(0, 3, 1, 2).reshape(n, -1, 10)
    return boxes.astype(np.float32), scores.astype(np.float32), pts.astype(np.float32)


def decode_ascend(hm, wh, hm_offset, lms, metas: Sequence[dict], k: int = 200,
                  threshold: float | None = None) -> list[Detections]:
    """Decode a family-B batch into one :class:`Detections` per image (original-image pixels).

    Each meta needs ``c`` (letterbox centre), ``s`` (its size) and ``out_hw`` (the grid size).
    Like the reference, no score threshold is applied unless ``threshold`` is given (rows with
    ``score < threshold`` are then dropped); the result stays in descending score order.
    """
    boxes, scores, pts = ascend_grid_dets(hm, wh, hm_offset, lms, k)
    if len(metas) != len(boxes):
        raise ValueError(f"{len(metas)} metas for a batch of {len(boxes)}")
    out = []
    for i, meta in enumerate(metas):
        inv = get_affine_transform(np.asarray(meta["c"], np.float32), float(meta["s"]),
                                   (int(meta["out_hw"][1]), int(meta["out_hw"][0])), inv=True)
        bx = affine_points(boxes[i].reshape(-1, 2, 2), inv).astype(np.float32).reshape(-1, 4)
        lm = affine_points(pts[i].reshape(-1, 5, 2), inv).astype(np.float32).reshape(-1, 10)
        sc = scores[i]
        if threshold is not None:
            sel = sc >= threshold
            bx, lm, sc = bx[sel], lm[sel], sc[sel]
        out.append(Detections(bx, sc, np.zeros(len(sc), np.int32), {"landmarks": lm}))
    return out
