"""bootstrap=N: the fast per-resample metrics equal the real evaluator re-run on the explicit resamples.

The oracle builds, for a resample, a dataset holding each drawn image as many times as it was drawn (the
copies as separate images) and runs the unmodified evaluator on it: ``evaluate_wider`` for WIDER FACE,
pycocotools' COCOeval for COCO. The fast path (per-image records weighted by the draw counts) must give
the same AP for every resample, with score ties inside images and resamples whose score range differs.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from zoo_core.api.types import Detections
from zoo_core.datasets.bootstrap import percentile_interval, resample_counts
from zoo_core.datasets.coco import CATEGORY_IDS, SAMPLE_ANN_FILE, SAMPLE_IMAGE_DIR, CocoDataset, ensure_coco_sample
from zoo_core.datasets.coco.bootstrap import coco_image_records, resampled_stats
from zoo_core.datasets.coco.evaluation import run_cocoeval, score_coco
from zoo_core.datasets.coco.results import coco_records
from zoo_core.datasets.widerface import SETTINGS, WiderGroundTruth, evaluate_wider
from zoo_core.datasets.widerface.bootstrap import _ranges, bootstrap_wider, resampled_ap
from zoo_core.datasets.widerface.evaluation import wider_image_records


def test_resample_counts_are_seeded_draws_with_replacement():
    a = resample_counts(17, 50, seed=3)
    assert a.shape == (50, 17) and (a.sum(axis=1) == 17).all() and (a >= 0).all()
    np.testing.assert_array_equal(a, resample_counts(17, 50, seed=3))
    assert not np.array_equal(a, resample_counts(17, 50, seed=4))
    assert (a == 0).any()  # some images are left out of some resamples
    assert percentile_interval(np.array([np.nan, np.nan])) == (None, None)
    lo, hi = percentile_interval(np.arange(1001.0))
    assert (lo, hi) == (25.0, 975.0)


# ------------------------------------------------------------------------------------------------ WIDER


def _wider_case(seed: int = 0, n_img: int = 14):
    rng = np.random.default_rng(seed)
    files, boxes, keep = [], [], {s: [] for s in SETTINGS}
    preds = {}
    for i in range(n_img):
        n = int(rng.integers(0, 7))
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(6, 60, (n, 2))
        gt = np.round(np.hstack([xy, wh]))
        stem = f"img_{i}"
        files.append(stem)
        boxes.append(gt)
        hard = np.flatnonzero(rng.random(n) < 0.9)
        medium = hard[rng.random(len(hard)) < 0.7]
        easy = medium[rng.random(len(medium)) < 0.6]
        for s, k in zip(SETTINGS, (easy, medium, hard)):
            keep[s].append(k.astype(np.int64))
        found = gt[rng.random(n) < 0.8]
        jitter = found + rng.normal(0, 3, found.shape) * np.array([1, 1, 0.5, 0.5])
        n_fp = int(rng.integers(0, 4))
        fp = np.hstack([rng.uniform(0, 300, (n_fp, 2)), rng.uniform(6, 40, (n_fp, 2))])
        b = np.vstack([jitter, fp])
        # per-image score ranges differ, and a 2-decimal grid makes ties inside an image
        top = rng.choice([0.6, 0.9, 1.0])
        sc = np.round(rng.uniform(0.05 + 0.2 * (i % 3), top, len(b)), 2)
        preds[("ev", stem)] = (b, sc)
    gt = WiderGroundTruth(events=["ev"], files=[files], boxes=[boxes], keep={s: [keep[s]] for s in SETTINGS})
    return gt, preds


def _wider_oracle(gt: WiderGroundTruth, preds, counts: np.ndarray, iou: float) -> dict[str, float]:
    files, boxes, keep, p2 = [], [], {s: [] for s in SETTINGS}, {}
    for i, c in enumerate(counts):
        for copy in range(int(c)):
            stem = f"{gt.files[0][i]}_copy{copy}"
            files.append(stem)
            boxes.append(gt.boxes[0][i])
            for s in SETTINGS:
                keep[s].append(gt.keep[s][0][i])
            p2[("ev", stem)] = preds[("ev", gt.files[0][i])]
    g2 = WiderGroundTruth(events=["ev"], files=[files], boxes=[boxes], keep={s: [keep[s]] for s in SETTINGS})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample without faces of a setting: AP NaN, warned
        return evaluate_wider(p2, g2, iou_thresh=iou).ap


@pytest.mark.parametrize("iou", [0.5, 0.4])
def test_wider_resampled_ap_equals_the_evaluator_on_the_resample(iou):
    gt, preds = _wider_case()
    rec = wider_image_records(preds, gt, iou)
    counts = resample_counts(rec.n_images, 40, seed=1)
    fast = resampled_ap(rec, counts)
    hi, lo = _ranges(rec, counts)
    assert len(set(zip(hi.tolist(), lo.tolist()))) > 1, "the case must exercise resamples with other score ranges"
    for r in range(len(counts)):
        want = _wider_oracle(gt, preds, counts[r], iou)
        for s in SETTINGS:
            if np.isnan(want[s]):
                assert np.isnan(fast[s][r]), (r, s)
            else:
                assert fast[s][r] == pytest.approx(want[s], abs=1e-12), (r, s, fast[s][r], want[s])


def test_wider_all_ones_counts_reproduce_the_full_evaluation():
    gt, preds = _wider_case(seed=5)
    rec = wider_image_records(preds, gt, 0.5)
    full = evaluate_wider(preds, gt, 0.5).ap
    fast = resampled_ap(rec, np.ones((1, rec.n_images), dtype=np.int64))
    for s in SETTINGS:
        assert fast[s][0] == pytest.approx(full[s], abs=1e-12)


def test_wider_interval_brackets_the_metric_and_is_seeded():
    gt, preds = _wider_case(seed=2, n_img=30)
    rec = wider_image_records(preds, gt, 0.5)
    ci, info = bootstrap_wider(rec, 300, seed=7)
    ci2, _ = bootstrap_wider(rec, 300, seed=7)
    ci3, _ = bootstrap_wider(rec, 300, seed=8)
    assert ci == ci2 and ci != ci3
    full = evaluate_wider(preds, gt, 0.5).ap
    for s in SETTINGS:
        lo, hi = ci[s]
        assert lo < full[s] < hi, (s, lo, full[s], hi)
    assert info["n"] == 300 and info["seed"] == 7 and info["images"] == 30


# ------------------------------------------------------------------------------------------------ COCO


@pytest.fixture(scope="module")
def coco_case(tmp_path_factory):
    pytest.importorskip("pycocotools")
    root = ensure_coco_sample(tmp_path_factory.mktemp("coco_sample"), n_images=24, seed=0)
    ds = CocoDataset(root, SAMPLE_ANN_FILE, SAMPLE_IMAGE_DIR, name="coco_sample")
    index = {c: i for i, c in enumerate(CATEGORY_IDS)}
    rng = np.random.default_rng(0)
    dets = {}
    for s in ds.samples():
        anns = [a for a in ds.annotations(s.key) if not a["iscrowd"]]
        b = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32).reshape(-1, 4)
        labels = np.array([index[a["category_id"]] for a in anns], np.int32)
        wh = np.repeat(b[:, 2:] - b[:, :2], 2, axis=1)
        b = b + rng.normal(0, 0.1, b.shape).astype(np.float32) * wh
        n_fp = int(rng.integers(0, 4))
        fp_xy = rng.uniform(0, 200, (n_fp, 2))
        fp = np.hstack([fp_xy, fp_xy + rng.uniform(5, 60, (n_fp, 2))]).astype(np.float32)
        boxes = np.vstack([b, fp])
        labels = np.concatenate([labels, rng.integers(0, 80, n_fp)]).astype(np.int32)
        scores = np.round(rng.uniform(0.1, 1.0, len(boxes)), 1)  # coarse: many ties inside an image
        order = np.argsort(-scores, kind="stable")
        dets[s.id] = Detections(boxes[order], scores[order], labels[order])
    samples = ds.samples()
    records = coco_records(dets, samples, CATEGORY_IDS)
    ev = run_cocoeval(ds.instances, records, [s.key for s in samples], "pycocotools")
    return ds, dets, samples, records, ev


def _coco_oracle(ds, records, img_ids, counts) -> list[float]:
    inst = ds.instances
    images, anns, recs, ids = [], [], [], []
    ann_id = 1
    by_img: dict = {}
    for a in inst["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    rec_by_img: dict = {}
    for r in records:
        rec_by_img.setdefault(r["image_id"], []).append(r)
    for pos, (img_id, c) in enumerate(zip(img_ids, counts)):
        im = next(x for x in inst["images"] if x["id"] == img_id)
        for copy in range(int(c)):
            new_id = pos * 1000 + copy + 1
            ids.append(new_id)
            images.append({**im, "id": new_id})
            for a in by_img.get(img_id, []):
                anns.append({**a, "id": ann_id, "image_id": new_id})
                ann_id += 1
            recs += [{**r, "image_id": new_id} for r in rec_by_img.get(img_id, [])]
    inst2 = {"images": images, "annotations": anns, "categories": inst["categories"]}
    ev = run_cocoeval(inst2, recs, ids, "pycocotools")
    return [float(v) for v in ev.stats[:3]]


def test_coco_resampled_stats_equal_cocoeval_on_the_resample(coco_case):
    ds, _, _, records, ev = coco_case
    rec = coco_image_records(ev)
    counts = resample_counts(rec.n_images, 12, seed=2)
    fast = resampled_stats(rec, counts)
    for r in range(len(counts)):
        want = _coco_oracle(ds, records, list(ev.params.imgIds), counts[r])
        got = [fast["AP"][r], fast["AP50"][r], fast["AP75"][r]]
        assert got == pytest.approx(want, abs=1e-12), (r, got, want)


def test_coco_all_ones_counts_reproduce_cocoeval(coco_case):
    _, _, _, _, ev = coco_case
    rec = coco_image_records(ev)
    fast = resampled_stats(rec, np.ones((1, rec.n_images), dtype=np.int64))
    assert [fast[k][0] for k in ("AP", "AP50", "AP75")] == pytest.approx(list(ev.stats[:3]), abs=1e-12)


def test_score_coco_reports_interval_n_and_seed(coco_case):
    ds, dets, samples, _, _ = coco_case
    res = score_coco(dets, ds, samples, evaluator="pycocotools", plots=False, bootstrap=200, bootstrap_seed=4)
    assert set(res.ci95) == {"AP", "AP50", "AP75"}
    for k, (lo, hi) in res.ci95.items():
        assert lo <= res.metrics[k] <= hi, (k, lo, res.metrics[k], hi)
    assert res.info["bootstrap"]["n"] == 200 and res.info["bootstrap"]["seed"] == 4
