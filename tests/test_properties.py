"""Property-based tests (hypothesis) of the decoders and evaluators on random shapes and values,
including empty outputs (all-zero heatmaps) and all-equal scores."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo_core.api.types import TensorSpec

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

grid = st.tuples(st.integers(1, 12), st.integers(1, 12))
fill = st.sampled_from(["random", "zero", "equal"])


def _heat(rng, shape, kind, lo=-6.0, hi=6.0):
    if kind == "zero":
        return np.zeros(shape, np.float32)
    if kind == "equal":
        return np.full(shape, 0.7, np.float32)
    return rng.uniform(lo, hi, shape).astype(np.float32)


def _check(det, k):
    assert len(det) <= k
    assert np.isfinite(det.boxes).all() and np.isfinite(det.scores).all()
    assert (np.diff(det.scores) <= 0).all(), det.scores
    assert det.boxes.shape == (len(det), 4) and det.labels.shape == (len(det),)


@FAST
@given(hw=grid, b=st.integers(1, 3), c=st.integers(1, 5), k=st.integers(1, 40), kind=fill, seed=st.integers(0, 99))
def test_centernet_decoder(hw, b, c, k, kind, seed):
    from zoo_centernet.decode import decode_batch

    rng = np.random.default_rng(seed)
    h, w = hw
    hm = _heat(rng, (b, c, h, w), kind)
    wh = rng.uniform(0, 20, (b, 2, h, w)).astype(np.float32)
    reg = rng.uniform(0, 1, (b, 2, h, w)).astype(np.float32)
    metas = [{"c": [w * 2.0, h * 2.0], "s": float(max(h, w) * 4), "out_h": h, "out_w": w}] * b
    dets = decode_batch(hm, wh, reg, metas, K=k)
    assert len(dets) == b
    for d in dets:
        _check(d, k)
        assert len(d) == min(k, c * h * w) and ((d.labels >= 0) & (d.labels < c)).all()


@FAST
@given(hw=grid, b=st.integers(1, 3), k=st.integers(1, 50), kind=fill, seed=st.integers(0, 99))
def test_centerface_ascend_decoder(hw, b, k, kind, seed):
    from zoo_centerface.decode import decode_ascend

    rng = np.random.default_rng(seed)
    h, w = hw
    hm = np.clip(_heat(rng, (b, 1, h, w), kind, 0, 1), 0, 1)
    wh = rng.uniform(-2, 3, (b, 2, h, w)).astype(np.float32)
    off = rng.uniform(0, 1, (b, 2, h, w)).astype(np.float32)
    lms = rng.uniform(-2, 2, (b, 10, h, w)).astype(np.float32)
    metas = [{"c": [w * 2.0, h * 2.0], "s": float(max(h, w) * 4), "out_hw": [h, w]}] * b
    dets = decode_ascend(hm, wh, off, lms, metas, k=k)
    assert len(dets) == b
    for d in dets:
        _check(d, k)
        assert np.isfinite(d.extras["landmarks"]).all() and d.extras["landmarks"].shape == (len(d), 10)


@FAST
@given(hw=grid, b=st.integers(1, 3), kind=fill, thr=st.floats(0.0, 0.9), seed=st.integers(0, 99))
def test_centerface_starclouds_decoder(hw, b, kind, thr, seed):
    from zoo_centerface.decode import decode_starclouds

    rng = np.random.default_rng(seed)
    h, w = hw
    heat = np.clip(_heat(rng, (b, 1, h, w), kind, 0, 1), 0, 1)
    scale = rng.uniform(-1, 3, (b, 2, h, w)).astype(np.float32)
    off = rng.uniform(0, 1, (b, 2, h, w)).astype(np.float32)
    lms = rng.uniform(-1, 1, (b, 10, h, w)).astype(np.float32)
    metas = [{"input_shape": [3, 4 * h, 4 * w], "scale_h": 1.5, "scale_w": 0.75}] * b
    dets = decode_starclouds(heat, scale, off, lms, metas, threshold=thr)
    assert len(dets) == b
    for d in dets:
        _check(d, h * w)
        assert (d.scores > thr).all() or (d.scores >= thr).all()
        if kind == "zero" and thr > 0:
            assert len(d) == 0


@st.composite
def coco_case(draw):
    rng = np.random.default_rng(draw(st.integers(0, 10_000)))
    n_img = draw(st.integers(1, 4))
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in range(n_img)]
    anns, recs = [], []
    equal = draw(st.booleans())
    for img in images:
        for _ in range(draw(st.integers(0, 4))):
            x, y = rng.uniform(0, 60, 2)
            bw, bh = rng.uniform(4, 40, 2)
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": int(rng.integers(1, 3)),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
        for _ in range(draw(st.integers(0, 5))):
            x, y = rng.uniform(0, 60, 2)
            bw, bh = rng.uniform(4, 40, 2)
            recs.append({"image_id": img["id"], "category_id": int(rng.integers(1, 3)), "bbox": [x, y, bw, bh],
                         "score": 0.5 if equal else float(rng.uniform())})
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}, recs


@settings(max_examples=15, deadline=None)
@given(case=coco_case())
def test_coco_evaluators_agree(case):
    from zoo_core.datasets.coco import run_cocoeval

    instances, recs = case
    ids = [im["id"] for im in instances["images"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            a = run_cocoeval(instances, recs, ids, "pycocotools").stats
        except Exception as exc:  # pycocotools cannot load an empty results list
            assert not recs, exc
            return
        b = run_cocoeval(instances, recs, ids, "faster-coco-eval").stats
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-9)


@st.composite
def wider_case(draw):
    from zoo_core.datasets.widerface import WiderGroundTruth

    rng = np.random.default_rng(draw(st.integers(0, 10_000)))
    events, files, boxes = ["0--A", "1--B"], [], []
    keep = {s: [] for s in ("easy", "medium", "hard")}
    preds = {}
    equal = draw(st.booleans())
    for ev in events:
        fs, bs = [], []
        kk = {s: [] for s in keep}
        for j in range(draw(st.integers(1, 3))):
            stem = f"{ev}_{j}"
            n = draw(st.integers(0, 4))
            b = np.column_stack([rng.uniform(0, 80, (n, 2)), rng.uniform(5, 30, (n, 2))]).astype(np.int32)
            fs.append(stem)
            bs.append(b)
            idx = np.arange(n)
            kk["hard"].append(idx)
            kk["medium"].append(idx[: max(n - 1, 0)])
            kk["easy"].append(idx[: n // 2])
            m = draw(st.integers(0, 5))
            pb = np.column_stack([rng.uniform(0, 80, (m, 2)), rng.uniform(5, 30, (m, 2))])
            ps = np.full(m, 0.5) if equal else rng.uniform(0, 1, m)
            preds[(ev, stem)] = (pb, ps)
        files.append(fs)
        boxes.append(bs)
        for s in keep:
            keep[s].append(kk[s])
    return WiderGroundTruth(events=events, files=files, boxes=boxes, keep=keep), preds


@settings(max_examples=15, deadline=None)
@given(case=wider_case())
def test_wider_evaluator_matches_reference_loop(case):
    from zoo_core.datasets.widerface import evaluate_wider, evaluate_wider_reference

    gt, preds = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = evaluate_wider(preds, gt)
        ref = evaluate_wider_reference(preds, gt)
    for s in ("easy", "medium", "hard"):
        if fast.num_faces[s] == 0:  # no face in this setting: AP is undefined (NaN, with a warning)
            assert np.isnan(fast.ap[s]) and np.isnan(ref.ap[s])
            continue
        assert np.isfinite(fast.ap[s]) and 0.0 <= fast.ap[s] <= 1.0
        assert fast.ap[s] == pytest.approx(ref.ap[s], abs=1e-12)


# -- the id -> file path function and the dump reader (issue 12) ------------------------------------------

ids = st.one_of(
    st.text(st.characters(blacklist_categories=()), max_size=80),           # anything, surrogates included
    st.text(st.sampled_from("ab._-/\\\n\x00é☃"), max_size=12),             # dense in the dangerous characters
    st.sampled_from(["", ".", "..", "../../x", "a/b", "x" * 200, "é" * 101, "ok_id", ".hidden", "a..b",
                     "\ud800", "a\udfff", "nonutf8\udcff"]),  # lone surrogates (json.loads gives them)
    st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(item_id=ids, index=st.integers(0, 9), multi=st.booleans())
def test_an_id_names_a_file_inside_its_directory_or_is_refused_by_name(tmp_path, item_id, index, multi):
    """Every id either comes back unchanged and names a file directly inside the directory (created and
    listed back by the real filesystem), or is refused with an InputError naming the place and the id;
    nothing else ever escapes and nothing is silently rewritten."""
    from zoo_core.api.aisbench import input_file, output_path, safe_stem
    from zoo_core.api.errors import InputError

    try:
        stem = safe_stem(item_id, "meta.jsonl:7")
    except InputError as exc:
        assert str(exc).startswith("meta.jsonl:7: ") and repr(item_id) in str(exc)
        with pytest.raises(InputError):
            input_file(tmp_path, "image", item_id, multi)  # type: ignore[arg-type]
        return
    assert stem is item_id
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        d = Path(tmp)
        for path, parent in ((input_file(d, "image", stem, multi), d / "image" if multi else d),
                             (output_path(d, stem, index), d)):
            assert path.parent == parent and path.resolve().parent == parent.resolve()
            parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")  # the real filesystem accepts the name (no ENAMETOOLONG, no separator)
            assert [n for n in os.listdir(parent) if n != "image"] == [path.name]
            path.unlink()
    assert output_path(d, stem, index).name == f"{stem}_{index}.bin"


dtypes = st.sampled_from(["float32", "float16", "int32", "uint8"])


@st.composite
def dumps(draw):
    n_out = draw(st.integers(1, 3))
    base = draw(st.sampled_from([0, 1]))
    stems = draw(st.lists(st.from_regex(r"[a-z0-9]{1,6}(_[a-z0-9]{1,3})?", fullmatch=True), min_size=1, max_size=5,
                          unique=True))
    specs = [TensorSpec(f"o{i}", tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))), draw(dtypes))
             for i in range(n_out)]
    subdir = {s: draw(st.sampled_from(["", "2024_01_01-00_00_00", "a/b"])) for s in stems}
    npy = {s: draw(st.booleans()) for s in stems}
    return n_out, base, stems, specs, subdir, npy


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=dumps(), seed=st.integers(0, 999))
def test_a_dump_reads_back_exactly_what_was_written(tmp_path_factory, case, seed):
    from zoo_core.api.aisbench import DumpDir, output_path, write_bin

    n_out, base, stems, specs, subdir, npy = case
    rng = np.random.default_rng(seed)
    root = tmp_path_factory.mktemp("dump")
    written = {}
    for s in stems:
        arrays = [(rng.standard_normal(sp.shape) * 100).astype(sp.dtype) for sp in specs]
        written[s] = arrays
        for i, a in enumerate(arrays):
            where = root / subdir[s]
            where.mkdir(parents=True, exist_ok=True)
            if npy[s]:
                np.save(output_path(where, s, base + i, "npy"), a)
            else:
                write_bin(output_path(where, s, base + i), a)
    dump = DumpDir(root, n_out)
    if n_out > 1 or base == 0:  # with one output, _1 alone is ambiguous; it reads as index 1 of base 0
        assert dump.base == base
    assert dump.stems() == sorted(stems)
    for s in stems:
        if dump.base != base:
            continue
        got = dump.read(s, specs)
        assert [g.dtype for g in got] == [np.dtype(sp.dtype) for sp in specs]
        for g, a in zip(got, written[s]):
            np.testing.assert_array_equal(g, a)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"\x93NUMPY" + b)),
       header=st.one_of(st.none(), st.fixed_dictionaries({
           "descr": st.sampled_from(["<f4", "|O", "<f8", ">i2", "V8", "<U3"]),
           "fortran_order": st.booleans(),
           "shape": st.lists(st.integers(0, 2**62), max_size=3).map(tuple)})),
       ext=st.sampled_from(["bin", "npy"]))
def test_read_bin_raises_only_input_errors_on_any_bytes(tmp_path, data, header, ext):
    """Any file content: either the exact array of the spec comes back, or an InputError naming the file
    (never a pickle load, a MemoryError from a lying header, or another exception type)."""
    from zoo_core.api.aisbench import read_bin
    from zoo_core.api.errors import InputError

    spec = TensorSpec("x", (2, 3), "float32")
    path = tmp_path / f"x_0.{ext}"
    with open(path, "wb") as f:
        if header is not None and ext == "npy":
            np.lib.format.write_array_header_1_0(f, header)
        f.write(data)
    try:
        arr = read_bin(path, spec)
    except InputError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    assert arr.shape == (2, 3) and arr.dtype == np.float32
    if ext == "bin":
        assert len(data) == 24 and arr.tobytes() == np.frombuffer(data, "<f4").tobytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 200), file_dtype=st.sampled_from([None, "float16", "float32"]))
def test_read_bin_accepts_exactly_the_size_of_its_dtype(tmp_path, size, file_dtype):
    from zoo_core.api.aisbench import read_bin
    from zoo_core.api.errors import InputError

    spec = TensorSpec("x", (4, 6), "float32")
    path = tmp_path / "x_0.bin"
    path.write_bytes(bytes(range(256))[:size] if size <= 256 else b"\0" * size)
    need = 24 * np.dtype(file_dtype or "float32").itemsize
    if size == need:
        assert read_bin(path, spec, file_dtype).shape == (4, 6)
    else:
        with pytest.raises(InputError, match=rf"is {size} bytes; tensor x \(4, 6\) as \w+ needs {need}"):
            read_bin(path, spec, file_dtype)


def test_an_npy_header_whose_size_overflows_int64_is_refused_from_the_header(tmp_path):
    from zoo_core.api.aisbench import read_bin
    from zoo_core.api.errors import InputError

    path = tmp_path / "w_0.npy"
    with open(path, "wb") as f:  # 2**62 * 4 values * 4 bytes wraps to 0 in int64: "0 bytes announced, 0 held"
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**62, 4)})
    with pytest.raises(InputError, match=r"header announces 73786976294838206464 bytes of data but the file holds 0"):
        read_bin(path, TensorSpec("x", (2, 3)))


def test_a_stem_in_two_places_of_a_dump_is_refused_naming_both(tmp_path):
    from zoo_core.api.aisbench import DumpDir
    from zoo_core.api.errors import InputError

    for d in ("r1", "r2"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "s_0.bin").write_bytes(b"\0" * 4)
    with pytest.raises(InputError, match=r"s_0.bin appears twice: .*r1/s_0.bin and .*r2/s_0.bin|"
                                         r"s_0.bin appears twice: .*r2/s_0.bin and .*r1/s_0.bin"):
        DumpDir(tmp_path, 1)


def test_an_npy_header_announcing_an_absurd_size_says_how_many_digits(tmp_path):
    """Before: the 401-digit product of the header's shape was printed in full."""
    from zoo_core.api.aisbench import read_bin
    from zoo_core.api.errors import InputError

    path = tmp_path / "w_0.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**100,) * 4})
    with pytest.raises(InputError, match=r"header announces a 401-digit number of bytes of data but the file holds 0$"):
        read_bin(path, TensorSpec("x", (2, 3)))
