"""CenterNet decode against the golden reference decode and a brute-force peak enumeration."""
from __future__ import annotations

import numpy as np
import pytest

from zoo_centernet.decode import ctdet_decode, decode_batch, grid_to_image, sigmoid32
from zoo_core.datasets.coco import class_major_order
from zoo_core.testing import golden_dir

CASES = ("case_640x480", "case_427x640", "case_tiny37x23")


def _case(name):
    return np.load(golden_dir("centernet", "decode_cases") / f"{name}.npz")


def _meta(d):
    return {"c": d["c"].tolist(), "s": float(d["s"]), "out_h": int(d["out_height"]), "out_w": int(d["out_width"])}


@pytest.mark.parametrize("name", CASES)
def test_decode_raw_matches_golden(name):
    d = _case(name)
    raw = ctdet_decode(d["hm"], d["wh"], d["reg"], K=int(d["K"]))
    ref = d["decode_raw"]
    assert raw.shape == ref.shape == (1, 100, 6) and raw.dtype == np.float32
    np.testing.assert_array_equal(raw[..., 5], ref[..., 5])
    assert np.abs(raw[..., 4] - ref[..., 4]).max() <= 1e-6
    assert np.abs(raw[..., :4] - ref[..., :4]).max() <= 1e-3


@pytest.mark.parametrize("name", CASES)
def test_detections_match_golden_in_both_orders(name):
    d = _case(name)
    det = decode_batch(d["hm"], d["wh"], d["reg"], [_meta(d)], K=100)[0]
    rank = d["dets_rank_order"]
    assert len(det) == 100
    np.testing.assert_array_equal(det.labels + 1, rank[:, 5].astype(np.int32))
    assert np.abs(det.scores - rank[:, 4]).max() <= 1e-6
    assert np.abs(det.boxes - rank[:, :4]).max() <= 1e-3
    assert (np.diff(det.scores) <= 0).all()
    order = class_major_order(det.labels)
    ref = d["dets"]
    np.testing.assert_array_equal(det.labels[order] + 1, ref[:, 5].astype(np.int32))
    assert np.abs(det.boxes[order] - ref[:, :4]).max() <= 1e-3
    assert np.abs(det.scores[order] - ref[:, 4]).max() <= 1e-6


def test_batch_of_different_images_equals_one_by_one():
    ds = [_case(n) for n in CASES]
    hm, wh, reg = (np.concatenate([d[k] for d in ds]) for k in ("hm", "wh", "reg"))
    batched = decode_batch(hm, wh, reg, [_meta(d) for d in ds])
    for d, got in zip(ds, batched):
        one = decode_batch(d["hm"], d["wh"], d["reg"], [_meta(d)])[0]
        np.testing.assert_array_equal(got.boxes, one.boxes)
        np.testing.assert_array_equal(got.scores, one.scores)
        np.testing.assert_array_equal(got.labels, one.labels)


def _brute_force(hm, wh, reg, K):
    """Every (class, y, x) that is the maximum of its 3x3 window, best K by (-score, class, position)."""
    heat = sigmoid32(hm)
    c, h, w = heat.shape
    cands = []
    for k in range(c):
        for y in range(h):
            for x in range(w):
                v = heat[k, y, x]
                win = heat[k, max(0, y - 1):y + 2, max(0, x - 1):x + 2]
                if v == win.max():
                    cands.append((-float(v), k, y * w + x, y, x))
    cands.sort()
    rows = []
    for negv, k, _, y, x in cands[:K]:
        cx, cy = np.float32(x) + reg[0, y, x], np.float32(y) + reg[1, y, x]
        bw, bh = wh[0, y, x] / np.float32(2), wh[1, y, x] / np.float32(2)
        rows.append([cx - bw, cy - bh, cx + bw, cy + bh, -negv, k])
    return np.asarray(rows, np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_peaks_including_plateaus(seed):
    rng = np.random.default_rng(seed)
    hm = rng.normal(-1, 2, (2, 3, 9, 11)).astype(np.float32)
    hm[:, :, 2:4, 2:4] = 3.0        # a 2x2 plateau: all four cells survive the peak test
    hm[:, 1, 6, 6] = 40.0            # saturated sigmoid == 1.0
    hm[:, 1, 6, 7] = 41.0            # equal after the sigmoid, so both are peaks
    wh = rng.uniform(1, 9, (2, 2, 9, 11)).astype(np.float32)
    reg = rng.uniform(0, 1, (2, 2, 9, 11)).astype(np.float32)
    for K in (5, 20):
        got = ctdet_decode(hm, wh, reg, K)
        for b in range(2):
            want = _brute_force(hm[b], wh[b], reg[b], K)
            np.testing.assert_array_equal(got[b], want)


def test_without_reg_centres_get_half_a_cell():
    hm = np.full((1, 1, 4, 4), -10, np.float32)
    hm[0, 0, 1, 2] = 5
    wh = np.full((1, 2, 4, 4), 2, np.float32)
    got = ctdet_decode(hm, wh, None, K=1)[0, 0]
    np.testing.assert_allclose(got[:4], [2.5 - 1, 1.5 - 1, 2.5 + 1, 1.5 + 1])
    with_reg = ctdet_decode(hm, wh, np.zeros((1, 2, 4, 4), np.float32), K=1)[0, 0]
    np.testing.assert_allclose(with_reg[:4], [1, 0, 3, 2])


def test_k_is_clipped_to_the_number_of_cells():
    hm = np.zeros((1, 2, 2, 3), np.float32)
    out = ctdet_decode(hm, np.ones((1, 2, 2, 3), np.float32), np.zeros((1, 2, 2, 3), np.float32), K=100)
    assert out.shape == (1, 12, 6)


def test_inverse_affine_fix_res_closed_form():
    # fix_res: x_img = x_grid * s / 128 + (w - s) / 2, same for y with h
    meta = {"c": [213.5, 320.0], "s": 640.0, "out_h": 128, "out_w": 128}
    grid = np.array([[0, 0, 128, 128], [10.25, 3.5, 20.75, 99.0]], np.float32)
    got = grid_to_image(grid, meta)
    s, w, h = 640.0, 427.0, 640.0
    want = np.stack([grid[:, 0] * s / 128 + (w - s) / 2, grid[:, 1] * s / 128 + (h - s) / 2,
                     grid[:, 2] * s / 128 + (w - s) / 2, grid[:, 3] * s / 128 + (h - s) / 2], 1)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert got.dtype == np.float32


def test_metas_must_match_the_batch():
    d = _case("case_tiny37x23")
    with pytest.raises(ValueError):
        decode_batch(d["hm"], d["wh"], d["reg"], [_meta(d), _meta(d)])


def test_decode_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from zoo_centernet.decode import decode_batch; "
            "decode_batch(np.zeros((1,80,8,8),np.float32), np.ones((1,2,8,8),np.float32), "
            "np.zeros((1,2,8,8),np.float32), [{'c':[4,4],'s':8.0,'out_h':8,'out_w':8}]); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("start", [-104.0, -20.0, -0.3656416, 0.0461, 1.0, 16.5])
def test_sigmoid32_never_steps_back(start):
    """4M consecutive float32 logits from each start (numpy's float32 exp steps back by 1-2 ulps near
    -0.37 and 0.05; the decode searches logits, so the sigmoid must be monotone)."""
    bits = np.arange(0, 1 << 22, dtype=np.int64)
    first = int(np.float32(start).view(np.int32))
    if start < 0:  # ascending negative floats: the magnitude's bits descend
        x = (first - bits).astype(np.uint32).view(np.float32)
    else:
        x = (first + bits).astype(np.uint32).view(np.float32)
    assert (np.diff(x) > 0).all()
    s = sigmoid32(x)
    assert s.dtype == np.float32 and (np.diff(s) >= 0).all()
    # float32 arithmetic (three roundings): within 2 ulps of the exact value; 0 where float32's exp(-x) overflows
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=2.4e-7, atol=1e-37)


def test_sigmoid32_is_torchs_float32_sigmoid_and_saturates_where_it_does():
    """Before: rounded once from float64 it reached 1.0 only at 17.33 (torch: 16.64) and differed from torch by an
    ulp on a third of the values; now torch's float32 chain: the same saturation, an ulp on a few percent."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(0, 4, 500_000), rng.uniform(-30, 30, 500_000)]).astype(np.float32)
    ours, ref = sigmoid32(x), torch.sigmoid(torch.from_numpy(x)).numpy()
    ulps = np.abs(ours.view(np.int32).astype(np.int64) - ref.view(np.int32).astype(np.int64))
    # torch's exp is Sleef's (a few ulps near exp(-x) = 2^-24, build dependent): close, not bit for bit
    assert ulps.max() <= 8 and (ulps > 0).mean() < 0.1, (ulps.max(), (ulps > 0).mean())
    band = np.linspace(15.0, 18.0, 200_001).astype(np.float32)
    first_ours = band[np.argmax(sigmoid32(band) == 1)]
    first_ref = band[np.argmax(torch.sigmoid(torch.from_numpy(band)).numpy() == 1)]
    assert abs(first_ours - 16.6355) < 1e-3 and abs(first_ours - first_ref) < 1e-4, (first_ours, first_ref)


def test_neighbouring_logits_that_both_saturate_are_two_peaks_as_in_the_reference():
    """Logits 17.5 and 17.0 side by side: the reference's float32 sigmoid is 1.0 for both, so both pass its 3x3
    peak test (exact equality) and score 1.0 (before: one detection, the other cell scored 3.4e-4)."""
    hm = np.full((1, 80, 128, 128), -8, np.float32)
    hm[0, 0, 50, 50], hm[0, 0, 50, 51] = 17.5, 17.0
    wh, reg = np.full((1, 2, 128, 128), 10, np.float32), np.zeros((1, 2, 128, 128), np.float32)
    dets = ctdet_decode(hm, wh, reg, K=100)[0]
    assert dets[:2, 4].tolist() == [1.0, 1.0] and dets[2, 4] < 0.01
    assert dets[:2, :4].tolist() == [[45.0, 45.0, 55.0, 55.0], [46.0, 45.0, 56.0, 55.0]]


def test_sigmoid32_scores_a_logit_the_same_in_any_array():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 8, (80, 128, 128)).astype(np.float32)
    full = sigmoid32(x).reshape(-1)
    for n in (1, 3, 7, 8, 9, 17, 1000):
        idx = rng.integers(0, x.size, n)
        np.testing.assert_array_equal(sigmoid32(x.reshape(-1)[idx]), full[idx])
    out = np.empty_like(x)
    assert sigmoid32(x, out) is out
    np.testing.assert_array_equal(out.reshape(-1), full)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_decode_from_logits_equals_pooling_the_whole_sigmoid_map(dtype):
    """A realistic head (low background, blobs, saturated peaks that tie at 1.0, fp16 outputs): the
    decode's logit search gives the reference's pooled-sigmoid top-100 exactly."""
    from zoo_core.api.peaks import keep_peaks, topk_desc

    rng = np.random.default_rng(11)
    hm = rng.normal(-7, 1.2, (1, 80, 128, 128))
    for i in range(120):
        c, y, x = rng.integers(80), rng.integers(1, 127), rng.integers(1, 127)
        hm[0, c, y - 1:y + 2, x - 1:x + 2] += np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) * rng.uniform(0.5, 6 if i % 4 else 12)
    hm = hm.astype(dtype)
    wh = np.ones((1, 2, 128, 128), np.float32)
    got = ctdet_decode(hm, wh, None, K=100)[0]
    heat = keep_peaks(sigmoid32(hm[0]))
    cls_scores, cls_inds = topk_desc(heat.reshape(80, -1), 100)
    scores, flat = topk_desc(cls_scores.reshape(-1), 100)
    pos = cls_inds.reshape(-1)[flat]
    np.testing.assert_array_equal(got[:, 4], scores)
    np.testing.assert_array_equal(got[:, 5], (flat // 100).astype(np.float32))
    np.testing.assert_array_equal(got[:, 0], (pos % 128).astype(np.float32))
    assert (scores == 1).sum() >= 2  # saturated ties were in play
