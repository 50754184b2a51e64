"""stage=compare's numbers: tensor differences, the pass rule, detection matching (no torch, no CLI)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from zoo_core.api.types import Detections
from zoo_core.compare.detections import MatchSummary, iou_matrix, match, match_image
from zoo_core.compare.numbers import OutputStats, Tolerance, cosine, diff
from zoo_core.compare.report import failure_reasons, jsonable, markdown, summary_lines, verdict_line

TOL = Tolerance(atol=1e-4, rtol=1e-2, min_cosine=0.999)


def test_diff_numbers_against_hand_computed_values():
    ref = np.array([[3.0, -4.0], [0.0, 1.0]], np.float32)
    cand = np.array([[3.0, -4.5], [0.25, 1.0]], np.float32)
    d = diff(ref, cand, TOL)
    assert d.max_abs == pytest.approx(0.5)
    assert d.ref_max_abs == pytest.approx(4.0)
    assert d.max_rel == pytest.approx(0.5 / 4.0)
    dot, nr, nc = 9 + 18 + 0 + 1, 9 + 16 + 1, 9 + 20.25 + 0.0625 + 1
    assert d.cosine == pytest.approx(dot / math.sqrt(nr * nc), rel=1e-12)
    assert d.beyond == 2 and d.size == 4  # bound 1e-4 + 1e-2 * 4 = 0.0401: 0.5 and 0.25 are beyond
    assert not d.passed(TOL)


def test_a_scaled_tensor_passes_cosine_but_fails_the_relative_bound():
    """Cosine alone misses a scaled layer: every value 5% too large, cosine 1.0."""
    ref = np.random.default_rng(0).standard_normal((8, 16, 16)).astype(np.float32)
    d = diff(ref, 1.05 * ref, TOL)
    assert d.cosine > 0.9999999
    assert d.max_rel == pytest.approx(0.05, rel=1e-5)
    assert not d.passed(TOL)
    assert diff(ref, 1.005 * ref, TOL).passed(TOL)  # 0.5% of max |ref| is within rtol 1e-2


def test_noise_within_the_bound_still_fails_on_cosine():
    """A peaked tensor: small noise everywhere stays under atol + rtol*max but ruins the cosine."""
    ref = np.zeros(10_000, np.float32)
    ref[0] = 100.0
    noise = np.random.default_rng(1).uniform(-0.9, 0.9, ref.shape).astype(np.float32)
    d = diff(ref, ref + noise, TOL)
    assert d.beyond == 0 and d.max_abs < TOL.bound(100.0)
    assert d.cosine < 0.999
    assert not d.passed(TOL)


def test_zero_tensors_and_nonfinite_values():
    z = np.zeros((2, 3), np.float32)
    assert diff(z, z, TOL).passed(TOL) and cosine(z, z) == 1.0
    d = diff(z, z + 1, TOL)
    assert d.max_rel is None and cosine(z, z + 1) == 0.0 and not d.passed(TOL)
    bad = z.copy()
    bad[0, 1] = np.nan
    d = diff(z, bad, TOL)
    assert d.nonfinite == 1 and d.beyond == 1 and not d.passed(TOL)
    row = jsonable(d.as_dict(TOL))
    assert row["max_abs"] is None and row["nonfinite"] == 1
    json.dumps(row, allow_nan=False)  # strict JSON
    with pytest.raises(ValueError, match="shapes differ"):
        diff(z, np.zeros((3, 2)), TOL)


def test_output_stats_normalise_per_image_and_keep_the_worst():
    """rtol is relative to each image's own max |reference|: a small image gets a small bound."""
    s = OutputStats(TOL)
    big = np.full((4, 4), 1000.0, np.float32)
    small = np.full((4, 4), 1.0, np.float32)
    s.add("big", big, big + 5.0)          # 5 <= 1e-4 + 10: within
    s.add("small", small, small + 0.05)   # 0.05 > 1e-4 + 0.01: beyond
    assert s.failed_images == 1 and not s.passed
    assert s.worst_image == "big" and s.max_abs == pytest.approx(5.0)
    assert s.max_rel == pytest.approx(0.05)
    assert s.beyond == 16 and s.elements == 32
    out = s.as_dict()
    assert out["beyond_tolerance"] == pytest.approx(0.5) and out["shape"] == [4, 4]


def test_output_stats_keep_the_lowest_cosine_and_name_its_image():
    """The per-output cosine is the lowest over the images and lowest_cosine_image names it (docs/compare.md)."""
    rng = np.random.default_rng(0)
    ref = {k: rng.standard_normal(1000) for k in ("a", "b", "c")}
    cand = {"a": ref["a"].copy(), "b": -ref["b"], "c": ref["c"] * 1.001 + rng.normal(0, 1e-3, 1000)}
    oracle = {k: float(ref[k] @ cand[k] / np.linalg.norm(ref[k]) / np.linalg.norm(cand[k])) for k in ref}
    assert oracle["b"] == pytest.approx(-1.0) and oracle["c"] < 1.0
    s = OutputStats(TOL)
    for k in ("a", "b", "c"):
        s.add(k, ref[k], cand[k])
    assert s.lowest_cosine_image == "b" and s.cosine == pytest.approx(oracle["b"], abs=1e-12)
    assert s.as_dict()["lowest_cosine_image"] == "b"


def test_an_output_compared_on_no_image_does_not_pass():
    """Nothing compared proves nothing: an output no image reached must not count as passed."""
    s = OutputStats(TOL)
    assert s.images == 0 and s.failed_images == 0
    assert s.passed is False and s.as_dict()["passed"] is False


def test_the_default_run_config_holds_the_documented_tolerances(fixture_cfg):
    """docs/compare.md and README: compare.atol=1e-4, rtol=1e-2, min_cosine=0.999, iou=0.99 by default. Thin noise
    within the elementwise bound but at cosine ~0.997 fails at the default min_cosine."""
    from zoo_core.stages.compare_stage import tolerance

    c = fixture_cfg.compare
    assert (c.atol, c.rtol, c.min_cosine, c.iou) == (1e-4, 1e-2, 0.999, 0.99)
    tol = tolerance(fixture_cfg)
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(10_000)
    ref[0] = 100.0
    cand = ref + rng.uniform(-0.2, 0.2, ref.shape)
    oracle = float(ref @ cand / np.linalg.norm(ref) / np.linalg.norm(cand))
    assert 0.99 < oracle < 0.999 and np.abs(cand - ref).max() < 1e-4 + 1e-2 * 100.0
    d = diff(ref, cand, tol)
    assert d.beyond == 0 and not d.passed(tol)


def test_a_tolerance_set_to_the_reported_value_passes():
    """Before: rtol set to the reported max_rel (atol 0) failed: the rule tested d > atol + rtol*max|ref| and
    (d / max|ref|) * max|ref| rounds below d for these float32 values (CenterFace INT8 output 539, audit)."""
    ref = np.array([0.42302513122558594, -0.1, 0.0], np.float32)
    cand = ref + np.array([0.0, 0.0, 0.4970765709877014], np.float32)
    d = diff(ref, cand, TOL)
    assert d.max_rel == 0.4970765709877014 / 0.42302513122558594 and d.max_rel * d.ref_max_abs < d.max_abs
    at_rel = Tolerance(atol=0.0, rtol=d.max_rel, min_cosine=-1)
    assert diff(ref, cand, at_rel).beyond == 0 and diff(ref, cand, at_rel).passed(at_rel)
    assert diff(ref, cand, Tolerance(0.0, np.nextafter(d.max_rel, 0), -1)).beyond == 1  # just below: beyond
    at_abs = Tolerance(atol=d.max_abs, rtol=0.0, min_cosine=-1)
    assert diff(ref, cand, at_abs).beyond == 0
    assert diff(ref, cand, Tolerance(np.nextafter(d.max_abs, 0), 0.0, -1)).beyond == 1
    s = OutputStats(at_rel)  # over images: rtol = the output's reported max_rel passes every image
    s.add("a", ref, cand)
    s.add("b", 2 * ref, 2 * ref + 0.5 * (cand - ref))
    assert s.max_rel == d.max_rel and s.passed
    z = np.zeros(3, np.float32)  # an all-zero reference: atol alone decides
    assert diff(z, z + 0.5, Tolerance(0.5, 1.0, -1)).beyond == 0 and diff(z, z + 0.5, Tolerance(0.4, 9.0, -1)).beyond == 3


def test_failure_lines_count_a_single_element_and_show_the_digits_near_the_limit():
    """Before: one failing element of 49,152 printed as '0.00% of values beyond', and a max abs of 3.5683 over
    atol=3.568 printed as 'max abs 3.568' next to 'atol 3.568'."""
    tol = Tolerance(atol=3.568, rtol=0.0, min_cosine=-1)
    s = OutputStats(tol)
    ref = np.zeros((3, 128, 128), np.float32)
    ref[0, 0, 0] = 10.0
    cand = ref.copy()
    cand[1, 2, 3] = 3.5683
    s.add("img", ref, cand)
    result = {"tolerance": tol.as_dict(), "passed": False, "outputs": {"hm": s.as_dict()}}
    (line,) = failure_reasons(result)
    assert line.startswith("output hm: 1 of 49,152 values (0.002%) beyond atol + rtol*max|ref|")
    assert f"max abs {float(np.float32(3.5683))!r}" in line and "max rel 0.3568" in line
    assert "atol 3.568, rtol 0.0 of max |reference|" in verdict_line(result)
    assert "atol 3.5683," in verdict_line({**result, "tolerance": {**tol.as_dict(), "atol": 3.5683}})
    # the terminal table and the markdown table too (they printed 0.00% and 0.0000% beside BEYOND TOLERANCE)
    full = {**result, "model": "m", "dataset": "d", "images": 1, "reference": {"backend": "onnxruntime"},
            "candidate": {"backend": "onnxruntime"}}
    (row,) = [ln for ln in summary_lines(full) if ln.strip().startswith("hm ")]
    assert row.rstrip().endswith("0.002%  BEYOND TOLERANCE"), row
    (md_row,) = [ln for ln in markdown(full, None).splitlines() if ln.startswith("| hm |")]
    assert "| 1 of 49,152 values (0.002%) |" in md_row, md_row


def _dets(boxes, scores, labels, **extras):
    return Detections(np.asarray(boxes, np.float32), scores, labels, {k: np.asarray(v) for k, v in extras.items()})


def test_iou_matrix_and_inverted_boxes():
    a = np.array([[0, 0, 10, 10], [10, 10, 0, 0]], np.float32)  # the second is the first, inverted
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)
    iou = iou_matrix(a, b)
    assert iou[0, 0] == pytest.approx(1.0) and iou[1, 0] == pytest.approx(1.0)
    assert iou[0, 1] == pytest.approx(50 / 150)


def test_match_needs_the_same_class_and_iou_099():
    ref = _dets([[0, 0, 100, 100], [200, 200, 300, 300], [0, 0, 50, 50]], [0.9, 0.8, 0.7], [1, 2, 3])
    cand = _dets([[0.2, 0, 100.2, 100], [200, 200, 300, 300], [0, 0, 50, 50], [0, 0, 52, 50]],
                 [0.91, 0.8, 0.7, 0.6], [1, 5, 3, 3])
    pairs = match(ref, cand)
    assert pairs == [(0, 0), (2, 2)]  # class 2 vs 5 never match; (0,0,52,50) has IoU 0.96 < 0.99
    m = match_image("img", ref, cand)
    assert (m.reference, m.candidate, m.matched) == (3, 4, 2)
    assert m.max_box_shift == pytest.approx(0.2, abs=1e-5)
    assert m.max_score_change == pytest.approx(0.01, abs=1e-6)


def test_match_is_greedy_by_reference_score():
    ref = _dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.9], [0, 0])
    cand = _dets([[0, 0, 10, 10]], [0.9], [0])
    assert match(ref, cand) == [(1, 0)]


def test_match_summary_rate_and_extras():
    s = MatchSummary()
    lm = np.arange(10, dtype=np.float32)[None]
    s.add(match_image("a", _dets([[0, 0, 10, 10]], [0.9], [0], landmarks=lm),
                      _dets([[0, 0, 10, 10]], [0.9], [0], landmarks=lm + 0.5)))
    s.add(match_image("b", _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 0]),
                      _dets([[0, 0, 10, 10]], [0.9], [0])))
    s.add(match_image("c", Detections.empty(), Detections.empty()))
    out = s.as_dict()
    assert out["matched"] == 2 and out["reference"] == 3 and out["candidate"] == 2
    assert out["match_rate"] == pytest.approx(2 / 3)
    assert out["images_fully_matched"] == 2 and out["worst_image"] == "b"
    assert out["max_extras_change"] == {"landmarks": pytest.approx(0.5)}
    assert [r["id"] for r in out["per_image"]] == ["a", "b", "c"]
    assert MatchSummary().as_dict()["match_rate"] == 1.0


def test_no_matched_detection_has_no_shift_not_a_zero_one():
    """Before: with no detection matched, compare.json said max_box_shift 0.0 and max_score_change 0.0 and the
    console 'largest box shift 0 px, largest score change 0', which reads as perfect agreement."""
    s = MatchSummary()
    s.add(match_image("a", _dets([[0, 0, 10, 10]], [0.9], [0]), _dets([[50, 50, 60, 60]], [0.9], [0])))
    s.add(match_image("b", _dets([[0, 0, 10, 10]], [0.9], [1]), _dets([[0, 0, 10, 10]], [0.8], [2])))
    d = s.as_dict()
    assert d["matched"] == 0 and d["max_box_shift"] is None and d["max_score_change"] is None
    assert json.loads(json.dumps(jsonable(d)))["max_box_shift"] is None  # null in compare.json
    assert all(r["max_box_shift"] is None and r["max_score_change"] is None for r in d["per_image"])
    result = {"tolerance": TOL.as_dict(), "passed": False, "outputs": {}, "model": "m", "dataset": "d", "images": 2,
              "reference": {"backend": "onnxruntime"}, "candidate": {"backend": "onnxruntime"}, "detections": d}
    (line,) = [ln for ln in summary_lines(result) if "detections:" in ln]
    assert "n/a (no detections matched)" in line and "0 px" not in line, line
    md = markdown(result, None)
    assert "n/a (no detections matched)" in md and "shift 0 px" not in md
    # one image matched, one not: the shift is the matched one's; the other image's row says n/a
    s.add(match_image("c", _dets([[0, 0, 100, 100]], [0.9], [0]), _dets([[0.25, 0, 100.25, 100]], [0.85], [0])))
    d = s.as_dict()
    assert d["matched"] == 1 and d["max_box_shift"] == pytest.approx(0.25)
    assert d["max_score_change"] == pytest.approx(0.05, abs=1e-6)
    (line,) = [ln for ln in summary_lines({**result, "detections": d}) if "detections:" in ln]
    assert "largest box shift 0.25 px, largest score change 0.05" in line, line
    assert "| a | 1 | 1 | 0 | n/a | n/a |" in markdown({**result, "detections": d}, None)


def test_a_cosine_equal_to_min_cosine_passes():
    """docs: a tensor passes when its cosine similarity is *at least* min_cosine; min_cosine set to the cosine a
    run reported passes it (as rtol set to the reported max_rel does)."""
    ref = np.array([1.0, 0.0], np.float32)
    cand = np.array([1.0, 1.0], np.float32)  # cosine 1/sqrt(2), within no relative bound but rtol=2 covers it
    tol = Tolerance(atol=0.0, rtol=2.0, min_cosine=1 / math.sqrt(2))
    d = diff(ref, cand, tol)
    assert d.cosine == 1 / math.sqrt(2) and d.beyond == 0
    assert d.passed(tol)
    assert not d.passed(Tolerance(atol=0.0, rtol=2.0, min_cosine=np.nextafter(1 / math.sqrt(2), 1)))
    same = diff(ref, ref, Tolerance(atol=0.0, rtol=0.0, min_cosine=1.0))  # identical tensors, min_cosine=1
    assert same.cosine == 1.0 and same.passed(Tolerance(atol=0.0, rtol=0.0, min_cosine=1.0))


def test_an_output_with_an_all_zero_reference_image_has_no_max_rel():
    """max_rel of an image whose reference is all zero and candidate is not is undefined (None); the output's
    max_rel over its images is then None too, not the largest of the other images' ratios."""
    s = OutputStats(TOL)
    z = np.zeros(3, np.float32)
    s.add("zero", z, z + 0.5)
    s.add("ones", np.ones(3, np.float32), np.ones(3, np.float32) * 1.25)
    assert s.max_rel is None and s.as_dict()["max_rel"] is None
    s2 = OutputStats(TOL)  # the other order: None once seen stays None
    s2.add("ones", np.ones(3, np.float32), np.ones(3, np.float32) * 1.25)
    s2.add("zero", z, z + 0.5)
    assert s2.max_rel is None


def test_match_takes_an_iou_of_exactly_the_threshold():
    """Two detections are the same when their IoU is *at least* 0.99: boxes 100x100 and 99x100 sharing a
    corner have IoU 9900 / 10000 = 0.99 exactly."""
    ref = _dets([[0, 0, 100, 100]], [0.9], [1])
    cand = _dets([[0, 0, 99, 100]], [0.9], [1])
    assert iou_matrix(ref.boxes, cand.boxes)[0, 0] == 0.99
    assert match(ref, cand) == [(0, 0)]
    assert match(ref, _dets([[0, 0, 98.9, 100]], [0.9], [1])) == []


def test_extra_candidate_detections_lower_the_match_rate_and_the_fully_matched_count():
    """match_rate = matched / the larger of the two counts per image: a candidate with a detection the reference
    lacks is not a full match (1 of 2), and that image is not fully matched."""
    s = MatchSummary()
    s.add(match_image("a", _dets([[0, 0, 10, 10]], [0.9], [0]),
                      _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 0])))
    out = s.as_dict()
    assert (out["matched"], out["reference"], out["candidate"]) == (1, 1, 2)
    assert out["match_rate"] == 0.5
    assert out["images_fully_matched"] == 0


def test_two_identical_zero_area_boxes_are_the_same_detection():
    """A decoder may emit a zero-area box; the same box from both backends is one detection (IoU 1), not a
    missing and an extra one."""
    ref = _dets([[5, 5, 5, 5], [0, 0, 0, 10]], [0.9, 0.8], [0, 0])
    cand = _dets([[5, 5, 5, 5], [0, 0, 0, 10]], [0.9, 0.8], [0, 0])
    assert match(ref, cand) == [(0, 0), (1, 1)]
    assert match(ref, _dets([[5, 5, 5, 6]], [0.9], [0])) == []  # a different degenerate box is not it


def test_output_max_abs_reference_is_the_largest_over_images():
    s = OutputStats(TOL)
    s.add("big", np.array([4.0, -1.0], np.float32), np.array([4.0, -1.0], np.float32))
    s.add("small", np.array([1.0, 0.5], np.float32), np.array([1.0, 0.5], np.float32))
    assert s.ref_max_abs == 4.0 and s.as_dict()["max_abs_reference"] == 4.0


def test_worst_image_among_fully_matched_ones_is_the_one_whose_boxes_moved_most():
    s = MatchSummary()
    s.add(match_image("a", _dets([[0, 0, 100, 100]], [0.9], [0]), _dets([[0.1, 0, 100.1, 100]], [0.9], [0])))
    s.add(match_image("b", _dets([[0, 0, 100, 100]], [0.9], [0]), _dets([[0.3, 0, 100.3, 100]], [0.9], [0])))
    s.add(match_image("c", _dets([[0, 0, 100, 100]], [0.9], [0]), _dets([[0, 0, 100, 100]], [0.9], [0])))
    out = s.as_dict()
    assert out["match_rate"] == 1.0 and out["worst_image"] == "b"
