"""``normalize_to_chw`` (OpenCV LUT per channel plane) is bit-identical to the float64 expression."""
from __future__ import annotations

import numpy as np
import pytest

from zoo_core.api.geometry import normalize_to_chw

MEAN = np.array([0.40789654, 0.44719302, 0.47026115], np.float32)
STD = np.array([0.28863828, 0.27408164, 0.27809835], np.float32)


def _reference(u8: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    x = (u8.astype(np.float64) / 255.0 - mean.astype(np.float64)) / std.astype(np.float64)
    return np.ascontiguousarray(x.astype(np.float32).transpose(2, 0, 1))


@pytest.mark.parametrize("mean,std", [(MEAN, STD), (np.zeros(3, np.float32), np.ones(3, np.float32)),
                                      (np.array([0.5, 0.1, 0.9], np.float32), np.array([0.2, 1.7, 0.05], np.float32))])
def test_every_byte_value_and_a_random_image_match_the_float64_expression_bit_for_bit(mean, std):
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (37, 300, 3), dtype=np.uint8)
    img[0, :256] = np.arange(256, dtype=np.uint8)[:, None]  # every value in every channel
    got = normalize_to_chw(img, mean, std)
    assert got.dtype == np.float32 and got.shape == (3, 37, 300) and got.flags.c_contiguous
    assert np.array_equal(got.view(np.uint32), _reference(img, mean, std).view(np.uint32))
    view = img[::2, 5:250]  # a strided view gives the same as its copy
    assert np.array_equal(normalize_to_chw(view, mean, std).view(np.uint32),
                          _reference(np.ascontiguousarray(view), mean, std).view(np.uint32))


def test_one_channel_and_a_wrong_dtype():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    m, s = np.array([0.3], np.float32), np.array([0.7], np.float32)
    assert np.array_equal(normalize_to_chw(img, m, s).view(np.uint32), _reference(img, m, s).view(np.uint32))
    with pytest.raises(ValueError, match="uint8"):
        normalize_to_chw(img.astype(np.float32), m, s)
