"""CenterFace oracle: ground-truth faces -> raw outputs of either family -> decode gives them back, and
``backend=oracle`` scores the bundled sample at AP ~1 through zoo-core's WIDER evaluation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from zoo_centerface import plugin
from zoo_centerface.oracle import encode_ascend, encode_starclouds, face_landmarks, face_scores
from zoo_core import datasets
from zoo_core.api.imaging import read_image
from zoo_core.testing import core_conf_dir

VARIANTS = ("starclouds", "ascend")


def make_cfg(cache: Path | None = None, **model):
    """The plugin's model config + zoo-core's widerface_sample dataset config (built under ``cache``)."""
    m = OmegaConf.merge(OmegaConf.load(Path(plugin.__file__).parent / "conf" / "model" / "centerface.yaml").model, model)
    ds = OmegaConf.load(core_conf_dir() / "dataset" / "widerface_sample.yaml").dataset
    ds.root = str(cache / "sample") if cache else None
    return OmegaConf.create({"model": m, "dataset": ds})
#: Faces inside every tested image size, one touching the right and bottom edges of the smallest (517x333).
FACES = np.array([[20, 30, 60, 80], [300.5, 200, 341, 251], [505, 319, 516, 332], [2, 3, 9, 11]], np.float32)


def _meta(variant, hw=(480, 640)):
    image = np.zeros((*hw, 3), np.uint8)
    return plugin.preprocess(make_cfg(variant=variant), image, None)[1]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("hw", [(480, 640), (600, 800), (333, 517)])
def test_encode_then_decode_gives_the_faces_back(variant, hw):
    cfg = make_cfg(variant=variant)
    meta = _meta(variant, hw)
    enc = encode_starclouds if variant == "starclouds" else encode_ascend
    outs = enc(FACES, meta)
    assert [o.shape for o in outs] == [s.shape for s in plugin.output_spec(cfg, meta)]
    (det,) = plugin.postprocess(cfg, [o[None] for o in outs], [meta])
    strong = det.scores > 0.5
    assert strong.sum() == len(FACES)
    order = np.argsort(-face_scores(FACES), kind="stable")
    np.testing.assert_allclose(det.boxes[strong], FACES[order], atol=0.02)
    np.testing.assert_allclose(det.extras["landmarks"][strong], face_landmarks(FACES)[order], atol=0.02)
    np.testing.assert_allclose(det.scores[strong], face_scores(FACES)[order], rtol=1e-6)


def test_scores_vary_with_face_height():
    s = face_scores(FACES)
    assert len(set(s.tolist())) == len(FACES) and s.min() > 0.55 and s.max() < 0.95
    assert s[1] > s[0] > s[2] > s[3]  # heights 52, 51, 14, 9 (inclusive pixels)


@pytest.fixture(scope="module")
def sample_cfg_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cf_oracle")


def _oracle_scores(cfg, mistake=None):
    """preprocess -> oracle_outputs (optionally spoiled) -> postprocess -> zoo-core's WIDER evaluation."""
    ds = datasets.open_dataset(cfg)
    dets = {}
    for s in ds.samples():
        _, meta = plugin.preprocess(cfg, read_image(s.path), s)
        outs = plugin.oracle_outputs(cfg, s, meta, ds)
        if mistake is not None:
            outs = mistake(cfg, s, meta, ds, outs)
        dets[s.id] = plugin.postprocess(cfg, [o[None] for o in outs], [meta])[0]
    return datasets.evaluate(cfg, dets, ds, ds.samples())


@pytest.mark.parametrize("variant", VARIANTS)
def test_oracle_scores_the_sample_perfectly(variant, sample_cfg_root):
    res = _oracle_scores(make_cfg(sample_cfg_root, variant=variant))
    assert res.metrics == {"easy": 1.0, "medium": 1.0, "hard": 1.0}, res.metrics
    assert "warnings" not in res.info and res.info["missing_predictions"] == 0


def _sizes_in_the_wrong_unit(cfg, s, meta, ds, outs):
    outs[1] = outs[1] + np.float32(np.log(4.0)) * (outs[0] > 0)  # ln(size) instead of ln(size / stride)
    return outs


def _x_and_y_swapped(cfg, s, meta, ds, outs):
    boxes = ds.boxes_xyxy(s.key)[:, [1, 0, 3, 2]]
    enc = encode_starclouds if cfg.model.variant == "starclouds" else encode_ascend
    return enc(boxes, meta)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mistake", [_sizes_in_the_wrong_unit, _x_and_y_swapped])
def test_a_wrong_encoding_scores_low(variant, mistake, sample_cfg_root):
    res = _oracle_scores(make_cfg(sample_cfg_root, variant=variant), mistake)
    assert max(res.metrics.values()) < 0.3, res.metrics
