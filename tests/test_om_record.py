"""An OM is loaded only for the config it was converted for (``zoo_core.runs.om_record``), in-process.

``stage=convert`` runs the ATC contract double (``fixtures/fake_ascend/atc``: the "OM" is a copy of the
ONNX); the check runs where every OM backend gets its file (``resolve_model_file``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from zoo_core.api.errors import ConfigError


@pytest.fixture
def fake_atc(monkeypatch, fixtures_dir):
    monkeypatch.setenv("PATH", f"{fixtures_dir / 'fake_ascend'}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def no_atc(monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                if not os.path.exists(os.path.join(p, "atc"))))


def _ctx(fixture_cfg, root, stage, **over):
    from zoo_core.plugins.manager import ZooPluginManager
    from zoo_core.runs.context import RunContext

    cfg = fixture_cfg.copy()
    with open_dict(cfg):
        cfg.stage.name = stage
        cfg.num_workers = 0
        cfg.work_dir = str(root)
        cfg.model_dir = str(root / "model")
        for k, v in over.items():
            OmegaConf.update(cfg, k, v, merge=False)
    return RunContext(cfg, ZooPluginManager(), root)


def _convert(fixture_cfg, root, **over) -> dict:
    from zoo_core.stages import convert_stage

    return convert_stage.run(_ctx(fixture_cfg, root, "convert", **over))


def _om_for(fixture_cfg, root, **over):
    from zoo_core.runs.model_files import resolve_model_file

    return resolve_model_file(_ctx(fixture_cfg, root, "eval", **over), "om")


@pytest.mark.needs_torch
def test_an_om_is_loaded_for_the_settings_it_was_converted_with(fixture_cfg, tmp_path, fake_atc):
    res = _convert(fixture_cfg, tmp_path)
    om = tmp_path / "model" / "fixture_bs1.om"
    rec = json.loads((tmp_path / "model" / "fixture_bs1.json").read_text())
    assert res["record"] == str(tmp_path / "model" / "fixture_bs1.json")
    assert rec["settings"]["model_config"] == {"model.sharpness": 20.0}
    assert "aipp" not in rec["settings"] and "aipp_config" not in rec  # no --insert_op_conf: nothing compiled in
    assert rec["source"]["kind"] == "export" and rec["source"]["weights"] == "default"
    assert rec["atc"]["soc_version"] == "Ascend310P3"
    assert _om_for(fixture_cfg, tmp_path) == om
    # evaluation-only keys and ATC-only keys are not the OM's business
    assert _om_for(fixture_cfg, tmp_path, **{"model.iou_thresh": 0.3, "atc.soc_version": "Ascend310"}) == om


@pytest.mark.needs_torch
def test_an_om_converted_for_another_export_key_is_refused(fixture_cfg, tmp_path, fake_atc):
    _convert(fixture_cfg, tmp_path, **{"model.sharpness": 5.0})
    with pytest.raises(ConfigError, match=r"fixture_bs1.om was converted with other settings than this run's "
                                          r"\(model.sharpness: 5.0 -> 20.0\)") as exc:
        _om_for(fixture_cfg, tmp_path)
    assert "model_file=<om>" in str(exc.value.hint)
    _convert(fixture_cfg, tmp_path)  # converting again for this config makes it loadable
    assert _om_for(fixture_cfg, tmp_path).name == "fixture_bs1.om"


@pytest.mark.needs_torch
def test_an_om_whose_bytes_changed_after_convert_is_refused(fixture_cfg, tmp_path, fake_atc):
    _convert(fixture_cfg, tmp_path)
    om = tmp_path / "model" / "fixture_bs1.om"
    om.write_bytes(om.read_bytes() + b"\0")
    with pytest.raises(ConfigError, match="no longer matches the sha256 recorded when stage=convert wrote it"):
        _om_for(fixture_cfg, tmp_path)
    from zoo_core.runs.model_files import resolve_model_file

    given = resolve_model_file(_ctx(fixture_cfg, tmp_path, "eval", model_file=str(om)), "om")
    assert given == om  # model_file= loads the file as it is


@pytest.mark.needs_torch
def test_dynamic_batch_gears_must_match_the_dynamic_om(fixture_cfg, tmp_path, fake_atc):
    _convert(fixture_cfg, tmp_path, **{"atc.dynamic_batch": [1, 2, 8]})
    dyn = {"backend.dynamic_batch": True}
    assert _om_for(fixture_cfg, tmp_path, **dyn, **{"atc.dynamic_batch": [1, 2, 8]}).name == "fixture_dyn.om"
    with pytest.raises(ConfigError, match=r"atc.dynamic_batch: \[1, 2, 8\] -> \[1, 4\]"):
        _om_for(fixture_cfg, tmp_path, **dyn, **{"atc.dynamic_batch": [1, 4]})


@pytest.mark.needs_torch
def test_the_script_without_atc_records_the_om_it_will_replace(fixture_cfg, tmp_path, fake_atc, monkeypatch):
    _convert(fixture_cfg, tmp_path, **{"model.sharpness": 5.0})  # an OM for another config
    om = tmp_path / "model" / "fixture_bs1.om"
    old = om.read_bytes()
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                if not os.path.exists(os.path.join(p, "atc"))))
    res = _convert(fixture_cfg, tmp_path)
    assert res["converted"] is False and om.read_bytes() == old
    with pytest.raises(ConfigError, match="predates its convert script: .*atc_bs1.sh but it has not been run"):
        _om_for(fixture_cfg, tmp_path)
    om.write_bytes(old + b"new")  # what the script's atc would write
    assert _om_for(fixture_cfg, tmp_path) == om


@pytest.mark.needs_torch
def test_an_om_without_a_record_loads_with_a_warning(fixture_cfg, tmp_path, fake_atc, caplog):
    _convert(fixture_cfg, tmp_path)
    (tmp_path / "model" / "fixture_bs1.json").unlink()
    with caplog.at_level(logging.WARNING, logger="zoo"):
        assert _om_for(fixture_cfg, tmp_path).name == "fixture_bs1.om"
    assert "has no convert record (fixture_bs1.json)" in caplog.text
    (tmp_path / "model" / "fixture_bs1.json").write_text("[1, 2")
    with pytest.raises(ConfigError, match="convert record .* is unreadable"):
        _om_for(fixture_cfg, tmp_path)


@pytest.mark.needs_torch
@pytest.mark.parametrize("tamper", [{"sha256": 123}, {"settings": [1]}, {"pending_script_replaces_sha256": 5}])
def test_an_om_record_with_a_value_of_the_wrong_type_is_unreadable_not_a_crash(fixture_cfg, tmp_path, fake_atc,
                                                                               tamper):
    _convert(fixture_cfg, tmp_path)
    rec = tmp_path / "model" / "fixture_bs1.json"
    rec.write_text(json.dumps({**json.loads(rec.read_text()), **tamper}))
    with pytest.raises(ConfigError, match=r"fixture_bs1.om's convert record .*fixture_bs1.json is unreadable"):
        _om_for(fixture_cfg, tmp_path)  # before: TypeError ('int' object is not subscriptable)


def test_other_weights_than_the_om_was_exported_from_are_refused(fixture_cfg, tmp_path):
    from zoo_core.runs.om_record import _weights_diff

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    from zoo_core.runs.fingerprint import sha256_file

    source = {"kind": "export", "weights": str(a), "weights_sha256": sha256_file(a)}
    assert _weights_diff(_ctx(fixture_cfg, tmp_path, "eval", weights=str(a)), source) == []
    assert _weights_diff(_ctx(fixture_cfg, tmp_path, "eval"), source) == []  # the OM carries its weights
    assert _weights_diff(_ctx(fixture_cfg, tmp_path, "eval", weights=str(b)), source) == [
        f"weights: {str(a)!r} -> {str(b)!r} (other bytes)"]
    assert _weights_diff(_ctx(fixture_cfg, tmp_path, "eval", weights=str(b)), {**source, "kind": "model_file"}) == []


@pytest.mark.needs_torch
def test_a_fixed_size_convert_removes_an_earlier_gear_plan(fixture_cfg, tmp_path, fake_atc):
    _convert(fixture_cfg, tmp_path, **{"model.keep_size": True, "atc.dynamic_image_size": True})
    plan = tmp_path / "model" / "fixture_bs1.om.gears.json"
    assert plan.is_file()
    _convert(fixture_cfg, tmp_path)
    assert not plan.exists()  # else the acl backend would take the fixed-size OM for an image-gear OM


@pytest.mark.needs_torch
def test_one_input_size_is_a_fixed_size_om_without_a_gear_plan(fixture_cfg, tmp_path, fake_atc):
    """ATC compiles one size as a static OM (common_args). Before: convert still wrote <om>.gears.json with that one
    gear, and the acl backend then ran the static OM with set_dynamic_hw / mode "dymhw": a device error, traceback."""
    gears = {"model.keep_size": True, "atc.dynamic_image_size": True}
    _convert(fixture_cfg, tmp_path, **gears)  # several sizes: a plan
    plan = tmp_path / "model" / "fixture_bs1.om.gears.json"
    assert plan.is_file()
    res = _convert(fixture_cfg, tmp_path, **gears, **{"dataset.limit": 1})
    assert len(res["image_size_gears"]) == 1 and "gears_file" not in res
    from zoo_core.reports.terminal import _gear_lines

    assert _gear_lines(res)[0].endswith("-> one size: a fixed-size OM, no gear plan")  # not "-> None"
    assert not plan.exists()  # the earlier plan is removed with the fixed-size convert
    rec = json.loads((tmp_path / "model" / "fixture_bs1.json").read_text())
    assert rec["image_gears_sha256"] is None
    contract = json.loads((tmp_path / "model" / "fixture_bs1.om.contract.json").read_text())
    assert contract["dynamic_image_size"] is None and "-1" not in contract["input_shape"]


@pytest.mark.needs_torch
def test_image_gears_of_an_aipp_input_are_planned_from_its_height_and_width(centerface_cfg, tmp_path, fake_atc,
                                                                           monkeypatch):
    """With model.aipp=true the input is uint8 H,W,C. Before: the plan read it as C,H,W and planned a gear
    "96x3" for a 64x96 input (and wrote it beside the fixed-size OM)."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    res = _convert(centerface_cfg, tmp_path, **_CF_AIPP, **{"atc.dynamic_image_size": True, "dataset.limit": 2})
    assert res["converted"] is True and res["image_size_gears"] == [[64, 96]] and "gears_file" not in res
    assert not (tmp_path / "model" / "centerface_bs1.om.gears.json").exists()
    from zoo_core.stages.convert_stage import channels_last

    assert channels_last((64, 96, 3)) and not channels_last((3, 64, 96)) and not channels_last((1, 64, 64))


@pytest.mark.needs_torch
def test_a_gear_plan_changed_removed_or_planted_beside_the_om_is_refused(fixture_cfg, tmp_path, fake_atc):
    """Before: ``<om>.gears.json`` was read on its own: an edited plan made the acl backend pad inputs to gears the OM
    was not compiled for, a planted one turned a fixed-size OM into one with gears. The record now holds its sha256."""
    gears = {"model.keep_size": True, "atc.dynamic_image_size": True}
    _convert(fixture_cfg, tmp_path, **gears)
    model = tmp_path / "model"
    plan, om = model / "fixture_bs1.om.gears.json", model / "fixture_bs1.om"
    rec = json.loads((model / "fixture_bs1.json").read_text())
    assert rec["image_gears_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert _om_for(fixture_cfg, tmp_path, **gears) == om
    original = plan.read_bytes()
    edited = json.loads(original)
    edited["dynamic_image_size"] = [[4096, 4096]]
    plan.write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match=r"fixture_bs1.om's image-size gear plan no longer matches the sha256 "
                                          r"recorded by stage=convert") as exc:
        _om_for(fixture_cfg, tmp_path, **gears)
    assert exc.value.path == plan and "re-run stage=convert" in str(exc.value.hint)
    plan.unlink()
    with pytest.raises(ConfigError, match="fixture_bs1.om's image-size gear plan, written by stage=convert, is gone"):
        _om_for(fixture_cfg, tmp_path, **gears)
    plan.write_bytes(original)
    assert _om_for(fixture_cfg, tmp_path, **gears) == om

    _convert(fixture_cfg, tmp_path)  # a fixed-size OM: its record says it has no plan
    assert json.loads((model / "fixture_bs1.json").read_text())["image_gears_sha256"] is None
    plan.write_bytes(original)
    with pytest.raises(ConfigError, match="fixture_bs1.om was converted without image-size gears, but this gear plan "
                                          "lies beside it"):
        _om_for(fixture_cfg, tmp_path)


@pytest.mark.needs_torch
def test_an_int8_om_is_refused_for_another_calibration_or_other_weights(fixture_cfg, tmp_path, fake_atc):
    """The INT8 OM's record holds AMCT's calibration (quantize settings, dataset, image ids and bytes) and the
    weights of the ONNX AMCT calibrated. Before, backend=acl quantize=int8 ran an OM calibrated on other
    settings or exported from other weights without a word (the FP32 OM was refused, the CPU INT8 rebuilt)."""
    from zoo_core.stages import quantize_stage

    q = {"quantize.name": "int8", "quantize.calibration_images": 3}
    quantize_stage.run(_ctx(fixture_cfg, tmp_path, "quantize", **{"export.target": "ascend", **q}))
    _convert(fixture_cfg, tmp_path, **q)
    rec = json.loads((tmp_path / "model" / "fixture_int8_bs1.json").read_text())
    assert rec["source"]["kind"] == "amct" and rec["source"]["calibration"]["quantize"] == {
        "calibration_images": 3, "seed": 0}
    assert _om_for(fixture_cfg, tmp_path, **q).name == "fixture_int8_bs1.om"
    assert _om_for(fixture_cfg, tmp_path, **q, **{"model.iou_thresh": 0.3}).name == "fixture_int8_bs1.om"
    with pytest.raises(ConfigError, match=r"\(quantize.calibration_images: 3 -> 5; calibration images: 3 -> 5 "
                                          r"\(other ids\)\)"):
        _om_for(fixture_cfg, tmp_path, **{**q, "quantize.calibration_images": 5})
    with pytest.raises(ConfigError, match=r"quantize.seed: 0 -> 7"):
        _om_for(fixture_cfg, tmp_path, **q, **{"quantize.seed": 7})
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the weights the export was made from")
    rec["source"].update(weights="w.pt", weights_sha256="0" * 64)  # as an export from a weights file records it
    (tmp_path / "model" / "fixture_int8_bs1.json").write_text(json.dumps(rec))
    with pytest.raises(ConfigError, match=r"weights: 'w.pt' -> .*other.pt' \(other bytes\)"):
        _om_for(fixture_cfg, tmp_path, **q, weights=str(other))


def test_convert_refuses_a_plugin_without_atc_args_before_exporting(fixture_cfg, tmp_path, fake_atc):
    # atc_args is the hook of stage=convert only: a plugin without an Ascend path leaves it out, and convert
    # says so by name before it exports anything
    from zoo_core.api.errors import PluginError
    from zoo_core.stages import convert_stage

    ctx = _ctx(fixture_cfg, tmp_path, "convert")
    ctx.hooks.info.hooks = [h for h in ctx.hooks.info.hooks if h != "atc_args"]  # this test's own manager
    with pytest.raises(PluginError) as err:
        convert_stage.run(ctx)
    assert "cannot be converted" in str(err.value) and "does not implement the 'atc_args' hook" in str(err.value)
    assert err.value.exit_code == 2 and not (tmp_path / "model").exists()


_CF_AIPP = {"model.input_hw": [64, 96], "weights": "random", "model.aipp": True}


@pytest.fixture
def centerface_cfg(cache_dir):
    os.environ["ZOO_CACHE_DIR"] = str(cache_dir)
    from zoo_core.config.validate import compose

    return compose(["model=centerface", "model.variant=ascend"])


@pytest.mark.needs_torch
def test_an_aipp_om_is_refused_for_other_mean_std_than_it_compiled_in(centerface_cfg, tmp_path, fake_atc,
                                                                      monkeypatch):
    """With model.aipp=true the OM normalises with the mean/std of the .aippconfig convert wrote, and the host
    feeds raw uint8. Before: mean/std were no export key and not recorded, so an eval with other model.mean/std
    loaded the OM and silently scored with the convert-time normalisation."""
    # the fake atc compiles the AIPP config with onnx, from the python3 first on PATH
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    _convert(centerface_cfg, tmp_path, **_CF_AIPP)
    om = tmp_path / "model" / "centerface_bs1.om"
    assert _om_for(centerface_cfg, tmp_path, **_CF_AIPP) == om
    with pytest.raises(ConfigError, match=r"centerface_bs1.om was converted with other settings than this run's "
                                          r"\(AIPP model.mean: \[0.40789654, .*\] -> \[0.5, 0.5, 0.5\]; "
                                          r"AIPP model.std: \[.*\] -> \[0.1, 0.1, 0.1\]\)") as exc:
        _om_for(centerface_cfg, tmp_path, **_CF_AIPP, **{"model.mean": [0.5] * 3, "model.std": [0.1] * 3})
    assert "re-run stage=convert" in str(exc.value.hint)
    rec = json.loads((tmp_path / "model" / "centerface_bs1.json").read_text())
    conf = tmp_path / "model" / "centerface_bs1.aippconfig"
    assert rec["settings"]["aipp"] == {"model.mean": list(centerface_cfg.model.mean),
                                       "model.std": list(centerface_cfg.model.std)}
    assert rec["aipp_config"] == {"path": str(conf), "sha256": hashlib.sha256(conf.read_bytes()).hexdigest()}


@pytest.mark.needs_torch
def test_a_given_om_converted_from_random_weights_is_said_and_recorded(fixture_cfg, tmp_path, fake_atc, caplog):
    """Before: model_file=<om> whose convert record says its ONNX was exported with weights=random was loaded
    without a word (a given ONNX with such a record was already warned about)."""
    from zoo_core.runs.model_files import resolve_model_file

    no_defaults = {"model.default_weights": None}
    _convert(fixture_cfg, tmp_path, weights="random", **no_defaults)
    om = tmp_path / "model" / "fixture_bs1.om"
    assert json.loads(om.with_suffix(".json").read_text())["source"]["weights"] == "random"
    ctx = _ctx(fixture_cfg, tmp_path, "eval", model_file=str(om), **no_defaults)
    with caplog.at_level(logging.WARNING, logger="zoo"):
        assert resolve_model_file(ctx, "om") == om
    assert ctx.weights_used.record() == {"weights": "random"}
    assert f"weights=random: fixture runs with seeded random weights (model_file={om}" in caplog.text


def _run_script(script: Path, fixtures_dir: Path):
    import subprocess

    path = os.pathsep.join([str(fixtures_dir / "fake_ascend"), str(Path(sys.executable).parent), os.environ["PATH"]])
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env={**os.environ, "PATH": path})


@pytest.mark.needs_torch
def test_each_script_builds_from_its_own_aipp_config(centerface_cfg, tmp_path, no_atc, fixtures_dir):
    """Before: every atc_bs<N>.sh named the one model/centerface_ascend.aippconfig, so converting bs4 with another
    model.mean (no atc: script mode) rewrote what the pending atc_bs1.sh compiled: the bs1 OM normalised with 128, its
    record said 104/114/120, and backend=acl accepted it (exit 0, other numbers)."""
    import onnx
    from onnx import numpy_helper

    _convert(centerface_cfg, tmp_path, **_CF_AIPP)
    _convert(centerface_cfg, tmp_path, **_CF_AIPP, **{"batch_size": 4, "model.mean": [0.5] * 3})
    model = tmp_path / "model"
    proc = _run_script(model / "atc_bs1.sh", fixtures_dir)
    assert proc.returncode == 0, proc.stderr
    om = onnx.load(str(model / "centerface_bs1.om"))
    sub = next(numpy_helper.to_array(t) for t in om.graph.initializer if t.name.endswith("__aipp_sub"))
    want = [round(m * 255) for m in centerface_cfg.model.mean]  # the bs1 convert's (default) mean
    assert sub.reshape(-1).tolist() == want
    rec = json.loads((model / "centerface_bs1.json").read_text())
    conf = model / "centerface_bs1.aippconfig"
    assert rec["aipp_config"] == {"path": str(conf), "sha256": hashlib.sha256(conf.read_bytes()).hexdigest()}
    assert _om_for(centerface_cfg, tmp_path, **_CF_AIPP) == model / "centerface_bs1.om"


@pytest.mark.needs_torch
def test_each_script_builds_from_its_own_onnx_and_checks_its_inputs(fixture_cfg, tmp_path, no_atc, fixtures_dir):
    """Before: every atc_bs<N>.sh named the one model/fixture_ascend.onnx, so a later convert that re-exported it
    (another export key) changed what a pending script compiled; backend=acl accepted the result. Now each script
    converts its own copy, and refuses to run atc on inputs whose sha256 is not the recorded one."""
    _convert(fixture_cfg, tmp_path, **{"model.sharpness": 5.0})
    _convert(fixture_cfg, tmp_path, batch_size=4)  # re-exports fixture_ascend.onnx with sharpness 20
    model = tmp_path / "model"
    rec = json.loads((model / "fixture_bs1.json").read_text())
    assert rec["source"]["atc_model"] == str(model / "atc_bs1.onnx")
    assert hashlib.sha256((model / "fixture_ascend.onnx").read_bytes()).hexdigest() != rec["source"]["sha256"]
    proc = _run_script(model / "atc_bs1.sh", fixtures_dir)
    assert proc.returncode == 0, proc.stderr
    om = model / "fixture_bs1.om"  # the fake atc's "OM" is the ONNX's bytes: those of the sharpness=5 export
    assert hashlib.sha256(om.read_bytes()).hexdigest() == rec["source"]["sha256"]
    assert _om_for(fixture_cfg, tmp_path, **{"model.sharpness": 5.0}) == om

    copy = model / "atc_bs4.onnx"
    copy.write_bytes(copy.read_bytes() + b"\0")
    proc = _run_script(model / "atc_bs4.sh", fixtures_dir)
    assert proc.returncode == 1 and not (model / "fixture_bs4.om").exists()
    assert "atc_bs4.sh: its input files (atc_bs4.onnx) are missing or changed since stage=convert wrote this " \
           "script" in proc.stderr


def test_convert_of_a_given_onnx_in_script_mode_on_a_new_work_dir(fixture_cfg, tmp_path, no_atc, fixtures_dir,
                                                                   fixture_onnx):
    """Before (this round's own-copy change): ``model_file=<onnx>`` without atc on a fresh work_dir was a
    FileNotFoundError traceback: nothing had made model/ (no export step) before the copy was written there."""
    res = _convert(fixture_cfg, tmp_path, model_file=str(fixture_onnx))
    model = tmp_path / "model"
    assert res["converted"] is False and (model / "atc_bs1.onnx").read_bytes() == fixture_onnx.read_bytes()
    proc = _run_script(model / "atc_bs1.sh", fixtures_dir)
    assert proc.returncode == 0, proc.stderr


def test_a_given_onnx_with_external_data_is_copied_whole_and_its_script_runs(fixture_cfg, tmp_path, no_atc,
                                                                            fixtures_dir, fixture_onnx):
    """Before: only the .onnx was copied (its data file left behind: the hash of the copy failed), and the script
    checked the copy against zoo's combined digest, which ``sha256sum`` never prints: it could never run."""
    import onnx

    src = tmp_path / "given"
    src.mkdir()
    onnx.save_model(onnx.load(str(fixture_onnx)), str(src / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    assert (src / "m.data").stat().st_size > 0
    _convert(fixture_cfg, tmp_path, model_file=str(src / "m.onnx"))
    own = tmp_path / "model" / "atc_bs1"
    assert (own / "m.onnx").read_bytes() == (src / "m.onnx").read_bytes()
    assert (own / "m.data").read_bytes() == (src / "m.data").read_bytes()
    script = tmp_path / "model" / "atc_bs1.sh"
    assert f"--model={own / 'm.onnx'}" in script.read_text()
    proc = _run_script(script, fixtures_dir)
    assert proc.returncode == 0, proc.stderr

    data = own / "m.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\1")  # the weights changed after convert: atc must not run
    proc = _run_script(script, fixtures_dir)
    assert proc.returncode == 1 and "atc_bs1.sh: its input files (m.onnx, m.data) are missing or changed" in proc.stderr
