"""A model's fingerprint (``sha256_file``): an ONNX with external data is hashed with its data files; a file that
cannot be read is one line naming it, and the run that met it is recorded as failed."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_resume import _ctx
from zoo_core.api.errors import ZooError
from zoo_core.runs.fingerprint import file_record, onnx_external_data, sha256_file


def _model(folder: Path, seed: int, external: bool = True, location: str = "m.data") -> Path:
    """The fixture model's interface (image -> mask): a 3x3 Conv and a Sigmoid, its weights from ``seed``, saved as
    ``folder/m.onnx`` with every tensor in the external data file ``location`` (or inside the model)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([rng.standard_normal()], np.float32), "b")]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["mask"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 1, "H", "W"])],
                              [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", 1, "H", "W"])], inits)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


@pytest.fixture
def two_sets(tmp_path) -> tuple[Path, Path]:
    """``a/m.onnx`` + ``a/m.data`` and ``b/m.onnx`` + ``b/m.data``: the same .onnx bytes, other weights."""
    a, b = _model(tmp_path / "a", 0), _model(tmp_path / "b", 1)
    assert a.read_bytes() == b.read_bytes() and (a.parent / "m.data").read_bytes() != (b.parent / "m.data").read_bytes()
    return a, b


def _swap_data(model: Path, other: Path) -> None:
    """Only ``model``'s data file edited: it now holds ``other``'s weights (a later mtime, as an edit gives)."""
    data = model.parent / "m.data"
    shutil.copyfile(other.parent / "m.data", data)
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_a_model_without_external_data_keeps_the_sha256_of_its_bytes(tmp_path):
    """Records written before (run.json, state.json, export and INT8 records) stay valid."""
    path = _model(tmp_path, 0, external=False)
    assert onnx_external_data(path) == ()
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest() == file_record(path)["sha256"]
    text = tmp_path / "notes.onnx"  # not an ONNX model at all, yet naming a "location": its bytes
    text.write_bytes(b"location: m.data")
    assert sha256_file(text) == hashlib.sha256(b"location: m.data").hexdigest()


def test_the_digest_of_an_onnx_covers_its_external_data_file(two_sets):
    """Before: only the .onnx was hashed, so a model whose weights changed in its data file had the same digest."""
    a, b = two_sets
    assert onnx_external_data(a) == ("m.data",)
    before = sha256_file(a)
    assert before != hashlib.sha256(a.read_bytes()).hexdigest()
    assert sha256_file(b) != before
    _swap_data(a, b)
    assert sha256_file(a) == sha256_file(b) != before
    assert file_record(a)["sha256"] == sha256_file(b)


def test_every_external_data_file_is_listed_once_in_first_use_order_subgraphs_included(tmp_path):
    """Initializers first, then node attribute tensors (a Constant inside an If's branch too), each file once."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import convert_model_to_external_data

    def const(name):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.ones(300, np.float32), name))

    branch = helper.make_graph([const("k")], "then", [], [helper.make_tensor_value_info("k", TensorProto.FLOAT, None)])
    nodes = [const("c"), helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.zeros(300, np.float32), "w")])
    path = tmp_path / "m.onnx"
    model = helper.make_model(graph)
    convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=0, convert_attribute=True)
    onnx.save_model(model, str(path))
    assert onnx_external_data(path) == ("w", "c", "k")
    before = sha256_file(path)
    (tmp_path / "k").write_bytes(np.full(300, 2, np.float32).tobytes())  # only the subgraph's constant
    assert sha256_file(path) != before


@pytest.mark.parametrize("location", ["/tmp/m.data", "../m.data", "sub/../../m.data"])
def test_an_external_data_location_outside_the_models_folder_is_refused_naming_the_model(tmp_path, location):
    import onnx

    path = _model(tmp_path / "x", 0)
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(path))
    with pytest.raises(ZooError) as e:
        sha256_file(path)
    assert str(e.value).startswith(f"{path}: its external data location {location!r} is not a file inside the "
                                   f"model's folder")


def test_a_missing_external_data_file_is_named(two_sets):
    a, _ = two_sets
    (a.parent / "m.data").unlink()
    with pytest.raises(ZooError, match=rf"^{a.parent / 'm.data'}: cannot read the external data file of {a} to hash "
                                       rf"it \(No such file or directory\)"):
        sha256_file(a)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
def test_an_external_data_file_that_is_not_a_regular_file_is_refused_unread(two_sets, kind):
    """Before: a FIFO as the data file blocked stage=convert forever (its hash's open()), a link to /dev/zero was
    read without end. Now one line naming the data file, from its stat alone."""
    import threading

    a, _ = two_sets
    data = a.parent / "m.data"
    data.unlink()
    said = {"fifo": "a FIFO (named pipe)", "dev_zero": "a character device", "directory": "a directory"}[kind]
    if kind == "fifo":
        os.mkfifo(data)
    elif kind == "dev_zero":
        data.symlink_to("/dev/zero")
    else:
        data.mkdir()
    out: list = []

    def digest() -> None:
        try:
            out.append(sha256_file(a))
        except ZooError as exc:
            out.append(str(exc))

    t = threading.Thread(target=digest, daemon=True)
    t.start()
    t.join(10)
    blocked = t.is_alive()
    if blocked and kind == "fifo":  # the old code: unblock its open() so the test can end
        os.close(os.open(data, os.O_WRONLY | os.O_NONBLOCK))
    assert not blocked
    assert out == [f"{data}: cannot hash the external data file of {a}: it is {said}, not a regular file"]


def test_resume_after_only_the_data_file_changed_is_refused(fixture_cfg, two_sets, tmp_path):
    """Before: resume=true kept the detections of the old weights and added those of the new ones (audit: hard AP
    0.7557, vs 0.7409 / 0.7652 for each set alone), exit 0."""
    from zoo_core.runs.resume import ResumeRefused
    from zoo_core.runs.run_stage import run_stage

    a, b = two_sets
    over = {"backend.name": "onnxruntime", "model_file": str(a), "stage.flush_every": 4}
    run_stage(_ctx(fixture_cfg, tmp_path / "run", "eval", **over))
    state = tmp_path / "run" / "detections" / "state.json"
    s = json.loads(state.read_text())
    s["complete"] = False  # killed
    state.write_text(json.dumps(s))
    _swap_data(a, b)
    with pytest.raises(ResumeRefused, match="cannot resume: model_file_sha256 changed since the interrupted run"):
        run_stage(_ctx(fixture_cfg, tmp_path / "run", "eval", resume=True, **over))


def test_an_int8_model_is_rebuilt_when_only_the_fp32_data_file_changed(fixture_cfg, two_sets, tmp_path, caplog):
    """Before: 'reusing ... its quantization inputs are unchanged': the INT8 model of the old FP32 weights."""
    from tests.test_quantize import _int8_job
    from zoo_core.quantize.onnxruntime_int8 import ensure_int8_onnx

    a, b = two_sets
    first = ensure_int8_onnx(_int8_job(fixture_cfg, a, tmp_path / "r", 0, tmp_path / "model")).read_bytes()
    _swap_data(a, b)
    with caplog.at_level("INFO", logger="zoo"):
        second = ensure_int8_onnx(_int8_job(fixture_cfg, a, tmp_path / "r", 0, tmp_path / "model")).read_bytes()
    assert "reusing" not in caplog.text and "fp32_sha256" in caplog.text
    assert second != first
    assert second == ensure_int8_onnx(_int8_job(fixture_cfg, b, tmp_path / "rb", 0, tmp_path / "mb")).read_bytes()


def test_compare_of_two_models_differing_only_in_their_data_files_is_not_refused(two_sets, tmp_path):
    """Before: refused as 'the same model' (the .onnx files are byte-identical). A copy with its data still is."""
    from tests.test_compare_stream import FakeBackend
    from zoo_core.api.errors import ConfigError
    from zoo_core.stages.compare_stage import refuse_same_sides

    a, b = two_sets
    refuse_same_sides(FakeBackend(label=str(a)), FakeBackend(label=str(b)))
    copy = tmp_path / "copy"
    shutil.copytree(a.parent, copy)
    with pytest.raises(ConfigError, match="the reference and the candidate are the same model"):
        refuse_same_sides(FakeBackend(label=str(a)), FakeBackend(label=str(copy / "m.onnx")))


def _eio_reading(monkeypatch, victim: Path) -> None:
    """Reading ``victim`` fails as a bad disk (or /proc/self/mem) does: EIO, an OSError naming no file."""
    from zoo_core.runs import fingerprint

    real = open

    class Failing:
        def __init__(self, f):
            self.f = f

        def fileno(self):
            return self.f.fileno()

        def read(self, *a):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, *a, **k):
        f = real(path, *a, **k)
        return Failing(f) if Path(path) == victim else f

    monkeypatch.setattr(fingerprint, "open", fake_open, raising=False)


def test_weights_that_cannot_be_read_to_hash_are_named_and_the_run_recorded_failed(fixture_cfg, tmp_path, monkeypatch):
    """Before: 'error: Input/output error' naming no file, exit 2, and no run.json (the first record of the run
    hashed the weights, outside the code that records a failure)."""
    from zoo_core.runs.run_stage import run_stage

    w = tmp_path / "w.pth"
    w.write_bytes(b"weights")
    _eio_reading(monkeypatch, w)
    with pytest.raises(ZooError) as e:
        run_stage(_ctx(fixture_cfg, tmp_path / "run", "export", weights=str(w)))
    line = f"{w}: cannot read the file to hash it (Input/output error)"
    assert str(e.value) == line and e.value.exit_code == 2
    rec = json.loads((tmp_path / "run" / "export" / "run.json").read_text())
    assert rec["status"] == "failed" and rec["error"] == line
    assert rec["inputs"]["weights"] == {"path": str(w), "error": line}


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc/self/mem (reads fail with EIO)")
def test_cli_weights_reading_eio_names_the_file(zoo):
    link = zoo.cwd / "mem.pth"
    link.symlink_to("/proc/self/mem")
    rc, out, err = zoo("run", "model=fixture", "stage=export", f"weights={link}", "work_dir=run")
    assert rc == 2 and err.strip() == f"error: {link}: cannot read the file to hash it (Input/output error)", err
    assert json.loads((zoo.cwd / "run" / "export" / "run.json").read_text())["status"] == "failed"
