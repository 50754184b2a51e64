"""Reading the results users bring (``read_detections``' zoo-core default): WIDER prediction trees under the
``model.pred_count`` / ``model.pred_order`` policies, COCO results json; in-process, against independent oracles
(the strict tree reader + the WIDER evaluator proven on the golden set; COCOeval on the json file itself)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf

from zoo_core import datasets as zd
from zoo_core.api.errors import ConfigError, ZooError
from zoo_core.api.types import Detections
from zoo_core.config.confpaths import core_conf_dir
from zoo_core.datasets import coco, widerface

DATASETS = core_conf_dir() / "dataset"


def _cfg(dataset: str, root, **model):
    ds = OmegaConf.load(DATASETS / f"{dataset}.yaml").dataset
    ds.root = str(root / dataset)
    return OmegaConf.create({"model": {"name": "m", **model}, "dataset": ds})


@pytest.fixture(scope="module")
def wider(tmp_path_factory):
    """The WIDER sample (opened once), its first 10 samples, and a noisy prediction tree for them."""
    root = tmp_path_factory.mktemp("user_results")
    cfg = _cfg("widerface_sample", root)
    ds = zd.open_dataset(cfg)
    samples = ds.samples()[:10]
    rng = np.random.default_rng(7)
    tree = root / "tree"
    for s in samples:
        event, stem = s.key
        faces = ds.face_boxes(s.key).astype(np.float64)
        boxes = faces + rng.normal(0, 2.0, faces.shape) if len(faces) else faces.reshape(0, 4)
        fp = np.column_stack([rng.uniform(0, 200, (5, 2)), rng.uniform(8, 60, (5, 2))])
        rows = np.round(np.concatenate([boxes, fp]), 1)
        scores = np.round(rng.uniform(0.05, 0.99, len(rows)), 3)
        order = np.argsort(-scores, kind="stable")
        lines = [f"{x:.1f} {y:.1f} {w:.1f} {h:.1f} {sc:.3f}" for (x, y, w, h), sc in zip(rows[order], scores[order])]
        (tree / event).mkdir(parents=True, exist_ok=True)
        (tree / event / f"{stem}.txt").write_text(f"{event}/{stem}.jpg\n{len(lines)}\n" + "\n".join(lines) + "\n")
    return cfg, ds, samples, tree


def _oracle(ds, samples, tree, unsorted="sort", iou=0.5):
    gt = ds.subset_gt([tuple(s.key) for s in samples])
    preds = widerface.read_prediction_tree(tree, gt, missing="empty", unsorted=unsorted)
    return widerface.evaluate_wider(preds, gt, iou_thresh=iou).ap


def _score(cfg, ds, samples, read):
    return zd.evaluate(cfg, read.detections, ds, samples).metrics


def test_tree_is_recognised_by_content(wider, tmp_path):
    cfg, ds, samples, tree = wider
    assert widerface.is_prediction_tree(tree)
    assert not widerface.is_prediction_tree(tmp_path)  # empty folder
    (tmp_path / "x.txt").write_text("not a tree")
    assert not widerface.is_prediction_tree(tmp_path) and not widerface.is_prediction_tree(tmp_path / "x.txt")
    assert zd.read_detections(cfg, tmp_path, ds, samples) is None


def test_tree_scores_as_the_strict_reader_and_evaluator(wider):
    cfg, ds, samples, tree = wider
    read = zd.read_detections(cfg, tree, ds, samples)
    assert read.info == {"format": "widerface_tree", "path": str(tree.resolve()), "pred_count": "strict",
                         "pred_order": "sort", "files_read": 10, "unsorted_files": 0, "missing_predictions": 0}
    first = read.detections[samples[0].id]
    _, xywh, _ = widerface.read_prediction_file(tree / samples[0].key[0] / f"{samples[0].key[1]}.txt")
    np.testing.assert_allclose(first.boxes, np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1], 1),
                               rtol=0, atol=1e-4)
    assert _score(cfg, ds, samples, read) == _oracle(ds, samples, tree)
    assert 0.05 < _oracle(ds, samples, tree)["easy"] < 0.99


def test_an_unrounded_tree_is_scored_as_written(wider, tmp_path):
    """A tree of small scores (x 1e-3, 6 significant digits) and sub-decimal boxes: the evaluator sees the
    file's values. Before, each file was re-written at 1 decimal / 3 decimals first and re-read: on golden
    set1 scaled so, hard AP went from 0.478 to 0.319, exit 0."""
    cfg, ds, samples, tree = wider
    t = tmp_path / "t"
    rng = np.random.default_rng(3)
    for f in tree.glob("*/*.txt"):
        lines = f.read_text().rstrip("\n").split("\n")
        rows = []
        for ln in lines[2:]:
            x, y, w, h, sc = (float(v) for v in ln.split())
            x, y = x + rng.uniform(-0.049, 0.049), y + rng.uniform(-0.049, 0.049)
            rows.append(f"{x:.6f} {y:.6f} {w:.4f} {h:.4f} {sc * 1e-3 + rng.uniform(0, 4e-7):.6e}")
        (t / f.parent.name).mkdir(parents=True, exist_ok=True)
        (t / f.parent.name / f.name).write_text("\n".join(lines[:2] + rows) + "\n")
    read = zd.read_detections(cfg, t, ds, samples)
    res = zd.evaluate(cfg, read.detections, ds, samples)
    assert res.metrics == _oracle(ds, samples, t)
    assert _oracle(ds, samples, t) != _oracle(ds, samples, tree)  # the rounding would have shown
    copy = tmp_path / "copy"
    for rel, data in res.files.items():
        if rel.startswith("predictions/"):
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            (copy / rel).write_bytes(data)
    assert _oracle(ds, samples, copy / "predictions") == res.metrics  # the copy written is the tree scored


def test_missing_file_counts_as_no_detections(wider, tmp_path):
    cfg, ds, samples, tree = wider
    t = tmp_path / "t"
    shutil.copytree(tree, t)
    gone = t / samples[3].key[0] / f"{samples[3].key[1]}.txt"
    gone.unlink()
    read = zd.read_detections(cfg, t, ds, samples)
    assert read.info["missing_predictions"] == 1 and samples[3].id not in read.detections
    assert read.info["missing_examples"] == [f"{samples[3].key[0]}/{samples[3].key[1]}.txt"]
    res = zd.evaluate(cfg, read.detections, ds, samples)
    assert res.metrics == _oracle(ds, samples, t) and res.info["missing_predictions"] == 1
    assert res.metrics["hard"] < _oracle(ds, samples, tree)["hard"]  # its faces still count


def test_count_policy(wider, tmp_path):
    cfg, ds, samples, tree = wider
    t = tmp_path / "t"
    shutil.copytree(tree, t)
    bad = t / samples[2].key[0] / f"{samples[2].key[1]}.txt"
    lines = bad.read_text().split("\n")
    bad.write_text("\n".join([lines[0], "3", *lines[2:]]))
    with pytest.raises(ZooError, match="count line says 3 boxes") as e:
        zd.read_detections(cfg, t, ds, samples)
    assert str(bad) in str(e.value) and "pred_count=lines" in str(e.value.hint)
    lines_cfg = _cfg("widerface_sample", ds.root.parent, pred_count="lines")
    lines_cfg.dataset = cfg.dataset
    read = zd.read_detections(lines_cfg, t, ds, samples)
    assert read.info["pred_count"] == "lines"
    assert len(read.detections[samples[2].id]) == len([ln for ln in lines[2:] if ln.strip()])
    assert _score(lines_cfg, ds, samples, read) == _oracle(ds, samples, tree)
    with pytest.raises(ConfigError, match="pred_count"):
        zd.read_detections(OmegaConf.merge(cfg, {"model": {"pred_count": "loose"}}), t, ds, samples)


def test_order_policy_sort_vs_keep(wider, tmp_path):
    """A file out of score order: sort (MATLAB) and keep (wondervictor) give their own, different APs."""
    cfg, ds, samples, tree = wider
    t = tmp_path / "t"
    shutil.copytree(tree, t)
    for s in samples[:4]:  # reverse the box lines of four files
        f = t / s.key[0] / f"{s.key[1]}.txt"
        lines = [ln for ln in f.read_text().split("\n") if ln.strip()]
        f.write_text("\n".join(lines[:2] + lines[:1:-1]) + "\n")
    with pytest.warns(widerface.UnsortedPredictionsWarning, match="4 prediction file"):
        read_sort = zd.read_detections(cfg, t, ds, samples)
    keep_cfg = OmegaConf.merge(cfg, {"model": {"pred_order": "keep"}})
    read_keep = zd.read_detections(keep_cfg, t, ds, samples)
    assert read_sort.info["unsorted_files"] == read_keep.info["unsorted_files"] == 4
    assert read_keep.info["pred_order"] == "keep"
    s0 = read_keep.detections[samples[0].id].scores
    assert np.all(s0[:-1] <= s0[1:])  # file order kept (ascending after the reversal)
    sort_ap, keep_ap = _score(cfg, ds, samples, read_sort), _score(keep_cfg, ds, samples, read_keep)
    with pytest.warns(widerface.UnsortedPredictionsWarning):
        assert sort_ap == _oracle(ds, samples, t, "sort") == _oracle(ds, samples, tree)
    assert keep_ap == _oracle(ds, samples, t, "keep")
    assert keep_ap != sort_ap


def test_bad_tree_files_name_the_file(wider, tmp_path):
    cfg, ds, samples, tree = wider
    for text, why in [("x.jpg\n1\n1 2 3 4\n", "expected 5 values"), ("x.jpg\n1\n1 2 3 4 nan\n", "non-finite"),
                      ("x.jpg\n1\n1e300 1 2 2 0.9\n", "beyond the float32 range"),
                      ("x.jpg\n1\n3e38 1 3e38 2 0.9\n", "beyond the float32 range"),
                      (None, "is not image")]:
        t = tmp_path / f"{why.replace(' ', '_')}_{len(text or '')}"
        shutil.copytree(tree, t)
        f = t / samples[1].key[0] / f"{samples[1].key[1]}.txt"
        f.write_text(text if text is not None else "other_image.jpg\n0\n")
        with pytest.raises(ZooError, match=why) as e:
            zd.read_detections(cfg, t, ds, samples)
        assert str(f) in str(e.value)
    for how, why in (("dir", "prediction file is a directory"), ("dangling", "prediction file is a broken symbolic"),
                     ("event_file", "event folder is not a directory")):
        t = tmp_path / how
        shutil.copytree(tree, t)
        f = t / samples[1].key[0] / f"{samples[1].key[1]}.txt"
        if how == "event_file":
            shutil.rmtree(f.parent)
            f.parent.write_text("")
            f = f.parent
        else:
            f.unlink()
            f.mkdir() if how == "dir" else f.symlink_to(t / "nowhere.txt")
        with pytest.raises(ZooError, match=why) as e:  # before: counted as an image without predictions
            zd.read_detections(cfg, t, ds, samples)
        assert str(f) in str(e.value)
    empty = tmp_path / "unrelated"
    (empty / "ev").mkdir(parents=True)
    (empty / "ev" / "a.txt").write_text("a.jpg\n0\n")
    with pytest.raises(ZooError, match="none of the 10 dataset image"):
        zd.read_detections(cfg, empty, ds, samples)


def test_a_file_in_the_wrong_event_folder_is_warned_about(wider, tmp_path):
    cfg, ds, samples, tree = wider
    t = tmp_path / "t"
    shutil.copytree(tree, t)
    f = t / samples[2].key[0] / f"{samples[2].key[1]}.txt"
    other = next(s.key[0] for s in samples if s.key[0] != samples[2].key[0])
    f.rename(t / other / f.name)
    (t / other / "zz_not_an_image.txt").write_text("zz_not_an_image.jpg\n1\n1 1 2 2 3.0\n")
    with pytest.warns(widerface.ExtraPredictionsWarning, match="2 prediction file.*not images of the dataset.*"
                                                               "1 of them name a scored image but lie in another"):
        read = zd.read_detections(cfg, t, ds, samples)
    assert read.info["missing_predictions"] == 1


def test_scores_outside_0_1_are_warned_about_naming_a_file(wider, tmp_path):
    """The official min-max normalisation makes one outlier move every AP (easy 0.59 -> 0.009 on set1
    with one score of -1000): kept, as the reference does, but said."""
    cfg, ds, samples, tree = wider
    t = tmp_path / "t"
    shutil.copytree(tree, t)
    f = t / samples[4].key[0] / f"{samples[4].key[1]}.txt"
    lines = f.read_text().rstrip("\n").split("\n")
    f.write_text("\n".join([lines[0], str(int(lines[1]) + 1), *lines[2:], "1 1 2 2 -1000"]) + "\n")
    with pytest.warns(widerface.ScoreRangeWarning, match=rf"1 prediction file.*outside \[0, 1\] \(first: {f}\)"):
        zd.read_detections(cfg, t, ds, samples)


def test_results_files_write_the_native_tree(wider, tmp_path):
    cfg, ds, samples, tree = wider
    read = zd.read_detections(cfg, tree, ds, samples)
    files = zd.results_files(cfg, read.detections, samples)
    assert sorted(files) == sorted(f"predictions/{s.key[0]}/{s.key[1]}.txt" for s in samples)
    for s in samples:  # the tree written back is the tree read (1-decimal boxes, 3-decimal scores)
        assert files[f"predictions/{s.key[0]}/{s.key[1]}.txt"] == (tree / s.key[0] / f"{s.key[1]}.txt").read_bytes()


def test_images_are_not_needed_to_score(wider, tmp_path):
    cfg, ds, samples, tree = wider
    gt_only = OmegaConf.create({"name": "widerface", "kind": "widerface", "generator": None, "root": None,
                                "gt_dir": str(ds.gt_dir), "images_required": False})
    ds2 = widerface.open_widerface(gt_only)
    assert [s.id for s in ds2.samples()] == [s.id for s in ds.samples()]
    with pytest.raises(ZooError, match="root is not set"):
        widerface.open_widerface(OmegaConf.merge(gt_only, {"images_required": True}))


# ---------------------------------------------------------------------------------------------- COCO results


@pytest.fixture(scope="module")
def cocoset(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_user")
    cfg = _cfg("coco_sample", root)
    ds = zd.open_dataset(cfg)
    rng = np.random.default_rng(3)
    dets = {}
    for s in ds.samples():
        anns = ds.annotations(s.key)
        b = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1) + rng.normal(0, 3, (len(b), 4))
        labels = np.array([coco.CATEGORY_IDS.index(a["category_id"]) for a in anns], np.int64)
        fp = rng.uniform(0, 300, (4, 2))
        xyxy = np.concatenate([xyxy, np.concatenate([fp, fp + rng.uniform(10, 80, (4, 2))], 1)])
        labels = np.concatenate([labels, rng.integers(0, 80, 4)])
        scores = rng.uniform(0.01, 1, len(xyxy))
        o = np.argsort(-scores, kind="stable")
        dets[s.id] = Detections(xyxy[o], scores[o], labels[o])
    results = root / "results.json"
    results.write_text(json.dumps(coco.coco_records(dets, ds.samples())))
    return cfg, ds, dets, results


def test_coco_results_read_back_and_score_as_cocoeval_on_the_file(cocoset):
    cfg, ds, dets, results = cocoset
    samples = ds.samples()
    read = zd.read_detections(cfg, results, ds, samples)
    assert read.info["format"] == "coco_results" and read.info["missing_predictions"] == 0
    res = zd.evaluate(cfg, read.detections, ds, samples)
    assert res.files["detections.json"] == results.read_bytes()  # record for record, byte for byte
    ev = coco.run_cocoeval(ds.instances, json.loads(results.read_text()), [s.key for s in samples],
                           coco.resolve_evaluator("auto"))
    assert res.metrics["AP"] == float(ev.stats[0]) and 0.05 < res.metrics["AP"] < 0.95


def test_unrounded_coco_results_are_scored_as_written(cocoset, tmp_path):
    """Before: a results file with more than 2 decimals was re-rounded to 2 before scoring (AP 0.2106
    vs pycocotools' 0.2100 on one set). The oracle: pycocotools on the file itself."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cfg, ds, dets, results = cocoset
    rng = np.random.default_rng(11)
    records = json.loads(results.read_text())
    for r in records:
        r["bbox"] = [v + float(rng.uniform(-0.004, 0.004)) for v in r["bbox"]]
        r["score"] = float(np.clip(r["score"] + rng.uniform(-0.004, 0.004), 0.001, 1))
    f = tmp_path / "unrounded.json"
    f.write_text(json.dumps(records))
    samples = ds.samples()
    read = zd.read_detections(cfg, f, ds, samples)
    res = zd.evaluate(cfg, read.detections, ds, samples)
    written = json.loads(res.files["detections.json"])
    key = lambda r: (r["image_id"], r["category_id"], -r["score"])  # noqa: E731
    assert sorted(written, key=key) == sorted(records, key=key)  # the file's own values
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ds.ann_path))
        ev = COCOeval(gt, gt.loadRes(str(f)), "bbox")
        ev.params.imgIds = [s.key for s in samples]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert res.metrics["AP"] == pytest.approx(float(ev.stats[0]), abs=1e-12)
    assert res.metrics["AP50"] == pytest.approx(float(ev.stats[1]), abs=1e-12)


def test_coco_results_subset_and_missing(cocoset, tmp_path):
    cfg, ds, dets, results = cocoset
    samples = ds.samples()[:6]
    records = [r for r in json.loads(results.read_text()) if r["image_id"] != samples[2].key]
    f = tmp_path / "r.json"
    f.write_text(json.dumps(records))
    read = zd.read_detections(cfg, f, ds, samples)
    assert sorted(read.detections) == sorted(s.id for s in samples if s is not samples[2])
    assert read.info["missing_predictions"] == 1


def test_coco_results_of_a_one_class_model_are_scored_over_its_category_only(cocoset, tmp_path):
    # stage=evaluate detections=<file>: before, every category of the annotation file was scored (giraffe's
    # records averaged with 11 zeros); now model.category_ids, as pycocotools with catIds=[25] on the file itself
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cfg, ds, dets, results = cocoset
    cfg = OmegaConf.merge(cfg, {"model": {"category_ids": [25], "coco_evaluator": "pycocotools"}})
    giraffe = [r for r in json.loads(results.read_text()) if r["category_id"] == 25]
    f = tmp_path / "giraffe.json"
    f.write_text(json.dumps(giraffe))
    samples = ds.samples()
    read = zd.read_detections(cfg, f, ds, samples)
    res = zd.evaluate(cfg, read.detections, ds, samples)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ds.ann_path))
        ev = COCOeval(gt, gt.loadRes(str(f)), "bbox")
        ev.params.catIds = [25]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert [res.metrics[n] for n in coco.STAT_NAMES] == [float(x) for x in ev.stats] and res.metrics["AP"] > 0.3
    assert [k for k in res.metrics if k.startswith("AP/")] == ["AP/giraffe"]
    with pytest.raises(ConfigError, match=r"none of model.category_ids \[1\] is a category"):
        zd.evaluate(OmegaConf.merge(cfg, {"model": {"category_ids": [1]}}), {}, ds, samples)


@pytest.mark.parametrize(("record", "why"), [
    ({"image_id": 999999, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}, "image_id 999999 is not an image"),
    ({"image_id": "IMG", "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}, "integer 'image_id'"),
    ({"image_id": None, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}, "integer 'image_id'"),
    ({"image_id": 0, "category_id": 1000, "bbox": [1, 2, 3, 4], "score": 0.5}, "category_id 1000"),
    ({"image_id": 0, "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}, "4 finite numbers"),
    ({"image_id": 0, "category_id": 1, "bbox": [1, 2, float("inf"), 4], "score": 0.5}, "4 finite numbers"),
    ({"image_id": 0, "category_id": 1, "bbox": [1e308] * 4, "score": 0.5}, "fit a float32"),  # was inf/nan
    ({"image_id": 0, "category_id": 1, "bbox": [3e38, 2, 3e38, 4], "score": 0.5}, "fit a float32"),  # x + w
    ({"image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1e300}, "finite number 'score'"),
    ({"image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4], "score": "high"}, "finite number 'score'"),
    # before: OverflowError (int too large to convert to float), exit 1 "unexpected error"
    ({"image_id": 0, "category_id": 1, "bbox": [10 ** 400, 2, 3, 4], "score": 0.5},
     "fit a float32), got [100000...(401 digits), 2, 3, 4]"),
    ({"image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4], "score": -10 ** 400},
     "finite number 'score' that fits a float32, got -100000...(401 digits)"),
])
def test_bad_coco_records_name_the_file_and_record(cocoset, tmp_path, record, why):
    cfg, ds, dets, results = cocoset
    good = json.loads(results.read_text())[:3]
    if record["image_id"] == 0:
        record = {**record, "image_id": ds.samples()[0].key}
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([*good, record]))
    with pytest.raises(ZooError, match="results\\[3\\]") as e:
        zd.read_detections(cfg, f, ds, ds.samples())
    assert why in str(e.value) and str(f) in str(e.value)


@pytest.mark.parametrize(("first", "why"), [
    ({"image_id": 0, "category_id": 1, "score": 0.5, "box": [1, 2, 3, 4]},
     "results[0] needs a 'bbox' of 4 finite numbers [x, y, w, h] (whose x + w and y + h fit a float32), got no "
     "'bbox' key (the record's keys: 'image_id', 'category_id', 'score', 'box')"),
    ({"imageid": 0, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5},
     "results[0] needs an integer 'image_id', got no 'image_id' key (the record's keys: 'imageid', 'category_id', "
     "'bbox', 'score')"),
    ({"image_id": 0, "bbox": [1, 2, 3, 4], "score": 0.5},
     "results[0] needs an integer 'category_id', got no 'category_id' key (the record's keys: 'image_id', 'bbox', "
     "'score')"),
])
def test_a_mistake_in_the_first_coco_record_is_named_like_one_in_any_other(cocoset, tmp_path, first, why):
    """Before: a .json results list whose FIRST record lacked 'image_id' or 'bbox' (or misspelt it) was "not a
    detections format model 'centernet' or dataset kind 'coco' reads", while the same mistake in record 1 named
    the record and the key."""
    cfg, ds, dets, results = cocoset
    good = json.loads(results.read_text())[:3]
    if "image_id" in first:
        first = {**first, "image_id": ds.samples()[0].key}
    f = tmp_path / "first.json"
    f.write_text(json.dumps([first, *good]))
    with pytest.raises(ZooError) as e:
        zd.read_detections(cfg, f, ds, ds.samples())
    assert str(e.value) == f"{f}: {why}"
    if not ("image_id" in first and "bbox" in first):  # not a .json: not claimed, as before
        (tmp_path / "first.txt").write_text(json.dumps([first, *good]))
        assert zd.read_detections(cfg, tmp_path / "first.txt", ds, ds.samples()) is None


@pytest.mark.parametrize(("change", "why"), [
    # before: "needs a finite number 'score', got 1e+300" (1e300 is finite; it does not fit the float32 kept)
    ({"score": 1e300}, "results[3] needs a finite number 'score' that fits a float32, got 1e+300"),
    # before: "category_id 11.0 is not one of the model's categories" (it is, as a float)
    ({"category_id": 11.0}, "results[3] needs an integer 'category_id', got 11.0"),
    ({"category_id": True}, "results[3] needs an integer 'category_id', got True"),
])
def test_coco_score_and_category_mistakes_say_what_is_wrong(cocoset, tmp_path, change, why):
    cfg, ds, dets, results = cocoset
    good = json.loads(results.read_text())[:3]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([*good, {**good[0], "category_id": 11, **change}]))
    with pytest.raises(ZooError) as e:
        zd.read_detections(cfg, f, ds, ds.samples())
    assert str(e.value) == f"{f}: {why}"


def test_a_coco_results_json_with_a_utf8_byte_order_mark_is_read_as_without_it(cocoset, tmp_path):
    """Before: "not a COCO results file: a results json is a list", a wrong reason for a file that is one
    (a Windows editor's BOM). The BOM carries nothing: the records and the scores are those of the same file
    without it (the instances json was read past its BOM already)."""
    cfg, ds, dets, results = cocoset
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + results.read_bytes())
    plain, marked = (zd.read_detections(cfg, f, ds, ds.samples()) for f in (results, bom))
    assert marked.info["records"] == plain.info["records"] > 0
    assert zd.evaluate(cfg, marked.detections, ds, ds.samples()).metrics == \
        zd.evaluate(cfg, plain.detections, ds, ds.samples()).metrics
    (tmp_path / "inst.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"images": []}).encode())
    with pytest.raises(ZooError) as e:  # a BOM before something else is still refused, for what follows it
        zd.read_detections(cfg, tmp_path / "inst.json", ds, ds.samples())
    assert "not a COCO results file: a results json is a list" in str(e.value)
    assert "this file starts with b'{\"images\": ['" in str(e.value)


def test_coco_reader_recognises_only_results_lists(cocoset, tmp_path):
    cfg, ds, dets, results = cocoset
    (tmp_path / "a.txt").write_text("hello")
    assert zd.read_detections(cfg, tmp_path / "a.txt", ds, ds.samples()) is None
    (tmp_path / "inst.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ZooError, match="not a COCO results file"):
        zd.read_detections(cfg, tmp_path / "inst.json", ds, ds.samples())
    (tmp_path / "broken.json").write_text("[{\"image_id\": 1,")
    with pytest.raises(ZooError, match="not a JSON file"):
        zd.read_detections(cfg, tmp_path / "broken.json", ds, ds.samples())
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ZooError, match="nested too deeply"):
        zd.read_detections(cfg, tmp_path / "deep.json", ds, ds.samples())
    (tmp_path / "empty.json").write_text("[]")
    read = zd.read_detections(cfg, tmp_path / "empty.json", ds, ds.samples())
    assert read.detections == {} and read.info["missing_predictions"] == len(ds.samples())


def test_a_coco_results_integer_too_long_for_python_names_the_file_and_line(cocoset, tmp_path):
    """Before: ``ValueError: Exceeds the limit (4300 digits) for integer string conversion``, exit 1."""
    cfg, ds, dets, results = cocoset
    good = json.loads(results.read_text())[:3]
    f = tmp_path / "huge.json"
    f.write_text(json.dumps(good, indent=1).replace('"score": ', '"score": 1' + "0" * 5000 + ", \"s\": ", 1))
    line = next(n for n, text in enumerate(f.read_text().splitlines(), 1) if "0" * 5000 in text)
    with pytest.raises(ZooError) as e:
        zd.read_detections(cfg, f, ds, ds.samples())
    assert str(e.value) == f"{f}: not a COCO results file: line {line} holds an integer of 5001 digits"
