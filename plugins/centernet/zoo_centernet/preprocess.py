"""CenterNet ctdet input preparation: affine letterbox (fix_res or keep_res) and BGR mean/std normalisation.

Follows REFERENCE 2.2: the image stays BGR, the letterbox is OpenCV's fixed-point bilinear
``warpAffine`` with a black border, and normalisation is float64 arithmetic cast to float32.
"""
from __future__ import annotations

import numpy as np

from zoo_core.api.errors import InputError
from zoo_core.api.geometry import letterbox, letterbox_center_scale, normalize_to_chw

INPUT_NAME = "actual_input"

#: COCO statistics in B, G, R order (REFERENCE 2.1).
COCO_MEAN_BGR = (0.40789654, 0.44719302, 0.47026115)
COCO_STD_BGR = (0.28863828, 0.27408164, 0.27809835)


def letterbox_params(height: int, width: int, *, keep_res: bool = False,
                     input_hw: tuple[int, int] = (512, 512)) -> tuple[np.ndarray, float | np.ndarray, tuple[int, int]]:
    """Centre ``c`` (float32 (2,)), scale ``s`` and network input size ``(inp_h, inp_w)`` of one image.

    fix_res: ``c = (w/2, h/2)`` with float halves, ``s = max(h, w)`` (a Python float), input
    ``input_hw``. keep_res: input ``((h | 31) + 1, (w | 31) + 1)``, ``c = (w // 2, h // 2)`` with
    integer halves and ``s = [inp_w, inp_h]`` as float32.
    """
    h, w = int(height), int(width)
    c: np.ndarray
    s: float | np.ndarray
    if keep_res:
        inp_h, inp_w = (h | 31) + 1, (w | 31) + 1
        c = np.array([w // 2, h // 2], dtype=np.float32)
        s = np.array([inp_w, inp_h], dtype=np.float32)
    else:
        inp_h, inp_w = int(input_hw[0]), int(input_hw[1])
        c, s = letterbox_center_scale(h, w)
    return c, s, (inp_h, inp_w)


def preprocess_image(image: np.ndarray, *, keep_res: bool = False, input_hw: tuple[int, int] = (512, 512),
                     mean=COCO_MEAN_BGR, std=COCO_STD_BGR, down_ratio: int = 4):
    """Turn one ``HxWx3`` BGR uint8 image into the network input and its post-process meta.

    :returns: ``({"actual_input": (3, inp_h, inp_w) float32}, meta)`` where ``meta`` is JSON-able:
        ``c`` (list of 2 floats), ``s`` (float, or ``[inp_w, inp_h]`` for keep_res), ``out_h``,
        ``out_w`` (the output grid) and ``input_shape`` (``[3, inp_h, inp_w]``).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"expected an HxWx3 uint8 BGR image, got shape {img.shape} dtype {img.dtype}")
    h, w = img.shape[:2]
    c, s, (inp_h, inp_w) = letterbox_params(h, w, keep_res=keep_res, input_hw=input_hw)
    warped, _ = letterbox(img, (inp_h, inp_w), center=c, scale=s)
    chw = normalize_to_chw(warped, np.asarray(mean, np.float32), np.asarray(std, np.float32))
    meta = {
        "c": [float(v) for v in c],
        "s": [float(v) for v in s] if isinstance(s, np.ndarray) else s,
        "out_h": inp_h // int(down_ratio),
        "out_w": inp_w // int(down_ratio),
        "input_shape": [3, inp_h, inp_w],
    }
    return {INPUT_NAME: np.ascontiguousarray(chw)}, meta
