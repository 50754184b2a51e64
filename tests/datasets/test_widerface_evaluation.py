"""zoo_core.datasets.widerface evaluation: golden APs, hand-worked cases, and vectorised == per-image reference."""
from __future__ import annotations

import json
import tarfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo_core.api.errors import ZooError
from zoo_core.datasets.widerface import (
    SETTINGS,
    WiderEvalWarning,
    WiderGroundTruth,
    evaluate_wider,
    evaluate_wider_reference,
    load_wider_gt,
    pr_curves_png,
    read_prediction_tree,
    thresholds,
)
from zoo_core.testing import golden_dir, shared_dir


@pytest.fixture(scope="session")
def wider_gt() -> WiderGroundTruth:
    root = shared_dir()
    if root is None or not (root / "widerface_gt").is_dir():
        pytest.skip("shared WIDER FACE ground truth not found (set ZOO_SHARED_DIR)")
    return load_wider_gt(root / "widerface_gt")


@pytest.fixture(scope="session")
def golden_preds(wider_gt, tmp_path_factory):
    gdir = golden_dir("widerface_eval")
    out = tmp_path_factory.mktemp("widerface_set1")
    with tarfile.open(gdir / "set1.tar.gz") as tar:
        tar.extractall(out, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preds = read_prediction_tree(out, wider_gt)
    return preds, json.loads((gdir / "expected.json").read_text())


@pytest.mark.parametrize("iou", [0.5, 0.4])
def test_golden_ap(wider_gt, golden_preds, iou):
    preds, expected = golden_preds
    res = evaluate_wider(preds, wider_gt, iou_thresh=iou)
    for s in SETTINGS:
        assert abs(res.ap[s] - expected[f"iou_{iou}"][s]) <= 1e-9, (s, res.ap[s])
    assert res.num_faces == {"easy": 7211, "medium": 13319, "hard": 31958}
    assert res.iou_thresh == iou


def _subset(gt: WiderGroundTruth, events: list[int]) -> WiderGroundTruth:
    return WiderGroundTruth(events=[gt.events[e] for e in events], files=[gt.files[e] for e in events],
                            boxes=[gt.boxes[e] for e in events],
                            keep={s: [gt.keep[s][e] for e in events] for s in SETTINGS})


def _assert_same(a, b):
    for s in SETTINGS:
        assert a.num_faces[s] == b.num_faces[s]
        np.testing.assert_array_equal(a.proposals[s], b.proposals[s])
        np.testing.assert_array_equal(a.true_positives[s], b.true_positives[s])
        np.testing.assert_array_equal(a.precision[s], b.precision[s])
        np.testing.assert_array_equal(a.recall[s], b.recall[s])
        assert a.ap[s] == b.ap[s] or (np.isnan(a.ap[s]) and np.isnan(b.ap[s])), (s, a.ap[s], b.ap[s])


@pytest.mark.parametrize("iou", [0.5, 0.4])
def test_reference_equals_vectorised_on_golden_subset(wider_gt, golden_preds, iou):
    sub = _subset(wider_gt, [3, 40])
    preds = {(sub.events[e], stem): golden_preds[0][(sub.events[e], stem)] for e, _, _, stem in sub.iter_images()}
    _assert_same(evaluate_wider(preds, sub, iou), evaluate_wider_reference(preds, sub, iou))


def _one_image_gt(boxes, keep_easy, keep_hard):
    boxes = np.asarray(boxes, np.int32).reshape(-1, 4)
    keep = {"easy": [[np.asarray(keep_easy, np.int64)]], "medium": [[np.asarray(keep_easy, np.int64)]],
            "hard": [[np.asarray(keep_hard, np.int64)]]}
    return WiderGroundTruth(events=["0--Synth"], files=[["0_Synth_a_1"]], boxes=[[boxes]], keep=keep)


def _preds(boxes, scores):
    return {("0--Synth", "0_Synth_a_1"): (np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float))}


@pytest.mark.parametrize("impl", [evaluate_wider, evaluate_wider_reference])
def test_plus_one_iou_convention(impl):
    # gt x,y,w,h = 0,0,9,9 -> corners 0..9, area 10*10 with the +1 convention
    gt = _one_image_gt([[0, 0, 9, 9]], [0], [0])
    at_half = _preds([[0, 0, 9, 4], [50, 50, 5, 5]], [0.9, 0.1])     # IoU (10*5)/(10*10) = 0.5
    below = _preds([[0, 0, 9, 3.9], [50, 50, 5, 5]], [0.9, 0.1])     # IoU 49/100
    assert impl(at_half, gt, 0.5).ap["hard"] == 1.0
    assert impl(below, gt, 0.5).ap["hard"] == 0.0
    assert impl(below, gt, 0.49).ap["hard"] == 1.0


@pytest.mark.parametrize("impl", [evaluate_wider, evaluate_wider_reference])
def test_ignored_faces_and_repeat_hits(impl):
    # face 0 counts in easy and hard, face 1 only in hard
    gt = _one_image_gt([[0, 0, 20, 20], [100, 0, 20, 20]], [0], [0, 1])
    res = impl(_preds([[100, 0, 20, 20], [0, 0, 20, 20], [0, 0, 20, 20], [300, 300, 9, 9]],
                      [0.9, 0.8, 0.7, 0.1]), gt)
    # easy: the hit on face 1 leaves the proposals; face 0 found at .8, its repeat at .7 is a FP
    assert res.ap["easy"] == pytest.approx(1.0)
    np.testing.assert_array_equal(res.proposals["easy"][[0, 998, 999]], [0, 2, 3])
    np.testing.assert_array_equal(res.true_positives["easy"][[0, 998, 999]], [0, 1, 1])
    assert np.isnan(res.precision["easy"][0])
    # hard: both faces found by the first two boxes
    assert res.ap["hard"] == pytest.approx(1.0)
    np.testing.assert_array_equal(res.proposals["hard"][[0, 999]], [1, 4])
    np.testing.assert_array_equal(res.recall["hard"][[0, 999]], [0.5, 1.0])


@pytest.mark.parametrize("impl", [evaluate_wider, evaluate_wider_reference])
def test_first_best_face_wins_ties(impl):
    # two identical faces; only the second counts in easy. Every box matches the first one (first argmax).
    gt = _one_image_gt([[0, 0, 20, 20], [0, 0, 20, 20]], [1], [0, 1])
    res = impl(_preds([[0, 0, 20, 20], [0, 0, 20, 20], [60, 60, 9, 9]], [0.9, 0.8, 0.1]), gt)
    assert res.ap["easy"] == 0.0
    np.testing.assert_array_equal(res.proposals["easy"][[0, 999]], [0, 1])
    np.testing.assert_array_equal(res.recall["hard"][[0, 999]], [0.5, 0.5])
    np.testing.assert_array_equal(res.proposals["hard"][[0, 998, 999]], [1, 2, 3])
    assert res.ap["hard"] == 0.5


@pytest.mark.parametrize("impl", [evaluate_wider, evaluate_wider_reference])
def test_file_order_matters(impl):
    gt = _one_image_gt([[0, 0, 20, 20]], [0], [0])
    sorted_ = impl(_preds([[0, 0, 20, 20], [50, 50, 9, 9]], [0.9, 0.2]), gt)
    unsorted = impl(_preds([[50, 50, 9, 9], [0, 0, 20, 20]], [0.2, 0.9]), gt)
    assert sorted_.ap["hard"] == 1.0
    # the last passing box in file order is the TP, so the FP is always counted: precision 1/2
    assert unsorted.ap["hard"] == 0.5


def test_global_normalisation_and_missing_images():
    boxes = [[np.array([[0, 0, 20, 20]], np.int32), np.array([[0, 0, 20, 20]], np.int32)]]
    keep = {s: [[np.array([0]), np.array([0])]] for s in SETTINGS}
    gt = WiderGroundTruth(events=["0--Synth"], files=[["a_1", "b_2"]], boxes=boxes, keep=keep)
    preds = {("0--Synth", "a_1"): (np.array([[0.0, 0, 20, 20]]), np.array([0.3])),
             ("0--Synth", "b_2"): (np.array([[100.0, 0, 20, 20]]), np.array([0.6]))}
    res = evaluate_wider(preds, gt)
    # normalised over both images: the TP (0.3) becomes 0 and only passes the last threshold
    assert res.recall["hard"][998] == 0.0 and res.recall["hard"][999] == 0.5
    assert res.ap["hard"] == pytest.approx(0.25)
    with pytest.raises(ZooError, match=r"no predictions for 1 of 2 images.*b_2"):
        evaluate_wider({("0--Synth", "a_1"): preds[("0--Synth", "a_1")]}, gt)
    with pytest.warns(WiderEvalWarning, match="1 prediction entries"):
        evaluate_wider({**preds, ("9--X", "c"): (np.zeros((0, 4)), np.zeros(0))}, gt)
    with pytest.raises(ZooError, match="non-finite"):
        evaluate_wider({**preds, ("0--Synth", "a_1"): (np.array([[0.0, 0, 20, 20]]), np.array([np.inf]))}, gt)


@pytest.mark.parametrize("impl", [evaluate_wider, evaluate_wider_reference])
def test_score_normalisation_starts_max_at_0_and_min_at_1(impl):
    """REFERENCE 3.6 step 2: max starts at 0 and min at 1, so scores > 1 keep lo = 1 (not their own minimum).

    One image, 2 kept faces; file order: hit (1000), miss (999.6), hit (900).
    By hand: hi = max(0, 1000) = 1000, lo = min(1, 900) = 1 -> normalised 999/999 = 1, 998.6/999 = 0.9996,
    899/999 = 0.8999. thr = 1 - (t+1)/1000: for thr 0.999 .. 0.900 the last box with score >= thr is the miss
    (P = 1/2, R = 1/2); from thr 0.899 down all three pass (P = 2/3, R = 1). The envelope lifts the R = 1/2 point
    to 2/3: AP = 0.5 * 2/3 + 0.5 * 2/3 = 2/3.
    (Plain min-max, lo = 900, would give 1, 0.996, 0: at thr 0.999 only the hit passes, P = 1, AP = 0.8333.)
    """
    gt = _one_image_gt([[0, 0, 20, 20], [100, 100, 20, 20]], [0, 1], [0, 1])
    res = impl(_preds([[0, 0, 20, 20], [300, 300, 20, 20], [100, 100, 20, 20]], [1000.0, 999.6, 900.0]), gt, 0.5)
    assert res.ap["hard"] == pytest.approx(2 / 3, abs=1e-12)
    np.testing.assert_array_equal(res.proposals["hard"][[0, 99, 100, 999]], [2, 2, 3, 3])
    np.testing.assert_array_equal(res.true_positives["hard"][[0, 99, 100, 999]], [1, 1, 2, 2])


@pytest.mark.parametrize("impl", [evaluate_wider, evaluate_wider_reference])
def test_degenerate_inputs(impl):
    gt = _one_image_gt([[0, 0, 20, 20]], [], [0])
    with pytest.warns(WiderEvalWarning) as rec:
        res = impl(_preds([[0, 0, 20, 20], [50, 50, 9, 9]], [0.4, 0.4]), gt)
    messages = " ".join(str(w.message) for w in rec)
    assert "all prediction scores are equal" in messages and "'easy' has no kept faces" in messages
    assert np.isnan(res.ap["easy"])
    # every box passes every threshold: one operating point, recall 1, precision 1/2
    assert res.ap["hard"] == 0.5
    empty = impl(_preds(np.zeros((0, 4)), []), _one_image_gt([[0, 0, 20, 20]], [0], [0]))
    assert empty.ap == {"easy": 0.0, "medium": 0.0, "hard": 0.0}


def test_thresholds():
    t = thresholds()
    assert t.shape == (1000,) and t[0] == 1 - 1 / 1000 and t[-1] == 0.0
    assert all(t[i] == 1 - (i + 1) / 1000 for i in range(1000))


def test_pr_curves_png_and_summary(golden_preds, wider_gt):
    import cv2

    res = evaluate_wider(golden_preds[0], wider_gt)
    png = pr_curves_png(res)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (500, 600, 3) and len(np.unique(img.reshape(-1, 3), axis=0)) > 10
    lines = res.summary().splitlines()
    assert lines[0] == f"Easy   Val AP: {res.ap['easy']}" and lines[2].startswith("Hard   Val AP: ")
    assert res.as_dict()["ap"] == res.ap


def test_pr_curves_title_is_drawn_as_written_never_as_mathtext(golden_preds, wider_gt):
    """Before: a dataset name holding '$\\frac{$' (the plot title) raised in matplotlib's mathtext parser."""
    png = pr_curves_png(evaluate_wider(golden_preds[0], wider_gt), "$\\frac{$ (3 images), IoU 0.5")
    assert png[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------------------------
# property: vectorised == per-image reference on random small sets

_coord = st.integers(-5, 60)


@st.composite
def _random_case(draw):
    n_events = draw(st.integers(1, 2))
    events = [f"{e}--Ev" for e in range(n_events)]
    files, boxes, keep = [], [], {s: [] for s in SETTINGS}
    preds = {}
    score_pool = draw(st.sampled_from(["free", "ties", "equal"]))
    const = draw(st.sampled_from([0.0, 0.3, 1.0]))
    for ev in events:
        n_img = draw(st.integers(1, 3))
        files.append([f"img_{j}" for j in range(n_img)])
        ev_boxes = []
        for s in SETTINGS:
            keep[s].append([])
        for j in range(n_img):
            k = draw(st.integers(0, 4))
            rows = []
            for _ in range(k):
                if rows and draw(st.integers(0, 3)) == 0:  # duplicate face: first-argmax tie
                    rows.append(list(rows[draw(st.integers(0, len(rows) - 1))]))
                else:
                    rows.append([draw(_coord), draw(_coord), draw(st.integers(-2, 30)), draw(st.integers(-2, 30))])
            b = np.array(rows, np.int32).reshape(k, 4)
            ev_boxes.append(b)
            hard = sorted(draw(st.sets(st.integers(0, k - 1), max_size=k))) if k else []
            medium = [i for i in hard if draw(st.booleans())]
            easy = [i for i in medium if draw(st.booleans())]
            for s, idx in zip(SETTINGS, (easy, medium, hard)):
                keep[s][-1].append(np.array(idx, np.int64))
            n = draw(st.integers(0, 7))
            pb = []
            for _ in range(n):
                kind = draw(st.integers(0, 2)) if k else 0
                if kind == 1:  # jitter a gt box so that matches happen
                    g = b[draw(st.integers(0, k - 1))].astype(float)
                    g += [draw(st.integers(-3, 3)) / 2 for _ in range(4)]
                    pb.append(g)
                elif kind == 2:  # inside a gt box, same x, y, w: IoU (h'+1)/(h+1), often exactly the threshold
                    x, y, w, h = b[draw(st.integers(0, k - 1))].tolist()
                    pb.append([x, y, w, draw(st.integers(0, max(h, 0)))])
                else:
                    pb.append([draw(_coord), draw(_coord), draw(st.integers(0, 30)) + 0.5, draw(st.integers(0, 30))])
            if score_pool == "free":
                sc = [draw(st.floats(0.0, 1.0, allow_nan=False)) for _ in range(n)]
            elif score_pool == "ties":
                sc = [draw(st.sampled_from([0.05, 0.5, 0.5005, 0.999])) for _ in range(n)]
            else:
                sc = [const] * n
            preds[(ev, f"img_{j}")] = (np.array(pb, float).reshape(n, 4), np.array(sc, float))
        boxes.append(ev_boxes)
    gt = WiderGroundTruth(events=events, files=files, boxes=boxes, keep=keep)
    return gt, preds, draw(st.sampled_from([0.3, 0.4, 0.5, 0.7]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_random_case())
def test_vectorised_equals_reference(case):
    gt, preds, iou = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WiderEvalWarning)
        _assert_same(evaluate_wider(preds, gt, iou), evaluate_wider_reference(preds, gt, iou))
