"""The CenterNet-family affine letterbox (REFERENCE 2.2 step 3), shared by CenterNet and CenterFace."""
from __future__ import annotations

import numpy as np


def get_affine_transform(center, scale, output_size, inv: bool = False) -> np.ndarray:
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
    src[2] = src[1] + np.array([src[0, 1] - src[1, 1], -(src[0, 0] - src[1, 0])], np.float32)
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = dst[0] + np.array([0, out_w * -0.5], np.float32)
    dst[2] = dst[1] + np.array([dst[0, 1] - dst[1, 1], -(dst[0, 0] - dst[1, 0])], np.float32)
    if inv:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def affine_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through a 2x3 matrix: float32 points times a float64 matrix, as the reference."""
    pts = np.asarray(points, dtype=np.float32)
    m = np.asarray(matrix, dtype=np.float64)
    out = pts[..., 0:1] * m[:, 0] + pts[..., 1:2] * m[:, 1] + m[:, 2]
    return out


def letterbox(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.warpAffine`` with bilinear sampling and a black border, to ``size`` = (w, h)."""
    import cv2

    return cv2.warpAffine(image, matrix, (int(size[0]), int(size[1])), flags=cv2.INTER_LINEAR)


def normalize_to_chw(image_u8: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``((u8 / 255.0) - mean) / std`` in float64 with float32 mean/std, cast to float32, HWC -> CHW.

    Implemented with a 256-entry lookup table per channel, which is bit-identical to the float64
    expression (it is a function of the byte value only) and several times faster.
    """
    mean = np.asarray(mean, np.float32).reshape(-1)
    std = np.asarray(std, np.float32).reshape(-1)
    levels = np.arange(256, dtype=np.float64) / 255.0
    lut = ((levels[None, :] - mean.astype(np.float64)[:, None]) / std.astype(np.float64)[:, None]).astype(np.float32)
    chw = np.empty((image_u8.shape[2],) + image_u8.shape[:2], np.float32)
    for ch in range(image_u8.shape[2]):
        np.take(lut[ch], image_u8[:, :, ch], out=chw[ch])
    return chw
