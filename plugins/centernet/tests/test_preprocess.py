"""CenterNet preprocess against the golden reference inputs and independent geometry checks."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from zoo_centernet.preprocess import COCO_MEAN_BGR, COCO_STD_BGR, letterbox_params, preprocess_image
from zoo_core.api.errors import InputError
from zoo_core.api.geometry import get_affine_transform
from zoo_core.api.imaging import read_image
from zoo_core.testing import golden_dir

MEAN = np.asarray(COCO_MEAN_BGR, np.float32)
STD = np.asarray(COCO_STD_BGR, np.float32)


def _normalise(u8: np.ndarray) -> np.ndarray:
    return (((u8 / 255.0) - MEAN) / STD).astype(np.float32).transpose(2, 0, 1)


@pytest.mark.parametrize("name,file", [("a", "a.jpg"), ("b", "b.png")])
def test_matches_golden_preprocess(name, file):
    cases = golden_dir("centernet", "preprocess_cases")
    ref = np.load(cases / f"{name}.npz")
    image = read_image(cases / file)
    np.testing.assert_array_equal(image, ref["image_bgr"])
    inputs, meta = preprocess_image(image)
    x = inputs["actual_input"]
    assert x.dtype == np.float32 and x.shape == (3, 512, 512) and x.flags.c_contiguous
    assert np.abs(x - ref["images"][0]).max() <= 1e-5
    np.testing.assert_array_equal(x, ref["images"][0])
    np.testing.assert_allclose(meta["c"], ref["c"], atol=1e-6)
    assert meta["s"] == pytest.approx(float(ref["s"]), abs=1e-6)
    assert (meta["out_h"], meta["out_w"]) == (int(ref["out_height"]), int(ref["out_width"]))
    assert meta["input_shape"] == [3, 512, 512]
    np.testing.assert_allclose(get_affine_transform(meta["c"], meta["s"], (512, 512)), ref["trans_input"], atol=1e-6)


def test_grayscale_file_gives_three_equal_channels():
    image = read_image(golden_dir("centernet", "preprocess_cases") / "b.png")
    assert image.shape == (500, 300, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_rgba_png_drops_alpha_without_compositing(tmp_path):
    rng = np.random.default_rng(5)
    bgra = rng.integers(0, 256, (41, 67, 4), dtype=np.uint8)
    bgra[:10, :, 3] = 0  # fully transparent rows keep their stored colour
    path = tmp_path / "rgba.png"
    assert cv2.imwrite(str(path), bgra)
    image = read_image(path)
    np.testing.assert_array_equal(image, bgra[..., :3])
    got, _ = preprocess_image(image)
    want, _ = preprocess_image(np.ascontiguousarray(bgra[..., :3]))
    np.testing.assert_array_equal(got["actual_input"], want["actual_input"])


def test_fix_res_landscape_geometry_is_a_scaled_centred_letterbox():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    inputs, meta = preprocess_image(image)
    x = inputs["actual_input"]
    # 640x480 -> k = 0.8, 64 black rows above and below, which normalise to -mean/std
    pad = _normalise(np.zeros((1, 1, 3), np.uint8))[:, 0, 0]
    for ch in range(3):
        assert (x[ch, :64] == pad[ch]).all() and (x[ch, 448:] == pad[ch]).all()
    assert not np.isclose(x[:, 64:448], pad[:, None, None]).all()
    assert meta == {"c": [320.0, 240.0], "s": 640.0, "out_h": 128, "out_w": 128, "input_shape": [3, 512, 512]}


@pytest.mark.parametrize("h,w", [(23, 37), (480, 640), (512, 512), (33, 95)])
def test_keep_res_is_an_integer_pad_past_the_next_multiple_of_32(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    inputs, meta = preprocess_image(image, keep_res=True)
    inp_h, inp_w = (h | 31) + 1, (w | 31) + 1
    assert inp_h > h and inp_w > w and inp_h % 32 == 0 and inp_w % 32 == 0
    x = inputs["actual_input"]
    assert x.shape == (3, inp_h, inp_w)
    assert meta["c"] == [float(w // 2), float(h // 2)]
    assert meta["s"] == [float(inp_w), float(inp_h)]
    assert (meta["out_h"], meta["out_w"]) == (inp_h // 4, inp_w // 4)
    # scale 1 and integer halves: the image is copied unchanged at an integer offset
    oy, ox = inp_h // 2 - h // 2, inp_w // 2 - w // 2
    canvas = np.zeros((inp_h, inp_w, 3), np.uint8)
    canvas[oy:oy + h, ox:ox + w] = image
    np.testing.assert_array_equal(x, _normalise(canvas))


def test_keep_res_and_fix_res_centres_differ_on_odd_sizes():
    c_fix, s_fix, hw_fix = letterbox_params(23, 37)
    c_keep, s_keep, hw_keep = letterbox_params(23, 37, keep_res=True)
    assert list(c_fix) == [18.5, 11.5] and s_fix == 37.0 and hw_fix == (512, 512)
    assert list(c_keep) == [18.0, 11.0] and list(s_keep) == [64.0, 32.0] and hw_keep == (32, 64)
    assert c_keep.dtype == np.float32 and s_keep.dtype == np.float32


def test_meta_is_json_serialisable():
    import json

    _, meta = preprocess_image(np.zeros((7, 9, 3), np.uint8), keep_res=True)
    assert json.loads(json.dumps(meta)) == meta


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.float32)])
def test_rejects_non_bgr_u8(bad):
    with pytest.raises(InputError):
        preprocess_image(bad)
