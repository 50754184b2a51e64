"""AIPP config derived from the model's mean/std reproduces the seed's constants."""
import numpy as np
import pytest

from zoo_centerface.aipp import aipp_config_text, aipp_normalize, aipp_values, write_aipp_config
from zoo_centerface.preprocess import MEAN_BGR, STD_BGR
from zoo_core.testing import golden_dir


def test_seed_constants_come_from_mean_std():
    mins, recis = aipp_values(MEAN_BGR, STD_BGR)
    assert mins == [104, 114, 120]
    assert [f"{r:.7f}" for r in recis] == ["0.0135864", "0.0143080", "0.0141014"]


def test_config_text_fields():
    text = aipp_config_text(MEAN_BGR, STD_BGR, (800, 800))
    body = text[text.index("aipp_op {"):]
    fields = dict(line.strip().split(" : ") for line in body.splitlines()[1:-1])
    assert fields == {
        "aipp_mode": "static", "input_format": "RGB888_U8", "src_image_size_w": "800", "src_image_size_h": "800",
        "crop": "false", "min_chn_0": "104", "min_chn_1": "114", "min_chn_2": "120",
        "var_reci_chn_0": "0.0135864", "var_reci_chn_1": "0.0143080", "var_reci_chn_2": "0.0141014",
    }
    assert "BGR" in text.split("aipp_op")[0]
    other = aipp_config_text([0.5, 0.5, 0.5], [0.25, 0.5, 1.0], (608, 1024))
    assert "src_image_size_w : 1024" in other and "src_image_size_h : 608" in other
    assert "min_chn_0 : 128" in other and "var_reci_chn_2 : 0.0039216" in other
    with pytest.raises(ValueError):
        aipp_values([0.1, 0.2], [0.1, 0.2, 0.3])


def test_written_next_to_onnx(tmp_path):
    onnx = tmp_path / "CenterFace.onnx"
    onnx.write_bytes(b"x")
    path = write_aipp_config(onnx)
    assert path == tmp_path / "CenterFace.aippconfig"
    assert path.read_text() == aipp_config_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_device_normalisation_close_to_float_preprocess():
    gold = np.load(golden_dir("centerface") / "famB_preprocess.npz")
    dev = aipp_normalize(gold["warped_bgr_u8"])
    diff = np.abs(dev - gold["input"][0]).reshape(3, -1).max(axis=1)
    # REFERENCE 3.4: rounding min_chn costs about 1.8e-4 (B), 4.9e-4 (G), 1.2e-3 (R)
    np.testing.assert_allclose(diff, [1.8e-4, 4.9e-4, 1.2e-3], rtol=0.1)
