"""Issue 12's bad inputs through the CLI: one ``error:`` line and exit 2 (never a traceback, an abort or a
hang), nothing written outside the run dir, nothing silently dropped.

Items fixed on the base already (unsafe ids, ``.npy`` dumps, ``meta.jsonl`` lines, stale temp files and
the umask, ONNX outputs vs ``output_spec``, NaN metrics, CenterFace non-tensor checkpoints) get their
CLI test here; their in-process tests are in test_pipeline.py / test_checkpoint_strict.py.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _clean_failure(rc: int, err: str, *texts, run_dir: Path | None = None) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and "terminate called" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") or lines[-1].startswith("  hint: "), err
    for t in texts:
        assert str(t) in err, (t, err)
    if run_dir is not None:
        assert not list(Path(run_dir).rglob("metrics.json"))


# -- environment limits ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-1", "abc", "1e9", "0"])
def test_bad_zoo_max_image_pixels_is_one_line_not_an_opencv_abort(zoo, value):
    """Before: -1 made OpenCV abort the process (exit 134); abc / 1e9 tracebacked (exit 1)."""
    for extra in ([], ["on_error=skip", "allow_skips=true"]):  # never skipped image by image
        rc, out, err = zoo("run", "model=fixture", "num_workers=1", *extra, "work_dir=run",
                           ZOO_MAX_IMAGE_PIXELS=value)
        _clean_failure(rc, err, f"ZOO_MAX_IMAGE_PIXELS='{value}' is invalid", run_dir=zoo.cwd / "run")
        assert len(err.strip().splitlines()) == 1


def test_a_bad_opencv_pixel_limit_is_refused_before_opencv_reads_it(zoo):
    rc, out, err = zoo("run", "model=fixture", "num_workers=0", "work_dir=run", OPENCV_IO_MAX_IMAGE_PIXELS="-1")
    _clean_failure(rc, err, "OPENCV_IO_MAX_IMAGE_PIXELS='-1' is invalid", run_dir=zoo.cwd / "run")


@pytest.mark.needs_torch
def test_a_valid_pixel_limit_still_refuses_big_images_from_their_header(zoo, tmp_path):
    rc, out, err = zoo("run", "model=fixture", "num_workers=0", "work_dir=run", ZOO_MAX_IMAGE_PIXELS="4000")
    _clean_failure(rc, err, "pixels, over the limit of 4000", run_dir=zoo.cwd / "run")


# -- checkpoints ---------------------------------------------------------------------------------------------

@pytest.mark.needs_torch
@pytest.mark.parametrize("epoch, ok", [(float("nan"), False), (float("inf"), False), (1.5, False), ("last", False),
                                       (3.0, True), (7, True), (None, True)])
def test_centernet_epoch_must_be_a_whole_number(tmp_path, epoch, ok):
    import torch

    from zoo_centernet.weights import read_state_dict
    from zoo_core.api.errors import ZooError

    path = tmp_path / "c.pth"
    torch.save({**({} if epoch is None else {"epoch": epoch}), "state_dict": {"a": torch.zeros(1)}}, path)
    if ok:
        assert read_state_dict(path)[1] == (None if epoch is None else int(epoch))
        return
    with pytest.raises(ZooError, match=r"c.pth: checkpoint entry 'epoch' is .*: expected a whole number"):
        read_state_dict(path)
    torch.save({"epoch": torch.tensor(float("nan")), "state_dict": {"a": torch.zeros(1)}}, path)
    with pytest.raises(ZooError, match="'epoch' is nan"):
        read_state_dict(path)


@pytest.mark.needs_torch
@pytest.mark.slow
def test_centernet_checkpoint_with_epoch_nan_through_the_cli(zoo):
    """Before: a real DLA-34 state dict with epoch=NaN loaded, then int(nan) tracebacked (exit 1)."""
    import torch

    from zoo_centernet.dla import build_dla34_ctdet

    path = zoo.cwd / "nan_epoch.pth"
    torch.save({"epoch": float("nan"), "state_dict": build_dla34_ctdet().state_dict()}, path)
    rc, out, err = zoo("run", "model=centernet", "dataset=coco_sample", "stage=export", f"weights={path}",
                       "work_dir=run")
    _clean_failure(rc, err, path, "checkpoint entry 'epoch' is nan: expected a whole number")
    assert not list((zoo.cwd / "run").rglob("*.onnx"))


@pytest.mark.needs_torch
def test_centerface_checkpoint_with_non_tensor_values_through_the_cli(zoo):
    import torch

    path = zoo.cwd / "odd.pth"
    torch.save({"state_dict": {"conv.weight": torch.zeros(1), "note": "not a tensor", "n": 3}}, path)
    rc, out, err = zoo("run", "model=centerface", "model.variant=ascend", "stage=export", "export.target=ascend",
                       f"weights={path}", "work_dir=run")
    _clean_failure(rc, err, path, "state dict entries that are not tensors (2): note, n")
    assert len(err.strip().splitlines()) == 1 and not list((zoo.cwd / "run").rglob("*.onnx"))


@pytest.mark.needs_torch
def test_centernet_export_writes_a_swept_temp_name_and_honours_the_umask(tmp_path, monkeypatch):
    """Its own temp file carries the pid (so a killed export's 16-77 MB temp is swept) and the ONNX gets
    the umask's mode, not mkstemp's 0600."""
    import torch

    import zoo_centernet.export as cn_export

    seen = []
    real = torch.onnx.export

    def spy(model, args, f, *a, **kw):
        seen.append(Path(f).name)
        return real(model, args, f, *a, **kw)

    monkeypatch.setattr(torch.onnx, "export", spy)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1))
    model.heads = {"hm": 2}
    old = os.umask(0o027)
    try:
        out = cn_export.export_onnx(model, tmp_path / "m.onnx", "onnxruntime", dcn_impl="gridsample",
                                    input_hw=(32, 32)).path
    finally:
        os.umask(old)
    assert seen and seen[0].startswith(f".m.onnx.{os.getpid()}.") and seen[0].endswith(".tmp")
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# -- run directories -----------------------------------------------------------------------------------------

def test_work_dir_naming_a_file_is_one_line(zoo):
    """Before: Hydra's mkdir of <work_dir>/<stage> tracebacked (NotADirectoryError, exit 1)."""
    (zoo.cwd / "afile").write_text("mine")
    rc, out, err = zoo("run", "model=fixture", "work_dir=afile")
    _clean_failure(rc, err, "afile: the run directory is a file, not a directory")
    rc, out, err = zoo("run", "model=fixture", "work_dir=afile/sub")
    _clean_failure(rc, err, "the run directory afile/sub cannot be made: afile is a file")
    rc, out, err = zoo("run", "model=fixture", "work_dir=ok", "model_dir=afile")
    _clean_failure(rc, err, "afile: the model directory is a file, not a directory")
    assert (zoo.cwd / "afile").read_text() == "mine" and not (zoo.cwd / "ok").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_links_planted_in_a_run_dir_are_refused_and_their_targets_untouched(zoo):
    """Before: a ``.zoo.lock`` link to a file emptied it, and a record dir linked elsewhere had its
    target's files deleted (and Hydra's records written there)."""
    victim = zoo.cwd / "victim.txt"
    victim.write_text("precious")
    elsewhere = zoo.cwd / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "important.txt").write_text("keep")
    run = zoo.cwd / "run"
    run.mkdir()
    (run / ".zoo.lock").symlink_to(victim)
    rc, out, err = zoo("run", "model=fixture", "stage=eval", "work_dir=run")
    _clean_failure(rc, err, "lock file is a symbolic link", run_dir=run)
    (run / ".zoo.lock").unlink()
    (run / "eval").symlink_to(elsewhere)
    rc, out, err = zoo("run", "model=fixture", "stage=eval", "work_dir=run")
    _clean_failure(rc, err, "run/eval: is a symbolic link", run_dir=run)
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["important.txt"]


def test_stale_temp_files_of_a_killed_writer_are_swept_by_the_next_run(zoo, fixture_onnx):
    root = zoo.cwd / "run"
    pid = _dead_pid()
    stale = [root / "model" / f".fixture_onnxruntime.onnx.{pid}.1a2b3c4d.tmp", root / f".x.{pid}.abcd.tmp",
             root / "detections" / f".chunk_000.json.{pid}.beef.tmp"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0" * 4096)
    live = root / f".y.{os.getpid()}.abcd.tmp"  # a live writer's temp file is left alone
    live.write_bytes(b"x")
    rc, out, err = zoo("run", "model=fixture", "num_workers=0", f"model_file={fixture_onnx}", "work_dir=run")
    assert rc == 0, err
    assert not any(p.exists() for p in stale) and live.exists()
    assert all(f"removed {p}, left by a killed run" in err for p in stale), err


@pytest.mark.needs_torch
def test_every_written_file_honours_the_umask_through_the_cli(zoo):
    env = zoo.env()
    proc = subprocess.run([sys.executable, "-m", "zoo_core.cli", "run", "model=fixture", "num_workers=0",
                           "work_dir=run"], cwd=zoo.cwd, env=env, capture_output=True, text=True, umask=0o027,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    files = [p for p in (zoo.cwd / "run").rglob("*") if p.is_file() and p.name != ".zoo.lock"]
    assert any(p.suffix == ".onnx" for p in files) and any(p.name == "metrics.json" for p in files)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o640"}, modes


# -- inputs and dumps ----------------------------------------------------------------------------------------

def _copy_inputs(infer_run: Path, dest: Path) -> Path:
    shutil.copytree(infer_run / "inputs", dest)
    return dest


def test_infer_refuses_an_id_that_would_leave_the_outputs_dir(zoo, infer_run, fixture_onnx):
    """Before: a meta.jsonl id '../../x' wrote x_0.bin two levels above the outputs dir."""
    seed = _copy_inputs(infer_run, zoo.cwd / "seed")
    lines = (seed / "meta.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    shutil.copy(seed / f"{rec['id']}.bin", zoo.cwd / "x.bin")
    rec["id"] = "../../x"
    lines[2] = json.dumps(rec)
    (seed / "meta.jsonl").write_text("\n".join(lines) + "\n")
    rc, out, err = zoo("run", "model=fixture", "stage=infer", f"inputs_dir={seed}", f"model_file={fixture_onnx}",
                       "work_dir=run/a/b")
    _clean_failure(rc, err, f"{seed / 'meta.jsonl'}:3: unsafe id '../../x'", "contains a path separator")
    assert not list(zoo.cwd.rglob("x_0.bin"))


@pytest.mark.parametrize("case, text", [
    ("array", "line 4 is not a JSON object"),
    ("no_id", 'line 4 has no "id"'),
    ("torn_middle", "line 4 is not valid JSON"),
    ("size", "is 8 bytes; tensor image (1, 64, 64) as float32 needs 16384"),
    ("crc", "changed since preprocess wrote it (CRC-32 differs from meta.jsonl)"),
    ("surrogate", "meta.jsonl:4: unsafe id '\\ud800': it contains a lone surrogate"),
])
def test_a_bad_meta_jsonl_or_a_bin_that_disagrees_with_it_fails_infer(zoo, infer_run, fixture_onnx, case, text):
    seed = _copy_inputs(infer_run, zoo.cwd / "seed")
    lines = (seed / "meta.jsonl").read_text().splitlines()
    first = json.loads(lines[3])["id"]
    if case == "array":
        lines[3] = "[1, 2, 3]"
    elif case == "no_id":
        lines[3] = json.dumps({k: v for k, v in json.loads(lines[3]).items() if k != "id"})
    elif case == "torn_middle":  # a line cut by a kill, followed by more lines: never silently dropped
        lines[3] = lines[3][: len(lines[3]) // 2]
    elif case == "surrogate":  # valid JSON ("\ud800"), but no file name can hold it
        lines[3] = lines[3].replace(json.dumps(first), '"\\ud800"', 1)
    elif case == "size":
        (seed / f"{first}.bin").write_bytes(b"\0" * 8)
    else:
        data = bytearray((seed / f"{first}.bin").read_bytes())
        data[100] ^= 0xFF
        (seed / f"{first}.bin").write_bytes(bytes(data))
    (seed / "meta.jsonl").write_text("\n".join(lines) + "\n")
    rc, out, err = zoo("run", "model=fixture", "stage=infer", f"inputs_dir={seed}", f"model_file={fixture_onnx}",
                       "work_dir=run")
    _clean_failure(rc, err, text)
    assert (str(seed / "meta.jsonl") in err) or (f"{first}.bin" in err)


@pytest.mark.parametrize("score, key, value, problem", [
    ("true", "scale_xy", [float("nan"), 1.0], "meta['scale_xy'][0] is nan"),  # json writes NaN
    ("false", "scale_xy", [float("nan"), 1.0], "meta['scale_xy'][0] is nan"),
])
def test_postprocess_refuses_a_meta_jsonl_scale_of_nan_naming_the_file_and_line(zoo, infer_run, score, key, value,
                                                                                 problem):
    """Before: "s": NaN scored AP 0.51 instead of 1.0 with NaN boxes, and stage.score=false wrote a
    detections.json holding NaN (not JSON), exit 0."""
    seed = _copy_inputs(infer_run, zoo.cwd / "seed")
    lines = (seed / "meta.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    lines[2] = json.dumps({**rec, "meta": {**rec["meta"], key: value}})
    (seed / "meta.jsonl").write_text("\n".join(lines) + "\n")
    rc, out, err = zoo("run", "model=fixture", "stage=postprocess", f"inputs_dir={seed}",
                       f"outputs_dir={infer_run / 'outputs'}", f"stage.score={score}", "num_workers=0", "work_dir=run")
    _clean_failure(rc, err, f"{seed / 'meta.jsonl'}: line 3 ({rec['id']!r}): {problem}", run_dir=zoo.cwd / "run")
    assert not [p for p in (zoo.cwd / "run").rglob("*") if p.name in ("detections.json", "predictions")]


def test_evaluate_refuses_a_detections_chunk_with_a_nan_box_naming_the_chunk(zoo, infer_run):
    """Before: NaN / inf boxes of a tampered chunk were scored (AP 0.33 / 0.46), exit 0."""
    zoo.ok("run", "model=fixture", "stage=postprocess", f"outputs_dir={infer_run / 'outputs'}", "num_workers=0",
           "work_dir=run")
    chunk = next((zoo.cwd / "run" / "detections").glob("chunk-*.npz"))
    with np.load(chunk) as z:
        arrays = {k: z[k] for k in z.files}
    first = str(arrays["ids"][0])
    arrays["boxes"][0, 0] = np.nan
    np.savez(chunk, **arrays)
    rc, out, err = zoo("run", "model=fixture", "stage=evaluate", f"detections={zoo.cwd / 'run' / 'detections'}",
                       "work_dir=ev")
    _clean_failure(rc, err, f"{chunk}: detections of image {first!r}: box 0 [nan, ", "holds a NaN or an infinity",
                   run_dir=zoo.cwd / "ev")


def test_bad_npy_outputs_fail_or_are_skipped_and_listed(zoo, infer_run):
    """Garbage, pickled-object and lying-header .npy files: never unpickled, never allocated from the header."""
    dump = zoo.cwd / "dump"
    shutil.copytree(infer_run / "outputs", dump)
    (dump / "index.jsonl").unlink()
    (dump / "sq001_0.bin").unlink()
    (dump / "sq001_0.npy").write_bytes(b"garbage, not an array")
    (dump / "sq002_0.bin").unlink()
    np.save(dump / "sq002_0.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    (dump / "sq003_0.bin").unlink()
    with open(dump / "sq003_0.npy", "wb") as f:  # announces 4 TiB of float32
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
    args = ["run", "model=fixture", "stage=postprocess", f"outputs_dir={dump}", "num_workers=0"]
    rc, out, err = zoo(*args, "work_dir=a")
    _clean_failure(rc, err, "sq001_0.npy: not a valid .npy file", run_dir=zoo.cwd / "a")
    rc, out, err = zoo(*args, "work_dir=b", "on_error=skip")
    assert rc == 2 and "allow_skips" in err and "Traceback" not in err, err
    m = json.loads((zoo.cwd / "b" / "postprocess" / "metrics.json").read_text())
    reasons = {s["id"]: s["reason"] for s in m["skipped"]}
    assert sorted(reasons) == ["sq001", "sq002", "sq003"] and m["images"] == 9
    assert "not a valid .npy file" in reasons["sq001"] and "holds Python objects" in reasons["sq002"]
    assert "header announces 4398046511104 bytes" in reasons["sq003"]


def _onnx_halving(path: Path) -> Path:
    """image (N,1,64,64) -> mask (N,1,32,32): the right input, outputs that disagree with output_spec."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 64, 64])
    y = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, 32, 32])
    node = helper.make_node("MaxPool", ["image"], ["mask"], kernel_shape=[2, 2], strides=[2, 2])
    m = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_an_onnx_whose_outputs_disagree_with_output_spec_is_refused_not_scored_zero(zoo):
    model = _onnx_halving(zoo.cwd / "half.onnx")
    rc, out, err = zoo("run", "model=fixture", "num_workers=0", f"model_file={model}", "work_dir=run")
    _clean_failure(rc, err, model, "(1, 32, 32)", "disagree with the model's output_spec", "(1, 64, 64)",
                   run_dir=zoo.cwd / "run")


def test_an_undefined_metric_is_written_as_null_with_its_reason(zoo):
    """The first sample image has no 'easy' face: WIDER easy AP is undefined (was a bare NaN in metrics.json)."""
    rc, out, err = zoo("run", "model=centerface", "dataset.limit=1", "num_workers=0", "work_dir=run")
    assert rc == 0, err
    text = (zoo.cwd / "run" / "eval" / "metrics.json").read_text()

    def no_bare_constant(name):
        raise AssertionError(f"metrics.json holds a bare {name}")

    m = json.loads(text, parse_constant=no_bare_constant)
    assert m["metrics"]["easy"] is None and "the evaluator returned nan" in m["null_metrics"]["easy"]
    assert all(isinstance(v, float) and math.isfinite(v) for k, v in m["metrics"].items() if k != "easy")


@pytest.mark.needs_torch
def test_a_detections_state_file_nested_too_deeply_is_one_line(zoo):
    """Before: RecursionError, exit 1, from the provenance check of stage=evaluate."""
    zoo.ok("run", "model=fixture", "stage=eval", "work_dir=run")
    state = zoo.cwd / "run" / "detections" / "state.json"
    state.write_text("[" * 100_000 + "]" * 100_000)
    rc, out, err = zoo("run", "model=fixture", "stage=evaluate", "detections=run/detections", "work_dir=again")
    _clean_failure(rc, err, "run/detections/state.json: unreadable detections state file")
