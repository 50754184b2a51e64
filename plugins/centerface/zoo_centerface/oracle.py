"""Ground-truth faces encoded as the raw outputs a perfect CenterFace would give, per family (REFERENCE 3.1-3.3).

The encoders invert the decoders of :mod:`zoo_centerface.decode` exactly, so ``backend=oracle`` scores the
preprocess -> postprocess -> WIDER evaluation chain without weights:

* ``starclouds`` (family A): boxes mapped into input pixels by the stretch factors; one heatmap cell per
  face at ``floor(c/4 - 0.5)`` with offset ``c/4 - 0.5 - cell`` (channels y, x), scale ``ln(size/4)``
  (channels h, w), landmarks box-normalised relative to the top-left corner (channels y, x).
* ``ascend`` (family B): boxes mapped onto the stride-4 grid by the letterbox affine; cell
  ``floor(c)``, offset ``c - cell`` (channels x, y), ``wh = ln(size_grid/4)`` (channels w, h),
  landmarks in grid units relative to the centre (channels x, y).

A face's target box is its inclusive pixel box ``x, y, x + w - 1, y + h - 1`` (what the WIDER writer turns
back into ``x y w h``). Scores grow with face height (0.55 .. 0.95) so that they are not all equal (the
WIDER normalisation is undefined for constant scores). WIDER has no landmarks: the oracle places five at
fixed fractions of the box (eyes, nose, mouth corners), which the decoders must give back.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from zoo_core.api.geometry import affine_points, get_affine_transform

from .decode import STRIDE

#: Landmarks as (fx, fy) fractions of the face box: left eye, right eye, nose, mouth left, mouth right.
LANDMARK_FRACTIONS = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float64)


def face_scores(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Oracle scores in (0.55, 0.95), increasing with the face's height."""
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    h = np.maximum(b[:, 3] - b[:, 1] + 1, 0)
    return (0.55 + 0.4 * (1 - np.exp(-h / 64.0))).astype(np.float32)


def face_landmarks(boxes_xyxy: np.ndarray) -> np.ndarray:
    """``(n, 10)`` landmarks ``x0, y0, ..., x4, y4`` at :data:`LANDMARK_FRACTIONS` of each box."""
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    x = b[:, 0:1] + LANDMARK_FRACTIONS[None, :, 0] * (b[:, 2:3] - b[:, 0:1])
    y = b[:, 1:2] + LANDMARK_FRACTIONS[None, :, 1] * (b[:, 3:4] - b[:, 1:2])
    return np.stack([x, y], axis=2).reshape(-1, 10)


def _order(scores: np.ndarray) -> np.ndarray:
    """Write low scores first so that a higher-scored face wins a shared cell."""
    return np.argsort(scores, kind="stable")


def encode_starclouds(boxes_xyxy: np.ndarray, meta: Mapping, scores: np.ndarray | None = None,
                      landmarks: np.ndarray | None = None) -> list[np.ndarray]:
    """Family-A outputs ``[heat (1,h,w), scale (2,h,w), offset (2,h,w), landmarks (10,h,w)]`` float32.

    :param boxes_xyxy: ``(n, 4)`` faces in original-image pixels.
    :param meta: the item's preprocess meta (``input_shape``, ``scale_h``, ``scale_w``).
    :param scores: per-face heatmap values (default :func:`face_scores`).
    :param landmarks: ``(n, 10)`` image-pixel landmarks (default :func:`face_landmarks`).
    Faces whose centre falls outside the input or with a non-positive size are not encoded.
    """
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    sc = face_scores(b) if scores is None else np.asarray(scores, np.float32)
    lm = face_landmarks(b) if landmarks is None else np.asarray(landmarks, np.float64).reshape(-1, 10)
    h_in, w_in = (int(v) for v in meta["input_shape"][-2:])
    sh, sw = float(meta["scale_h"]), float(meta["scale_w"])
    oh, ow = h_in // STRIDE, w_in // STRIDE
    heat = np.zeros((1, oh, ow), np.float32)
    scale = np.zeros((2, oh, ow), np.float32)
    offset = np.zeros((2, oh, ow), np.float32)
    lms = np.zeros((10, oh, ow), np.float32)
    x1, y1, x2, y2 = b[:, 0] * sw, b[:, 1] * sh, b[:, 2] * sw, b[:, 3] * sh
    bw, bh = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    for i in _order(sc):
        if bw[i] <= 0 or bh[i] <= 0 or not (0 <= cx[i] < w_in and 0 <= cy[i] < h_in):
            continue
        gx, gy = cx[i] / STRIDE - 0.5, cy[i] / STRIDE - 0.5
        c = int(np.clip(np.floor(gx), 0, ow - 1))
        r = int(np.clip(np.floor(gy), 0, oh - 1))
        heat[0, r, c] = sc[i]
        scale[:, r, c] = (np.log(bh[i] / STRIDE), np.log(bw[i] / STRIDE))
        offset[:, r, c] = (gy - r, gx - c)
        pts = lm[i].reshape(5, 2)
        rel = np.stack([(pts[:, 1] * sh - y1[i]) / bh[i], (pts[:, 0] * sw - x1[i]) / bw[i]], axis=1)
        lms[:, r, c] = rel.reshape(10)
    return [heat, scale, offset, lms]


def encode_ascend(boxes_xyxy: np.ndarray, meta: Mapping, scores: np.ndarray | None = None,
                  landmarks: np.ndarray | None = None) -> list[np.ndarray]:
    """Family-B outputs ``[hm (1,H,W), wh (2,H,W), hm_offset (2,H,W), landmarks (10,H,W)]`` float32.

    :param meta: the item's preprocess meta (``c``, ``s``, ``out_hw``).
    Other arguments as :func:`encode_starclouds`.
    """
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    sc = face_scores(b) if scores is None else np.asarray(scores, np.float32)
    lm = face_landmarks(b) if landmarks is None else np.asarray(landmarks, np.float64).reshape(-1, 10)
    oh, ow = (int(v) for v in meta["out_hw"])
    trans = get_affine_transform(np.asarray(meta["c"], np.float32), float(meta["s"]), (ow, oh))
    grid = affine_points(b.reshape(-1, 2, 2), trans).reshape(-1, 4)
    pts = affine_points(lm.reshape(-1, 5, 2), trans).reshape(-1, 5, 2)
    hm = np.zeros((1, oh, ow), np.float32)
    wh = np.zeros((2, oh, ow), np.float32)
    off = np.zeros((2, oh, ow), np.float32)
    lms = np.zeros((10, oh, ow), np.float32)
    for i in _order(sc):
        x1, y1, x2, y2 = grid[i]
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if w <= 0 or h <= 0 or not (0 <= cx < ow and 0 <= cy < oh):
            continue
        c, r = int(np.floor(cx)), int(np.floor(cy))
        hm[0, r, c] = sc[i]
        wh[:, r, c] = (np.log(w / STRIDE), np.log(h / STRIDE))
        off[:, r, c] = (cx - c, cy - r)
        lms[:, r, c] = np.stack([pts[i, :, 0] - cx, pts[i, :, 1] - cy], axis=1).reshape(10)
    return [hm, wh, off, lms]


def encode_faces(variant: str, boxes_xyxy: np.ndarray, meta: Mapping) -> list[np.ndarray]:
    """The oracle outputs of ``variant`` (``starclouds`` or ``ascend``) for these faces."""
    return (encode_starclouds if variant == "starclouds" else encode_ascend)(boxes_xyxy, meta)
