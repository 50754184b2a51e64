"""The oracle encoding: ground truth -> raw heads -> decode gives the ground truth back."""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from zoo_centernet import plugin
from zoo_centernet.decode import decode_batch
from zoo_centernet.oracle import coco_boxes, encode_boxes, gaussian_radius
from zoo_centernet.preprocess import preprocess_image
from zoo_core import datasets
from zoo_core.api.imaging import read_image
from zoo_core.datasets.coco import CATEGORY_IDS as VALID_IDS

MODEL = {
    "name": "centernet", "keep_res": False, "input_h": 512, "input_w": 512, "down_ratio": 4, "num_classes": 80,
    "head_conv": 256, "K": 100, "mean": [0.40789654, 0.44719302, 0.47026115],
    "std": [0.28863828, 0.27408164, 0.27809835], "coco_evaluator": "auto", "category_ids": None,
    "export": {"dcn_impl": "auto"},
}


def _cfg(tmp_root, **model):
    return OmegaConf.create({"model": MODEL | model,
                             "dataset": {"name": "coco_sample", "kind": "coco", "generator": "coco_sample",
                                         "root": str(tmp_root), "n_images": 24, "seed": 0}})


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    return tmp_path_factory.mktemp("coco_sample_cache")


def _run_chain(cfg, batch_size):
    """dataset -> read -> preprocess -> oracle_outputs -> (batched) postprocess -> evaluate (zoo-core's COCO)."""
    ds = datasets.open_dataset(cfg)
    samples = ds.samples()
    dets = {}
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        metas, outs = [], []
        for s in chunk:
            _, meta = plugin.preprocess(cfg, read_image(s.path), s)
            metas.append(meta)
            outs.append(plugin.oracle_outputs(cfg, s, meta, ds))
            specs = plugin.output_spec(cfg, meta)
            assert [o.shape for o in outs[-1]] == [sp.shape for sp in specs]
        stacked = [np.stack([o[j] for o in outs]) for j in range(3)]
        for s, d in zip(chunk, plugin.postprocess(cfg, stacked, metas)):
            dets[s.id] = d
    return ds, samples, dets, datasets.evaluate(cfg, dets, ds, samples)


def test_fix_res_oracle_chain_scores_ap_near_one(sample_root):
    ds, samples, dets, res = _run_chain(_cfg(sample_root), batch_size=4)
    assert res.metrics["AP"] >= 0.95
    assert res.metrics["AP50"] >= 0.95
    # every non-crowd box comes back almost exactly, with a high score
    for s in samples:
        boxes, classes = coco_boxes(ds.annotations(s.key))
        d = dets[s.id]
        strong = d.scores > 0.5
        assert strong.sum() == len(boxes)
        for box, cls in zip(boxes, classes):
            hit = strong & (d.labels == cls)
            err = np.abs(d.boxes[hit] - box).max(axis=1) if hit.any() else np.array([np.inf])
            assert err.min() < 0.01, (s.id, box)


def test_keep_res_oracle_chain_scores_ap_near_one(sample_root):
    _, _, _, res = _run_chain(_cfg(sample_root, keep_res=True), batch_size=1)
    assert res.metrics["AP"] >= 0.95


def test_crowd_regions_are_not_encoded(sample_root):
    cfg = _cfg(sample_root)
    ds = datasets.open_dataset(cfg)
    crowd_only = [s for s in ds.samples()
                  if ds.annotations(s.key) and all(a["iscrowd"] for a in ds.annotations(s.key))]
    assert crowd_only
    s = crowd_only[0]
    _, meta = plugin.preprocess(cfg, read_image(s.path), s)
    hm, _, _ = plugin.oracle_outputs(cfg, s, meta, ds)
    assert hm.max() < 0


def _one_box_meta():
    return preprocess_image(np.zeros((480, 640, 3), np.uint8))[1]


@pytest.mark.parametrize("heatmap", ["onehot", "gaussian"])
def test_isolated_boxes_round_trip(heatmap):
    meta = _one_box_meta()
    boxes = np.array([[10.3, 20.7, 110.9, 70.1], [300, 200, 620, 470], [5, 400, 9, 404]], np.float32)
    classes = [0, 57, 79]
    hm, wh, reg = encode_boxes(boxes, classes, meta, heatmap=heatmap)
    assert hm.shape == (80, 128, 128) and wh.shape == reg.shape == (2, 128, 128)
    assert hm.dtype == wh.dtype == reg.dtype == np.float32
    assert ((reg >= 0) & (reg < 1)).all()
    d = decode_batch(hm[None], wh[None], reg[None], [meta])[0]
    top = d.scores > 0.99
    assert top.sum() == 3
    order = np.argsort(d.labels[top])
    np.testing.assert_array_equal(d.labels[top][order], classes)
    np.testing.assert_allclose(d.boxes[top][order], boxes, atol=1e-3)


def test_gaussian_heatmap_follows_the_training_radius():
    meta = _one_box_meta()
    hm, _, _ = encode_boxes(np.array([[100, 100, 300, 260]], np.float32), [3], meta, heatmap="gaussian")
    prob = 1 / (1 + np.exp(-hm[3].astype(np.float64)))
    ys, xs = np.nonzero(prob > 1e-6)
    radius = int(gaussian_radius(np.ceil(32.0), np.ceil(40.0)))
    assert radius >= 1
    assert xs.max() - xs.min() == 2 * radius and ys.max() - ys.min() == 2 * radius
    assert np.unravel_index(np.argmax(hm[3]), hm[3].shape) == (52, 40)  # (y, x): 0.2 * centre + (0, 16)


def test_unknown_categories_and_crowd_are_skipped():
    anns = [{"bbox": [1, 2, 3, 4], "category_id": 12, "iscrowd": 0},
            {"bbox": [1, 2, 3, 4], "category_id": 90, "iscrowd": 1},
            {"bbox": [1, 2, 3, 4], "category_id": 90}]
    boxes, classes = coco_boxes(anns)
    np.testing.assert_array_equal(boxes, [[1, 2, 4, 6]])
    assert classes.tolist() == [VALID_IDS.index(90)] == [79]
