"""Ascend AIPP (on-device normalisation) config for the CenterFace ``ascend`` variant (REFERENCE 3.4).

AIPP computes ``(x - min_chn_i) * var_reci_chn_i`` per channel on the uint8 HWC input. The
values come from the model's mean/std: ``min_chn_i = round(mean_i * 255)`` and
``var_reci_chn_i = 1 / (std_i * 255)``. As in the seed flow the config says ``RGB888_U8``, but
the bytes are really cv2 **BGR** (no colour conversion is configured), so channel 0 is B and the
mean/std are taken in BGR order.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zoo_core.api.atomic import write_text

from .preprocess import ASCEND_INPUT_HW, MEAN_BGR, STD_BGR

#: Per-channel mean / std: a sequence of floats or a numpy array.
Values = Sequence[float] | np.ndarray


def aipp_values(mean: Values = MEAN_BGR, std: Values = STD_BGR) -> tuple[list[int], list[float]]:
    """``(min_chn, var_reci_chn)``: integer means (x255, rounded) and reciprocal std (1/(std*255))."""
    mean64 = np.asarray(mean, np.float64).reshape(-1)
    std64 = np.asarray(std, np.float64).reshape(-1)
    if mean64.shape != (3,) or std64.shape != (3,) or np.any(std64 <= 0):
        raise ValueError(f"mean/std must be 3 values with std > 0, got {mean64.tolist()} / {std64.tolist()}")
    return [round(m * 255.0) for m in mean64.tolist()], [1.0 / (s * 255.0) for s in std64.tolist()]


def aipp_config_text(mean: Values = MEAN_BGR, std: Values = STD_BGR,
                     input_hw: Sequence[int] = ASCEND_INPUT_HW) -> str:
    """The static ``aipp_op { ... }`` block for an ``input_hw`` uint8 HWC input (BGR bytes)."""
    mins, recis = aipp_values(mean, std)
    h, w = int(input_hw[0]), int(input_hw[1])
    lines = [
        "# zoo centerface AIPP: (x - min_chn) * var_reci_chn per channel.",
        "# The input bytes are OpenCV BGR although input_format says RGB888_U8 (no colour",
        "# conversion is configured), so channel 0 is B: mean/std are in BGR order.",
        "aipp_op {",
        "    aipp_mode : static",
        "    input_format : RGB888_U8",
        f"    src_image_size_w : {w}",
        f"    src_image_size_h : {h}",
        "    crop : false",
    ]
    lines += [f"    min_chn_{i} : {m}" for i, m in enumerate(mins)]
    lines += [f"    var_reci_chn_{i} : {r:.7f}" for i, r in enumerate(recis)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def aipp_config_path(onnx_path: str | os.PathLike) -> Path:
    """Where the AIPP config of an ONNX file (or an OM's ``--output`` prefix) lives: ``<dir>/<stem>.aippconfig``."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".aippconfig")


def write_aipp_config(onnx_path: str | os.PathLike, mean: Values = MEAN_BGR,
                      std: Values = STD_BGR, input_hw: Sequence[int] = ASCEND_INPUT_HW) -> Path:
    """Write the AIPP config next to ``onnx_path`` atomically and return its path."""
    return write_text(aipp_config_path(onnx_path), aipp_config_text(mean, std, input_hw))


def aipp_normalize(image_u8_hwc: np.ndarray, mean: Values = MEAN_BGR,
                   std: Values = STD_BGR) -> np.ndarray:
    """What the AIPP unit computes, in numpy: uint8 (H, W, 3) -> float32 (3, H, W)."""
    mins, recis = aipp_values(mean, std)
    x = np.asarray(image_u8_hwc, np.float32).transpose(2, 0, 1)
    return ((x - np.asarray(mins, np.float32)[:, None, None]) * np.asarray(recis, np.float32)[:, None, None])
