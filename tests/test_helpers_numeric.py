"""Shared numeric helpers against independent, deliberately naive oracles."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from zoo_core.api.aisbench import DumpDir, read_bin, write_bin
from zoo_core.api.errors import InputError
from zoo_core.api.geometry import affine_points, get_affine_transform
from zoo_core.api.nms import nms
from zoo_core.api.peaks import keep_peaks, maxpool3x3, topk_desc
from zoo_core.api.types import TensorSpec


def naive_nms(boxes, scores, thr, plus_one=False, order=None):
    add = 1.0 if plus_one else 0.0
    if order is None:
        order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
    keep, dead = [], set()
    for i in order:
        if i in dead:
            continue
        keep.append(i)
        for j in order:
            if j == i or j in dead or j in keep:
                continue
            a, b = boxes[i], boxes[j]
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + add)
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + add)
            inter = iw * ih
            union = (a[2] - a[0] + add) * (a[3] - a[1] + add) + (b[2] - b[0] + add) * (b[3] - b[1] + add) - inter
            if inter / union >= thr:
                dead.add(j)
    return keep


@st.composite
def box_sets(draw):
    n = draw(st.integers(0, 25))
    xy = draw(arrays(np.float64, (n, 2), elements=st.integers(0, 40).map(float)))
    wh = draw(arrays(np.float64, (n, 2), elements=st.integers(1, 20).map(float)))
    # few distinct scores, so ties are common
    scores = draw(arrays(np.float64, (n,), elements=st.sampled_from([0.1, 0.5, 0.5, 0.9])))
    return np.concatenate([xy, xy + wh], 1), scores


@settings(max_examples=200, deadline=None)
@given(box_sets(), st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), st.booleans())
def test_nms_matches_naive(bs, thr, plus_one):
    boxes, scores = bs
    got = nms(boxes, scores, thr, plus_one=plus_one)
    assert got.dtype == np.int64
    assert got.tolist() == naive_nms(boxes.tolist(), scores.tolist(), thr, plus_one)


@settings(max_examples=100, deadline=None)
@given(box_sets(), st.sampled_from([0.3, 0.5]), st.randoms(use_true_random=False))
def test_nms_visits_a_given_order(bs, thr, rnd):
    """``order=``: the boxes are visited in that order (a reference's own tie order), not re-sorted."""
    boxes, scores = bs
    order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), rnd.random()))
    got = nms(boxes, scores, thr, plus_one=True, order=np.array(order, np.int64))
    assert got.tolist() == naive_nms(boxes.tolist(), scores.tolist(), thr, True, order=order)


def test_nms_refuses_an_order_that_is_not_a_permutation():
    boxes = np.array([[0, 0, 10, 10]] * 3, float)
    for bad in ([0, 1], [0, 0, 1], [0, 1, 3], [-1, 0, 1]):  # -1 is not box 2
        with pytest.raises(ValueError, match="permutation of the 3 box indices"):
            nms(boxes, np.ones(3), 0.5, order=np.array(bad))


def test_nms_edge_cases():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    same = np.array([[0, 0, 10, 10]] * 3, float)
    assert nms(same, np.array([0.5, 0.5, 0.5]), 0.5).tolist() == [0]  # ties: lowest index wins
    assert nms(same, np.array([0.1, 0.9, 0.5]), 0.5).tolist() == [1]


def test_nms_ranks_float64_scores_in_float64():
    """Two float64 scores equal once rounded to float32 (0.5 and 0.5 + 1e-12) are still distinct: the higher
    one (box 1) is visited first and kept, as a float64 sort orders them; a float32 sort would tie them and
    keep box 0 (lower index first)."""
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.float64)  # IoU 90/110 > 0.5
    scores = np.array([0.5, 0.5 + 1e-12])
    assert np.float32(scores[0]) == np.float32(scores[1])
    assert nms(boxes, scores, 0.5).tolist() == [1]
    assert naive_nms(boxes.tolist(), scores.tolist(), 0.5) == [1]


def naive_maxpool(h):
    H, W = h.shape
    out = np.empty_like(h)
    for y in range(H):
        for x in range(W):
            out[y, x] = max(h[yy, xx] for yy in range(max(0, y - 1), min(H, y + 2))
                            for xx in range(max(0, x - 1), min(W, x + 2)))
    return out


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 7), st.integers(1, 7)),
              elements=st.sampled_from([0.0, 0.25, 0.5, 0.5, 1.0, -1.0])))
def test_maxpool_and_keep_peaks_match_loops(h):
    np.testing.assert_array_equal(maxpool3x3(h), naive_maxpool(h))
    peaks = keep_peaks(h[None, None])[0, 0]
    expect = np.array([[h[y, x] if h[y, x] == naive_maxpool(h)[y, x] else 0 for x in range(h.shape[1])]
                       for y in range(h.shape[0])], np.float32)
    np.testing.assert_array_equal(peaks, expect)
    assert keep_peaks(h).dtype == np.float32


def test_keep_peaks_on_a_float16_map_equals_the_loops():
    """A float16 map (an NPU's fp16 output, REFERENCE 2.11 item 5) takes numpy's pooling, never OpenCV's
    dilation (no float16 support there): the peaks are those of the 3x3 loops with exact equality."""
    rng = np.random.default_rng(0)
    h = (rng.integers(0, 6, (2, 13, 11)) / 4).astype(np.float16)  # plateaus: ties between neighbours
    h[0, 0, 0] = -1
    h[1, 5, 5] = np.float16(65504)
    got = keep_peaks(h)
    assert got.dtype == np.float16
    for plane, out in zip(h, got, strict=True):
        pooled = naive_maxpool(plane)
        np.testing.assert_array_equal(out, np.where(pooled == plane, plane, np.float16(0)))


def reference_peaks(h):
    """keep_peaks by the loops: a value stays when it equals the max of its 3x3 neighbourhood (a NaN
    anywhere in the neighbourhood makes the max NaN, so nothing next to a NaN stays)."""
    pooled = naive_maxpool_nan(h)
    return np.where(pooled == h, h, 0).astype(h.dtype)


def naive_maxpool_nan(h):
    H, W = h.shape
    out = np.empty_like(h)
    for y in range(H):
        for x in range(W):
            nb = [h[yy, xx] for yy in range(max(0, y - 1), min(H, y + 2)) for xx in range(max(0, x - 1), min(W, x + 2))]
            out[y, x] = np.nan if any(np.isnan(v) for v in nb) else max(nb)
    return out


@settings(max_examples=150, deadline=None)
@given(arrays(st.sampled_from([np.float32, np.float64]), st.tuples(st.integers(1, 9), st.integers(1, 9)),
              elements=st.sampled_from([0.0, -0.0, 0.25, 0.5, 0.5, 1.0, -1.0, np.inf, -np.inf, np.nan])),
       st.integers(1, 90))
def test_keep_peaks_and_dense_topk_match_loops_with_nan_inf_and_signed_zeros(h, k):
    """keep_peaks (OpenCV's dilation when the map holds no NaN, numpy's pooling when it does) and
    dense_topk_peaks (only the positive peaks ranked when there are k of them) against the loops."""
    from zoo_core.api.peaks import dense_topk_peaks

    expect = reference_peaks(h)
    got = keep_peaks(h)
    assert got.dtype == h.dtype
    np.testing.assert_array_equal(got, expect)  # (+0.0 == -0.0: a kept zero is a zero either way)
    order = sorted(range(h.size), key=lambda i: (-float(expect.reshape(-1)[i]), i))[:k]
    vals, idx = dense_topk_peaks(h, k)
    if not np.isnan(expect).any():  # (keep_peaks never keeps a NaN: it is not equal to itself)
        assert idx.tolist() == order
        assert vals.tolist() == [float(expect.reshape(-1)[i]) for i in order]
    ref_vals, ref_idx = topk_desc(keep_peaks(h).reshape(-1), k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(vals, ref_vals)


def test_dense_topk_peaks_on_recorded_like_maps_and_batches_of_planes():
    """Realistic sigmoid maps (many small positive peaks), ties between blobs, a map with fewer positive
    peaks than k, and a (C, H, W) stack: the same as pooling and ranking the whole zeroed map."""
    from zoo_core.api.peaks import dense_topk_peaks

    rng = np.random.default_rng(7)
    maps = [(1 / (1 + np.exp(-rng.normal(-6, 1.5, (200, 200))))).astype(np.float32),
            np.round(rng.random((3, 40, 50)), 1).astype(np.float32),
            np.zeros((30, 30), np.float32)]
    maps[2][4, 4], maps[2][20, 7] = 0.7, 0.7
    for heat in maps:
        for k in (1, 5, 200, heat.size + 3):
            vals, idx = dense_topk_peaks(heat, k)
            ref_vals, ref_idx = topk_desc(keep_peaks(heat).reshape(-1), k)
            np.testing.assert_array_equal(idx, ref_idx)
            np.testing.assert_array_equal(vals, ref_vals)
            np.testing.assert_array_equal(keep_peaks(heat), np.where(maxpool3x3(heat) == heat, heat, 0))


@settings(max_examples=100, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 30)),
              elements=st.sampled_from([0.0, 0.1, 0.5, 0.5, 0.9])), st.integers(1, 40))
def test_topk_desc_matches_sorted(scores, k):
    vals, idx = topk_desc(scores, k)
    for row in range(scores.shape[0]):
        expect = sorted(range(scores.shape[1]), key=lambda i: (-float(scores[row, i]), i))[:k]
        assert idx[row].tolist() == expect
        assert vals[row].tolist() == [float(scores[row, i]) for i in expect]


def test_affine_transform_closed_form_and_inverse():
    m = get_affine_transform((320.0, 240.0), 640.0, (512, 512))
    np.testing.assert_allclose(m, [[0.8, 0, 0], [0, 0.8, 64]], atol=1e-6)
    inv = get_affine_transform((320.0, 240.0), 640.0, (512, 512), inv=True)
    np.testing.assert_allclose(inv, [[1.25, 0, 0], [0, 1.25, -80]], atol=1e-5)
    pts = np.array([[0, 0], [639, 479], [123.5, 77.25]], np.float32)
    back = affine_points(affine_points(pts, m), inv)
    np.testing.assert_allclose(back, pts, atol=1e-3)
    full = np.vstack([m, [0, 0, 1]]) @ np.vstack([inv, [0, 0, 1]])
    np.testing.assert_allclose(full, np.eye(3), atol=1e-6)


SPEC = TensorSpec("out", (2, 3, 4))


def test_read_bin_float32_float16_and_wrong_size(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    write_bin(tmp_path / "a_0.bin", a)
    assert (tmp_path / "a_0.bin").stat().st_size == 24 * 4
    np.testing.assert_array_equal(read_bin(tmp_path / "a_0.bin", SPEC), a)
    (tmp_path / "h_0.bin").write_bytes(a.astype("<f2").tobytes())
    h = read_bin(tmp_path / "h_0.bin", SPEC, file_dtype="float16")
    assert h.dtype == np.float32 and h.shape == (2, 3, 4)
    np.testing.assert_allclose(h, a, rtol=1e-3)
    with pytest.raises(InputError, match="dump_dtype=float16"):  # never guessed from the size
        read_bin(tmp_path / "h_0.bin", SPEC)
    (tmp_path / "bad_0.bin").write_bytes(b"\0" * 50)
    with pytest.raises(InputError, match=r"bad_0\.bin.*50 bytes.*needs 96"):
        read_bin(tmp_path / "bad_0.bin", SPEC)
    with pytest.raises(InputError, match="not found"):
        read_bin(tmp_path / "none_0.bin", SPEC)
    np.save(tmp_path / "n_0.npy", a)
    np.testing.assert_array_equal(read_bin(tmp_path / "n_0.npy", SPEC), a)


@pytest.mark.parametrize("base", [0, 1])
def test_dumpdir_base_detection_and_nesting(tmp_path, base):
    nested = tmp_path / "2024_01_01-00_00_00"
    nested.mkdir()
    arrays_ = {}
    for stem in ("img_a", "0001"):  # a stem that itself ends in _digits-like text must still parse
        for k in range(2):
            arr = np.full(SPEC.shape, hash((stem, k)) % 100, np.float32)
            arrays_[(stem, k)] = arr
            write_bin(nested / f"{stem}_{k + base}.bin", arr)
    d = DumpDir(tmp_path, 2)
    assert d.base == base and d.stems() == ["0001", "img_a"] and "img_a" in d
    for stem in ("img_a", "0001"):
        got = d.read(stem, [SPEC, SPEC])
        for k in range(2):
            np.testing.assert_array_equal(got[k], arrays_[(stem, k)])
    with pytest.raises(InputError, match="no output files for image 'zzz'"):
        d.paths("zzz")
    (nested / f"img_a_{1 + base}.bin").unlink()
    with pytest.raises(InputError, match="missing output"):
        DumpDir(tmp_path, 2).paths("img_a")
    with pytest.raises(InputError, match=r"no <stem>_<i>.bin"):
        DumpDir(_empty(tmp_path), 1)


def _empty(tmp_path):
    p = tmp_path / "empty"
    p.mkdir()
    return p


def test_topk_peaks_takes_the_fast_exact_path_on_a_constant_background():
    """An oracle's heatmap (a constant background with a few peaks) must not fall to a whole-map scan:
    the plateau is searched a chunk at a time, and the answer equals the reference's exactly."""
    import numpy as np

    from zoo_core.api.peaks import keep_peaks, topk_desc, topk_peaks

    heat = np.full((80, 128, 128), 2.06e-9, np.float32)
    rng = np.random.default_rng(1)
    for _ in range(7):
        heat[rng.integers(80), rng.integers(128), rng.integers(128)] = rng.random() + 0.1
    fast = topk_peaks(heat, 100)
    assert fast is not None
    ref = topk_desc(keep_peaks(heat).reshape(-1), 100)
    np.testing.assert_array_equal(fast[0], ref[0])
    np.testing.assert_array_equal(fast[1], ref[1])
    for _ in range(200):
        c, h, w = rng.integers(1, 5), rng.integers(3, 30), rng.integers(3, 30)
        heat = (rng.integers(0, 4, (c, h, w)) / 4 + 0.01).astype(np.float32)  # many ties and plateaus
        k = int(rng.integers(1, 50))
        got = topk_peaks(heat, k, chunk=7, group_rows=int(rng.integers(1, 20)))  # tails of odd sizes too
        if got is not None:
            ref = topk_desc(keep_peaks(heat).reshape(-1), k)
            np.testing.assert_array_equal(got[0], ref[0])
            np.testing.assert_array_equal(got[1], ref[1])


@pytest.mark.parametrize("shape", [(80, 128, 128), (3, 131, 77)])
def test_topk_peaks_on_a_realistic_map_equals_pooling_the_whole_map(shape):
    """Low background, blobs, a few exact ties between blobs: the grouped threshold path (taken here) gives
    the reference's top-100 exactly, rows that do not fill a group included."""
    import numpy as np

    from zoo_core.api.peaks import keep_peaks, topk_desc, topk_peaks

    rng = np.random.default_rng(sum(shape))
    heat = (1 / (1 + np.exp(-rng.normal(-6, 1, shape)))).astype(np.float32)
    c, h, w = shape
    for i in range(60):
        ch, y, x = rng.integers(c), rng.integers(1, h - 1), rng.integers(1, w - 1)
        heat[ch, y - 1:y + 2, x - 1:x + 2] += np.float32(0.5 if i % 5 == 0 else rng.uniform(0.01, 0.9))
    fast = topk_peaks(heat, 100)
    assert fast is not None
    ref = topk_desc(keep_peaks(heat).reshape(-1), 100)
    np.testing.assert_array_equal(fast[0], ref[0])
    np.testing.assert_array_equal(fast[1], ref[1])


@pytest.mark.parametrize(("k", "scored"), [(5, False), (4, True)])
def test_topk_peaks_on_a_saturated_background_gives_the_references_zero_score_rows(k, scored):
    """One peak on a background that is exactly 0 (zeros, or logits of -200 whose float32 sigmoid is 0.0): the
    top-k's zero-score rows must be the reference's, the lowest flat indices, the peak's zero neighbours
    included (``keep_peaks`` zeroes them, and 0 ties with 0). A fast path taking only the zeros that are 3x3
    peaks would skip them, so ``topk_peaks`` must take the full path (``None``) or agree exactly."""
    from zoo_core.api.peaks import topk_peaks

    raw = np.full((2, 128, 128), -200.0 if scored else 0.0, np.float32)
    raw[0, 0, 1] = 2.0 if scored else 0.9
    score = _sigmoid64 if scored else None
    scored_map = score(raw) if score else raw
    assert scored_map[0, 0, 0] == 0.0
    ref = topk_desc(keep_peaks(scored_map).reshape(-1), k)
    assert ref[1].tolist() == [1, 0, 2, 3, 4][:k]  # by hand: the peak (index 1), then the zeros 0, 2, 3, ...
    assert ref[0][0] == scored_map[0, 0, 1] and not ref[0][1:].any()
    got = topk_peaks(raw, k, score=score)
    if got is not None:
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    fast = topk_peaks(raw, k, oversample=1, score=score)
    if fast is not None:
        np.testing.assert_array_equal(fast[1], ref[1])


def _steps(x):
    """A monotone score with wide level sets: many distinct raw values score equal (as saturated logits)."""
    import numpy as np

    return (np.floor(np.asarray(x, np.float64) * 4) / 16 + 1).clip(0.25, 2).astype(np.float32)


def _sigmoid64(x):
    import numpy as np

    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-np.asarray(x, np.float64)))).astype(np.float32)


@pytest.mark.parametrize("score", [_steps, _sigmoid64])
def test_topk_peaks_with_a_score_equals_pooling_the_scored_map(score):
    """``score=``: the search runs on raw values and scores only what it reads; the answer must equal
    scoring the whole map, pooling it and taking the top-k, including ties between different raw values
    that score equal (a saturated sigmoid), plateaus, and a constant background."""
    import numpy as np

    from zoo_core.api.peaks import keep_peaks, topk_desc, topk_peaks

    rng = np.random.default_rng(7)
    taken = 0
    for trial in range(300):
        c, h, w = int(rng.integers(1, 6)), int(rng.integers(3, 40)), int(rng.integers(3, 40))
        kind = trial % 4
        if kind == 0:  # smooth low background with blobs, some saturated
            raw = rng.normal(-6, 1, (c, h, w))
            for _ in range(int(rng.integers(1, 30))):
                ch, y, x = rng.integers(c), rng.integers(h), rng.integers(w)
                raw[ch, max(0, y - 1):y + 2, max(0, x - 1):x + 2] += rng.choice([3.0, 8.0, 30.0, 40.0])
        elif kind == 1:  # coarse levels: plateaus and equal scores everywhere
            raw = rng.integers(-3, 6, (c, h, w)) * 0.3
        elif kind == 2:  # an oracle: constant background, a few peaks
            raw = np.full((c, h, w), -20.0)
            for _ in range(int(rng.integers(0, 8))):
                raw[rng.integers(c), rng.integers(h), rng.integers(w)] = rng.uniform(-2, 25)
        else:  # fp16 outputs
            raw = rng.normal(0, 3, (c, h, w)).astype(np.float16)
        raw = np.asarray(raw, np.float32)
        k = int(rng.integers(1, 60))
        got = topk_peaks(raw, k, chunk=int(rng.integers(3, 50)), group_rows=int(rng.integers(1, 12)), score=score)
        if got is None:
            continue
        taken += 1
        ref = topk_desc(keep_peaks(score(raw)).reshape(-1), k)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    assert taken > 150
    raw = rng.normal(-6, 1, (3, 40, 40)).astype(np.float32)
    raw[1, 5:8, 5:8] += 9
    assert topk_peaks(raw, 5, score=score) is not None
    assert topk_peaks(raw.astype(np.float64), 5, score=score) is None  # float64 input: the caller's full path


def test_level_set_is_the_whole_interval_of_equal_scores():
    import numpy as np

    from zoo_core.api.peaks import _level_set

    rng = np.random.default_rng(3)
    for x in [*rng.normal(0, 10, 200).astype(np.float32), np.float32(0), np.float32(-0.0), np.float32(50)]:
        for score in (_steps, _sigmoid64):
            lo, hi = _level_set(score, x)
            t = score(np.asarray([x], np.float32))[0]
            assert lo <= x <= hi
            assert score(np.asarray([lo, hi], np.float32)).tolist() == [t, t]
            below = np.nextafter(lo, np.float32(-np.inf), dtype=np.float32)
            above = np.nextafter(hi, np.float32(np.inf), dtype=np.float32)
            if np.isfinite(lo):
                assert score(np.asarray([below], np.float32))[0] < t
            if np.isfinite(hi):
                assert score(np.asarray([above], np.float32))[0] > t


def test_group_maxima_match_numpys_reduction_with_nan_inf_and_tails():
    """The column-group maxima behind topk_peaks' threshold: equal to numpy's max over each group (NaN
    propagating, so a NaN group still sends topk_peaks to the full path), rows that do not fill a group kept."""
    from zoo_core.api.peaks import _group_maxima

    rng = np.random.default_rng(11)
    for _ in range(200):
        r, w, rows = int(rng.integers(1, 40)), int(rng.integers(1, 9)), int(rng.integers(1, 12))
        h = rng.normal(0, 1, (r, w)).astype(np.float32)
        h[rng.random(h.shape) < 0.05] = rng.choice([np.nan, np.inf, -np.inf])
        got, n_main = _group_maxima(h, rows)
        full = (r // rows) * rows
        want = np.concatenate([h[:full].reshape(r // rows, rows, w).max(axis=1).reshape(-1), h[full:].reshape(-1)])
        assert n_main == (r // rows) * w
        np.testing.assert_array_equal(got, want)
