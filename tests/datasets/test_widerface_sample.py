"""The bundled WIDER-format sample: recipe, ground truth, determinism, caching; and the dataset reader."""
import json
import os

import numpy as np
import pytest

from zoo_core.api.errors import ZooError
from zoo_core.api.imaging import read_image
from zoo_core.datasets.widerface import WiderFaceDataset, WiderGroundTruth, load_wider_gt
from zoo_core.datasets.widerface import sample as smp


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache") / "widerface_sample"
    return smp.ensure_sample(root)


def test_layout_and_names(built):
    ds = WiderFaceDataset(built, built / smp.GT_DIR, name="widerface_sample")
    samples = ds.samples()
    assert len(samples) == 24
    assert [e for e, *_ in smp.EVENTS] == ds.gt.events == ["0--Synth", "1--Clutter", "2--Crowd"]
    for s in samples:
        event, stem = s.key
        assert s.id == stem and stem[-1].isdigit() and "_" not in event.split("--")[1]
        assert s.path == built / "WIDER_val" / "images" / event / f"{stem}.jpg"
        assert stem.startswith(event.split("--")[0] + "_" + event.split("--")[1] + "_")
        img = read_image(s.path)
        assert img.shape in ((480, 640, 3), (600, 800, 3))
        assert s.path.read_bytes()[:2] == b"\xff\xd8"
    marker = json.loads((built / smp.MARKER).read_text())
    assert marker["recipe"] == smp.RECIPE_VERSION and marker["images"] == 24


def test_ground_truth_follows_the_recipe(built):
    gt = load_wider_gt(built / smp.GT_DIR)
    images = smp.generate_sample()
    by_key = {(im.event, im.stem): np.asarray(im.boxes, np.int32).reshape(-1, 4) for im in images}
    assert gt.num_images == 24 and gt.num_faces == sum(len(b) for b in by_key.values())
    assert 80 <= gt.num_faces <= 130
    for e, j, event, stem in gt.iter_images():
        boxes = gt.boxes[e][j]
        np.testing.assert_array_equal(boxes, by_key[(event, stem)])
        h = boxes[:, 3]
        for setting, lo in (("easy", 64), ("medium", 32), ("hard", 10)):
            np.testing.assert_array_equal(gt.keep[setting][e][j], np.nonzero(h >= lo)[0])
    n = {s: gt.num_kept(s) for s in ("easy", "medium", "hard")}
    assert 0 < n["easy"] < n["medium"] < n["hard"] < gt.num_faces  # some faces < 10 px exercise "ignore"
    assert (built / smp.GT_DIR / "wider_face_val_bbx_gt.txt").is_file()


def test_box_rule_and_face_sources():
    images = smp.generate_sample()
    kinds = [k for im in images for k in im.kinds]
    assert 0 < kinds.count("astronaut") < 0.35 * len(kinds)
    for im in images:
        H, W = im.image.shape[:2]
        for kind, (x, y, w, h) in zip(im.kinds, im.boxes):
            assert x >= 0 and y >= 0 and x + w <= W and y + h <= H and w > 0 and h > 0
            if kind == "lfw":  # (0.77 s, 0.94 s) for an integer side s
                side = round(h / 0.94)
                assert any(abs(round(0.77 * s) - w) == 0 and round(0.94 * s) == h for s in (side - 1, side, side + 1))
            else:  # the astronaut's face aspect (88.35 x 119.61)
                assert abs(w / h - 88.35 / 119.61) < 0.06


def test_deterministic():
    a, b = smp.generate_sample(), smp.generate_sample()
    assert [(i.event, i.stem, i.boxes) for i in a] == [(i.event, i.stem, i.boxes) for i in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))


def test_ensure_is_noop_when_complete_and_repairs_when_not(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
    root = smp.ensure_sample()
    assert root == tmp_path / "widerface_sample"
    marker = root / smp.MARKER
    stamp = marker.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(smp, "write_sample", lambda d: calls.append(d))
    assert smp.ensure_sample() == root and calls == [] and marker.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    victim = next((root / "WIDER_val" / "images" / "1--Clutter").iterdir())
    victim.unlink()
    assert smp.ensure_sample(root) == root and victim.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["widerface_sample"]  # no temp dirs left behind


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(d):
        (d / "half").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(smp, "write_sample", boom)
    with pytest.raises(RuntimeError):
        smp.ensure_sample(tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def _fake_write_sample(root):
    (root / smp.GT_DIR).mkdir(parents=True)
    (root / smp.GT_DIR / "wider_face_val.mat").write_bytes(b"fake")
    return {"images": 0, "faces": 0}


def snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_root_that_is_not_a_zoo_sample_is_refused_and_left_as_it_was(tmp_path, monkeypatch):
    """Before: dataset.root= given without dataset=widerface (the default dataset is widerface_sample) moved the
    user's folder to a trash dir, deleted it and generated the 24-image sample there (exit 0)."""
    from zoo_core.datasets.widerface import open_widerface

    calls = []
    monkeypatch.setattr(smp, "write_sample", lambda d: calls.append(d) or _fake_write_sample(d))
    mine = tmp_path / "mydata"
    (mine / "WIDER_val" / "images" / "0--Parade").mkdir(parents=True)
    (mine / "WIDER_val" / "images" / "0--Parade" / "0_Parade_1.jpg").write_bytes(b"\xff\xd8 my image")
    (mine / "eval_tools").mkdir()
    (mine / "eval_tools" / "notes.txt").write_text("my annotations, 3 months of work")
    before = snapshot(mine)
    with pytest.raises(ZooError) as err:
        open_widerface({"name": "widerface_sample", "generator": "widerface_sample", "root": str(mine)})
    text = str(err.value)
    assert text.startswith(f"{mine}: is not empty and holds no sample zoo generated (no {smp.MARKER}): building "
                           "the WIDER-format sample (dataset=widerface_sample) there would replace it"), text
    assert "hint: for the real WIDER FACE layout pass dataset=widerface dataset.root=<dir>" in text
    assert snapshot(mine) == before and calls == []  # untouched, nothing generated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]  # no temp or trash dir left
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(ZooError, match=f"^{afile}: is not a folder: building"):
        smp.ensure_sample(afile)
    assert afile.read_text() == "mine"


def test_an_empty_root_or_an_outdated_zoo_sample_is_built_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(smp, "write_sample", _fake_write_sample)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert smp.ensure_sample(empty) == empty and (empty / smp.MARKER).is_file()
    old = tmp_path / "old"
    (old / "stale").mkdir(parents=True)
    (old / smp.MARKER).write_text(json.dumps({"recipe": "0", "files": []}))  # an earlier recipe's sample
    assert smp.ensure_sample(old) == old and not (old / "stale").exists()
    assert json.loads((old / smp.MARKER).read_text())["recipe"] == smp.RECIPE_VERSION


def test_dataset_errors_name_what_is_missing(tmp_path, built):
    with pytest.raises(ZooError, match=r"dataset.root is not set"):
        WiderFaceDataset(None, tmp_path)
    with pytest.raises(ZooError, match=r"dataset.gt_dir is not set"):
        WiderFaceDataset(tmp_path, None)
    with pytest.raises(ZooError, match="no WIDER val image folder"):
        WiderFaceDataset(tmp_path, built / smp.GT_DIR)
    (tmp_path / "WIDER_val" / "images").mkdir(parents=True)
    with pytest.raises(ZooError, match=r"wider_face_val.mat.*wider_easy_val.mat") as ei:
        WiderFaceDataset(tmp_path, tmp_path)
    assert "WIDERFACE" in str(ei.value)
    with pytest.raises(ZooError, match="24 of 24 ground-truth images are missing"):
        WiderFaceDataset(tmp_path, built / smp.GT_DIR)


def test_images_folder_layout_accepted(tmp_path, built):
    os.symlink(built / "WIDER_val" / "images", tmp_path / "images")
    ds = WiderFaceDataset(tmp_path, built / smp.GT_DIR)
    assert ds.samples()[0].path.parent.parent == tmp_path / "images"


def test_paths_cannot_escape_root(tmp_path, built, monkeypatch):
    (tmp_path / "WIDER_val" / "images").mkdir(parents=True)
    bad = WiderGroundTruth(events=["0--Synth"], files=[["../../../etc/passwd"]],
                           boxes=[[np.zeros((1, 4), np.int32)]],
                           keep={s: [[np.zeros(1, np.int64)]] for s in ("easy", "medium", "hard")})
    monkeypatch.setattr("zoo_core.datasets.widerface.dataset.load_wider_gt", lambda d: bad)
    with pytest.raises(ZooError, match="outside"):
        WiderFaceDataset(tmp_path, built / smp.GT_DIR, check_images=False)


def test_subset_gt(built):
    ds = WiderFaceDataset(built, built / smp.GT_DIR)
    keys = [s.key for s in ds.samples()[::5]]
    sub = ds.subset_gt(keys)
    assert [(e, s) for _, _, e, s in sub.iter_images()] == keys
