"""What ``stage=quantize`` / ``quantize=int8`` accept and what the INT8 model's record says about its calibration
(docs/quantize.md, docs/errors.md): the calibration images' bytes, skipped images, the source ONNX, settings."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from zoo_fixture.squares import make_squares


@pytest.fixture
def squares(tmp_path) -> Path:
    root = tmp_path / "squares"
    make_squares(root, n=12, seed=0)
    return root


def _record(zoo, work="outputs/fixture"):
    return json.loads((zoo.cwd / work / "model" / "fixture_onnxruntime_int8.json").read_text())


def test_an_image_rewritten_under_the_same_id_re_quantizes(zoo, fixture_onnx, squares):
    """Before: the fingerprint held the calibration ids only, so an INT8 model calibrated on other bytes (an image
    replaced, or restored after an on_error=skip run) was reused."""
    args = ("run", "model=fixture", "stage=quantize", f"model_file={fixture_onnx}", f"dataset.root={squares}",
            "quantize.calibration_images=12")
    zoo.ok(*args)
    before = _record(zoo)
    images = sorted((squares / "images").glob("*.png"))
    shutil.copyfile(images[1], images[0])  # same id, other bytes
    zoo.ok(*args)
    log = (zoo.cwd / "outputs" / "fixture" / "quantize" / "zoo.log").read_text()
    assert "rebuilding fixture_onnxruntime_int8.onnx" in log and "calibration_sha256" in log
    after = _record(zoo)
    assert after["fingerprint"]["calibration_ids"] == before["fingerprint"]["calibration_ids"]
    i = after["fingerprint"]["calibration_ids"].index(images[0].stem)
    assert after["fingerprint"]["calibration_sha256"][i] == after["fingerprint"]["calibration_sha256"][i + 1]
    assert after["calibration"]["tensors_sha256"] != before["calibration"]["tensors_sha256"]
    zoo.ok(*args)  # unchanged bytes: reused
    assert "reusing" in (zoo.cwd / "outputs" / "fixture" / "quantize" / "zoo.log").read_text()
