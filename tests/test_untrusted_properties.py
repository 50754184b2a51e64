"""Property tests (hypothesis) of issue 12's readers, next to those of ``safe_stem`` / ``DumpDir`` in
test_properties.py: the ``meta.jsonl`` reader, the WIDER / COCO id checks and the COCO annotation
validator. Each reader either returns exactly what was written or raises one ``InputError`` /
``ZooError`` naming its file; nothing else escapes."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo_core.api.errors import InputError, ZooError

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

records = st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=8), st.none(),
                                                          st.lists(st.integers(), max_size=3)), max_size=4)
junk_lines = st.one_of(st.binary(max_size=40), st.sampled_from([b"[1, 2]", b"3", b'"id"', b"null", b"{", b"[" * 5000,
                                                                b"\xff\xfe", b'{"id": "a"']))


@SETTINGS
@given(recs=st.lists(records, max_size=6), junk=st.lists(st.tuples(st.integers(0, 6), junk_lines), max_size=2),
       torn=st.booleans())
def test_read_jsonl_returns_the_objects_written_or_one_input_error(tmp_path, recs, junk, torn):
    """Written objects come back with their line numbers; a line that is not a JSON object (array,
    scalar, garbage, torn, nested too deep) is an InputError naming the file and that line, never a
    silently dropped record."""
    from zoo_core.runs.resume import read_jsonl

    lines = [json.dumps(r).encode() for r in recs]
    for pos, line in junk:
        lines.insert(min(pos, len(lines)), line)
    data = b"\n".join(lines) + (b"" if torn and lines else b"\n")
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        path = Path(tmp) / "meta.jsonl"
        path.write_bytes(data)
        try:
            got = read_jsonl(path)
        except InputError as exc:
            assert str(exc).startswith(f"{path}: ")
            assert "\n" not in str(exc).split("\n  hint:")[0]
            return
    assert [rec for _n, rec in got] == [r for r in recs]
    assert not junk or all(not line.strip() or isinstance(json.loads(line), dict) for _p, line in junk)
    assert all(data.split(b"\n")[n - 1].strip() for n, _rec in got)


stems = st.one_of(st.text(max_size=12), st.text(st.sampled_from("ab_\n\t/\\.\x7f"), max_size=6),
                  st.sampled_from(["x" * 201, "x" * 200, "é" * 101, "0_Parade_1", "..", "\ud800"]))


@SETTINGS
@given(stem=stems)
def test_a_wider_stem_is_a_sample_id_or_refused_naming_the_ground_truth(tmp_path, stem):
    """What the WIDER dataset accepts as an image stem is exactly what ``safe_stem`` accepts (the one
    id -> file-name check), and it then names an image file directly inside its event folder."""
    from zoo_core.api.aisbench import stem_problem
    from zoo_core.datasets.widerface.dataset import WiderFaceDataset
    from zoo_core.datasets.widerface.ground_truth import FACE_FILE, WiderGroundTruth

    ds = WiderFaceDataset.__new__(WiderFaceDataset)
    ds.images_dir = tmp_path / "images"
    ds.gt_dir = tmp_path / "gt"
    ds.gt = WiderGroundTruth(events=["0--Parade"], files=[[stem]], boxes=[[]])
    try:
        samples = ds._build_samples()
    except ZooError as exc:
        assert str(exc).startswith(f"{tmp_path / 'gt' / FACE_FILE}: ") and repr(stem) in str(exc)
        assert stem_problem(stem) is not None or stem in ("", ".", "..")
        return
    assert stem_problem(stem) is None
    assert samples[0].id == stem and samples[0].path == tmp_path / "images" / "0--Parade" / f"{stem}.jpg"


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 100), st.text(max_size=2),
                    st.none(), st.booleans())


@st.composite
def annotations(draw):
    anns = []
    for _ in range(draw(st.integers(1, 4))):
        ann = {"id": draw(st.one_of(st.integers(1, 4), st.sampled_from(["1", None, 2.0, True]))),
               "image_id": draw(st.sampled_from([1, 1, 2, "1"])), "category_id": draw(st.sampled_from([1, 1, 9])),
               "bbox": draw(st.one_of(st.lists(numbers, min_size=4, max_size=4), st.just([1, 2, 3]))),
               "iscrowd": draw(st.sampled_from([0, 0, 1, 2, True]))}
        if draw(st.booleans()):
            ann["area"] = draw(numbers)
        anns.append(ann)
    return anns


def _valid(anns) -> bool:
    """The oracle: what the validator must accept, written independently of it."""
    ids = [a["id"] for a in anns]
    for a in anns:
        if type(a["id"]) is not int or type(a["image_id"]) is not int or a["image_id"] != 1 or a["category_id"] != 1:
            return False
        b = a["bbox"]
        if len(b) != 4 or any(type(v) not in (int, float) for v in b) or any(not math.isfinite(v) or v < 0 for v in b):
            return False
        if "area" not in a or type(a["area"]) not in (int, float) or not math.isfinite(a["area"]) or a["area"] < 0:
            return False
        if type(a["iscrowd"]) is not int or a["iscrowd"] not in (0, 1):
            return False
    return len(set(ids)) == len(ids)


@SETTINGS
@given(anns=annotations())
def test_coco_annotations_load_exactly_when_both_evaluators_would_agree_on_them(tmp_path, anns):
    from zoo_core.datasets.coco import load_instances

    data = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": anns, "categories": [{"id": 1}]}
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        path = Path(tmp) / "ann.json"
        path.write_text(json.dumps(data))
        if _valid(anns):
            assert load_instances(path)["annotations"] == json.loads(path.read_text())["annotations"]
        else:
            with pytest.raises(ZooError) as info:
                load_instances(path)
            assert str(info.value).startswith(f"{path}: not a valid COCO instances file: annotations[")
