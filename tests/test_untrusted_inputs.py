"""Issue 12, the items the first hardening pass left open: WIDER stems, COCO annotations and deep JSON,
missing WIDER images under ``on_error=skip``, a full disk, ``meta.jsonl`` lines, outputs vs ``output_spec``.

Each guarantee is tested in-process where it lives and through the CLI (one ``error:`` line, exit 2,
nothing half-written). CLI runs use ``backend=oracle`` (no weights, no export) or the fixture model.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from zoo_core.api.errors import InputError, ZooError

LONG_STEM = "x" * 300
NEWLINE_STEM = "0_Parade_marchingband_1_5\nfake"


def _clean_failure(rc: int, err: str, *texts, run_dir: Path | None = None) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and "Logging error" not in err, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("  hint: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for t in texts:
        assert str(t) in err, (t, err)
    if run_dir is not None:
        assert not list(Path(run_dir).rglob("metrics.json"))


# -- WIDER stems ---------------------------------------------------------------------------------------------

def _wider_set(root: Path, stems: list[str], events: tuple[str, ...] = ("0--Parade",)) -> Path:
    """A WIDER-format set whose ground truth lists ``stems`` (images written where a file can hold them)."""
    import cv2

    from zoo_core.datasets.widerface import write_wider_gt

    images = root / "WIDER_val" / "images"
    files, boxes, keep = [], [], {"easy": [], "medium": [], "hard": []}
    for event in events:
        (images / event).mkdir(parents=True, exist_ok=True)
        files.append(list(stems))
        boxes.append([np.array([[4, 4, 20, 20]], np.int32) for _ in stems])
        for s in keep:
            keep[s].append([np.array([0]) for _ in stems])
        for stem in stems:
            try:
                cv2.imwrite(str(images / event / f"{stem}.jpg"), np.full((48, 48, 3), 128, np.uint8))
            except (OSError, cv2.error):
                pass
    write_wider_gt(root / "gt", list(events), files, boxes, keep)
    return root / "gt"


@pytest.mark.parametrize("stem, reason", [(LONG_STEM, "is longer than 200 bytes"),
                                          (NEWLINE_STEM, "contains a control character")])
def test_a_wider_stem_no_file_can_hold_is_refused_naming_the_ground_truth(tmp_path, stem, reason):
    from zoo_core.datasets.widerface import WiderFaceDataset

    gt = _wider_set(tmp_path, ["ok_1", stem])
    with pytest.raises(InputError) as info:
        WiderFaceDataset(tmp_path, gt)
    text = str(info.value)
    assert text.startswith(f"{gt / 'wider_face_val.mat'}: unsafe image stem (event '0--Parade') ")
    assert reason in text and "\n" not in text.split(": unsafe")[0]


def test_a_wider_event_name_with_a_newline_is_refused(tmp_path):
    from zoo_core.datasets.widerface import WiderFaceDataset

    gt = _wider_set(tmp_path, ["ok_1"], events=("0--Parade\nx",))
    with pytest.raises(InputError, match="unsafe event name '0--Parade\\\\nx': it contains a control character"):
        WiderFaceDataset(tmp_path, gt)


@pytest.mark.parametrize("stem, reason", [(LONG_STEM, "is longer than 200 bytes"),
                                          (NEWLINE_STEM, "contains a control character")])
def test_a_bad_wider_stem_through_the_cli_is_one_line_naming_the_file(zoo, stem, reason):
    """Before: a 300-character stem tracebacked with ENAMETOOLONG; a newline named a deleted temp file."""
    gt = _wider_set(zoo.cwd / "wider", ["ok_1", stem])
    rc, out, err = zoo("run", "model=centerface", "dataset=widerface", f"dataset.root={zoo.cwd / 'wider'}",
                       f"dataset.gt_dir={gt}", "backend=oracle", "num_workers=0", "work_dir=run")
    _clean_failure(rc, err, gt / "wider_face_val.mat", "unsafe image stem", reason, run_dir=zoo.cwd / "run")
    assert "zoo_widerface_" not in err  # no temp prediction tree named


def test_wider_event_folders_and_images_that_are_symbolic_links_are_read(tmp_path):
    """Before: an event folder linked from shared storage was refused ("image ... from the ground truth points
    outside <images>"), while COCO reads linked folders. The names still cannot leave the image folder."""
    import cv2

    from zoo_core.datasets.widerface import WiderFaceDataset

    gt = _wider_set(tmp_path / "wider", ["ok_1", "ok_2"])
    images = tmp_path / "wider" / "WIDER_val" / "images"
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.move(images / "0--Parade", shared / "0--Parade")  # the event folder lives elsewhere, linked in
    (images / "0--Parade").symlink_to(shared / "0--Parade", target_is_directory=True)
    shutil.move(shared / "0--Parade" / "ok_2.jpg", shared / "ok_2.jpg")  # and one of its images is a link too
    (shared / "0--Parade" / "ok_2.jpg").symlink_to(shared / "ok_2.jpg")
    ds = WiderFaceDataset(tmp_path / "wider", gt)
    assert [(s.key, s.path) for s in ds.samples()] == [(("0--Parade", stem), images / "0--Parade" / f"{stem}.jpg")
                                                       for stem in ("ok_1", "ok_2")]
    assert all(cv2.imread(str(s.path)) is not None for s in ds.samples())


@pytest.mark.parametrize("event, stem", [("..", "x"), ("0--Parade", "../../x"), ("/etc", "passwd"), ("a/..", "x")])
def test_wider_names_that_would_leave_the_image_folder_are_still_refused(tmp_path, event, stem):
    from zoo_core.datasets.widerface.dataset import WiderFaceDataset
    from zoo_core.datasets.widerface.ground_truth import WiderGroundTruth

    ds = WiderFaceDataset.__new__(WiderFaceDataset)
    ds.images_dir, ds.gt_dir = tmp_path / "images", tmp_path / "gt"
    ds.gt = WiderGroundTruth(events=[event], files=[[stem]], boxes=[[]])
    with pytest.raises(ZooError, match="points outside"):
        ds._build_samples()


# -- missing WIDER images with on_error=skip -----------------------------------------------------------------

@pytest.fixture
def wider_copy(tmp_path, cache_dir) -> Path:
    """The WIDER sample copied, three of its images deleted."""
    from zoo_core.datasets.widerface import ensure_sample

    src = ensure_sample(cache_dir / "widerface_sample")
    root = tmp_path / "wider"
    shutil.copytree(src, root)
    images = sorted((root / "WIDER_val" / "images").rglob("*.jpg"))
    for p in images[:3]:
        p.unlink()
    return root


def test_missing_wider_images_are_left_to_the_reader_under_on_error_skip(wider_copy):
    from zoo_core.datasets.widerface import WiderFaceDataset

    with pytest.raises(ZooError, match="3 of 24 ground-truth images are missing"):
        WiderFaceDataset(wider_copy, wider_copy / "ground_truth")
    ds = WiderFaceDataset(wider_copy, wider_copy / "ground_truth", check_images=False)
    assert len(ds.samples()) == 24 and sum(not s.path.is_file() for s in ds.samples()) == 3


def test_missing_wider_images_are_skipped_and_listed_with_on_error_skip(zoo, wider_copy):
    """Before: "3 of 24 ground-truth images are missing" even with on_error=skip allow_skips=true."""
    args = ["run", "model=centerface", "dataset=widerface", f"dataset.root={wider_copy}",
            f"dataset.gt_dir={wider_copy / 'ground_truth'}", "backend=oracle", "num_workers=0"]
    rc, out, err = zoo(*args, "work_dir=fail")
    _clean_failure(rc, err, "3 of 24 ground-truth images are missing", run_dir=zoo.cwd / "fail")
    rc, out, err = zoo(*args, "work_dir=run", "on_error=skip", "allow_skips=true")
    assert rc == 0, err
    m = json.loads((zoo.cwd / "run" / "eval" / "metrics.json").read_text())
    missing = sorted(p.stem for p in (Path(s["path"]) for s in m["skipped"]))
    assert len(m["skipped"]) == 3 and m["images"] == 21
    assert all("image file not found" in s["reason"] for s in m["skipped"])
    assert all(not (wider_copy / "WIDER_val" / "images" / s["path"]).is_file() for s in m["skipped"])
    assert missing == sorted(s["id"] for s in m["skipped"])
    assert m["metrics"]["hard"] is not None and m["metrics"]["hard"] > 0.5  # the oracle scores what is left


# -- COCO annotations ----------------------------------------------------------------------------------------

#: An override value that removes the key.
DROP = object()


def test_a_coco_annotation_file_that_is_a_fifo_is_refused_unopened(tmp_path):
    """Before: json.load blocked on the FIFO forever (stage=eval hung before reading any image)."""
    import contextlib
    import threading

    from zoo_core.datasets.coco import load_instances

    fifo = tmp_path / "ann.json"
    os.mkfifo(fifo)
    done: list = []

    def call() -> None:
        try:
            load_instances(fifo)
        except ZooError as exc:
            done.append(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(10)
    while t.is_alive():  # the old code: unblock its open() so the test can end
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(0.1)
    assert [str(e) for e in done] == [f"{fifo}: COCO annotation file is a FIFO (named pipe), not a regular file"]


def test_a_coco_annotation_file_linked_to_dev_zero_is_refused_unread(tmp_path):
    """Before: json.load read /dev/zero until memory ran out (here: a 1 GiB address-space limit, then 'too large')."""
    (tmp_path / "ann.json").symlink_to("/dev/zero")
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from zoo_core.api.errors import ZooError\nfrom zoo_core.datasets.coco import load_instances\n"
            "try:\n    load_instances(sys.argv[1])\nexcept ZooError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ann.json")], capture_output=True, text=True,
                       timeout=120)
    assert r.stdout == f"{tmp_path / 'ann.json'}: COCO annotation file is a character device, not a regular file\n", \
        (r.stdout, r.stderr[-1000:])


def _instances(**ann_overrides) -> dict:
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 12.0], "area": 120.0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20.0, 20.0, 5.0, 5.0], "area": 25.0, "iscrowd": 0}]
    anns[1].update(ann_overrides)
    anns[1] = {k: v for k, v in anns[1].items() if v is not DROP}
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}],
            "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


BAD_ANNOTATIONS = {
    "nan_bbox": ({"bbox": [20.0, float("nan"), 5.0, 5.0]}, "annotations[1] (id 2): bbox [20.0, nan, 5.0, 5.0] "
                                                           "holds a NaN or an infinity"),
    "inf_bbox": ({"bbox": [20.0, 20.0, float("inf"), 5.0]}, "holds a NaN or an infinity"),
    "negative_w": ({"bbox": [20.0, 20.0, -5.0, 5.0]}, "annotations[1] (id 2): bbox [20.0, 20.0, -5.0, 5.0] has a "
                                                      "negative coordinate or size"),
    "negative_x": ({"bbox": [-3.0, 20.0, 5.0, 5.0]}, "has a negative coordinate or size"),
    "duplicate_id": ({"id": 1}, "annotations[1] (id 1): its id also belongs to annotations[0]"),
    "string_id": ({"id": "2"}, "annotations[1] (id '2'): needs an integer 'id', got '2'"),
    "no_id": ({"id": DROP}, "needs an integer 'id', got None"),
    "string_image_id": ({"image_id": "1"}, "annotations[1] (id 2): refers to unknown image_id '1'"),
    "string_category": ({"category_id": "1"}, "refers to unknown category_id '1'"),
    "nan_area": ({"area": float("nan")}, "area nan is not a finite number >= 0"),
    # before: OverflowError (int too large to convert to float), exit 1 "unexpected error"
    "bigint_bbox": ({"bbox": [20.0, 10 ** 400, 5.0, 5.0]}, "annotations[1] (id 2): bbox [20.0, 100000...(401 "
                                                          "digits), 5.0, 5.0] holds an integer beyond the float range"),
    "bigint_area": ({"area": 10 ** 400}, "area 100000...(401 digits) is not a finite number >= 0"),
    "bad_crowd": ({"iscrowd": 2}, "iscrowd 2 is not 0 or 1"),
    # before: pycocotools KeyError traceback (exit 1), faster-coco-eval other size ranges (APs 0.09 -> 0.29, exit 0)
    "no_area": ({"area": DROP}, "annotations[1] (id 2): has no 'area', which COCOeval reads for every ground-truth"),
    "no_iscrowd": ({"iscrowd": DROP}, "annotations[1] (id 2): has no 'iscrowd', which COCOeval reads"),
    # before: accepted; id 0 lost its match with both evaluators (AP 0.75 instead of 1.0, exit 0), a negative id or
    # one beyond 2**63-1 with faster-coco-eval only (pycocotools: 1.0)
    "zero_id": ({"id": 0}, "annotations[1] (id 0): its id is outside 1..2**63-1, so COCOeval would lose"),
    "negative_id": ({"id": -5}, "annotations[1] (id -5): its id is outside 1..2**63-1"),
    "id_2e63": ({"id": 2**63}, "annotations[1] (id 9223372036854775808): its id is outside 1..2**63-1"),
    "id_2e70": ({"id": 2**70}, "its id is outside 1..2**63-1"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_coco_annotations_the_evaluators_would_read_differently_are_refused(tmp_path, case):
    from zoo_core.datasets.coco import load_instances

    override, text = BAD_ANNOTATIONS[case]
    data = _instances(**override)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))  # NaN / Infinity as Python's json writes them
    with pytest.raises(ZooError) as info:
        load_instances(path)
    assert str(info.value).startswith(f"{path}: not a valid COCO instances file: annotations[1]")
    assert text in str(info.value)
    out_of_range = case in ("zero_id", "negative_id", "id_2e63", "id_2e70")
    assert (info.value.hint is not None) == (case in ("no_area", "no_iscrowd") or out_of_range)
    if out_of_range:
        assert "COCO annotation ids start at 1" in info.value.hint


def test_two_coco_categories_with_one_id_are_refused_at_open(tmp_path):
    """Before: accepted; AP unchanged, but the per-class key took the last name and the first class vanished."""
    from zoo_core.datasets.coco import load_instances

    data = _instances()
    data["categories"] = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 1, "name": "rider"}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ZooError) as info:
        load_instances(path)
    assert str(info.value) == f"{path}: not a valid COCO instances file: category id 1 appears twice"


@pytest.mark.parametrize("where", ["image", "category"])
@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**64 + 1])
def test_coco_image_and_category_ids_beyond_int64_are_refused_at_open(tmp_path, where, value):
    """Before: accepted, then ``OverflowError`` (exit 1, "unexpected error") where the ids became an int64 array."""
    from zoo_core.datasets.coco import load_instances

    data = _instances()
    key = "image_id" if where == "image" else "category_id"
    data[f"{where.replace('category', 'categorie')}s"][0]["id"] = value
    for ann in data["annotations"]:
        ann[key] = value
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ZooError) as info:
        load_instances(path)
    assert str(info.value) == (f"{path}: not a valid COCO instances file: {where} id {value} does not fit in a signed "
                               "64-bit integer (the evaluators and zoo's arrays store ids as int64)")


def test_coco_ids_at_the_int64_limits_still_load(tmp_path):
    from zoo_core.datasets.coco import load_instances

    data = _instances()
    data["images"][0]["id"] = -(2**63)
    data["categories"][0]["id"] = 2**63 - 1
    for ann in data["annotations"]:
        ann["image_id"], ann["category_id"] = -(2**63), 2**63 - 1
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    assert load_instances(path)["categories"][0]["id"] == 2**63 - 1


def test_a_model_category_id_beyond_int64_is_a_config_error():
    from omegaconf import OmegaConf

    from zoo_core.api.errors import ConfigError
    from zoo_core.datasets.coco.evaluation import category_ids

    assert category_ids(OmegaConf.create({"category_ids": [1, 2**63 - 1]})) == (1, 2**63 - 1)
    with pytest.raises(ConfigError, match=r"model.category_ids holds 18446744073709551617: a COCO category id must "
                                          r"fit in a signed 64-bit integer"):
        category_ids(OmegaConf.create({"category_ids": [1, 2**64 + 1]}))


@pytest.mark.parametrize("evaluator", ["pycocotools", "faster-coco-eval"])
def test_coco_annotation_ids_up_to_2_63_minus_1_score_as_pycocotools_does(tmp_path, evaluator):
    """The largest id accepted is read as written by both evaluators: AP equals a plain pycocotools run (1.0)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from zoo_core.api.types import Detections, Sample
    from zoo_core.datasets.coco import CocoDataset, score_coco

    data = _instances(id=2**63 - 1)
    ann = _coco_root(tmp_path / "coco", json.dumps(data))
    ds = CocoDataset(tmp_path / "coco", images_required=False)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in data["annotations"])], np.float32)
    dets = {"a": Detections(boxes, np.array([0.9, 0.8], np.float32), np.zeros(2, np.int32))}
    res = score_coco(dets, ds, [Sample(id="a", path=tmp_path / "a.jpg", key=1)], evaluator=evaluator,
                     category_ids=[1], plots=False)
    (tmp_path / "dt.json").write_bytes(res.files["detections.json"])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        ev = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert res.metrics["AP"] == float(ev.stats[0]) == 1.0


@pytest.mark.parametrize("evaluator", ["pycocotools", "faster-coco-eval"])
@pytest.mark.parametrize("field", ["area", "iscrowd"])
def test_a_coco_ground_truth_without_area_or_iscrowd_is_refused_for_both_evaluators(tmp_path, field, evaluator):
    """Before: pycocotools raised KeyError (exit 1) while faster-coco-eval scored other size ranges (exit 0)."""
    from zoo_core.datasets import open_dataset

    ann = _coco_root(tmp_path / "coco", json.dumps(_instances(**{field: DROP})))
    cfg = {"dataset": {"kind": "coco", "name": "x", "root": str(tmp_path / "coco")},
           "model": {"coco_evaluator": evaluator}}
    with pytest.raises(ZooError) as info:
        open_dataset(DictConfig(cfg))
    assert str(info.value).splitlines()[0] == (f"{ann}: not a valid COCO instances file: annotations[1] (id 2): has "
                                               f"no {field!r}, which COCOeval reads for every ground-truth annotation")
    assert "'area'" in info.value.hint and "'iscrowd'" in info.value.hint and info.value.exit_code == 2


def test_valid_coco_annotations_still_load(tmp_path):
    from zoo_core.datasets.coco import load_instances

    path = tmp_path / "ann.json"
    data = _instances(iscrowd=1)
    data["annotations"].append({"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 0], "area": 0,
                                "iscrowd": 0})
    path.write_text(json.dumps(data))
    assert [a["id"] for a in load_instances(path)["annotations"]] == [1, 2, 3]


def _coco_root(root: Path, text: str) -> Path:
    (root / "val2017").mkdir(parents=True)
    ann = root / "annotations" / "instances_val2017.json"
    ann.parent.mkdir()
    ann.write_text(text)
    return ann


@pytest.mark.parametrize("case", ["nan_bbox", "negative_w", "duplicate_id", "string_id", "no_area"])
def test_bad_coco_annotations_through_the_cli(zoo, case):
    """Before: accepted, and pycocotools and faster-coco-eval then disagreed (0.97 vs 1.0)."""
    override, text = BAD_ANNOTATIONS[case]
    ann = _coco_root(zoo.cwd / "coco", json.dumps(_instances(**override)))
    rc, out, err = zoo("run", "model=centernet", "backend=oracle", "num_workers=0", f"dataset.root={zoo.cwd / 'coco'}",
                       "work_dir=run")
    _clean_failure(rc, err, ann, text, run_dir=zoo.cwd / "run")


DEEP = 200_000


def test_a_coco_json_nested_200k_deep_is_refused_not_a_recursion_error(tmp_path):
    from zoo_core.datasets.coco import load_instances

    path = tmp_path / "deep.json"
    path.write_text('{"images": ' + "[" * DEEP + "]" * DEEP + "}")
    with pytest.raises(ZooError, match="its JSON is nested too deeply to read"):
        load_instances(path)


def test_a_coco_integer_too_long_for_python_is_refused_naming_the_file_and_line(tmp_path):
    """Before: ``ValueError: Exceeds the limit (4300 digits) for integer string conversion``, exit 1."""
    from zoo_core.datasets.coco import load_instances

    path = tmp_path / "ann.json"
    text = json.dumps(_instances(), indent=1)
    path.write_text(text.replace('"area": 25.0', '"area": -' + "9" * 5000, 1))
    line = text[:text.index('"area": 25.0')].count("\n") + 1
    with pytest.raises(ZooError) as info:
        load_instances(path)
    assert str(info.value) == f"{path}: not a COCO instances file: line {line} holds an integer of 5000 digits"


def test_a_deep_coco_json_through_the_cli(zoo):
    ann = _coco_root(zoo.cwd / "coco", "[" * DEEP + "]" * DEEP)
    rc, out, err = zoo("run", "model=centernet", "backend=oracle", "num_workers=0", f"dataset.root={zoo.cwd / 'coco'}",
                       "work_dir=run")
    _clean_failure(rc, err, ann, "nested too deeply", run_dir=zoo.cwd / "run")
    assert "RecursionError" not in err


def test_a_coco_file_name_no_file_can_hold_is_refused(tmp_path):
    from zoo_core.datasets.coco import CocoDataset

    data = _instances()
    data["images"][0]["file_name"] = "a\nb.jpg"
    ann = _coco_root(tmp_path / "coco", json.dumps(data))
    with pytest.raises(InputError, match=r"unsafe image stem \(image id 1\) 'a\\nb': it contains a control"):
        CocoDataset(tmp_path / "coco")
    assert ann.is_file()


def test_a_coco_file_name_written_on_windows_gives_the_stem_after_the_backslash(tmp_path):
    """Before: refused ("unsafe image stem 'val2017\\\\a': it contains a path separator"), though ``stage=evaluate``
    needs no image and pycocotools scores the file."""
    from zoo_core.datasets.coco import CocoDataset

    data = _instances()
    data["images"][0]["file_name"] = "val2017\\a.jpg"
    _coco_root(tmp_path / "coco", json.dumps(data))
    (sample,) = CocoDataset(tmp_path / "coco", images_required=False).samples()
    assert (sample.id, sample.key) == ("a", 1)


def test_two_coco_images_with_one_stem_in_two_folders_are_refused_with_a_hint(tmp_path):
    from zoo_core.datasets.coco import CocoDataset

    data = _instances()
    data["images"] = [{"id": 1, "file_name": "x/a.jpg"}, {"id": 7, "file_name": "y\\a.png"}]
    ann = _coco_root(tmp_path / "coco", json.dumps(data))
    with pytest.raises(ZooError) as info:
        CocoDataset(tmp_path / "coco", images_required=False)
    assert str(info.value).splitlines()[0] == f"{ann}: images 1 and 7 share the file stem 'a'"
    assert "stems must be unique across sub-folders" in info.value.hint


# -- predict's input= -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a\nb.jpg", "bell\x07.png", "x" * 210 + ".jpg"])
def test_predict_refuses_an_image_file_name_no_output_file_can_carry(tmp_path, name):
    """Before: predict named its outputs after such a file (``a\nb.jpg.json``); eval refuses such a stem."""
    from zoo_core.stages.predict_stage import predict_samples

    (tmp_path / "ok.jpg").write_bytes(b"x")
    (tmp_path / name).write_bytes(b"x")
    for given in (tmp_path, tmp_path / name):
        with pytest.raises(InputError) as info:
            predict_samples(given)
        assert str(info.value).startswith(f"{tmp_path}: unsafe image file name {name!r}: it ")
        assert "\n" not in str(info.value)


def test_predict_on_a_folder_with_a_newline_in_a_file_name_writes_nothing(fixture_cfg, fixture_onnx, tmp_path):
    import cv2
    from omegaconf import open_dict

    from zoo_core.plugins.manager import ZooPluginManager
    from zoo_core.runs.context import RunContext
    from zoo_core.stages import predict_stage

    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("ok.png", "a\nb.png"):
        cv2.imwrite(str(pics / name), np.full((32, 32, 3), 200, np.uint8))
    cfg = fixture_cfg.copy()
    with open_dict(cfg):
        cfg.stage.name, cfg.num_workers, cfg.input, cfg.model_file = "predict", 0, str(pics), str(fixture_onnx)
    with pytest.raises(InputError, match=r"unsafe image file name 'a\\nb.png': it contains a control character"):
        predict_stage.run(RunContext(cfg, ZooPluginManager(), tmp_path / "run"))
    assert not (tmp_path / "run" / "predict").exists() or not any((tmp_path / "run" / "predict").iterdir())


def test_predict_reads_a_file_named_just_dot_jpg_and_names_what_it_leaves_out(tmp_path, caplog):
    """Before: ``.jpg`` (no stem, so no suffix for pathlib) and the other files of the folder were left out
    without a word."""
    import logging

    from zoo_core.stages.predict_stage import predict_samples

    for name in (".jpg", "x.PNG", "notes.txt", "y.jpg.bak"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    with caplog.at_level(logging.INFO, logger="zoo"):
        assert [s.id for s in predict_samples(tmp_path)] == [".jpg", "x.PNG"]
    assert f"predict: 3 file(s) of {tmp_path} are left out" in caplog.text
    assert "'notes.txt', 'sub.jpg', 'y.jpg.bak'" in caplog.text


@pytest.mark.parametrize("others", [(), ("notes.txt",)])
def test_predict_on_a_folder_without_images_is_an_error_naming_it(tmp_path, others):
    """Before: ``zoo run stage=predict input=<empty folder>`` exited 0 with no output and no word."""
    from zoo_core.api.imaging import IMAGE_EXTENSIONS
    from zoo_core.stages.predict_stage import predict_samples

    for name in others:
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(InputError) as info:
        predict_samples(tmp_path)
    assert str(info.value) == f"{tmp_path}: no images found (looked for: {'/'.join(IMAGE_EXTENSIONS)}, any case)"


@pytest.mark.parametrize("file_name", ["\x1b[31mRED\x1b[0m\n\rerror: fake/a.jpg", "dir\x00/a.jpg", "d\x7f/a.jpg"])
def test_a_coco_file_name_whose_folder_holds_a_control_character_is_refused(tmp_path, file_name):
    """Before: only the stem was checked, so errors about the image printed raw ESC / CR / NUL from its folder
    part (and could forge an 'error:' line)."""
    from zoo_core.datasets.coco import CocoDataset

    data = _instances()
    data["images"][0]["file_name"] = file_name
    ann = _coco_root(tmp_path / "coco", json.dumps(data))
    with pytest.raises(InputError) as info:
        CocoDataset(tmp_path / "coco")
    assert str(info.value) == (f"{ann}: unsafe image file_name (image id 1) {file_name!r}: it contains a control "
                               "character, so it cannot name a file")
    assert not any(c in str(info.value) for c in "\x1b\r\n\x00\x7f")


# -- meta.jsonl ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, text", [
    (b"[1, 2]", "line 2 is not a JSON object"),
    (b'{"id": "a", "inputs": {}', "line 2 is not valid JSON"),  # torn middle line
    (b"[" * DEEP + b"]" * DEEP, "line 2 is JSON nested too deeply to read"),
    (b"\xff\xfe", "line 2 is not valid JSON"),
    (b'{"id": "a", "meta": {"s": 1' + b"0" * 5000 + b"}}", "line 2 holds an integer of 5001 digits"),  # was
])  # "not valid JSON" for valid JSON, which only CPython's int-string limit refuses
def test_read_jsonl_refuses_each_bad_line_by_number(tmp_path, line, text):
    from zoo_core.runs.resume import read_jsonl

    path = tmp_path / "meta.jsonl"
    path.write_bytes(b'{"id": "a"}\n' + line + b'\n{"id": "b"}\n')
    with pytest.raises(InputError) as info:
        read_jsonl(path)
    assert str(info.value) == f"{path}: {text}"


def test_a_deeply_nested_meta_jsonl_line_through_the_cli(zoo, infer_run, fixture_onnx):
    seed = zoo.cwd / "seed"
    shutil.copytree(infer_run / "inputs", seed)
    lines = (seed / "meta.jsonl").read_text().splitlines()
    lines[1] = "[" * DEEP + "]" * DEEP
    (seed / "meta.jsonl").write_text("\n".join(lines) + "\n")
    rc, out, err = zoo("run", "model=fixture", "stage=infer", f"inputs_dir={seed}", f"model_file={fixture_onnx}",
                       "work_dir=run")
    _clean_failure(rc, err, f"{seed / 'meta.jsonl'}: line 2 is JSON nested too deeply to read")


def test_a_meta_jsonl_record_whose_shape_disagrees_with_its_bin(zoo, infer_run, fixture_onnx):
    """The record says (1, 32, 32); the file holds (1, 64, 64): named, never reshaped or guessed."""
    seed = zoo.cwd / "seed"
    shutil.copytree(infer_run / "inputs", seed)
    lines = (seed / "meta.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    name = next(iter(rec["inputs"]))
    rec["inputs"][name]["shape"] = [1, 32, 32]
    lines[0] = json.dumps(rec)
    (seed / "meta.jsonl").write_text("\n".join(lines) + "\n")
    rc, out, err = zoo("run", "model=fixture", "stage=infer", f"inputs_dir={seed}", f"model_file={fixture_onnx}",
                       "work_dir=run")
    _clean_failure(rc, err, f"{rec['id']}.bin", "is 16384 bytes; tensor image (1, 32, 32) as float32 needs 4096")


# -- a full disk ---------------------------------------------------------------------------------------------

def test_a_full_disk_leaves_the_old_file_whole_and_names_the_new_one(tmp_path, monkeypatch):
    import zoo_core.api.atomic as atomic
    from zoo_core.cli.app import storage_error

    target = tmp_path / "metrics.json"
    target.write_text("old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError) as info:
        atomic.write_json(target, {"new": 1})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert str(storage_error(info.value)) == f"{target}: No space left on device"


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and unshare to mount a private tmpfs")
def test_a_full_disk_through_the_cli_is_one_line_and_nothing_half_written(zoo, fixture_onnx, tmp_path):
    """A 160 KiB tmpfs (private mount namespace) as the run dir: preprocess's 12 x 16 KiB inputs do not fit."""
    disk = tmp_path / "disk"
    disk.mkdir()
    cmd = (f'mount -t tmpfs -o size=160k tmpfs "{disk}" && cd "{zoo.cwd}" && '
           f'{sys.executable} -m zoo_core.cli run model=fixture stage=preprocess num_workers=0 '
           f'work_dir="{disk}/run"; rc=$?; ls -la "{disk}/run/inputs" > "{tmp_path}/listing" 2>&1; '
           f'cp -r "{disk}/run" "{tmp_path}/after" 2>/dev/null; exit $rc')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", cmd], env=zoo.env(), capture_output=True, text=True,
                          timeout=180)
    _clean_failure(proc.returncode, proc.stderr, "No space left on device")
    assert proc.stderr.startswith(f"error: {disk}/run/"), proc.stderr
    after = tmp_path / "after"
    assert not list(after.rglob("*.tmp")), (tmp_path / "listing").read_text()
    bins = list((after / "inputs").glob("*.bin"))
    assert all(p.stat().st_size == 64 * 64 * 4 for p in bins), [p.stat().st_size for p in bins]
    assert len(bins) < 12 and not list(after.rglob("metrics.json"))
    meta = (after / "inputs" / "meta.jsonl").read_text()
    listed = [json.loads(line)["id"] for line in meta.splitlines()]  # no torn line
    assert meta.endswith("\n") and listed and all((after / "inputs" / f"{i}.bin").is_file() for i in listed)
    run = json.loads((after / "preprocess" / "run.json").read_text())
    assert run["status"] == "failed"  # (before: "running" when the failure record found no room)


# -- model outputs vs output_spec ----------------------------------------------------------------------------

def _onnx_wrong_channels(path: Path) -> Path:
    """image (N,1,64,64) -> mask (N,2,64,64): the right input, one output channel too many."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 64, 64])
    y = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 2, 64, 64])
    node = helper.make_node("Concat", ["image", "image"], ["mask"], axis=1)
    m = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("stage", ["eval", "infer"])
def test_an_onnx_whose_output_shape_disagrees_with_output_spec_fails_clearly(zoo, infer_run, stage):
    """Before: ran and scored AP 0. Checked in eval and in infer (whose dump would be unreadable later)."""
    model = _onnx_wrong_channels(zoo.cwd / "two.onnx")
    extra = [f"inputs_dir={infer_run / 'inputs'}"] if stage == "infer" else []
    rc, out, err = zoo("run", "model=fixture", f"stage={stage}", "num_workers=0", f"model_file={model}", *extra,
                       "work_dir=run")
    _clean_failure(rc, err, model, "(2, 64, 64)", "disagree with the model's output_spec", "(1, 64, 64)",
                   run_dir=zoo.cwd / "run")
    assert not list((zoo.cwd / "run").rglob("*_0.bin"))
