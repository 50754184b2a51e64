"""WIDER FACE ground truth: the real .mat files and the writer's round trip."""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import scipy.io

from zoo_core.api.errors import ZooError
from zoo_core.datasets.widerface import SETTINGS, WiderGroundTruth, load_wider_gt, write_wider_gt
from zoo_core.testing import shared_dir


@pytest.fixture(scope="module")
def real_gt_dir():
    root = shared_dir()
    if root is None or not (root / "widerface_gt" / "wider_face_val.mat").is_file():
        pytest.skip("shared WIDER FACE ground truth not found (set ZOO_SHARED_DIR)")
    return root / "widerface_gt"


@pytest.fixture(scope="module")
def real_gt(real_gt_dir) -> WiderGroundTruth:
    return load_wider_gt(real_gt_dir)


def test_real_counts(real_gt):
    assert len(real_gt.events) == 61
    assert real_gt.num_images == 3226
    assert real_gt.num_faces == 39708
    assert [real_gt.num_kept(s) for s in SETTINGS] == [7211, 13319, 31958]
    no_face = {s: sum(1 for ev in real_gt.keep[s] for k in ev if len(k) == 0) for s in SETTINGS}
    assert no_face == {"easy": 622, "medium": 207, "hard": 7}


def test_real_content_and_types(real_gt, real_gt_dir):
    assert real_gt.events[:3] == ["0--Parade", "1--Handshaking", "10--People_Marching"]
    assert real_gt.events == sorted(real_gt.events)
    assert real_gt.files[0][0] == "0_Parade_marchingband_1_465"
    mat = scipy.io.loadmat(real_gt_dir / "wider_hard_val.mat")
    for e, j in [(0, 0), (17, 5), (60, 3)]:
        assert real_gt.files[e][j] == mat["file_list"][e][0][j][0][0]
        raw = mat["face_bbx_list"][e][0][j][0]
        assert real_gt.boxes[e][j].dtype == np.int32 and real_gt.boxes[e][j].shape == raw.shape
        np.testing.assert_array_equal(real_gt.boxes[e][j], raw)
        assert real_gt.keep["hard"][e][j].dtype == np.int64
        np.testing.assert_array_equal(real_gt.keep["hard"][e][j], mat["gt_list"][e][0][j][0].ravel().astype(int) - 1)
    for s in SETTINGS:
        for ev_keep, ev_boxes in zip(real_gt.keep[s], real_gt.boxes):
            for k, b in zip(ev_keep, ev_boxes):
                assert k.size == 0 or (k.min() >= 0 and k.max() < len(b))
    # cumulative settings
    for e, ev in enumerate(real_gt.keep["easy"]):
        for j, k in enumerate(ev):
            assert set(k) <= set(real_gt.keep["medium"][e][j]) <= set(real_gt.keep["hard"][e][j])
    it = list(real_gt.iter_images())
    assert len(it) == 3226 and it[0] == (0, 0, "0--Parade", "0_Parade_marchingband_1_465")
    assert it[-1][:2] == (60, len(real_gt.files[60]) - 1)


def _random_gt(rng: np.random.Generator):
    events = ["0--Synth", "1--Clutter", "2--Crowd_x"]
    files, boxes, keep = [], [], {s: [] for s in SETTINGS}
    for e, ev in enumerate(events):
        n = int(rng.integers(1, 5))
        files.append([f"{idx}_{ev.split('--')[1]}_img_{rng.integers(0, 999)}{idx}" for idx in range(n)])
        ev_boxes = [rng.integers(-2, 300, size=(int(rng.integers(0, 8)), 4)).astype(np.int32) for _ in range(n)]
        ev_boxes[0] = np.zeros((0, 4), np.int32) if e == 1 else ev_boxes[0]
        boxes.append(ev_boxes)
        for s in SETTINGS:
            keep[s].append([])
        for b in ev_boxes:
            hard = np.sort(rng.permutation(len(b))[: int(rng.integers(0, len(b) + 1))]).astype(np.int64)
            medium = hard[: len(hard) // 2]
            keep["hard"][-1].append(hard)
            keep["medium"][-1].append(medium)
            keep["easy"][-1].append(medium[:1])
    return events, files, boxes, keep


def test_write_load_round_trip(tmp_path):
    events, files, boxes, keep = _random_gt(np.random.default_rng(7))
    written = write_wider_gt(tmp_path, events, files, boxes, keep)
    assert sorted(p.name for p in written) == sorted(
        ["wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat",
         "wider_face_val_bbx_gt.txt"])
    gt = load_wider_gt(tmp_path)
    assert gt.events == events and gt.files == files
    for e in range(len(events)):
        for j in range(len(files[e])):
            assert gt.boxes[e][j].dtype == np.int32
            np.testing.assert_array_equal(gt.boxes[e][j], boxes[e][j])
            for s in SETTINGS:
                assert gt.keep[s][e][j].dtype == np.int64
                np.testing.assert_array_equal(gt.keep[s][e][j], keep[s][e][j])
    assert gt.num_faces == sum(len(b) for ev in boxes for b in ev)


def test_written_nesting_matches_the_official_files(tmp_path):
    events, files, boxes, keep = _random_gt(np.random.default_rng(3))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    face = scipy.io.loadmat(tmp_path / "wider_face_val.mat")
    hard = scipy.io.loadmat(tmp_path / "wider_hard_val.mat")
    for key in ("event_list", "file_list", "face_bbx_list", "blur_label_list", "pose_label_list"):
        assert face[key].shape == (3, 1) and face[key].dtype == object
    assert set(hard) - set(face) == {"gt_list"}
    assert face["event_list"][2][0][0] == events[2]
    assert face["file_list"][0][0].shape == (len(files[0]), 1)
    assert [face["file_list"][0][0][j][0][0] for j in range(len(files[0]))] == files[0]
    b = face["face_bbx_list"][0][0][0][0]
    assert b.dtype == np.int32 and b.shape == (len(boxes[0][0]), 4)
    assert face["blur_label_list"][0][0][0][0].shape == (len(boxes[0][0]), 1)
    g = hard["gt_list"][0][0][0][0]
    assert g.dtype == np.uint16 and g.shape == (len(keep["hard"][0][0]), 1)
    np.testing.assert_array_equal(g.ravel(), keep["hard"][0][0] + 1)
    txt = (tmp_path / "wider_face_val_bbx_gt.txt").read_text().splitlines()
    assert txt[0] == f"{events[0]}/{files[0][0]}.jpg" and int(txt[1]) == len(boxes[0][0])


def test_writer_rejects_inconsistent_input(tmp_path):
    events, files, boxes, keep = _random_gt(np.random.default_rng(1))
    bad = {**keep, "hard": [[k + 100 for k in ev] for ev in keep["hard"]]}
    bad["hard"][0][0] = np.array([100], np.int64)
    with pytest.raises(ZooError, match="outside"):
        write_wider_gt(tmp_path, events, files, boxes, bad)
    with pytest.raises(ZooError, match="differ in length"):
        write_wider_gt(tmp_path, events[:2], files, boxes, keep)
    with pytest.raises(ZooError, match="lacks setting"):
        write_wider_gt(tmp_path, events, files, boxes, {"hard": keep["hard"]})


def test_missing_file(tmp_path):
    events, files, boxes, keep = _random_gt(np.random.default_rng(2))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    (tmp_path / "wider_medium_val.mat").unlink()
    with pytest.raises(ZooError, match=r"wider_medium_val.mat.*not found"):
        load_wider_gt(tmp_path)
    with pytest.raises(ZooError, match=r"wider_face_val.mat.*not found"):
        load_wider_gt(tmp_path / "nowhere")


def test_not_a_mat_file(tmp_path):
    events, files, boxes, keep = _random_gt(np.random.default_rng(2))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    (tmp_path / "wider_easy_val.mat").write_text("event_list,file_list\nthis is csv\n")
    with pytest.raises(ZooError, match=r"wider_easy_val.mat.*not a readable MATLAB"):
        load_wider_gt(tmp_path)


def test_wrong_keys(tmp_path):
    events, files, boxes, keep = _random_gt(np.random.default_rng(2))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    scipy.io.savemat(tmp_path / "wider_hard_val.mat", {"event_list": np.zeros((3, 1))})
    with pytest.raises(ZooError, match=r"wider_hard_val.mat.*missing key.*gt_list"):
        load_wider_gt(tmp_path)
    scipy.io.savemat(tmp_path / "wider_face_val.mat", {"boxes": np.zeros((3, 4))})
    with pytest.raises(ZooError, match=r"wider_face_val.mat.*missing key.*event_list"):
        load_wider_gt(tmp_path)


def test_gt_list_index_out_of_range(tmp_path):
    events, files, boxes, keep = _random_gt(np.random.default_rng(4))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    mat = scipy.io.loadmat(tmp_path / "wider_easy_val.mat")
    k = len(boxes[0][0])
    mat["gt_list"][0][0][0][0] = np.array([[k + 1]], np.uint16)
    scipy.io.savemat(tmp_path / "wider_easy_val.mat", {key: v for key, v in mat.items() if not key.startswith("__")})
    with pytest.raises(ZooError, match=rf"wider_easy_val.mat.*index {k + 1} outside 1..{k}"):
        load_wider_gt(tmp_path)


@pytest.mark.parametrize(("key", "file", "value", "shown"), [
    ("face_bbx_list", "wider_face_val.mat", np.nan, "nan"),
    ("face_bbx_list", "wider_face_val.mat", 1e12, "1000000000000.0"),
    ("face_bbx_list", "wider_face_val.mat", 10.7, "10.7"),
    ("gt_list", "wider_hard_val.mat", 1.5, "1.5"),
])
def test_ground_truth_numbers_that_a_cast_would_change_are_errors(tmp_path, key, file, value, shown):
    """Before: NaN and 1e12 became int32 garbage, 10.7 became 10 and a gt_list index of 1.5 became 1, silently."""
    events, files, boxes, keep = _random_gt(np.random.default_rng(5))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    mat = scipy.io.loadmat(tmp_path / file)
    e, j = next((e, j) for e in range(len(events)) for j, c in enumerate(mat[key][e][0][:, 0]) if c.size)
    bad = mat[key][e][0][j][0].astype(np.float64)
    bad.flat[0] = value
    mat[key][e][0][j][0] = bad
    scipy.io.savemat(tmp_path / file, {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(ZooError, match=rf"{file}.*{key}\[{e}\]\[{j}\] \(image {events[e]}/{files[e][j]}\) holds "
                                       rf"{re.escape(shown)}, not a whole number"):
        load_wider_gt(tmp_path)


def test_a_matlab_v73_file_is_named_with_the_way_out(tmp_path):
    events, files, boxes, keep = _random_gt(np.random.default_rng(6))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM"  # subsystem offset, version 0x0200, endian
    (tmp_path / "wider_face_val.mat").write_bytes(header + b"\x89HDF\r\n\x1a\n" + b"\0" * 512)
    with pytest.raises(ZooError, match=r"wider_face_val.mat.*v7.3 \(HDF5\)") as err:
        load_wider_gt(tmp_path)
    assert "-v7" in str(err.value.hint)


# -- untrusted .mat files: checked before scipy reads them ---------------------------------------------------

def _mat5(*variables: bytes) -> bytes:
    """A MATLAB 5 file (little-endian, uncompressed) of the given top-level elements."""
    return b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM" + b"".join(variables)


def _element(dtype: int, payload: bytes) -> bytes:
    return struct.pack("<II", dtype, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _matrix(cls: int, dims: tuple, name: str = "", body: bytes = b"") -> bytes:
    payload = (_element(6, struct.pack("<II", cls, 0)) + _element(5, struct.pack(f"<{len(dims)}i", *dims))
               + _element(1, name.encode()) + body)
    return struct.pack("<II", 14, len(payload)) + payload


def _load_in_child(gt_dir) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom zoo_core.api.errors import ZooError\n"
            "from zoo_core.datasets.widerface import load_wider_gt\n"
            "try:\n    load_wider_gt(sys.argv[1])\nexcept ZooError as e:\n    print('REFUSED', e)\n")
    return subprocess.run([sys.executable, "-c", code, str(gt_dir)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("change", ["string_type", "name_length"])
def test_one_changed_byte_that_segfaulted_scipy_is_an_error(tmp_path, change):
    """Before: scipy.io.loadmat segfaulted the process (exit 139, nothing printed, run.json left "running") on a
    string whose data element claims type 14 (a matrix: scipy indexes its dtype table unchecked); a name that
    claims more bytes than its matrix holds misaligns everything read after it (on the bundled sample, that
    one byte segfaulted too). Now: one ZooError line naming the file and the element; run in a child process
    so that the old code's crash fails the test instead of killing the worker."""
    events, files, boxes, keep = _random_gt(np.random.default_rng(7))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    p = tmp_path / "wider_face_val.mat"
    b = bytearray(p.read_bytes())
    at = b.index(struct.pack("<IIII", 6, 8, 4, 0))  # the array flags of the first string (class 4)
    name_tag = at + 16 + 16  # after the flags and the 2 dimensions
    assert b[name_tag:name_tag + 8] == struct.pack("<II", 1, 0)
    if change == "string_type":
        b[name_tag + 8] = 14
        reason = r"a 1x\d+ string stored as \d+ bytes of type 14"
    else:
        b[name_tag + 4] = 249
        reason = "its name element declares 249 bytes, more than its matrix holds"
    p.write_bytes(bytes(b))
    r = _load_in_child(tmp_path)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert re.match(rf"REFUSED {re.escape(str(p))}: not a readable MATLAB .mat file \(variable 'event_list': "
                    rf"{reason}\)", r.stdout), r.stdout


def test_a_cell_array_larger_than_its_file_is_refused_before_any_allocation(tmp_path):
    """Before: a 192-byte file declaring (2**31-1) x 16 cells raised MemoryError (exit 1); one declaring 300 million
    took 2.4 GB and 20 s. Cells are counted against the bytes that would hold them."""
    events, files, boxes, keep = _random_gt(np.random.default_rng(8))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    (tmp_path / "wider_face_val.mat").write_bytes(_mat5(_matrix(1, (2**31 - 1, 16), "event_list")))
    with pytest.raises(ZooError) as err:
        load_wider_gt(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'wider_face_val.mat'}: not a readable MATLAB .mat file (variable "
                              "'event_list': a cell array declares 34359738352 cells (2147483647x16), more than its "
                              "0 bytes can hold)")


@pytest.mark.parametrize(("cls", "shown"), [(255, "class 255"), (2, "struct")])
def test_a_class_scipy_cannot_read_or_wider_does_not_hold_is_refused(tmp_path, cls, shown):
    """Before: an unknown class let scipy's UnboundLocalError escape (exit 1)."""
    events, files, boxes, keep = _random_gt(np.random.default_rng(9))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    p = tmp_path / "wider_hard_val.mat"
    p.write_bytes(_mat5(_matrix(1, (1, 1), "event_list", _matrix(cls, (1, 1)))))
    with pytest.raises(ZooError, match=rf"wider_hard_val.mat: not a readable MATLAB .mat file \(variable "
                                       rf"'event_list': a {shown} matrix, which zoo does not read"):
        load_wider_gt(tmp_path)


def test_a_compressed_mat_over_the_memory_limit_is_refused(tmp_path, monkeypatch):
    """A 1 KiB compressed variable of 40 000 empty cells (about 8 MB once read) over ZOO_MAX_MAT_MB=1: refused
    before it is inflated or read; the limit is checked too."""
    from zoo_core.api.errors import ConfigError
    from zoo_core.datasets.matfile import MAT_MB_ENV, max_mat_bytes

    events, files, boxes, keep = _random_gt(np.random.default_rng(10))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    packed = zlib.compress(_matrix(1, (40000, 1), "event_list", struct.pack("<II", 14, 0) * 40000), 9)
    assert len(packed) < 1024
    (tmp_path / "wider_face_val.mat").write_bytes(_mat5(struct.pack("<II", 15, len(packed)) + packed))  # unpadded
    monkeypatch.setenv(MAT_MB_ENV, "1")
    with pytest.raises(ZooError) as err:
        load_wider_gt(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'wider_face_val.mat'}: not a readable MATLAB .mat file (variable "
                              f"'event_list': reading it would take more than the 1 MiB of memory allowed by "
                              f"{MAT_MB_ENV})\n  hint: a legitimate file that needs more memory: raise {MAT_MB_ENV}")
    (tmp_path / "wider_face_val.mat").write_bytes(_mat5(struct.pack("<II", 15, len(packed)) + packed) + bytes(2 << 20))
    with pytest.raises(ZooError, match=rf"wider_face_val.mat: not read: it is {(2 << 20) + 128 + 8 + len(packed)} "
                                       r"bytes, over the limit of 1 MiB for a WIDER FACE ground-truth file"):
        load_wider_gt(tmp_path)
    (tmp_path / "wider_face_val.mat").write_bytes(_mat5(struct.pack("<II", 15, len(packed)) + packed))
    monkeypatch.setenv(MAT_MB_ENV, "64")
    with pytest.raises(ZooError, match="missing key"):
        load_wider_gt(tmp_path)  # read within the limit (then the file just lacks WIDER's other keys)
    for bad in ("0", "-1", "1.5", "abc"):
        monkeypatch.setenv(MAT_MB_ENV, bad)
        with pytest.raises(ConfigError, match=f"{MAT_MB_ENV}='{re.escape(bad)}' is invalid"):
            max_mat_bytes()


def test_a_fifo_as_ground_truth_is_refused_unopened(tmp_path):
    events, files, boxes, keep = _random_gt(np.random.default_rng(11))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    (tmp_path / "wider_easy_val.mat").unlink()
    os.mkfifo(tmp_path / "wider_easy_val.mat")
    with pytest.raises(ZooError, match=r"wider_easy_val.mat: WIDER FACE ground-truth file is a FIFO"):
        load_wider_gt(tmp_path)


@pytest.mark.parametrize("inner", ["empty_matrix", "matrix_then_zeros"])
def test_a_compressed_variable_is_never_inflated_past_its_matrix(tmp_path, inner):
    """A zlib stream of 128 MiB of zeros (130 KB on disk) after a matrix declaring 0 bytes, or after a valid
    matrix: zlib's max_length=0 means "no limit", and scipy's own end check inflated ~256 MB blocks. Refused,
    with nothing much inflated."""
    import tracemalloc

    events, files, boxes, keep = _random_gt(np.random.default_rng(12))
    write_wider_gt(tmp_path, events, files, boxes, keep)
    head = struct.pack("<II", 14, 0) if inner == "empty_matrix" else \
        _matrix(6, (1, 1), "event_list", _element(9, struct.pack("<d", 1.0)))
    comp = zlib.compressobj(1)
    packed = comp.compress(head) + b"".join(comp.compress(bytes(1 << 20)) for _ in range(128)) + comp.flush()
    (tmp_path / "wider_face_val.mat").write_bytes(_mat5(struct.pack("<II", 15, len(packed)) + packed))
    tracemalloc.start()
    try:
        with pytest.raises(ZooError, match=r"wider_face_val.mat: not a readable MATLAB .mat file \(") as err:
            load_wider_gt(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ("too short for its array flags" if inner == "empty_matrix" else
            "its compressed data holds more than the 72 bytes its matrix declares") in str(err.value)
    assert peak < 16 << 20, peak
