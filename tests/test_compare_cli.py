"""stage=compare through the CLI with the fixture model: the files, the exit codes, the wiring of each side."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

ROOT = ("outputs", "fixture")


def _record(zoo):
    return zoo.cwd.joinpath(*ROOT, "compare")


def _result(zoo) -> dict:
    return json.loads((_record(zoo) / "compare.json").read_text())


@pytest.mark.needs_torch
def test_torch_vs_onnxruntime_writes_the_report_and_passes(zoo):
    out = zoo.ok("run", "model=fixture", "stage=compare")
    rec = _record(zoo)
    r = _result(zoo)
    for key in ("reference", "candidate", "images", "outputs", "detections", "metrics", "first_divergent", "passed"):
        assert key in r
    assert r["passed"] is True and r["images"] == 12 and r["first_divergent"] is None
    assert r["reference"]["backend"] == "torch" and r["candidate"]["backend"] == "onnxruntime"
    assert r["candidate"]["model_file"].endswith("fixture_onnxruntime.onnx")
    mask = r["outputs"]["mask"]
    assert set(mask) >= {"max_abs", "max_rel", "cosine", "beyond_tolerance"}
    assert mask["max_abs"] < 1e-5 and mask["cosine"] > 0.99999 and mask["beyond_tolerance"] == 0
    assert r["detections"]["match_rate"] == 1.0 and len(r["detections"]["per_image"]) == 12
    assert r["metrics"]["reference"]["AP50"] == r["metrics"]["candidate"]["AP50"] == 1.0
    assert r["metrics"]["delta"]["AP50"] == 0.0
    assert (rec / "compare.md").read_text().startswith("# compare: fixture on squares")
    assert (rec / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((rec / "run.json").read_text())["status"] == "ok"
    assert "PASSED" in out and "mask" in out and str(rec / "compare.md") in out


def test_a_changed_dump_fails_with_exit_1_and_names_the_image(zoo, fixture_onnx):
    zoo.ok("run", "model=fixture", "stage=eval", "save_outputs=true", f"model_file={fixture_onnx}")
    dump = zoo.cwd / "dump"
    shutil.copytree(zoo.cwd.joinpath(*ROOT, "outputs"), dump, ignore=shutil.ignore_patterns("*.json*"))
    victim = dump / "sq003_0.bin"
    a = np.fromfile(victim, "<f4")
    a[1000] += 0.3
    a.tofile(victim)
    rc, out, err = zoo("run", "model=fixture", "stage=compare", "compare.reference=onnxruntime",
                       f"compare.reference_model={fixture_onnx}", "compare.candidate=replay",
                       f"compare.candidate_model={dump}")
    assert rc == 1, out + err
    assert "not within tolerance" in err and "output mask" in err and "Traceback" not in err
    assert "output mask: 1 of 49,152 values (0.002%) beyond" in err  # before: "0.00% of values beyond"
    r = _result(zoo)
    mask = r["outputs"]["mask"]
    assert r["passed"] is False and mask["passed"] is False and mask["worst_image"] == "sq003"
    assert mask["max_abs"] == pytest.approx(0.3, abs=1e-6) and mask["failed_images"] == 1
    assert mask["beyond_tolerance"] == pytest.approx(1 / (12 * 64 * 64))
    assert r["candidate"]["backend"] == "replay" and r["candidate"]["dir"] == str(dump)
    assert r["failures"] and (_record(zoo) / "compare.md").is_file()
    assert json.loads((_record(zoo) / "run.json").read_text())["status"] == "failed"


def test_acl_on_the_contract_double_vs_onnxruntime(zoo, fixtures_dir, fixture_onnx, tmp_path):
    fake = fixtures_dir / "fake_ascend"
    env = zoo.env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(fake),
                  FAKE_ATC_LOG=str(tmp_path / "atc.json"))
    zoo.ok("run", "model=fixture", "stage=convert", "batch_size=2", f"model_file={fixture_onnx}", env=env)
    zoo.ok("run", "model=fixture", "stage=compare", "batch_size=2", "compare.reference=onnxruntime",
           f"compare.reference_model={fixture_onnx}", "compare.candidate=acl", env=env)
    r = _result(zoo)
    assert r["passed"] and r["images"] == 12
    assert r["candidate"]["backend"] == "acl" and r["candidate"]["fixed_batch"] == 2
    assert r["candidate"]["model_file"].endswith("fixture_bs2.om")
    assert r["outputs"]["mask"]["max_abs"] == 0.0  # the double runs the same ONNX in onnxruntime


def test_layers_name_the_changed_layer_even_when_the_outputs_pass(zoo, fixture_onnx, tmp_path):
    """The fixture's sigmoid saturates: a 5% larger conv moves the mask by 0.0017 (within tolerance),
    the conv itself by 10%. ``passed`` is about the outputs; ``first_divergent`` still names the conv."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(fixture_onnx))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    w = next(t for t in m.graph.initializer if t.name == conv.input[1])
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1.05), w.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    out = zoo.ok("run", "model=fixture", "stage=compare", "compare.layers=true", f"compare.candidate_model={bad}")
    r = _result(zoo)
    assert r["passed"] is True and r["outputs"]["mask"]["max_abs"] < 0.01
    assert r["first_divergent"]["name"] == "conv" and r["layers"]["matched"] == 1
    # the conv computes 20x - 10 (max |ref| 10 for x in [0, 1]); 5% more weight adds x <= 1
    assert r["first_divergent"]["max_rel"] == pytest.approx(1 / 10, rel=0.02)
    assert r["layers"]["rows"][0]["tensor"] == conv.output[0]
    assert "first divergent: conv" in out
    assert "**first divergent**" in (_record(zoo) / "compare.md").read_text()


def test_a_layer_named_like_mathtext_is_drawn_as_written_and_the_report_written(zoo, fixture_onnx, tmp_path):
    """Before: an ONNX layer named '$\\frac{$' crashed compare.png's annotation (matplotlib mathtext), exit 1,
    before compare.json / compare.md were written."""
    import onnx
    from onnx import numpy_helper

    name = "$\\frac{$"
    for side, factor in (("ref", 1.0), ("cand", 1.05)):
        m = onnx.load(str(fixture_onnx))
        conv = next(n for n in m.graph.node if n.op_type == "Conv")
        old = conv.output[0]
        conv.name, conv.output[0] = name, name
        for n in m.graph.node:
            n.input[:] = [name if i == old else i for i in n.input]
        w = next(t for t in m.graph.initializer if t.name == conv.input[1])
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(factor), w.name))
        onnx.save(m, str(tmp_path / f"{side}.onnx"))
    rc, out, err = zoo("run", "model=fixture", "stage=compare", "compare.layers=true", "compare.reference=onnxruntime",
                       f"compare.reference_model={tmp_path / 'ref.onnx'}", "compare.candidate=onnxruntime",
                       f"compare.candidate_model={tmp_path / 'cand.onnx'}")
    assert rc == 0 and "Traceback" not in err, out + err
    r = _result(zoo)
    assert r["first_divergent"]["name"] == name and "compare.png" in r["files"]
    assert (_record(zoo) / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert name in (_record(zoo) / "compare.md").read_text()


def test_a_compare_plot_that_fails_leaves_the_report_written_with_a_warning(tmp_path, monkeypatch, caplog):
    """Whatever breaks in the plot, compare.json and compare.md are written (without the plot) and it is said."""
    import logging
    from types import SimpleNamespace

    import zoo_core.compare.report as report
    from zoo_core.stages import compare_stage

    def broken(*a, **k):
        raise ValueError("a drawing bug")

    monkeypatch.setattr(compare_stage, "plot", broken)
    monkeypatch.setattr(compare_stage, "markdown", lambda result, plot: f"report, plot {plot}\n")
    ctx = SimpleNamespace(record_dir=tmp_path / "rec", record=lambda n: tmp_path / "rec" / n)
    result = {"files": ["compare.json", "compare.md"], "layers": None, "passed": True}
    with caplog.at_level(logging.WARNING, logger="zoo"):
        compare_stage.write_reports(ctx, result, SimpleNamespace(samples={"mask": []}))
    assert json.loads((tmp_path / "rec" / "compare.json").read_text())["files"] == ["compare.json", "compare.md"]
    assert (tmp_path / "rec" / "compare.md").read_text() == "report, plot None\n"
    assert not (tmp_path / "rec" / "compare.png").exists()
    assert any("compare.png was not drawn (ValueError: a drawing bug)" in r.getMessage() for r in caplog.records)
    assert report.plot is not broken


@pytest.mark.parametrize("args, message", [
    (["compare.candidate=tensorrt"], "compare.candidate='tensorrt' is not an installed backend; installed: "),
    (["compare.candidate_dump=/x"], "add compare.layers=true"),
    (["compare.layers=true", "compare.candidate=acl"], "pass compare.candidate_dump="),
    (["compare.rtol=-1"], "must be finite and >= 0"),
])
def test_bad_compare_config_is_refused_before_running(zoo, args, message):
    rc, out, err = zoo("run", "model=fixture", "stage=compare", *args)
    assert rc == 2 and message in err and "Traceback" not in err, out + err


@pytest.mark.needs_torch
def test_skips_name_compare_json_which_lists_them(zoo, tmp_path):
    from zoo_fixture.squares import make_squares

    root = make_squares(tmp_path / "ds", n=3, seed=3)
    (root / "images" / "sq001.png").write_bytes(b"")
    rc, out, err = zoo("run", "model=fixture", "stage=compare", "num_workers=0", f"dataset.root={root}",
                       "on_error=skip")
    assert rc == 2 and "Traceback" not in err, out + err
    listed = _record(zoo) / "compare.json"
    assert f"1 input(s) were skipped (listed in {listed})" in err and "metrics.json" not in err
    assert [s["id"] for s in _result(zoo)["skipped"]] == ["sq001"]


def test_a_model_compared_with_itself_is_refused_unless_allowed(zoo, fixture_onnx):
    args = ["run", "model=fixture", "stage=compare", "num_workers=0", "dataset.limit=2",
            "compare.reference=onnxruntime", "compare.candidate=onnxruntime", f"compare.reference_model={fixture_onnx}",
            f"model_file={fixture_onnx}"]
    rc, out, err = zoo(*args)
    assert rc == 2 and "Traceback" not in err, out + err
    assert f"the reference and the candidate are the same model (onnxruntime on {fixture_onnx}" in err
    assert "hint: set compare.candidate_model=" in err and "PASSED" not in out
    assert not (_record(zoo) / "compare.json").exists()
    out = zoo.ok(*args, "compare.allow_same=true")
    assert _result(zoo)["passed"] is True and _result(zoo)["outputs"]["mask"]["max_abs"] == 0.0
