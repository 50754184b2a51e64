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
