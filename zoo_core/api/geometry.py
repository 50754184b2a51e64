"""The CenterNet-family affine letterbox (REFERENCE 2.2 step 3) and its inverse, shared by plugins.

The letterbox scales a ``scale``-wide square around ``center`` of the source image onto the
network input, keeping the aspect ratio and filling the rest black:

* :func:`letterbox` warps an image and returns the :class:`Letterbox` it used;
* :func:`unletterbox_points` / :func:`unletterbox_boxes` map points / boxes found on any grid of
  the letterboxed frame (the input itself, or a stride-4 output map) back to source-image pixels;
  :func:`letterbox_points` / :func:`letterbox_boxes` map source points onto such a grid.

Both directions build the matrix with :func:`get_affine_transform` exactly like the reference
(``cv2.getAffineTransform`` on three float32 points), and points are float32 times a float64
matrix, stored as float32 (REFERENCE 2.11 item 8), so results are bit-identical to the reference.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from zoo_core.api import arena

#: A letterbox scale: one side length (fix_res: ``max(h, w)``) or ``[sw, sh]`` (keep_res; only
#: ``sw`` sets the zoom, as in the reference).
Scale = float | Sequence[float] | np.ndarray


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b + R90(a - b)`` with ``R90(dx, dy) = (-dy, dx)``, in float32 (REFERENCE 2.2 step 3)."""
    d = a - b
    return b + np.array([-d[1], d[0]], np.float32)


def get_affine_transform(center: Sequence[float] | np.ndarray, scale: Scale, output_size: Sequence[int],
                         inv: bool = False) -> np.ndarray:
    """2x3 float64 matrix mapping a ``scale``-wide square around ``center`` onto ``output_size``.

    ``center`` is (cx, cy); ``scale`` a scalar or (sw, sh) (only ``sw`` sets the zoom);
    ``output_size`` is (out_w, out_h). Built from three float32 points with
    ``cv2.getAffineTransform`` exactly like the reference, so the matrix is bit-identical.
    With ``inv=True`` the matrix maps output coordinates back to the source.
    """
    import cv2

    s = np.asarray(scale, dtype=np.float32)
    src_w = float(s.reshape(-1)[0])
    out_w, out_h = float(output_size[0]), float(output_size[1])
    c = np.asarray(center, dtype=np.float32)
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = c
    src[1] = c + np.array([0, src_w * -0.5], np.float32)
    src[2] = _third_point(src[0], src[1])
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = dst[0] + np.array([0, out_w * -0.5], np.float32)
    dst[2] = _third_point(dst[0], dst[1])
    if inv:
        return np.asarray(cv2.getAffineTransform(dst, src), np.float64)
    return np.asarray(cv2.getAffineTransform(src, dst), np.float64)


def affine_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through a 2x3 matrix: float32 points times a float64 matrix, as the reference.

    The result is float64; callers that store coordinates cast it to float32.
    """
    pts = np.asarray(points, dtype=np.float32)
    m = np.asarray(matrix, dtype=np.float64)
    out: np.ndarray = pts[..., 0:1] * m[:, 0] + pts[..., 1:2] * m[:, 1] + m[:, 2]
    return out


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: Sequence[int],
                out: np.ndarray | None = None) -> np.ndarray:
    """``cv2.warpAffine`` with bilinear sampling and a black border, to ``size`` = (w, h).

    ``out``: a C-contiguous array of the result's shape and dtype that OpenCV writes into (e.g. one
    from :func:`zoo_core.api.arena.empty`, so a model input is born in shared memory); returned.
    """
    import cv2

    dsize = (int(size[0]), int(size[1]))
    if out is None:
        return np.asarray(cv2.warpAffine(image, matrix, dsize, flags=cv2.INTER_LINEAR))
    res = cv2.warpAffine(image, matrix, dsize, dst=out, flags=cv2.INTER_LINEAR)
    if res.__array_interface__["data"][0] != out.__array_interface__["data"][0]:  # OpenCV reallocated
        out[...] = res
    return out


class Letterbox(NamedTuple):
    """One image's letterbox: the source square (``center``, ``scale``) and the frame size ``out_hw``.

    ``center`` is float32 (cx, cy) in source pixels; ``scale`` as :data:`Scale`; ``out_hw`` the
    (height, width) of the letterboxed image. Store ``center`` and ``scale`` in the preprocess
    meta; the decoder hands them to :func:`unletterbox_points` / :func:`unletterbox_boxes`.
    """

    center: np.ndarray
    scale: Scale
    out_hw: tuple[int, int]


def letterbox_center_scale(height: int, width: int) -> tuple[np.ndarray, float]:
    """The fix_res rule: centre ``(w / 2, h / 2)`` as float32 and scale ``max(h, w)`` as a float.

    The whole image fits the frame, centred, with black bars on the short side.
    """
    h, w = int(height), int(width)
    return np.array([w / 2.0, h / 2.0], dtype=np.float32), float(max(h, w))


def letterbox(image: np.ndarray, out_hw: Sequence[int], center: Sequence[float] | np.ndarray | None = None,
              scale: Scale | None = None, out: np.ndarray | None = None) -> tuple[np.ndarray, Letterbox]:
    """Letterbox ``image`` (HxWxC) to ``out_hw`` = (height, width); returns ``(warped, letterbox)``.

    ``center`` / ``scale`` default to :func:`letterbox_center_scale` of the image (CenterNet's
    fix_res and CenterFace's 800x800 input); pass them for another rule (CenterNet keep_res:
    ``center = (w // 2, h // 2)``, ``scale = [inp_w, inp_h]``). The warp is OpenCV's fixed-point
    bilinear ``warpAffine`` with a black border, as the reference. ``warped`` has ``image``'s dtype;
    ``out`` (see :func:`warp_affine`) receives it when given.
    """
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if center is None or scale is None:
        c0, s0 = letterbox_center_scale(image.shape[0], image.shape[1])
        center = c0 if center is None else center
        scale = s0 if scale is None else scale
    c = np.asarray(center, dtype=np.float32)
    matrix = get_affine_transform(c, scale, (out_w, out_h))
    return warp_affine(image, matrix, (out_w, out_h), out), Letterbox(c, scale, (out_h, out_w))


def letterbox_points(points: np.ndarray, center: Sequence[float] | np.ndarray, scale: Scale,
                     grid_hw: Sequence[int]) -> np.ndarray:
    """Map (..., 2) ``(x, y)`` source-image points onto a grid of ``grid_hw`` over the letterboxed frame.

    The forward direction of :func:`unletterbox_points` (e.g. ground truth onto a stride-4 output
    map, to encode what a perfect model would output); returns float32.
    """
    fwd = get_affine_transform(np.asarray(center, np.float32), scale, (int(grid_hw[1]), int(grid_hw[0])))
    return affine_points(points, fwd).astype(np.float32)


def letterbox_boxes(boxes: np.ndarray, center: Sequence[float] | np.ndarray, scale: Scale,
                    grid_hw: Sequence[int]) -> np.ndarray:
    """Map (n, 4) source-image boxes onto the grid like :func:`letterbox_points`; float32 (n, 4)."""
    corners = np.asarray(boxes, np.float32).reshape(-1, 2, 2)
    return letterbox_points(corners, center, scale, grid_hw).reshape(-1, 4)


def unletterbox_points(points: np.ndarray, center: Sequence[float] | np.ndarray, scale: Scale,
                       grid_hw: Sequence[int]) -> np.ndarray:
    """Map (..., 2) ``(x, y)`` points from a grid over the letterboxed frame back to source pixels.

    ``grid_hw`` = (height, width) of the grid the points are in: the letterboxed input itself, or
    an output map of it (e.g. ``(inp_h // 4, inp_w // 4)`` for a stride-4 head). ``center`` and
    ``scale`` are the :class:`Letterbox` ones. The inverse of :func:`letterbox`; returns float32.
    """
    inv = get_affine_transform(np.asarray(center, np.float32), scale, (int(grid_hw[1]), int(grid_hw[0])), inv=True)
    return affine_points(points, inv).astype(np.float32)


def unletterbox_boxes(boxes: np.ndarray, center: Sequence[float] | np.ndarray, scale: Scale,
                      grid_hw: Sequence[int]) -> np.ndarray:
    """Map (n, 4) ``[x1, y1, x2, y2]`` boxes like :func:`unletterbox_points` maps their two corners.

    Returns float32 (n, 4). The letterbox has no rotation or flip, so corners stay corners.
    """
    corners = np.asarray(boxes, np.float32).reshape(-1, 2, 2)
    return unletterbox_points(corners, center, scale, grid_hw).reshape(-1, 4)


def normalize_to_chw(image_u8: np.ndarray, mean: Sequence[float] | np.ndarray,
                     std: Sequence[float] | np.ndarray) -> np.ndarray:
    """``((u8 / 255.0) - mean) / std`` in float64 with float32 mean/std, cast to float32, HWC -> CHW.

    Implemented with a 256-entry lookup table per channel, which is bit-identical to the float64
    expression (it is a function of the byte value only): OpenCV's ``cv2.LUT`` maps each channel
    plane straight into its CHW plane (about 3.5x faster than ``np.take`` on the strided channel).
    """
    import cv2

    mean32 = np.asarray(mean, np.float32).reshape(-1)
    std32 = np.asarray(std, np.float32).reshape(-1)
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean64, std64 = mean32.astype(np.float64), std32.astype(np.float64)
    lut = ((levels[None, :] - mean64[:, None]) / std64[:, None]).astype(np.float32)
    if image_u8.dtype != np.uint8 or image_u8.ndim != 3:
        raise ValueError(f"normalize_to_chw needs an HxWxC uint8 image, got {image_u8.dtype} {image_u8.shape}")
    chw = arena.empty((image_u8.shape[2], *image_u8.shape[:2]), np.float32)  # in shared memory in a worker
    planes = cv2.split(np.ascontiguousarray(image_u8)) if image_u8.shape[2] > 1 else [image_u8[:, :, 0]]
    for ch, plane in enumerate(planes):
        out = cv2.LUT(np.ascontiguousarray(plane), lut[ch], dst=chw[ch])
        if not np.shares_memory(out, chw):  # OpenCV chose another buffer: copy it in
            chw[ch] = out
    return chw
