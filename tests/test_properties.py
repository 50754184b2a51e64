"""Property-based tests (hypothesis) of the decoders and evaluators on random shapes and values,
including empty outputs (all-zero heatmaps) and all-equal scores."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

grid = st.tuples(st.integers(1, 12), st.integers(1, 12))
fill = st.sampled_from(["random", "zero", "equal"])


def _heat(rng, shape, kind, lo=-6.0, hi=6.0):
    if kind == "zero":
        return np.zeros(shape, np.float32)
    if kind == "equal":
        return np.full(shape, 0.7, np.float32)
    return rng.uniform(lo, hi, shape).astype(np.float32)


def _check(det, k):
    assert len(det) <= k
    assert np.isfinite(det.boxes).all() and np.isfinite(det.scores).all()
    assert (np.diff(det.scores) <= 0).all(), det.scores
    assert det.boxes.shape == (len(det), 4) and det.labels.shape == (len(det),)


@FAST
@given(hw=grid, b=st.integers(1, 3), c=st.integers(1, 5), k=st.integers(1, 40), kind=fill, seed=st.integers(0, 99))
def test_centernet_decoder(hw, b, c, k, kind, seed):
    from zoo_centernet.decode import decode_batch

    rng = np.random.default_rng(seed)
    h, w = hw
    hm = _heat(rng, (b, c, h, w), kind)
    wh = rng.uniform(0, 20, (b, 2, h, w)).astype(np.float32)
    reg = rng.uniform(0, 1, (b, 2, h, w)).astype(np.float32)
    metas = [{"c": [w * 2.0, h * 2.0], "s": float(max(h, w) * 4), "out_h": h, "out_w": w}] * b
    dets = decode_batch(hm, wh, reg, metas, K=k)
    assert len(dets) == b
    for d in dets:
        _check(d, k)
        assert len(d) == min(k, c * h * w) and ((d.labels >= 0) & (d.labels < c)).all()


@FAST
@given(hw=grid, b=st.integers(1, 3), k=st.integers(1, 50), kind=fill, seed=st.integers(0, 99))
def test_centerface_ascend_decoder(hw, b, k, kind, seed):
    from zoo_centerface.decode import decode_ascend

    rng = np.random.default_rng(seed)
    h, w = hw
    hm = np.clip(_heat(rng, (b, 1, h, w), kind, 0, 1), 0, 1)
    wh = rng.uniform(-2, 3, (b, 2, h, w)).astype(np.float32)
    off = rng.uniform(0, 1, (b, 2, h, w)).astype(np.float32)
    lms = rng.uniform(-2, 2, (b, 10, h, w)).astype(np.float32)
    metas = [{"c": [w * 2.0, h * 2.0], "s": float(max(h, w) * 4), "out_hw": [h, w]}] * b
    dets = decode_ascend(hm, wh, off, lms, metas, k=k)
    assert len(dets) == b
    for d in dets:
        _check(d, k)
        assert np.isfinite(d.extras["landmarks"]).all() and d.extras["landmarks"].shape == (len(d), 10)


@FAST
@given(hw=grid, b=st.integers(1, 3), kind=fill, thr=st.floats(0.0, 0.9), seed=st.integers(0, 99))
def test_centerface_starclouds_decoder(hw, b, kind, thr, seed):
    from zoo_centerface.decode import decode_starclouds

    rng = np.random.default_rng(seed)
    h, w = hw
    heat = np.clip(_heat(rng, (b, 1, h, w), kind, 0, 1), 0, 1)
    scale = rng.uniform(-1, 3, (b, 2, h, w)).astype(np.float32)
    off = rng.uniform(0, 1, (b, 2, h, w)).astype(np.float32)
    lms = rng.uniform(-1, 1, (b, 10, h, w)).astype(np.float32)
    metas = [{"input_shape": [3, 4 * h, 4 * w], "scale_h": 1.5, "scale_w": 0.75}] * b
    dets = decode_starclouds(heat, scale, off, lms, metas, threshold=thr)
    assert len(dets) == b
    for d in dets:
        _check(d, h * w)
        assert (d.scores > thr).all() or (d.scores >= thr).all()
        if kind == "zero" and thr > 0:
            assert len(d) == 0


@st.composite
def coco_case(draw):
    rng = np.random.default_rng(draw(st.integers(0, 10_000)))
    n_img = draw(st.integers(1, 4))
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in range(n_img)]
    anns, recs = [], []
    equal = draw(st.booleans())
    for img in images:
        for _ in range(draw(st.integers(0, 4))):
            x, y = rng.uniform(0, 60, 2)
            bw, bh = rng.uniform(4, 40, 2)
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": int(rng.integers(1, 3)),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
        for _ in range(draw(st.integers(0, 5))):
            x, y = rng.uniform(0, 60, 2)
            bw, bh = rng.uniform(4, 40, 2)
            recs.append({"image_id": img["id"], "category_id": int(rng.integers(1, 3)), "bbox": [x, y, bw, bh],
                         "score": 0.5 if equal else float(rng.uniform())})
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}, recs


@settings(max_examples=15, deadline=None)
@given(case=coco_case())
def test_coco_evaluators_agree(case):
    from zoo_core.datasets.coco import run_cocoeval

    instances, recs = case
    ids = [im["id"] for im in instances["images"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            a = run_cocoeval(instances, recs, ids, "pycocotools").stats
        except Exception as exc:  # pycocotools cannot load an empty results list
            assert not recs, exc
            return
        b = run_cocoeval(instances, recs, ids, "faster-coco-eval").stats
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-9)


@st.composite
def wider_case(draw):
    from zoo_core.datasets.widerface import WiderGroundTruth

    rng = np.random.default_rng(draw(st.integers(0, 10_000)))
    events, files, boxes = ["0--A", "1--B"], [], []
    keep = {s: [] for s in ("easy", "medium", "hard")}
    preds = {}
    equal = draw(st.booleans())
    for ev in events:
        fs, bs = [], []
        kk = {s: [] for s in keep}
        for j in range(draw(st.integers(1, 3))):
            stem = f"{ev}_{j}"
            n = draw(st.integers(0, 4))
            b = np.column_stack([rng.uniform(0, 80, (n, 2)), rng.uniform(5, 30, (n, 2))]).astype(np.int32)
            fs.append(stem)
            bs.append(b)
            idx = np.arange(n)
            kk["hard"].append(idx)
            kk["medium"].append(idx[: max(n - 1, 0)])
            kk["easy"].append(idx[: n // 2])
            m = draw(st.integers(0, 5))
            pb = np.column_stack([rng.uniform(0, 80, (m, 2)), rng.uniform(5, 30, (m, 2))])
            ps = np.full(m, 0.5) if equal else rng.uniform(0, 1, m)
            preds[(ev, stem)] = (pb, ps)
        files.append(fs)
        boxes.append(bs)
        for s in keep:
            keep[s].append(kk[s])
    return WiderGroundTruth(events=events, files=files, boxes=boxes, keep=keep), preds


@settings(max_examples=15, deadline=None)
@given(case=wider_case())
def test_wider_evaluator_matches_reference_loop(case):
    from zoo_core.datasets.widerface import evaluate_wider, evaluate_wider_reference

    gt, preds = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = evaluate_wider(preds, gt)
        ref = evaluate_wider_reference(preds, gt)
    for s in ("easy", "medium", "hard"):
        if fast.num_faces[s] == 0:  # no face in this setting: AP is undefined (NaN, with a warning)
            assert np.isnan(fast.ap[s]) and np.isnan(ref.ap[s])
            continue
        assert np.isfinite(fast.ap[s]) and 0.0 <= fast.ap[s] <= 1.0
        assert fast.ap[s] == pytest.approx(ref.ap[s], abs=1e-12)
