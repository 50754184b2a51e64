"""Issue 13 through the CLI: ``stage=evaluate`` scores the results users bring (a WIDER prediction tree, a COCO
results json) without images, ``stage=postprocess stage.score=false`` writes the native format only, the export's
summary names its export keys, and Ascend image-size gears (ATC ``--dynamic_image_size``) with the contract
doubles in ``fixtures/fake_ascend``."""
from __future__ import annotations

import json
import os
import shutil
import tarfile

import numpy as np
import pytest

from zoo_core.datasets import widerface
from zoo_core.testing import golden_dir

# --------------------------------------------------------------------------------------------- WIDER trees


@pytest.fixture(scope="module")
def wider_gt(tmp_path_factory):
    """The bundled WIDER sample's ground truth (``<root>/ground_truth``) and a noisy prediction tree."""
    root = tmp_path_factory.mktemp("wider_cli")
    sample = widerface.ensure_sample(str(root / "sample"))
    ds = widerface.WiderFaceDataset(sample, sample / widerface.SAMPLE_GT_DIR, name="s")
    rng = np.random.default_rng(11)
    tree = root / "tree"
    for s in ds.samples():
        event, stem = s.key
        faces = ds.face_boxes(s.key).astype(np.float64)
        fp = np.column_stack([rng.uniform(0, 300, (6, 2)), rng.uniform(8, 80, (6, 2))])
        rows = np.round(np.concatenate([faces + rng.normal(0, 3.0, faces.shape), fp]), 1)
        scores = np.round(rng.uniform(0.05, 0.99, len(rows)), 3)
        o = np.argsort(-scores, kind="stable")
        text = "".join(f"{x:.1f} {y:.1f} {w:.1f} {h:.1f} {sc:.3f}\n" for (x, y, w, h), sc in zip(rows[o], scores[o]))
        (tree / event).mkdir(parents=True, exist_ok=True)
        (tree / event / f"{stem}.txt").write_text(f"{event}/{stem}.jpg\n{len(o)}\n{text}")
    return ds, tree


def _oracle(ds, tree, unsorted="sort"):
    preds = widerface.read_prediction_tree(tree, ds.gt, missing="empty", unsorted=unsorted)
    return widerface.evaluate_wider(preds, ds.gt).ap


def _evaluate(zoo, ds, detections, *extra):
    """``stage=evaluate`` on the WIDER-format set: ground truth only (``root`` unset, no images)."""
    return zoo("run", "model=centerface", "stage=evaluate", "dataset=widerface", f"dataset.gt_dir={ds.gt_dir}",
               f"detections={detections}", "work_dir=run", *extra)


def _metrics(zoo, stage="evaluate"):
    return json.loads((zoo.cwd / "run" / stage / "metrics.json").read_text())


def test_wider_tree_scored_without_images(zoo, wider_gt):
    ds, tree = wider_gt
    rc, out, err = _evaluate(zoo, ds, tree)
    assert rc == 0, err
    m = _metrics(zoo)
    assert m["metrics"] == _oracle(ds, tree) and 0.2 < m["metrics"]["easy"] < 0.99
    assert m["images"] == 24 and m["info"]["missing_predictions"] == 0
    assert m["read"] == {"format": "widerface_tree", "path": str(tree), "pred_count": "strict", "pred_order": "sort",
                         "files_read": 24, "unsorted_files": 0, "missing_predictions": 0}
    assert "centerface on widerface (24 images)" in out
    written = zoo.cwd / "run" / "evaluate" / "predictions"
    assert sorted(p.relative_to(written) for p in written.rglob("*.txt")) == \
        sorted(p.relative_to(tree) for p in tree.rglob("*.txt"))


def test_wider_tree_policies_and_missing_files(zoo, wider_gt, tmp_path):
    ds, tree = wider_gt
    t = tmp_path / "tree"
    shutil.copytree(tree, t)
    s0, s1, s2 = ds.samples()[:3]
    (t / s0.key[0] / f"{s0.key[1]}.txt").unlink()
    bad = t / s1.key[0] / f"{s1.key[1]}.txt"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join([lines[0], str(int(lines[1]) + 2), *lines[2:]]) + "\n")
    flip = t / s2.key[0] / f"{s2.key[1]}.txt"
    fl = flip.read_text().splitlines()
    flip.write_text("\n".join(fl[:2] + fl[:1:-1]) + "\n")

    rc, out, err = _evaluate(zoo, ds, t)  # strict: the count line is an error naming the file
    assert rc == 2 and str(bad) in err and "count line says" in err and "pred_count=lines" in err

    rc, out, err = _evaluate(zoo, ds, t, "model.pred_count=lines")
    assert rc == 0, err
    m = _metrics(zoo)
    assert m["read"]["pred_count"] == "lines" and m["read"]["pred_order"] == "sort"
    assert m["read"]["missing_predictions"] == m["info"]["missing_predictions"] == 1
    assert m["read"]["unsorted_files"] == 1 and "1 of 24 image(s) have no results" in err
    bad.write_text("\n".join(lines) + "\n")  # the oracle reads strictly
    sort_ap = _oracle(ds, t)
    assert m["metrics"] == sort_ap

    bad.write_text("\n".join([lines[0], str(int(lines[1]) + 2), *lines[2:]]) + "\n")
    rc, out, err = _evaluate(zoo, ds, t, "model.pred_count=lines", "model.pred_order=keep")
    assert rc == 0, err
    m = _metrics(zoo)
    assert m["read"]["pred_order"] == "keep"
    bad.write_text("\n".join(lines) + "\n")
    assert m["metrics"] == _oracle(ds, t, "keep") != sort_ap


@pytest.mark.parametrize(("content", "why"), [
    ("e.jpg\n1\n1 2 3 4 x\n", "line 3: not a number"),
    ("e.jpg\n1\n1 2 3 4\n", "line 3: expected 5 values"),
    ("e.jpg\nmany\n", "count line is not an integer"),
])
def test_bad_wider_files_exit_2_naming_the_file(zoo, wider_gt, tmp_path, content, why):
    ds, tree = wider_gt
    t = tmp_path / "tree"
    shutil.copytree(tree, t)
    s = ds.samples()[5]
    f = t / s.key[0] / f"{s.key[1]}.txt"
    f.write_text(content.replace("e.jpg", f"{s.key[0]}/{s.key[1]}.jpg"))
    rc, out, err = _evaluate(zoo, ds, t)
    assert rc == 2 and str(f) in err and why in err and "Traceback" not in err


def test_unknown_results_format_and_missing_path(zoo, wider_gt, tmp_path):
    ds, _ = wider_gt
    (tmp_path / "notes.txt").write_text("hello\n")
    rc, out, err = _evaluate(zoo, ds, tmp_path / "notes.txt")
    assert rc == 2 and "not a detections format" in err and "notes.txt" in err
    rc, out, err = _evaluate(zoo, ds, tmp_path / "nowhere")
    assert rc == 2 and "detections not found" in err and "nowhere" in err


def test_an_event_folder_names_its_parent_and_a_tree_with_a_state_file_is_a_tree(zoo, wider_gt, tmp_path):
    ds, tree = wider_gt
    t = tmp_path / "tree"
    shutil.copytree(tree, t)
    event = next(p for p in sorted(t.iterdir()) if p.is_dir())
    rc, out, err = _evaluate(zoo, ds, event)
    assert rc == 2 and "not a detections format" in err
    assert f"pass the folder that holds the event folders ({t})" in err
    (t / "state.json").write_text("{}")  # was taken for zoo's own detections dir: "no saved detections found"
    rc, out, err = _evaluate(zoo, ds, t)
    assert rc == 0, err
    assert _metrics(zoo)["metrics"] == _oracle(ds, tree)


@pytest.mark.slow
def test_golden_set1_through_the_cli_gives_the_expected_aps_exactly(zoo, tmp_path):
    """shared/golden/widerface_eval set1 (3226 files, 483k boxes) on the real WIDER val ground truth."""
    gdir = golden_dir("widerface_eval")
    gt = gdir.parent.parent / "widerface_gt"
    with tarfile.open(gdir / "set1.tar.gz") as tar:
        tar.extractall(tmp_path / "set1", filter="data")
    expected = json.loads((gdir / "expected.json").read_text())
    rc, out, err = zoo("run", "model=centerface", "stage=evaluate", "dataset=widerface", f"dataset.gt_dir={gt}",
                       f"detections={tmp_path / 'set1'}", "model.report_both_iou=true", "work_dir=run")
    assert rc == 0, err
    m = _metrics(zoo)
    for iou in ("0.5", "0.4"):
        for setting in ("easy", "medium", "hard"):
            assert m["metrics"][f"{setting}_iou{iou}"] == expected[f"iou_{iou}"][setting], (iou, setting)
    assert m["images"] == 3226 and m["read"]["files_read"] == 3226 and m["read"]["missing_predictions"] == 0
    assert m["read"]["pred_count"] == "strict" and m["read"]["pred_order"] == "sort"


# --------------------------------------------------------------------------------------------- COCO results


@pytest.fixture(scope="module")
def coco_run(zoo_at, tmp_path_factory):
    """``stage=eval backend=oracle`` of CenterNet on 8 coco_sample images: its detections.json and records."""
    d = tmp_path_factory.mktemp("coco_cli")
    zoo_at(d).ok("run", "model=centernet", "stage=eval", "backend=oracle", "dataset=coco_sample", "dataset.limit=8",
                 "work_dir=run", "save_outputs=true")
    return d


def _perturbed(results, path, rng):
    records = json.loads(results.read_text())
    for r in records:
        r["bbox"] = [round(v + float(rng.normal(0, 4)), 2) for v in r["bbox"]]
        r["score"] = round(float(rng.uniform(0.01, 1)), 2)
    path.write_text(json.dumps(records))
    return records


def test_coco_results_scored_without_images(zoo, coco_run, cache_dir):
    from zoo_core.datasets import coco

    results = coco_run / "run" / "eval" / "detections.json"
    rc, out, err = zoo("run", "model=centernet", "stage=evaluate", "dataset=coco_sample", "dataset.limit=8",
                       f"detections={results}", "work_dir=run")
    assert rc == 0, err
    ref = json.loads((coco_run / "run" / "eval" / "metrics.json").read_text())
    m = _metrics(zoo)
    assert m["metrics"] == ref["metrics"] and m["read"]["format"] == "coco_results"
    assert (zoo.cwd / "run" / "evaluate" / "detections.json").read_bytes() == results.read_bytes()
    # perturbed results on a copy of the sample without its images: COCOeval on the file itself is the oracle
    sample = cache_dir / "coco_sample" / "n24_seed0"
    gt_only = zoo.cwd / "gt_only"
    (gt_only / "annotations").mkdir(parents=True)
    shutil.copy(sample / coco.SAMPLE_ANN_FILE, gt_only / coco.SAMPLE_ANN_FILE)
    noisy = zoo.cwd / "noisy.json"
    records = _perturbed(results, noisy, np.random.default_rng(5))
    rc, out, err = zoo("run", "model=centernet", "stage=evaluate", "dataset=coco", f"dataset.root={gt_only}",
                       f"dataset.ann_file={coco.SAMPLE_ANN_FILE}", "dataset.limit=8", f"detections={noisy}",
                       "work_dir=run")
    assert rc == 0, err
    ds = coco.CocoDataset(gt_only, coco.SAMPLE_ANN_FILE, images_required=False)
    ev = coco.run_cocoeval(ds.instances, records, [s.key for s in ds.samples()[:8]], coco.resolve_evaluator("auto"))
    m = _metrics(zoo)
    assert m["metrics"]["AP"] == float(ev.stats[0]) < ref["metrics"]["AP"]
    bad = zoo.cwd / "bad.json"
    bad.write_text(json.dumps([*records[:2], {**records[0], "category_id": 4242}]))
    rc, out, err = zoo("run", "model=centernet", "stage=evaluate", "dataset=coco_sample", f"detections={bad}")
    assert rc == 2 and str(bad) in err and "results[2]: category_id 4242" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------ postprocess, no scoring


def test_postprocess_without_scoring_writes_the_coco_results_only(zoo, coco_run):
    run = coco_run / "run"
    rc, out, err = zoo("run", "model=centernet", "stage=postprocess", "stage.score=false", "dataset=coco_sample",
                       "dataset.limit=8", f"work_dir={run}")
    assert rc == 0, err
    written = run / "postprocess" / "detections.json"
    assert out.strip().splitlines() == [f"decoded 8 images (not scored) -> {written}"]
    assert written.read_bytes() == (run / "eval" / "detections.json").read_bytes()
    assert not (run / "postprocess" / "metrics.json").exists()
    assert json.loads((run / "postprocess" / "postprocess.json").read_text())["format"] == "detections.json"


def test_postprocess_without_scoring_writes_the_wider_tree_then_evaluate_scores_it(zoo):
    common = ["model=centerface", "dataset.limit=5", "work_dir=run"]
    zoo.ok("run", *common, "stage=eval", "backend=oracle", "save_outputs=true")
    rc, out, err = zoo("run", *common, "stage=postprocess", "stage.score=false")
    assert rc == 0, err
    tree = zoo.cwd / "run" / "postprocess" / "predictions"
    assert out.strip().splitlines() == [f"decoded 5 images (not scored) -> {tree}"]
    files = sorted(p.relative_to(tree) for p in tree.rglob("*.txt"))
    assert len(files) == 5 and not (zoo.cwd / "run" / "postprocess" / "metrics.json").exists()
    for f in files:  # byte for byte the tree eval wrote while scoring
        assert (tree / f).read_bytes() == (zoo.cwd / "run" / "eval" / "predictions" / f).read_bytes()
    zoo.ok("run", *common, "stage=evaluate", f"detections={tree}")
    ev, evl = _metrics(zoo, "eval"), _metrics(zoo, "evaluate")
    assert evl["metrics"] == ev["metrics"] and evl["read"]["files_read"] == 5
    # The reader's warnings are one line each (no Python warning with a source line) and kept in metrics.json.
    f = tree / files[0]
    lines = f.read_text().rstrip("\n").split("\n")
    f.write_text("\n".join([lines[0], str(int(lines[1]) + 1), *lines[2:], "1 1 2 2 -1000"]) + "\n")
    rc, out, err = zoo("run", *common, "stage=evaluate", f"detections={tree}")
    assert rc == 0, err
    said = [ln for ln in err.splitlines() if "outside [0, 1]" in ln]
    assert len(said) == 1 and said[0].startswith("warning: 1 prediction file(s) in ") and ".py:" not in err, err
    assert "ScoreRangeWarning" not in err
    assert _metrics(zoo, "evaluate")["read"]["warnings"] == [said[0].removeprefix("warning: ")]


# ------------------------------------------------------------------------------------------------ export keys


@pytest.mark.needs_torch
def test_export_summary_names_the_export_keys(zoo):
    out = zoo.ok("run", "model=fixture", "stage=export", "work_dir=run")
    assert "export keys (changing one re-exports): model.sharpness=20.0" in out


def test_export_summary_lists_centernet_shape_keys():
    from zoo_core.reports.terminal import format_summary

    result = {"target": "onnxruntime", "onnx": "m.onnx", "input_names": ["actual_input"], "output_names": ["a"],
              "fingerprint": {"model_config": {"model.num_classes": 80, "model.head_conv": 256, "model.input_h": 512,
                                               "model.input_w": 512}}}
    lines = format_summary("centernet", "export", __import__("pathlib").Path("."), result)
    assert "model.input_h=512, model.input_w=512" in lines[-1]


# ---------------------------------------------------------------------------------------- image-size gears


@pytest.fixture
def ascend_env(zoo, fixtures_dir, tmp_path):
    fake = fixtures_dir / "fake_ascend"
    return zoo.env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(fake),
                   FAKE_ATC_LOG=str(tmp_path / "atc_argv.json"), FAKE_ACL_LOG=str(tmp_path / "acl.jsonl"))


#: The squares' input sizes under model.keep_size (padded to multiples of 16) and their image counts.
SQUARE_SIZES = {(48, 48): 2, (64, 64): 3, (64, 80): 3, (96, 64): 2, (128, 112): 2}


@pytest.mark.needs_torch
def test_image_size_gears_end_to_end(zoo, ascend_env, tmp_path):
    keep = ["model=fixture", "model.keep_size=true"]
    zoo.ok("run", *keep, "stage=eval", "work_dir=ort")  # onnxruntime: every image at its own size
    out = zoo.ok("run", *keep, "stage=convert", "atc.dynamic_image_size=true", "work_dir=acl", env=ascend_env)
    argv = json.loads((tmp_path / "atc_argv.json").read_text())
    gears = sorted(SQUARE_SIZES, key=lambda g: (g[0] * g[1], g))
    assert "--input_shape=image:1,1,-1,-1" in argv
    assert "--dynamic_image_size=" + ";".join(f"{h},{w}" for h, w in gears) in argv
    plan = json.loads((zoo.cwd / "acl" / "model" / "fixture_bs1.om.gears.json").read_text())
    assert plan["dynamic_image_size"] == [list(g) for g in gears] and plan["padded_images"] == 0
    assert {(h, w): n for h, w, n in plan["sizes"]} == SQUARE_SIZES
    assert "image-size gears: 5 (48x48; 64x64; 64x80; 96x64; 128x112)" in out
    zoo.ok("run", *keep, "stage=eval", "backend=acl", "work_dir=acl", env=ascend_env)
    dets = "eval/fixture_detections.json"
    assert (zoo.cwd / "acl" / dets).read_bytes() == (zoo.cwd / "ort" / dets).read_bytes()
    calls = [json.loads(ln)["set_dynamic_hw"] for ln in (tmp_path / "acl.jsonl").read_text().splitlines()
             if "set_dynamic_hw" in ln]
    assert sorted(calls) == sorted([h, w] for (h, w), n in SQUARE_SIZES.items() for _ in range(n))  # height first
    perf = json.loads((zoo.cwd / "acl" / "eval" / "perf.json").read_text())
    assert perf["image_size_gears"] == [list(g) for g in gears]


@pytest.mark.needs_torch
def test_image_size_gears_beyond_the_cap(zoo, ascend_env, tmp_path):
    keep = ["model=fixture", "model.keep_size=true", "batch_size=2"]
    zoo.ok("run", *keep, "stage=eval", "work_dir=ort")
    gear3 = ["atc.dynamic_image_size=true", "atc.max_image_gears=3"]
    rc, out, err = zoo("run", *keep, "stage=convert", *gear3, "atc.image_gear_policy=refuse", "work_dir=acl",
                       env=ascend_env)
    assert rc == 2 and "12 images have 5 distinct input sizes, more than atc.max_image_gears=3" in err
    rc, out, err = zoo("run", *keep, "stage=convert", *gear3, "work_dir=acl", env=ascend_env)
    assert rc == 0, err
    plan = json.loads((zoo.cwd / "acl" / "model" / "fixture_bs2.om.gears.json").read_text())
    assert len(plan["dynamic_image_size"]) == 3 and plan["padded_images"] == 5
    assert "5 of 12 images padded up to a larger gear (up to 16 rows / 32 columns" in out
    assert "5 of 12 images are padded" in err  # the log warning
    argv = json.loads((tmp_path / "atc_argv.json").read_text())
    assert "--input_shape=image:2,1,-1,-1" in argv
    zoo.ok("run", *keep, "stage=eval", "backend=acl", "work_dir=acl", env=ascend_env)
    dets = "eval/fixture_detections.json"  # padded at the bottom / right, cropped back: same detections
    assert (zoo.cwd / "acl" / dets).read_bytes() == (zoo.cwd / "ort" / dets).read_bytes()
    perf = json.loads((zoo.cwd / "acl" / "eval" / "perf.json").read_text())
    assert perf["batches"] == sum(-(-n // 2) for n in SQUARE_SIZES.values())  # batches never mix sizes
    rc, out, err = zoo("run", *keep, "stage=convert", *gear3, "atc.dynamic_batch=[1,2]", "work_dir=acl",
                       env=ascend_env)
    assert rc == 2 and "cannot be combined with atc.dynamic_batch" in err


# ------------------------------------------------------------------------------ evaluation keys never re-export


def test_centerface_evaluation_keys_never_re_export(zoo):
    """model.threshold, model.iou_thresh and predict's stage.score_threshold reuse CenterFace's export (same bytes,
    same mtime, "reusing" in each run's log); model.input_hw (an export key) re-exports, naming the change."""
    common = ["model=centerface", "dataset.limit=2", "num_workers=0", "work_dir=run"]
    zoo.ok("run", *common, "stage=eval")
    onnx = zoo.cwd / "run" / "model" / "centerface_onnxruntime.onnx"
    mtime, data = onnx.stat().st_mtime_ns, onnx.read_bytes()
    image = next(iter(sorted((zoo.cwd / "run").glob("**/*.jpg"))), None) or \
        next(p for p in sorted((zoo.cache / "widerface_sample").rglob("*.jpg")))
    for stage, overrides in [("eval", ["model.threshold=0.3"]), ("eval", ["model.iou_thresh=0.4"]),
                             ("predict", [f"input={image}", "stage.score_threshold=0.9"])]:
        zoo.ok("run", *common, f"stage={stage}", *overrides)
        log = (zoo.cwd / "run" / stage / "zoo.log").read_text()
        assert "reusing" in log and "re-exporting" not in log, (overrides, log)
        assert onnx.stat().st_mtime_ns == mtime and onnx.read_bytes() == data, overrides
    zoo.ok("run", *common, "stage=eval", "model.input_hw=[416,416]")
    log = (zoo.cwd / "run" / "eval" / "zoo.log").read_text()
    assert "re-exporting centerface" in log and "model.input_hw: None -> [416, 416]" in log, log


@pytest.mark.needs_torch
def test_a_plugin_reads_its_own_results_format(zoo):
    """The model's read_detections hook answers first: the fixture reads the fixture_detections.json it writes."""
    zoo.ok("run", "model=fixture", "stage=eval", "work_dir=run")
    own = zoo.cwd / "run" / "eval" / "fixture_detections.json"
    zoo.ok("run", "model=fixture", "stage=evaluate", f"detections={own}", "work_dir=run")
    ev, evl = _metrics(zoo, "eval"), _metrics(zoo, "evaluate")
    assert evl["metrics"] == ev["metrics"] and evl["read"] == {"format": "fixture_detections", "missing_predictions": 0}
    assert (zoo.cwd / "run" / "evaluate" / "fixture_detections.json").read_bytes() == own.read_bytes()
    data = json.loads(own.read_text())
    data["nope"] = data[next(iter(data))]
    bad = zoo.cwd / "bad.json"
    bad.write_text(json.dumps(data))
    rc, out, err = zoo("run", "model=fixture", "stage=evaluate", f"detections={bad}", "work_dir=run")
    assert rc == 2 and "image 'nope' is not in the squares dataset" in err and str(bad) in err
