"""Preprocess of both CenterFace families against the reference goldens (golden/centerface/README.md)."""
import numpy as np
import pytest
from omegaconf import OmegaConf

from zoo_centerface.preprocess import (
    ceil32,
    preprocess_ascend,
    preprocess_for,
    preprocess_starclouds,
    starclouds_input_hw,
)
from zoo_core.api.errors import ConfigError
from zoo_core.api.imaging import read_image
from zoo_core.testing import golden_dir


@pytest.fixture(scope="module")
def famb():
    g = golden_dir("centerface")
    return np.load(g / "famB_preprocess.npz"), read_image(g / "famB_pre_1024x683.png")


def test_ascend_float_input_matches_reference(famb):
    gold, img = famb
    inputs, meta = preprocess_ascend(img)
    x = inputs["image"]
    assert x.dtype == np.float32 and x.shape == (3, 800, 800) and x.flags["C_CONTIGUOUS"]
    assert np.abs(x - gold["input"][0]).max() <= 1e-6
    assert meta["c"] == [float(v) for v in gold["c"]] and meta["s"] == float(gold["s"])
    assert meta["out_hw"] == [int(gold["out_height"]), int(gold["out_width"])]
    assert meta["input_shape"] == [3, 800, 800] and meta["orig_hw"] == [683, 1024]


def test_ascend_aipp_input_is_warped_bgr_bit_exact(famb):
    gold, img = famb
    inputs, meta = preprocess_ascend(img, aipp=True)
    u8 = inputs["image"]
    assert u8.dtype == np.uint8 and u8.shape == (800, 800, 3) and u8.nbytes == 1_920_000
    np.testing.assert_array_equal(u8, gold["warped_bgr_u8"])
    assert meta["input_shape"] == [800, 800, 3] and meta["c"] == [512.0, 341.5]


def test_ascend_aipp_input_is_warped_straight_into_an_open_slot(famb):
    """In a preprocess worker the AIPP input is written by the warp into the item's shared memory (no
    1.9 MB copy afterwards), with the same bytes."""
    import mmap

    from zoo_core.api import arena

    gold, img = famb
    buf = mmap.mmap(-1, 1 << 22)
    base = np.frombuffer(buf, np.uint8, count=1).ctypes.data
    arena.open_slot(buf, 4096, 1_920_000)
    try:
        u8 = preprocess_ascend(img, aipp=True)[0]["image"]
    finally:
        arena.close_slot()
    assert u8.__array_interface__["data"][0] == base + 4096
    np.testing.assert_array_equal(u8, gold["warped_bgr_u8"])
    del u8


@pytest.mark.parametrize("name", ["famA_astronaut", "famA_synthA_1", "famA_synthA_2"])
def test_starclouds_input_is_bit_exact(name):
    g = golden_dir("centerface")
    gold = np.load(g / f"{name}.npz")
    png = "astronaut.png" if name == "famA_astronaut" else name.replace("famA_", "") + ".png"
    inputs, meta = preprocess_starclouds(read_image(g / png))
    x = inputs["input.1"]
    assert x.dtype == np.float32 and x.shape == (3, *gold["input_hw"].tolist())
    np.testing.assert_array_equal(x, gold["input_rgb"].transpose(2, 0, 1).astype(np.float32))
    assert meta["orig_hw"] == gold["orig_hw"].tolist()
    assert (meta["scale_h"], meta["scale_w"]) == tuple(gold["scale_hw"].tolist())


def test_starclouds_input_is_written_straight_into_an_open_slot():
    """In a preprocess worker the Star-Clouds input (float32 RGB planes at natural size) is written into
    the item's shared memory (no copy of the 3 x H x W floats afterwards), with the reference's values."""
    import mmap

    from zoo_core.api import arena

    g = golden_dir("centerface")
    gold = np.load(g / "famA_synthA_1.npz")
    img = read_image(g / "synthA_1.png")
    want = gold["input_rgb"].transpose(2, 0, 1).astype(np.float32)
    buf = mmap.mmap(-1, want.nbytes + 8192)
    base = np.frombuffer(buf, np.uint8, count=1).ctypes.data
    arena.open_slot(buf, 4096, want.nbytes)
    try:
        x = preprocess_starclouds(img)[0]["input.1"]
    finally:
        arena.close_slot()
    assert x.__array_interface__["data"][0] == base + 4096
    np.testing.assert_array_equal(x, want)
    del x


def test_starclouds_fixed_size_stretches_and_validates():
    img = np.random.default_rng(0).integers(0, 256, (353, 481, 3), dtype=np.uint8)
    inputs, meta = preprocess_starclouds(img, fixed_hw=(256, 320))
    assert inputs["input.1"].shape == (3, 256, 320)
    assert meta["scale_h"] == 256 / 353 and meta["scale_w"] == 320 / 481
    # channel order: RGB from a BGR image
    one = np.zeros((32, 32, 3), np.uint8)
    one[..., 0] = 7  # blue
    assert preprocess_starclouds(one)[0]["input.1"][2].max() == 7
    with pytest.raises(ConfigError):
        starclouds_input_hw((10, 10), (100, 64))
    assert [ceil32(v) for v in (1, 32, 33, 683)] == [32, 32, 64, 704]


def test_dispatch_on_variant(famb):
    gold, img = famb
    cfg = OmegaConf.create({"variant": "ascend", "aipp": True, "input_hw": None,
                            "mean": [0.40789654, 0.44719302, 0.47026115], "std": [0.28863828, 0.27408164, 0.27809835]})
    np.testing.assert_array_equal(preprocess_for(cfg, img)[0]["image"], gold["warped_bgr_u8"])
    cfg.aipp = False
    assert np.abs(preprocess_for(cfg, img)[0]["image"] - gold["input"][0]).max() <= 1e-6
    sc = preprocess_for(OmegaConf.create({"variant": "starclouds", "input_hw": None}), img)[0]
    assert sc["input.1"].shape == (3, 704, 1024)
    with pytest.raises(ConfigError, match="variant"):
        preprocess_for(OmegaConf.create({"variant": "cj"}), img)


def test_ascend_input_hw_must_be_multiples_of_32_without_composition_too():
    """Before: model_input_hw took [500, 500] for ascend (only starclouds checked it) and the network failed
    later with 'The size of tensor a (63) must match the size of tensor b (62)'."""
    from zoo_centerface.preprocess import model_input_hw

    with pytest.raises(ConfigError, match=r"model.input_hw=\[500, 500\] must be \[height, width\], two positive "
                                          r"multiples of 32"):
        model_input_hw(OmegaConf.create({"variant": "ascend", "input_hw": [500, 500]}))
    assert model_input_hw(OmegaConf.create({"variant": "ascend", "input_hw": [320, 480]})) == (320, 480)


def test_starclouds_refuses_an_image_without_three_channels_and_ignores_alpha():
    """A grayscale array gave planes of uninitialised memory for G and B once the planes came from ``cv2.split``;
    it is refused. A fourth (alpha) channel is left out, as the per-channel copy always did."""
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    for gray in (bgr[:, :, 0], bgr[:, :, :1]):
        with pytest.raises(ValueError, match=r"expected an HxWx3 BGR image"):
            preprocess_starclouds(gray)
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 9, np.uint8)])
    np.testing.assert_array_equal(preprocess_starclouds(bgra)[0]["input.1"], preprocess_starclouds(bgr)[0]["input.1"])
