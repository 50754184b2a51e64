"""zoo_core.datasets.coco: dataset loading, the results json, COCOeval scoring, plots and the generated sample."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zoo_core.api.errors import ZooError
from zoo_core.api.imaging import read_image
from zoo_core.api.types import Detections
from zoo_core.datasets.coco import CATEGORY_IDS as VALID_IDS
from zoo_core.datasets.coco import SAMPLE_ANN_FILE as ANN_FILE
from zoo_core.datasets.coco import (
    SAMPLE_CATEGORY_IDS,
    STAT_NAMES,
    CocoDataset,
    ensure_coco_sample,
    load_instances,
    make_coco_sample,
    resolve_evaluator,
    round2,
)
from zoo_core.datasets.coco import SAMPLE_IMAGE_DIR as IMAGE_DIR
from zoo_core.datasets.coco import score_coco as _score_coco


def evaluate_coco(dets, ds, samples, evaluator="auto", valid_ids=VALID_IDS, plots=False):
    return _score_coco(dets, ds, samples, evaluator=evaluator, category_ids=valid_ids, plots=plots)


@pytest.fixture(scope="module")
def sample_ds(tmp_path_factory):
    root = ensure_coco_sample(tmp_path_factory.mktemp("coco_sample"), n_images=24, seed=0)
    return CocoDataset(root, ANN_FILE, IMAGE_DIR, name="coco_sample")


@pytest.fixture(scope="module")
def oracle_dets(sample_ds):
    """The non-crowd ground truth as detections (score 0.9 down to 0.5 in annotation order)."""
    index = {c: i for i, c in enumerate(VALID_IDS)}
    out = {}
    for s in sample_ds.samples():
        anns = [a for a in sample_ds.annotations(s.key) if not a["iscrowd"]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
        labels = np.array([index[a["category_id"]] for a in anns], np.int32)
        out[s.id] = Detections(boxes, np.linspace(0.9, 0.5, len(anns)), labels)
    return out


def _noisy(dets: dict, seed: int) -> dict:
    """Oracle detections with jittered boxes, random scores and extra false positives."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, d in dets.items():
        n = len(d)
        wh = (d.boxes[:, 2:] - d.boxes[:, :2]).repeat(2, axis=1)
        boxes = d.boxes + rng.normal(0, 0.08, (n, 4)).astype(np.float32) * wh
        scores = np.sort(rng.uniform(0, 1, n).astype(np.float32))[::-1]
        labels = np.where(rng.random(n) < 0.1, rng.integers(0, 80, n), d.labels)
        out[k] = Detections(boxes, scores, labels)
    return out


def test_round2_equals_python_two_decimal_formatting():
    rng = np.random.default_rng(0)
    v = np.concatenate([
        rng.uniform(-700, 700, 20000), rng.uniform(0, 1, 20000),
        np.arange(-400, 400) / 8.0,  # exact binary halves: .125, .375, .625, .875 round half-even
        [0.0, -0.0, -0.004, 0.005, 0.015, 1e-9, 4095.995],
    ]).astype(np.float32)
    want = [float(f"{x:.2f}") for x in v]
    got = round2(v).tolist()
    assert got == want
    assert [repr(x) for x in got] == [repr(x) for x in want]


def test_dataset_samples_follow_the_json(sample_ds):
    samples = sample_ds.samples()
    images = sample_ds.instances["images"]
    assert [s.key for s in samples] == [im["id"] for im in images]
    assert [s.id for s in samples] == [Path(im["file_name"]).stem for im in images]
    assert all(s.path.is_file() and s.path.name == im["file_name"] for s, im in zip(samples, images))
    assert len(set(VALID_IDS)) == 80 and sample_ds.annotation_files() == [sample_ds.ann_path]


def test_generated_sample_covers_the_hard_cases(sample_ds):
    inst = sample_ds.instances
    anns = inst["annotations"]
    cats = {a["category_id"] for a in anns}
    assert len(cats) >= 10 and cats <= set(VALID_IDS)
    # ids that a naive "class + 1" mapping gets wrong
    assert len([c for c in cats if VALID_IDS.index(c) + 1 != c]) >= 8
    assert any(a["iscrowd"] for a in anns) and not all(a["iscrowd"] for a in anns)
    sizes = {(im["width"], im["height"]) for im in inst["images"]}
    assert (37, 23) in sizes and any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    annotated = {a["image_id"] for a in anns}
    assert any(im["id"] not in annotated for im in inst["images"])
    for im in inst["images"]:
        assert read_image(sample_ds.root / IMAGE_DIR / im["file_name"]).shape == (im["height"], im["width"], 3)


def test_generated_sample_is_deterministic(tmp_path):
    a = make_coco_sample(tmp_path / "a", n_images=6, seed=3)
    b = make_coco_sample(tmp_path / "b", n_images=6, seed=3)
    c = make_coco_sample(tmp_path / "c", n_images=6, seed=4)
    assert (a / ANN_FILE).read_bytes() == (b / ANN_FILE).read_bytes() != (c / ANN_FILE).read_bytes()
    for f in sorted((a / IMAGE_DIR).iterdir()):
        assert f.read_bytes() == (b / IMAGE_DIR / f.name).read_bytes()
    assert set(SAMPLE_CATEGORY_IDS) <= set(VALID_IDS)


def test_evaluators_give_identical_stats(sample_ds, oracle_dets):
    dets = _noisy(oracle_dets, seed=1)
    samples = sample_ds.samples()
    py = evaluate_coco(dets, sample_ds, samples, evaluator="pycocotools")
    fast = evaluate_coco(dets, sample_ds, samples, evaluator="faster-coco-eval")
    assert py.info["evaluator"] == "pycocotools" and fast.info["evaluator"] == "faster-coco-eval"
    assert set(py.metrics) == set(fast.metrics)
    assert all(name in py.metrics for name in STAT_NAMES)
    for k in py.metrics:
        assert py.metrics[k] == pytest.approx(fast.metrics[k], abs=1e-12), k
    assert 0.05 < py.metrics["AP"] < 0.95  # the noise matters, so the comparison is not trivial
    assert py.files["detections.json"] == fast.files["detections.json"]


def test_metrics_equal_a_plain_pycocotools_run_on_the_written_json(sample_ds, oracle_dets, tmp_path):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dets = _noisy(oracle_dets, seed=2)
    res = evaluate_coco(dets, sample_ds, sample_ds.samples(), evaluator="pycocotools")
    (tmp_path / "dt.json").write_bytes(res.files["detections.json"])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(sample_ds.ann_path))
        ev = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert [res.metrics[n] for n in STAT_NAMES] == [float(x) for x in ev.stats]
    records = json.loads(res.files["detections.json"])
    assert len(records) == sum(len(d) for d in dets.values())
    assert {r["category_id"] for r in records} <= set(VALID_IDS)


def test_per_category_ap_is_read_at_100_detections_as_cocoevals_ap():
    """AP/<name> is the category's AP over IoU 0.50:0.95, all areas, maxDets 100: with one category it is stats[0].

    One 40x40 face-sized box, 15 detections in its image, the exact one ranked 12th (past maxDets 10): by hand
    precision 1/12 at every recall up to 1 for every IoU threshold, AP = 1/12; read at maxDets 10 it would be 0.
    Oracle: pycocotools' COCOeval called directly.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from zoo_core.datasets.coco.evaluation import per_category_ap, run_cocoeval

    inst = {"images": [{"id": 1, "width": 200, "height": 200}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "area": 1600,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "thing"}]}
    recs = [{"image_id": 1, "category_id": 1, "bbox": [150.0, 150.0 - i, 10.0, 10.0], "score": 0.9 - 0.01 * i}
            for i in range(15)]
    recs[11]["bbox"] = [50.0, 50.0, 40.0, 40.0]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(inst))
        gt.createIndex()
        oracle = COCOeval(gt, gt.loadRes(json.loads(json.dumps(recs))), "bbox")
        oracle.evaluate()
        oracle.accumulate()
        oracle.summarize()
    assert float(oracle.stats[0]) == pytest.approx(1 / 12, abs=1e-9)
    ap = per_category_ap(run_cocoeval(inst, recs, [1], "pycocotools", [1]), {1: "thing"})
    assert ap == {"AP/thing": pytest.approx(float(oracle.stats[0]), abs=1e-12)}


def test_oracle_detections_score_perfectly_and_a_wrong_id_map_does_not(sample_ds, oracle_dets):
    samples = sample_ds.samples()
    good = evaluate_coco(oracle_dets, sample_ds, samples)
    assert good.metrics["AP"] >= 0.95
    naive = evaluate_coco(oracle_dets, sample_ds, samples, valid_ids=list(range(1, 81)))
    assert naive.metrics["AP"] < good.metrics["AP"] - 0.3
    names = sample_ds.category_names()
    assert {f"AP/{names[c]}" for c in SAMPLE_CATEGORY_IDS} <= set(good.metrics)


def test_only_the_given_samples_are_scored(sample_ds, oracle_dets):
    samples = sample_ds.samples()
    half = samples[::2]
    only_half = {s.id: oracle_dets[s.id] for s in half}
    sub = evaluate_coco(only_half, sample_ds, half)
    assert sub.info["images"] == len(half)
    assert sub.metrics["AP"] >= 0.95
    whole = evaluate_coco(only_half, sample_ds, samples)
    assert whole.metrics["AR100"] < 0.9  # the other half's objects are missed
    records = json.loads(sub.files["detections.json"])
    assert {r["image_id"] for r in records} <= {s.key for s in half}


def test_empty_detections_do_not_crash(sample_ds):
    samples = sample_ds.samples()
    for dets in ({}, {s.id: Detections.empty() for s in samples}):
        res = evaluate_coco(dets, sample_ds, samples, evaluator="pycocotools")
        assert res.metrics["AP"] == 0.0 and json.loads(res.files["detections.json"]) == []
        fast = evaluate_coco(dets, sample_ds, samples, evaluator="faster-coco-eval")
        assert [fast.metrics[n] for n in STAT_NAMES] == [res.metrics[n] for n in STAT_NAMES]


def test_evaluator_choice():
    assert resolve_evaluator("auto") == "faster-coco-eval"
    assert resolve_evaluator("pycocotools") == "pycocotools"
    with pytest.raises(ZooError):
        resolve_evaluator("cocoapi")


def _write_json(tmp_path, data, name="ann.json"):
    (tmp_path / "images").mkdir(exist_ok=True)
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def _minimal(**image):
    img = {"id": 1, "file_name": "x.jpg"} | image
    return {"images": [img], "annotations": [], "categories": [{"id": 1, "name": "person"}]}


@pytest.mark.parametrize("content,words", [
    ("{not json", "not a JSON"),
    ("\xff\xfe", "not a JSON"),
    ([1, 2], "not a COCO"),
    ({"images": []}, "not a COCO"),
    ({"images": [{"id": "a", "file_name": "x"}], "annotations": [], "categories": []}, "integer 'id'"),
    ({"images": [{"id": 1, "file_name": "x.jpg"}], "categories": [{"id": 1}],
      "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]}, "bbox"),
    ({"images": [{"id": 1, "file_name": "x.jpg"}], "categories": [{"id": 1}],
      "annotations": [{"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]}]}, "unknown image_id"),
])
def test_bad_annotation_files_name_the_file(tmp_path, content, words):
    p = _write_json(tmp_path, content)
    with pytest.raises(ZooError) as e:
        load_instances(p)
    assert str(p) in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("file_name", ["../outside.jpg", "a/../../outside.jpg", "./../x.jpg", "/etc/passwd",
                                       "C:\\x.jpg", "C:x.jpg", "..\\x.jpg"])
def test_file_names_may_not_leave_the_image_folder(tmp_path, file_name):
    _write_json(tmp_path, _minimal(file_name=file_name))
    with pytest.raises(ZooError) as e:
        CocoDataset(tmp_path, "ann.json", "images")
    assert "ann.json" in str(e.value)


def test_file_names_in_sub_folders_are_allowed(tmp_path):
    _write_json(tmp_path, _minimal(file_name="sub/../x.jpg"))
    (s,) = CocoDataset(tmp_path, "ann.json", "images").samples()
    assert s.id == "x" and s.key == 1 and s.path == tmp_path / "images" / "sub/../x.jpg"


def test_missing_dataset_says_what_to_download(tmp_path):
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(ZooError) as e:
            CocoDataset(root)
        msg = str(e.value)
        assert "val2017" in msg and "annotations/instances_val2017.json" in msg


@pytest.mark.parametrize("key, value, bound", [("seed", -1, 0), ("n_images", 0, 1), ("n_images", -3, 1)])
def test_generated_sample_refuses_a_negative_seed_or_no_images_naming_the_key(tmp_path, key, value, bound):
    """Before: dataset.seed=-1 was numpy's 'ValueError: expected non-negative integer' (n_images=-3: 'negative
    dimensions are not allowed'), exit 1, from any dataset config the typed schema does not cover."""
    from zoo_core.api.errors import ConfigError
    from zoo_core.datasets.coco import open_coco

    cfg = {"name": "mine", "generator": "coco_sample", "root": str(tmp_path / "cache"), "n_images": 4, "seed": 0,
           key: value}
    with pytest.raises(ConfigError) as e:
        open_coco(cfg)
    assert str(e.value) == f"dataset.{key}={value} is invalid for the generated coco_sample set: it must be >= {bound}"
    assert not (tmp_path / "cache").exists()


def test_a_negative_coco_sample_seed_fails_at_composition():
    from zoo_core.api.errors import ConfigError
    from zoo_core.config.validate import compose

    with pytest.raises(ConfigError, match=r"^dataset.seed=-1: outside \[0, inf\]$"):
        compose(["model=centernet", "dataset=coco_sample", "dataset.seed=-1"])


@pytest.mark.parametrize("evaluator", ["pycocotools", "faster-coco-eval"])
def test_pr_curves_are_the_all_class_curves_behind_ap50_and_ap75(sample_ds, oracle_dets, evaluator):
    import cv2

    from zoo_core.datasets.coco import coco_records, pr_curve_data, run_cocoeval

    dets = _noisy(oracle_dets, seed=3)
    samples = sample_ds.samples()
    ev = run_cocoeval(sample_ds.instances, coco_records(dets, samples), [s.key for s in samples], evaluator)
    data = pr_curve_data(ev)
    assert sorted(data) == [0.5, 0.75]
    assert data[0.5][2] == pytest.approx(ev.stats[1], abs=1e-12) and data[0.75][2] == pytest.approx(ev.stats[2], abs=1e-12)
    rec, prec, _ = data[0.5]
    assert rec[0] == 0.0 and len(rec) == len(prec) <= 101 and np.all(np.diff(prec) <= 1e-12)  # interpolated: monotone
    assert 0.05 < ev.stats[2] < ev.stats[1] < 0.99  # the noise separates the two IoUs
    res = evaluate_coco(dets, sample_ds, samples, evaluator=evaluator, plots=True)
    for name in ("pr_curves.png", "ap_per_class.png"):
        img = cv2.imdecode(np.frombuffer(res.files[name], np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[1] == 600 and len(np.unique(img.reshape(-1, 3), axis=0)) > 10


def test_pr_curves_without_ground_truth_or_detections(sample_ds):
    from zoo_core.datasets.coco import pr_curve_data, run_cocoeval

    samples = sample_ds.samples()
    ev = run_cocoeval(sample_ds.instances, [], [s.key for s in samples], "pycocotools")
    data = pr_curve_data(ev)
    assert data[0.5][2] == ev.stats[1] == 0.0
    res = evaluate_coco({}, sample_ds, samples, plots=True)
    assert res.files["pr_curves.png"][:4] == b"\x89PNG" and res.files["ap_per_class.png"][:4] == b"\x89PNG"


MATHTEXT = "$\\frac{$"  # mathtext matplotlib cannot parse: drawing it as math raises


def _renamed(ds: CocoDataset, names: dict[int, str], name: str = "coco_sample") -> CocoDataset:
    """``ds`` with some categories renamed (as another annotation file would name them) and another dataset name."""
    import copy

    out = copy.copy(ds)
    out.instances = {**ds.instances, "categories": [{**c, "name": names.get(c["id"], c["name"])}
                                                    for c in ds.instances["categories"]]}
    out.name = name
    return out


def test_category_and_dataset_names_are_drawn_as_written_never_as_mathtext(sample_ds, oracle_dets):
    """Before: a category named '$\\frac{$' crashed ap_per_class.png (exit 1) and no metrics.json was written."""
    import cv2

    samples = sample_ds.samples()
    cat = sample_ds.instances["annotations"][0]["category_id"]
    ds = _renamed(sample_ds, {cat: MATHTEXT}, name="$x_$")
    res = evaluate_coco(oracle_dets, ds, samples, plots=True)
    assert res.metrics[f"AP/{MATHTEXT}"] == 1.0
    for name in ("pr_curves.png", "ap_per_class.png"):
        assert cv2.imdecode(np.frombuffer(res.files[name], np.uint8), cv2.IMREAD_COLOR) is not None


def test_a_plot_that_fails_is_left_out_with_a_warning_and_the_metrics_kept(sample_ds, oracle_dets, monkeypatch,
                                                                          caplog):
    import logging

    from zoo_core.datasets.coco import plots

    def broken(*a, **k):
        raise RuntimeError("no room for the labels")

    monkeypatch.setattr(plots, "ap_per_class_png", broken)
    with caplog.at_level(logging.WARNING, logger="zoo"):
        res = evaluate_coco(oracle_dets, sample_ds, sample_ds.samples(), plots=True)
    assert res.metrics["AP"] == 1.0 and "ap_per_class.png" not in res.files and "pr_curves.png" in res.files
    assert any("ap_per_class.png was not drawn (RuntimeError: no room for the labels)" in r.getMessage()
               for r in caplog.records)


def test_categories_sharing_a_name_each_keep_their_own_ap(sample_ds, oracle_dets):
    """Before: two categories named alike wrote one AP/<name> key over the other (11 keys instead of 12), exit 0."""
    samples = sample_ds.samples()
    with_gt = sorted({a["category_id"] for a in sample_ds.instances["annotations"]})
    a, b = with_gt[:2]
    plain = {k: v for k, v in evaluate_coco(_noisy(oracle_dets, 5), sample_ds, samples).metrics.items()
             if k.startswith("AP/")}
    ds = _renamed(sample_ds, {a: "thing", b: "thing"})
    dup = {k: v for k, v in evaluate_coco(_noisy(oracle_dets, 5), ds, samples).metrics.items() if k.startswith("AP/")}
    names = sample_ds.category_names()
    assert len(dup) == len(plain) == len(with_gt)
    assert dup[f"AP/thing#{a}"] == plain[f"AP/{names[a]}"] and dup[f"AP/thing#{b}"] == plain[f"AP/{names[b]}"]
    assert {k: v for k, v in dup.items() if "#" not in k} == {k: v for k, v in plain.items()
                                                             if k not in (f"AP/{names[a]}", f"AP/{names[b]}")}


def test_a_category_named_as_another_ones_disambiguated_key_still_keeps_its_own_ap(sample_ds, oracle_dets,
                                                                                    tmp_path):
    """Before: categories a and b named 'thing' and c named 'thing#<b>' wrote AP/thing#<b> twice: c's AP over b's,
    b's lost (11 keys instead of 12), exit 0. Each category's AP is checked against pycocotools run on that
    category alone (an independent per-category computation)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    samples = sample_ds.samples()
    with_gt = sorted({a["category_id"] for a in sample_ds.instances["annotations"]})
    a, b, c = with_gt[:3]
    ds = _renamed(sample_ds, {a: "thing", b: "thing", c: f"thing#{b}"})
    res = evaluate_coco(_noisy(oracle_dets, 5), ds, samples, evaluator="pycocotools")
    per_class = {k: v for k, v in res.metrics.items() if k.startswith("AP/")}
    assert len(per_class) == len(with_gt)
    key_of = {a: f"thing#{a}", b: f"thing#{b}#{b}", c: f"thing#{b}#{c}"}
    names = sample_ds.category_names()
    key_of |= {cat: names[cat] for cat in with_gt if cat not in key_of}
    assert sorted(per_class) == sorted(f"AP/{k}" for k in key_of.values())
    (tmp_path / "dt.json").write_bytes(res.files["detections.json"])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(sample_ds.ann_path))
        dt = gt.loadRes(str(tmp_path / "dt.json"))
        for cat in with_gt:
            ev = COCOeval(gt, dt, "bbox")
            ev.params.imgIds = sorted(int(s.key) for s in samples)
            ev.params.catIds = [cat]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            assert per_class[f"AP/{key_of[cat]}"] == pytest.approx(float(ev.stats[0]), abs=1e-12), cat
    assert len(set(per_class.values())) > 1  # the check above tells categories apart


def test_a_sample_folder_holding_something_else_is_refused_and_left_as_it_was(tmp_path):
    """Before: a non-empty ``<root>/n<N>_seed<S>`` without the set's annotations was an ``OSError`` traceback
    (Directory not empty) after generating the whole set; a file there, a ``NotADirectoryError``."""
    target = tmp_path / "n4_seed0"
    target.mkdir()
    (target / "mine.txt").write_text("mine")
    with pytest.raises(ZooError) as err:
        ensure_coco_sample(tmp_path, n_images=4, seed=0)
    assert str(err.value).startswith(f"{target}: is a folder without {ANN_FILE}: the generated COCO sample "
                                     "(dataset=coco_sample) goes there, so zoo leaves it alone")
    assert [p.name for p in tmp_path.iterdir()] == ["n4_seed0"] and (target / "mine.txt").read_text() == "mine"
    (target / "mine.txt").unlink()  # an empty folder is filled
    assert (ensure_coco_sample(tmp_path, n_images=4, seed=0) / ANN_FILE).is_file()


# ------------------------------------------------------------------ which categories are scored (model.category_ids)

GIRAFFE, STOP_SIGN, PERSON = 25, 13, 1  # giraffe and stop sign have ground truth in coco_sample; person is not listed


def _pycocotools(ann_path, records, img_ids, cat_ids):
    """The oracle: pycocotools' COCOeval called directly on the annotation file, with ``catIds`` set."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_path))
        ev = COCOeval(gt, gt.loadRes(records) if records else COCO(), "bbox")
        ev.params.imgIds = sorted(img_ids)
        ev.params.catIds = sorted(cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float("nan") if x == -1 else float(x) for x in ev.stats]  # zoo's metrics.json: -1 is null (NaN)


def _same(stats, oracle, evaluator):
    """Bit for bit against pycocotools itself; faster-coco-eval's C++ sums may differ in the last bit."""
    if evaluator == "pycocotools":
        return np.array_equal(stats, oracle, equal_nan=True)
    return stats == pytest.approx(oracle, abs=1e-12, nan_ok=True)


def _one_class(sample_ds, oracle_dets, cat_id):
    """The oracle detections of category ``cat_id`` only, as a one-class model's label 0."""
    label = VALID_IDS.index(cat_id)
    return {k: Detections(d.boxes[d.labels == label], d.scores[d.labels == label],
                          np.zeros(int((d.labels == label).sum()), np.int32)) for k, d in oracle_dets.items()}


@pytest.mark.parametrize("evaluator", ["pycocotools", "faster-coco-eval"])
def test_a_one_class_model_is_scored_over_its_own_category_only(sample_ds, oracle_dets, evaluator):
    # before: every category of the annotation file was scored, the 11 the model cannot output as 0: AP 0.0833
    dets = _one_class(sample_ds, oracle_dets, GIRAFFE)
    samples = sample_ds.samples()
    res = evaluate_coco(dets, sample_ds, samples, evaluator=evaluator, valid_ids=[GIRAFFE])
    assert res.metrics["AP"] == 1.0 and [k for k in res.metrics if k.startswith("AP/")] == ["AP/giraffe"]
    records = json.loads(res.files["detections.json"])
    oracle = _pycocotools(sample_ds.ann_path, records, [s.key for s in samples], [GIRAFFE])
    assert _same([res.metrics[n] for n in STAT_NAMES], oracle, evaluator)
    noisy = _one_class(sample_ds, _noisy(oracle_dets, seed=5), GIRAFFE)
    res = evaluate_coco(noisy, sample_ds, samples, evaluator=evaluator, valid_ids=[GIRAFFE])
    oracle = _pycocotools(sample_ds.ann_path, json.loads(res.files["detections.json"]), [s.key for s in samples],
                          [GIRAFFE])
    assert _same([res.metrics[n] for n in STAT_NAMES], oracle, evaluator) and 0.05 < oracle[0] < 0.95
    assert res.metrics["AP"] == res.metrics["AP/giraffe"]


@pytest.mark.parametrize("evaluator", ["pycocotools", "faster-coco-eval"])
def test_the_80_class_model_scores_as_before_bit_for_bit(sample_ds, oracle_dets, evaluator):
    # CenterNet's 80 ids hold all 12 categories of coco_sample: catIds is COCOeval's default, the stats unchanged
    from zoo_core.datasets.coco import per_category_ap, run_cocoeval

    dets = _noisy(oracle_dets, seed=1)
    samples = sample_ds.samples()
    res = evaluate_coco(dets, sample_ds, samples, evaluator=evaluator)
    before = run_cocoeval(sample_ds.instances, json.loads(res.files["detections.json"]), [s.key for s in samples],
                          evaluator)  # no catIds set: what every run did before
    assert [res.metrics[n] for n in STAT_NAMES] == [float(x) for x in before.stats]
    assert {k: v for k, v in res.metrics.items() if k.startswith("AP/")} == \
        per_category_ap(before, sample_ds.category_names())
    assert before.params.catIds == sorted(SAMPLE_CATEGORY_IDS)


def test_a_model_id_the_annotation_file_does_not_list_is_a_warning_naming_it(sample_ds, oracle_dets, caplog):
    dets = _one_class(sample_ds, oracle_dets, GIRAFFE)
    samples = sample_ds.samples()
    with caplog.at_level("WARNING", logger="zoo"):
        res = evaluate_coco(dets, sample_ds, samples, valid_ids=[GIRAFFE, PERSON])
    warned = [r.getMessage() for r in caplog.records if "model.category_ids" in r.getMessage()]
    assert len(warned) == 1 and str(sample_ds.ann_path) in warned[0] and "[1] is not a category" in warned[0]
    assert res.metrics["AP"] == 1.0  # person cannot be scored: it is left out, not counted as 0
    assert res.info["warnings"] == warned  # metrics.json keeps it
    assert "warnings" not in evaluate_coco(dets, sample_ds, samples, valid_ids=[GIRAFFE]).info


def test_a_subset_annotation_file_of_the_models_classes_is_said_in_the_log_not_warned(sample_ds, oracle_dets, caplog):
    """CenterNet's 80 ids on coco_sample (which lists 12 categories, all among them): every run would warn about the
    other 68, for what is COCOeval's own default; it is an info line (zoo.log), and metrics.json holds no warning."""
    with caplog.at_level("INFO", logger="zoo"):
        res = evaluate_coco(oracle_dets, sample_ds, sample_ds.samples())
    said = [r for r in caplog.records if "model.category_ids" in r.getMessage()]
    assert [r.levelname for r in said] == ["INFO"] and "are not a category of this annotation file" in \
        said[0].getMessage()
    assert "warnings" not in res.info and res.metrics["AP"] == 1.0


def test_a_model_with_none_of_the_annotation_files_categories_is_a_config_error(sample_ds):
    # before: AP 0.0000, no warning, exit 0
    from zoo_core.api.errors import ConfigError

    for ids in ([PERSON], [PERSON, 12, 91]):
        with pytest.raises(ConfigError) as e:
            evaluate_coco({}, sample_ds, sample_ds.samples(), valid_ids=ids)
        assert str(e.value).startswith(f"{sample_ds.ann_path}: none of model.category_ids {ids} is a category")
        assert "nothing could be scored" in str(e.value)


@pytest.mark.parametrize("evaluator", ["pycocotools", "faster-coco-eval"])
def test_a_listed_category_without_ground_truth_in_the_images_scored_is_left_out_of_the_mean(
        sample_ds, oracle_dets, evaluator):
    # image 1644 holds a stop sign, 9917 nothing: giraffe gets COCOeval's -1 and is left out, as in pycocotools
    samples = sample_ds.samples()[:2]
    assert [s.key for s in samples] == [1644, 9917]
    two = {k: d for k, d in oracle_dets.items() if k in {s.id for s in samples}}
    label = {VALID_IDS.index(STOP_SIGN): 0, VALID_IDS.index(GIRAFFE): 1}
    dets = {k: Detections(d.boxes[np.isin(d.labels, list(label))], d.scores[np.isin(d.labels, list(label))],
                          np.array([label[int(x)] for x in d.labels if int(x) in label], np.int32))
            for k, d in two.items()}
    res = evaluate_coco(dets, sample_ds, samples, evaluator=evaluator, valid_ids=[STOP_SIGN, GIRAFFE])
    oracle = _pycocotools(sample_ds.ann_path, json.loads(res.files["detections.json"]), [1644, 9917],
                          [STOP_SIGN, GIRAFFE])
    assert _same([res.metrics[n] for n in STAT_NAMES], oracle, evaluator)
    assert res.metrics["AP"] == pytest.approx(1.0) == res.metrics["AP/stop sign"] and "AP/giraffe" not in res.metrics
    only_giraffe = evaluate_coco({}, sample_ds, samples, evaluator=evaluator, valid_ids=[GIRAFFE])
    assert np.isnan(only_giraffe.metrics["AP"]) and "no ground truth" in only_giraffe.info["null_reasons"]["AP"]


def test_the_bootstrap_resamples_the_model_categories_only(sample_ds, oracle_dets):
    # faster-coco-eval keeps no per-image records: the bootstrap re-matches with pycocotools, on the same catIds
    dets = _one_class(sample_ds, oracle_dets, GIRAFFE)
    res = _score_coco(dets, sample_ds, sample_ds.samples(), evaluator="faster-coco-eval", category_ids=[GIRAFFE],
                      plots=False, bootstrap=20)
    assert tuple(res.ci95["AP"]) == (1.0, 1.0)  # all 12 categories scored, it would be about (0.08, 0.08)
