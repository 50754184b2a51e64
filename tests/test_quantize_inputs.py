"""What ``stage=quantize`` / ``quantize=int8`` accept and what the INT8 model's record says about its calibration
(docs/quantize.md, docs/errors.md): the calibration images' bytes, skipped images, the source ONNX, settings."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from zoo_fixture.squares import make_squares


@pytest.fixture
def squares(tmp_path) -> Path:
    root = tmp_path / "squares"
    make_squares(root, n=12, seed=0)
    return root


def _record(zoo, work="outputs/fixture"):
    return json.loads((zoo.cwd / work / "model" / "fixture_onnxruntime_int8.json").read_text())


def test_an_image_rewritten_under_the_same_id_re_quantizes(zoo, fixture_onnx, squares):
    """Before: the fingerprint held the calibration ids only, so an INT8 model calibrated on other bytes (an image
    replaced, or restored after an on_error=skip run) was reused."""
    args = ("run", "model=fixture", "stage=quantize", f"model_file={fixture_onnx}", f"dataset.root={squares}",
            "quantize.calibration_images=12")
    zoo.ok(*args)
    before = _record(zoo)
    images = sorted((squares / "images").glob("*.png"))
    shutil.copyfile(images[1], images[0])  # same id, other bytes
    zoo.ok(*args)
    log = (zoo.cwd / "outputs" / "fixture" / "quantize" / "zoo.log").read_text()
    assert "rebuilding fixture_onnxruntime_int8.onnx" in log and "calibration_sha256" in log
    after = _record(zoo)
    assert after["fingerprint"]["calibration_ids"] == before["fingerprint"]["calibration_ids"]
    i = after["fingerprint"]["calibration_ids"].index(images[0].stem)
    assert after["fingerprint"]["calibration_sha256"][i] == after["fingerprint"]["calibration_sha256"][i + 1]
    assert after["calibration"]["tensors_sha256"] != before["calibration"]["tensors_sha256"]
    zoo.ok(*args)  # unchanged bytes: reused
    assert "reusing" in (zoo.cwd / "outputs" / "fixture" / "quantize" / "zoo.log").read_text()


def _onnx_with_input(path: Path, name: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 64, 64])
    graph = helper.make_graph([helper.make_node("Sigmoid", [name], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _external_data_onnx(src: Path, folder: Path, how: str) -> Path:
    """``src`` with its initializers in an external file that onnx refuses to read (``how``: outside the model's
    folder, an absolute path, a symbolic link) or that is missing."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    onnx.save(model, str(folder / "m.onnx"))
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    data = folder / "w.bin"
    location = {"outside": "../w.bin", "absolute": str(folder.parent / "w.bin"), "symlink": "link.bin",
                "missing": "w.bin"}[how]
    if how == "missing":
        data.unlink()
    else:
        data.rename(folder.parent / "w.bin")
    if how == "symlink":
        (folder / "link.bin").symlink_to(folder.parent / "w.bin")
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(folder / "m.onnx"))
    return folder / "m.onnx"


@pytest.mark.parametrize("how", ["outside", "absolute", "symlink", "missing"])
def test_external_data_onnx_refuses_is_one_error_naming_the_model(fixture_onnx, tmp_path, how):
    """Before: onnx's ValidationError escaped prepared_model (``error: ValidationError``, exit 1, after calibrating)."""
    from types import SimpleNamespace

    from zoo_core.api.errors import ZooError
    from zoo_core.quantize.onnxruntime_int8 import prepared_model
    from zoo_core.quantize.source import source_model

    bad = _external_data_onnx(fixture_onnx, tmp_path / "m", how)
    ctx = SimpleNamespace(model_name="fixture")
    for load in (lambda: source_model(ctx, bad, [SimpleNamespace(name="image")]),  # before any calibration
                 lambda: prepared_model(bad, False, tmp_path)):
        with pytest.raises(ZooError) as info:
            load()
        text = str(info.value)
        assert text.startswith(f"{bad}: cannot load the ONNX model's external data (") and "\n" not in text
    ok = _external_data_onnx(fixture_onnx, tmp_path / "ok", "outside")
    (tmp_path / "w.bin").rename(tmp_path / "ok" / "w.bin")
    import onnx

    model = onnx.load(str(ok), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "w.bin"
    onnx.save(model, str(ok))
    assert len(source_model(ctx, ok, [SimpleNamespace(name="image")]).graph.initializer) > 0


@pytest.mark.parametrize("kind", ["text", "truncated", "other_model", "external_outside"])
@pytest.mark.parametrize("stage", ["stage=quantize", "stage=eval quantize=int8"])
def test_a_model_file_that_is_not_an_onnx_of_the_model_is_refused_naming_it(zoo, fixture_onnx, tmp_path, kind, stage):
    """Before: a DecodeError (exit 1, file not named) for a non-ONNX or truncated file, and onnxruntime's "Required
    inputs (['x']) are missing" (exit 1) for another model's ONNX, after calibrating; onnx's ValidationError
    (exit 1, not named) for external data outside the model's folder."""
    bad = tmp_path / "bad.onnx"
    if kind == "text":
        bad.write_text("hello\n")
    elif kind == "truncated":
        bad.write_bytes(fixture_onnx.read_bytes()[: fixture_onnx.stat().st_size // 2])
    elif kind == "external_outside":
        bad = _external_data_onnx(fixture_onnx, tmp_path / "m", "outside")
    else:
        _onnx_with_input(bad, "x")
    rc, out, err = zoo("run", "model=fixture", *stage.split(), f"model_file={bad}")
    assert rc == 2 and "Traceback" not in err, err
    assert f"{bad}: " in err and len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1
    if kind == "other_model":
        assert "its inputs ['x'] are not the fixture model's ['image']" in err
    elif kind == "external_outside":  # (refused by the model's fingerprint, which hashes the data files it names)
        assert f"{bad}: its external data location '../w.bin' is not a file inside the model's folder" in err
    else:
        assert "not a readable ONNX model" in err or "not an ONNX model" in err
    assert not (zoo.cwd / "outputs" / "fixture" / "model" / "fixture_onnxruntime_int8.onnx").exists()


def test_calibration_skips_need_allow_skips_and_are_recorded(zoo, fixture_onnx, squares):
    """Before: with on_error=skip the record said "images": 11 but listed all 12 ids, the skip was a warning in
    zoo.log only, and the run exited 0 without allow_skips=true."""
    args = ("run", "model=fixture", "stage=quantize", f"model_file={fixture_onnx}", f"dataset.root={squares}",
            "quantize.calibration_images=12", "on_error=skip")
    images = sorted((squares / "images").glob("*.png"))
    gone = images[3]
    kept = gone.read_bytes()
    gone.unlink()
    rc, out, err = zoo(*args)
    assert rc == 2 and "1 calibration image(s) were skipped" in err and str(gone) in err and "allow_skips=true" in err
    model_dir = zoo.cwd / "outputs" / "fixture" / "model"
    assert not (model_dir / "fixture_onnxruntime_int8.onnx").exists()
    zoo.ok(*args, "allow_skips=true")
    cal = _record(zoo)["calibration"]
    assert cal["images"] == 11 == len(cal["ids"]) and gone.stem not in cal["ids"]
    assert [(s["id"], s["path"]) for s in cal["skipped"]] == [(gone.stem, str(gone))]
    run = json.loads((zoo.cwd / "outputs" / "fixture" / "quantize" / "run.json").read_text())
    assert run["status"] == "ok" and run["int8_calibration"]["skipped"] == cal["skipped"]
    assert run["int8_calibration"]["images"] == 11
    # the model calibrated without it is not reused silently by a run that does not allow skips
    rc, out, err = zoo("run", "model=fixture", "stage=eval", "quantize=int8", f"model_file={fixture_onnx}",
                       f"dataset.root={squares}", "quantize.calibration_images=12", "on_error=skip")
    assert rc == 2 and "was calibrated without them" in err
    gone.write_bytes(kept)  # restored: its sha256 is back in the fingerprint, so the model is rebuilt on all 12
    zoo.ok(*args)
    cal = _record(zoo)["calibration"]
    assert cal["images"] == 12 and cal["skipped"] == []


def test_ascend_calibration_skips_need_allow_skips(zoo, fixture_onnx, squares):
    images = sorted((squares / "images").glob("*.png"))
    images[0].unlink()
    args = ("run", "model=fixture", "stage=quantize", "export.target=ascend", f"model_file={fixture_onnx}",
            f"dataset.root={squares}", "quantize.calibration_images=12", "on_error=skip")
    rc, out, err = zoo(*args)
    assert rc == 2 and "1 calibration image(s) were skipped" in err and str(images[0]) in err
    assert not (zoo.cwd / "outputs" / "fixture" / "model" / "calibration").exists()
    zoo.ok(*args, "allow_skips=true")
    bins = sorted((zoo.cwd / "outputs" / "fixture" / "model" / "calibration" / "image").glob("*.bin"))
    run = json.loads((zoo.cwd / "outputs" / "fixture" / "quantize" / "run.json").read_text())
    assert len(bins) == 11 == run["amct_calibration"]["images"] == len(run["amct_calibration"]["ids"])
    assert [s["id"] for s in run["amct_calibration"]["skipped"]] == [images[0].stem]


@pytest.mark.parametrize("target", ["onnxruntime", "ascend"])
def test_an_already_quantized_model_file_is_refused(zoo, fixture_onnx, target):
    """Before: the INT8 model given as model_file was quantized again (exit 0, a file 101.9 % of the FP32 one)."""
    zoo.ok("run", "model=fixture", "stage=quantize", f"model_file={fixture_onnx}", "quantize.calibration_images=2")
    int8 = zoo.cwd / "outputs" / "fixture" / "model" / "fixture_onnxruntime_int8.onnx"
    rc, out, err = zoo("run", "model=fixture", "stage=quantize", f"export.target={target}", f"model_file={int8}",
                       "work_dir=again", "quantize.calibration_images=2")
    assert rc == 2 and f"{int8}: already quantized (DequantizeLinear x" in err and "QuantizeLinear x" in err, err
    assert "quantize=none model_file=" in err
    assert not (zoo.cwd / "again" / "model").exists() or not list((zoo.cwd / "again" / "model").rglob("*.onnx"))


def test_an_exclude_op_type_absent_from_the_graph_is_refused(zoo, fixture_onnx):
    """Before: 'quantize.exclude_op_types=[conv,NoSuchOp]' was accepted silently (nothing excluded)."""
    rc, out, err = zoo("run", "model=fixture", "stage=quantize", f"model_file={fixture_onnx}",
                       "quantize.exclude_op_types=[conv,NoSuchOp]", "quantize.calibration_images=2")
    assert rc == 2 and "quantize.exclude_op_types: no 'conv', 'NoSuchOp' node" in err and "Traceback" not in err
    assert "it has: Conv, Sigmoid" in err
    zoo.ok("run", "model=fixture", "stage=quantize", f"model_file={fixture_onnx}", "quantize.exclude_op_types=[Conv]",
           "quantize.calibration_images=2")
    rec = _record(zoo)
    assert rec["excluded"]["op_types"] == ["Conv"] and rec["fp32_nodes"].get("Conv") == 1


@pytest.mark.parametrize("target", ["onnxruntime", "ascend"])
def test_bad_quantize_settings_are_refused_before_the_export(zoo, target):
    """Before: quantize.calibration_images=0 was refused only after the FP32 export had been written."""
    rc, out, err = zoo("run", "model=fixture", "stage=quantize", f"export.target={target}",
                       "quantize.calibration_images=0")
    assert rc == 2 and "quantize.calibration_images=0 is invalid" in err
    assert not (zoo.cwd / "outputs" / "fixture" / "model").exists()
