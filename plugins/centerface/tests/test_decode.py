"""Both CenterFace decoders against the reference goldens (golden/centerface/README.md)."""
import numpy as np
import pytest

from zoo_centerface.decode import ascend_grid_dets, decode_ascend, decode_starclouds, starclouds_candidates
from zoo_core.api.errors import InputError
from zoo_core.testing import golden_dir

FAM_A = ["famA_astronaut", "famA_synthA_1", "famA_synthA_2"]
FAM_B = ["famB_1024x683", "famB_500x800"]


def _a(name):
    d = np.load(golden_dir("centerface") / f"{name}.npz")
    h, w = d["orig_hw"].tolist()
    hi, wi = d["input_hw"].tolist()
    meta = {"input_shape": [3, hi, wi], "scale_h": hi / h, "scale_w": wi / w}
    return d, meta, [d["heatmap"], d["scale"], d["offset"], d["landmarks"]]


def _b(name):
    d = np.load(golden_dir("centerface") / f"{name}.npz")
    meta = {"c": d["c"].tolist(), "s": float(d["s"]), "out_hw": [int(d["out_height"]), int(d["out_width"])]}
    return d, meta, [d["hm"], d["wh"], d["hm_offset"], d["landmarks"]]


@pytest.mark.parametrize("name", FAM_A)
@pytest.mark.parametrize("thr,suffix", [(0.05, ""), (0.5, "_thr0_5")])
def test_starclouds_matches_reference(name, thr, suffix):
    d, meta, outs = _a(name)
    det = decode_starclouds(*outs, [meta], threshold=thr, nms_iou=0.3)[0]
    dets, lms = d["dets" + suffix], d["lms" + suffix]
    assert len(det) == len(dets)
    np.testing.assert_array_equal(det.scores, dets[:, 4])
    np.testing.assert_allclose(det.boxes, dets[:, :4], atol=1e-3, rtol=0)
    np.testing.assert_allclose(det.extras["landmarks"], lms, atol=1e-3, rtol=0)
    assert np.all(np.diff(det.scores) <= 0) and np.all(det.labels == 0)


@pytest.mark.parametrize("name", FAM_A)
def test_starclouds_candidates_clip_then_extend(name):
    d, meta, outs = _a(name)
    b, boxes, scores, lms = starclouds_candidates(*outs, meta["input_shape"][1:], 0.05)
    assert np.all(b == 0)
    np.testing.assert_allclose(boxes, d["cand_input"][:, :4], atol=1e-3, rtol=0)
    np.testing.assert_array_equal(scores, d["cand_input"][:, 4])
    np.testing.assert_allclose(lms, d["cand_lms_input"], atol=1e-3, rtol=0)


def test_starclouds_batch_equals_single_and_empty():
    d, meta, outs = _a("famA_synthA_1")
    single = decode_starclouds(*outs, [meta])[0]
    empty_heat = np.zeros_like(outs[0])
    batch = [np.concatenate([o, o2]) for o, o2 in zip(outs, [empty_heat, *outs[1:]])]
    batch = [np.concatenate([b, o]) for b, o in zip(batch, outs)]
    res = decode_starclouds(*batch, [meta] * 3)
    assert len(res) == 3 and len(res[1]) == 0 and res[1].extras["landmarks"].shape == (0, 10)
    for r in (res[0], res[2]):
        np.testing.assert_array_equal(r.boxes, single.boxes)
        np.testing.assert_array_equal(r.extras["landmarks"], single.extras["landmarks"])


@pytest.mark.parametrize("name", FAM_B)
def test_ascend_matches_reference(name):
    d, meta, outs = _b(name)
    det = decode_ascend(*outs, [meta], k=200)[0]
    res = d["results"]
    assert len(det) == len(res) == 200
    np.testing.assert_array_equal(det.scores, res[:, 4])
    np.testing.assert_allclose(det.boxes, res[:, :4], atol=1e-3, rtol=0)
    np.testing.assert_allclose(det.extras["landmarks"], res[:, 5:15], atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", FAM_B)
def test_ascend_grid_units_match_reference(name):
    d, _, outs = _b(name)
    boxes, scores, lms = ascend_grid_dets(*outs, k=200)
    grid = d["dets_grid"]
    np.testing.assert_array_equal(scores[0], grid[:, 4])
    np.testing.assert_allclose(boxes[0], grid[:, :4], atol=1e-4, rtol=0)
    np.testing.assert_allclose(lms[0], grid[:, 5:15], atol=1e-4, rtol=0)


def test_ascend_batch_and_threshold():
    (d1, m1, o1), (d2, m2, o2) = _b(FAM_B[0]), _b(FAM_B[1])
    batch = [np.concatenate([a, b]) for a, b in zip(o1, o2)]
    r1, r2 = decode_ascend(*batch, [m1, m2])
    np.testing.assert_allclose(r1.boxes, d1["results"][:, :4], atol=1e-3, rtol=0)
    np.testing.assert_allclose(r2.boxes, d2["results"][:, :4], atol=1e-3, rtol=0)
    thr = decode_ascend(*o1, [m1], threshold=0.5)[0]
    assert len(thr) == int((d1["results"][:, 4] >= 0.5).sum()) > 0
    assert len(decode_ascend(*o1, [m1], k=10)[0]) == 10


def _reference_style_nms(boxes, scores, thr):
    """Star-Clouds' NMS as REFERENCE 3.2 / the golden README describe it, a loop over
    ``np.argsort(scores)[::-1]`` ("+1" areas, suppress at IoU >= thr): an independent oracle."""
    order = np.argsort(scores)[::-1]
    dead = np.zeros(len(boxes), bool)
    keep = []
    for a, i in enumerate(order):
        if dead[i]:
            continue
        keep.append(int(i))
        for j in order[a + 1:]:
            if dead[j]:
                continue
            iw = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1)
            ih = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1)
            inter = iw * ih
            area_i = (boxes[i, 2] - boxes[i, 0] + 1) * (boxes[i, 3] - boxes[i, 1] + 1)
            area_j = (boxes[j, 2] - boxes[j, 0] + 1) * (boxes[j, 3] - boxes[j, 1] + 1)
            if inter / (area_i + area_j - inter) >= thr:
                dead[j] = True
    return keep


@pytest.mark.parametrize("n_tied", [2, 40, 600])
def test_starclouds_nms_breaks_exact_ties_as_the_reference(n_tied):
    """Before: ties kept the lower (row-major) index first; the reference's ``np.argsort(scores)[::-1]`` visits
    the later one first (two tied overlapping faces: zoo kept the other box)."""
    rng = np.random.default_rng(n_tied)
    h, w = 40, 40
    heat = rng.uniform(0.0, 0.04, (1, 1, h, w)).astype(np.float32)
    cells = rng.choice(h * w, size=n_tied + 20, replace=False)
    heat.reshape(-1)[cells[:n_tied]] = np.float32(0.7)  # exact ties
    heat.reshape(-1)[cells[n_tied:]] = rng.uniform(0.06, 0.9, 20).astype(np.float32)
    scale = rng.uniform(np.log(3), np.log(8), (1, 2, h, w)).astype(np.float32)
    offset = rng.uniform(0, 1, (1, 2, h, w)).astype(np.float32)
    lms = rng.uniform(0, 1, (1, 10, h, w)).astype(np.float32)
    meta = {"input_shape": [3, 4 * h, 4 * w], "scale_h": 1.0, "scale_w": 1.0}
    _, boxes, scores, _ = starclouds_candidates(heat, scale, offset, lms, (4 * h, 4 * w), 0.05)
    keep = _reference_style_nms(boxes.astype(np.float64), scores, 0.3)
    got = decode_starclouds(heat, scale, offset, lms, [meta], threshold=0.05, nms_iou=0.3)[0]
    np.testing.assert_array_equal(got.boxes, boxes[keep])
    np.testing.assert_array_equal(got.scores, scores[keep])


@pytest.mark.parametrize("key, value", [("scale_h", 0.5), ("scale_w", -1.0), ("scale_h", "1.0")])
def test_starclouds_refuses_scales_other_than_preprocess_writes(key, value):
    """Before: an edited meta.jsonl scale (the audit's "scale_h": 0.5 for 1.0, or -1.0) was divided by: boxes
    mapped to the wrong place (mirrored), scored without a word. Now a meta with ``orig_hw`` (every meta the
    pipeline makes) must hold exactly input_shape / orig_hw."""
    d, meta, outs = _a("famA_synthA_1")
    h, w = d["orig_hw"].tolist()
    meta = {**meta, "id": "img7", "orig_hw": [h, w]}
    good = decode_starclouds(*outs, [meta])[0]
    assert len(good) > 0
    bad = {**meta, key: value}
    with pytest.raises(InputError) as info:
        decode_starclouds(*[np.concatenate([o, o]) for o in outs], [meta, bad])
    msg = str(info.value)
    assert msg.startswith(f"image 'img7': meta[{key!r}] {value!r} is not input_shape / orig_hw") and "meta.jsonl" \
        in info.value.hint and info.value.exit_code == 2


def test_ascend_non_square_input_maps_a_peak_back_by_the_reference_inverse_affine():
    """model.input_hw=[640, 800] (H, W) on a 1024x683 image: a lone peak at grid (row 50, col 120) with zero
    wh / offset / landmarks is a 4x4 grid box centred on the peak. Every golden is 800x800, so swapping H and W
    (in preprocess's ``out_hw`` or in the (out_w, out_h) of decode's inverse affine) moved every box, exit 0.
    Oracle, REFERENCE 3.3 (c = (w/2, h/2), s = max(h, w), grid = input / 4, k = grid_w / s):
    x = (col - grid_w/2) * s / grid_w + w/2, y = (row - grid_h/2) * s / grid_w + h/2."""
    from zoo_centerface.preprocess import preprocess_ascend

    h, w = 683, 1024
    _, meta = preprocess_ascend(np.zeros((h, w, 3), np.uint8), input_hw=(640, 800))
    assert meta["out_hw"] == [160, 200]
    gh, gw = 160, 200
    hm = np.zeros((1, 1, gh, gw), np.float32)
    hm[0, 0, 50, 120] = 0.9
    z2, z10 = np.zeros((1, 2, gh, gw), np.float32), np.zeros((1, 10, gh, gw), np.float32)
    det = decode_ascend(hm, z2, z2, z10, [meta], k=1)[0]
    s = max(h, w)
    x = (120 - gw / 2) * s / gw + w / 2  # = (4*120 - 400) * 1024/800 + 512 = 614.4
    y = (50 - gh / 2) * s / gw + h / 2  # = (4*50 - 320) * 1.28 + 341.5 = 187.9
    half = 2 * s / gw  # the 4-wide grid box (exp(0) * 4), in image pixels
    np.testing.assert_allclose(det.boxes[0], [x - half, y - half, x + half, y + half], atol=1e-3, rtol=0)
    np.testing.assert_allclose(det.extras["landmarks"][0], [x, y] * 5, atol=1e-3, rtol=0)
    assert det.scores.tolist() == [pytest.approx(0.9)]


@pytest.mark.parametrize("value, n", [(np.float32(0.05), 0), (np.nextafter(np.float32(0.05), np.float32(1)), 1)])
def test_starclouds_candidates_are_strictly_above_the_threshold(value, n):
    """REFERENCE 3.2 step 1: a cell is a candidate when ``heat > thr``; a cell exactly at the float32 threshold
    is not one (``>=`` would add it)."""
    heat = np.zeros((1, 1, 8, 8), np.float32)
    heat[0, 0, 3, 4] = value
    scale = np.zeros((1, 2, 8, 8), np.float32)
    lms = np.zeros((1, 10, 8, 8), np.float32)
    meta = {"input_shape": [3, 32, 32], "orig_hw": [32, 32], "scale_h": 1.0, "scale_w": 1.0}
    assert len(decode_starclouds(heat, scale, scale, lms, [meta], threshold=0.05)[0]) == n
    assert len(starclouds_candidates(heat, scale, scale, lms, (32, 32), 0.05)[1]) == n
