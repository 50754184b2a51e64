"""Issue 11's findings through the CLI: each was a wrong number with exit 0 before the one pipeline."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


def metrics(record_dir: Path) -> dict:
    return json.loads((record_dir / "metrics.json").read_text())

FIX = ("run", "model=fixture", "backend=oracle")


def _root(zoo) -> Path:
    return zoo.cwd / "outputs" / "fixture"


@pytest.fixture
def dump(zoo) -> Path:
    """An ais_bench-style dump of the fixture's oracle outputs for the 12 squares images."""
    zoo.ok(*FIX, "stage=eval", "save_outputs=true")
    d = zoo.cwd / "dump"
    shutil.copytree(_root(zoo) / "outputs", d, ignore=shutil.ignore_patterns("*.json*"))
    shutil.rmtree(_root(zoo))
    assert len(list(d.glob("*_0.bin"))) == 12
    return d


def _postprocess(zoo, dump_dir, *extra):
    return zoo("run", "model=fixture", "stage=postprocess", f"outputs_dir={dump_dir}", *extra)


def test_nan_in_a_dump_fails_postprocess(zoo, dump):
    victim = sorted(dump.glob("*_0.bin"))[3]
    a = np.fromfile(victim, "<f4")
    a[100] = np.nan
    a.tofile(victim)
    rc, out, err = _postprocess(zoo, dump)
    assert rc == 2, out + err
    assert f"{victim.stem[:-2]}.png: model output contains NaN or inf" in err and "Traceback" not in err
    assert not (_root(zoo) / "postprocess" / "metrics.json").exists()


def test_a_stem_in_two_subdirs_of_a_dump_is_an_error_naming_both(zoo, dump):
    (dump / "run_a").mkdir()
    (dump / "run_b").mkdir()
    name = sorted(dump.glob("*_0.bin"))[0].name
    shutil.copy(dump / name, dump / "run_a" / name)
    shutil.move(str(dump / name), dump / "run_b" / name)
    rc, out, err = _postprocess(zoo, dump)
    assert rc == 2, out + err
    assert "appears twice" in err and str(dump / "run_a" / name) in err and str(dump / "run_b" / name) in err


def test_a_float32_bin_of_half_the_size_is_not_read_as_float16(zoo, dump):
    victim = sorted(dump.glob("*_0.bin"))[5]
    victim.write_bytes(np.fromfile(victim, "<f4").astype("<f2").tobytes())
    rc, out, err = _postprocess(zoo, dump)
    assert rc == 2 and f"{victim}: is 8192 bytes" in err and "dump_dtype=float16" in err, out + err
    rc, out, err = _postprocess(zoo, dump, "dump_dtype=float16")
    assert rc == 2 and "is 16384 bytes" in err  # the other files are float32: no silent mix either


def test_a_second_eval_with_save_outputs_leaves_only_its_own_outputs(zoo):
    zoo.ok(*FIX, "stage=eval", "save_outputs=true")
    zoo.ok(*FIX, "stage=eval", "save_outputs=true", "dataset.limit=6")
    assert len(list((_root(zoo) / "outputs").glob("*_0.bin"))) == 6
    rc, out, err = zoo("run", "model=fixture", "stage=postprocess")  # the dataset has 12: said, not shrunk
    assert rc == 2 and "6 of the 12 image(s) of the dataset are not listed" in err, err
    zoo.ok("run", "model=fixture", "stage=postprocess", "dataset.limit=6")
    assert metrics(_root(zoo) / "postprocess")["images"] == 6


def test_a_reused_work_dir_holds_only_this_runs_result_files(zoo):
    zoo.ok(*FIX, "stage=eval")
    zoo.ok(*FIX, "stage=eval", "dataset.limit=6")
    report = json.loads((_root(zoo) / "eval" / "fixture_detections.json").read_text())
    assert len(report) == 6 and metrics(_root(zoo) / "eval")["images"] == 6


def test_two_runs_on_one_root_the_second_fails_at_once(zoo):
    slow = subprocess.Popen([sys.executable, "-m", "zoo_core.cli", *FIX, "stage=eval", "num_workers=0",
                             "model.preprocess_delay_ms=400"], cwd=zoo.cwd, env=zoo.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = _root(zoo) / ".zoo.lock"
    deadline = time.time() + 60
    overrides = _root(zoo) / "eval" / ".hydra" / "overrides.yaml"
    while time.time() < deadline and not (lock.is_file() and '"pid"' in lock.read_text() and overrides.is_file()):
        time.sleep(0.1)
    time.sleep(0.5)  # (Hydra writes config.yaml, hydra.yaml, then overrides.yaml)
    t0 = time.time()
    hydra_files = {p: p.read_bytes() for p in sorted((_root(zoo) / "eval" / ".hydra").iterdir())}
    rc, out, err = zoo(*FIX, "stage=eval", "model.preprocess_delay_ms=7")
    assert rc == 2 and f"in use by another zoo run (pid {slow.pid}, stage=eval" in err, out + err
    # the refused run wrote nothing: the lock is taken before Hydra writes the record dir
    assert {p: p.read_bytes() for p in sorted((_root(zoo) / "eval" / ".hydra").iterdir())} == hydra_files
    assert time.time() - t0 < 30
    out, err = slow.communicate(timeout=120)
    assert slow.returncode == 0, err
    assert metrics(_root(zoo) / "eval")["images"] == 12 and metrics(_root(zoo) / "eval")["metrics"]["AP50"] == 1.0


def test_resume_redoes_output_files_that_are_missing_or_changed(zoo):
    zoo.ok(*FIX, "stage=eval", "save_outputs=true")
    out_dir = _root(zoo) / "outputs"
    files = sorted(out_dir.glob("*_0.bin"))
    original = {p.name: p.read_bytes() for p in files}
    files[0].unlink()
    files[1].write_bytes(b"\x00" * len(original[files[1].name]))  # same size, other bytes
    zoo.ok(*FIX, "stage=eval", "save_outputs=true", "resume=true")
    assert {p.name: p.read_bytes() for p in sorted(out_dir.glob("*_0.bin"))} == original
    assert metrics(_root(zoo) / "eval")["images"] == 12


def test_hydra_run_dir_is_refused_with_the_work_dir_hint(zoo):
    rc, out, err = zoo(*FIX, "stage=eval", "hydra.run.dir=elsewhere")
    assert rc == 2 and "work_dir=" in err and len(err.strip().splitlines()) == 1, err
    assert not (zoo.cwd / "elsewhere").exists()


def test_work_dir_moves_records_and_model_dir_together(zoo, fixture_onnx):
    zoo.ok("run", "model=fixture", "stage=export", "work_dir=w")
    zoo.ok("run", "model=fixture", "stage=eval", "work_dir=w")
    assert (zoo.cwd / "w" / "model" / "fixture_onnxruntime.onnx").is_file()
    assert metrics(zoo.cwd / "w" / "eval")["images"] == 12
    assert not (zoo.cwd / "outputs").exists()


def test_every_stage_keeps_its_own_record(zoo, fixture_onnx, tmp_path):
    mf = f"model_file={fixture_onnx}"
    zoo.ok("run", "model=fixture", "stage=export")
    zoo.ok("run", "model=fixture", "stage=eval", mf)
    zoo.ok("run", "model=fixture", "stage=perf", mf, "stage.loop=2")
    zoo.ok("run", "model=fixture", "stage=evaluate")
    img = tmp_path / "pics"
    img.mkdir()
    first = sorted((Path(os.environ.get("ZOO_CACHE_DIR", zoo.cache)) / "fixture_squares" / "images").glob("*.png"))
    shutil.copy(first[0], img / "x.png")
    zoo.ok("run", "model=fixture", "stage=predict", f"input={img}", mf)
    root = _root(zoo)
    for stage in ("export", "eval", "perf", "evaluate", "predict"):
        rec = json.loads((root / stage / "run.json").read_text())
        assert rec["stage"] == stage and rec["status"] == "ok", stage
        assert (root / stage / ".hydra" / "config.yaml").is_file() and (root / stage / "zoo.log").is_file()
    assert json.loads((root / "eval" / "perf.json").read_text())["stage"] == "eval"
    assert json.loads((root / "perf" / "perf.json").read_text())["stage"] == "perf"
    assert metrics(root / "eval")["schema"] == 1
    assert (root / "predict" / "x.png.json").is_file() and not (root / "eval" / "x.png.json").exists()


def test_predict_keeps_both_x_jpg_and_x_png(zoo, fixture_onnx, tmp_path):
    import cv2

    pics = tmp_path / "pics"
    pics.mkdir()
    img = np.zeros((64, 64, 3), np.uint8)
    img[10:30, 10:30] = 255
    cv2.imwrite(str(pics / "x.png"), img)
    img[:] = 0
    img[40:60, 40:60] = 255
    cv2.imwrite(str(pics / "x.jpg"), img)
    zoo.ok("run", "model=fixture", "stage=predict", f"input={pics}", f"model_file={fixture_onnx}")
    out = _root(zoo) / "predict"
    png = json.loads((out / "x.png.json").read_text())
    jpg = json.loads((out / "x.jpg.json").read_text())
    assert png["image"].endswith("x.png") and jpg["image"].endswith("x.jpg")
    assert png["boxes"][0][0] == pytest.approx(10, abs=1) and jpg["boxes"][0][0] == pytest.approx(40, abs=1)
    assert (out / "x.png.jpg").is_file() and (out / "x.jpg.jpg").is_file()


def test_disk_full_is_one_clean_error_line(zoo, tmp_path):
    d = tmp_path / "small"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        rc, out, err = zoo(*FIX, "stage=eval", "save_outputs=true", f"work_dir={d}/run")
        assert rc == 2, out + err
        assert "No space left on device" in err and "Traceback" not in err
        assert not (d / "run" / "eval" / "metrics.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_a_reused_work_dir_keeps_no_stale_wider_predictions(zoo):
    """The WIDER prediction tree of an earlier eval (24 images) must not survive a later one on 6."""
    zoo.ok("run", "model=centerface", "stage=eval", "dataset.limit=12")
    zoo.ok("run", "model=centerface", "stage=eval", "dataset.limit=6")
    pred = zoo.cwd / "outputs" / "centerface" / "eval" / "predictions"
    assert len(list(pred.rglob("*.txt"))) == 6
    assert metrics(zoo.cwd / "outputs" / "centerface" / "eval")["images"] == 6
