"""The Ascend path with contract doubles: ATC as a subprocess (no shell) and ais_bench's InferSession.

``fixtures/fake_ascend/atc`` and ``fixtures/fake_ascend/ais_bench`` are contract doubles (REFERENCE
5.1/5.2), not Ascend tools: the "OM" is the ONNX, run by onnxruntime.
"""
from __future__ import annotations

import json
import os
import shlex

import pytest


@pytest.fixture
def ascend_env(zoo, fixtures_dir, tmp_path):
    fake = fixtures_dir / "fake_ascend"
    return zoo.env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(fake),
                   FAKE_ATC_LOG=str(tmp_path / "atc_argv.json"))


def test_convert_without_atc_writes_script(zoo):
    env = zoo.env(PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                       if not os.path.exists(os.path.join(p, "atc"))))
    rc, out, err = zoo("run", "model=fixture", "stage=convert", "batch_size=2", env=env)
    assert rc == 0, err
    script = zoo.cwd / "outputs" / "fixture" / "model" / "atc_bs2.sh"
    assert "atc is not on PATH" in out and str(script) in out
    argv = shlex.split(script.read_text().splitlines()[-1])
    onnx = zoo.cwd / "outputs" / "fixture" / "model" / "fixture_ascend.onnx"
    assert argv[0] == "atc" and "--framework=5" in argv and f"--model={onnx}" in argv
    assert "--input_shape=image:2,1,64,64" in argv and "--soc_version=Ascend310P3" in argv
    assert f"--output={onnx.parent / 'fixture_bs2'}" in argv
    assert os.access(script, os.X_OK)
    assert not list(onnx.parent.glob("*.om"))


def test_convert_passes_argv_literally(zoo, ascend_env, tmp_path):
    value = '--op_select_implmode=high performance; $(touch pwned) "q" `touch pwned2`'
    override = "atc.extra=['" + value + "']"
    rc, out, err = zoo("run", "model=fixture", "stage=convert", override, env=ascend_env)
    assert rc == 0, err
    argv = json.loads((tmp_path / "atc_argv.json").read_text())
    assert argv[-1] == value
    assert not (zoo.cwd / "pwned").exists() and not (zoo.cwd / "pwned2").exists()
    model_dir = zoo.cwd / "outputs" / "fixture" / "model"
    assert (model_dir / "fixture_bs1.om").read_bytes() == (model_dir / "fixture_ascend.onnx").read_bytes()
    assert "$(touch pwned)" in (model_dir / "atc_bs1.log").read_text()


def test_convert_reports_atc_failure(zoo, ascend_env, tmp_path):
    rc, out, err = zoo("run", "model=fixture", "stage=convert", f"model_file={tmp_path / 'missing.onnx'}",
                       env=ascend_env)
    assert rc != 0 and "missing.onnx" in err and "Traceback" not in err


@pytest.mark.parametrize("bs", [1, 4])
def test_acl_backend_matches_onnxruntime(zoo, ascend_env, eval_metrics, fixture_onnx, bs):
    zoo.ok("run", "model=fixture", "stage=convert", f"batch_size={bs}", f"model_file={fixture_onnx}", env=ascend_env)
    zoo.ok("run", "model=fixture", "stage=eval", "backend=acl", f"batch_size={bs}", env=ascend_env)
    run = zoo.cwd / "outputs" / "fixture"
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["metrics"] == eval_metrics["metrics"] and m["images"] == 12
    perf = json.loads((run / "eval" / "perf.json").read_text())
    assert perf["backend"] == "acl" and perf["fixed_batch"] == bs
    assert perf["model_file"].endswith(f"fixture_bs{bs}.om")


def test_perf_on_acl_reports_ais_bench_throughput_from_the_npu_compute_time(zoo, ascend_env, fixture_onnx):
    """REFERENCE 5.1: throughput = 1000 * batchsize / NPU_compute_time.mean. Before: zoo's host latency around
    each call (copies included) gave the throughput of every backend."""
    zoo.ok("run", "model=fixture", "stage=convert", "batch_size=4", f"model_file={fixture_onnx}", env=ascend_env)
    zoo.ok("run", "model=fixture", "stage=perf", "backend=acl", "batch_size=4", "stage.loop=6", env=ascend_env)
    perf = json.loads((zoo.cwd / "outputs" / "fixture" / "perf" / "perf.json").read_text())
    npu, host = perf["npu_compute_ms"], perf["latency_ms"]
    assert npu["count"] == host["count"] == 6 and npu["mean"] <= host["mean"]  # the device part of each call
    assert perf["throughput"] == pytest.approx(1000 * 4 / npu["mean"])
    assert perf["host_throughput"] == pytest.approx(1000 * 4 / host["mean"])
    assert perf["throughput_basis"].startswith("NPU compute time")
    zoo.ok("run", "model=fixture", "stage=perf", "stage.loop=3", f"model_file={fixture_onnx}", "work_dir=ort")
    ort = json.loads((zoo.cwd / "ort" / "perf" / "perf.json").read_text())  # no device timings: host latency
    assert "npu_compute_ms" not in ort and ort["throughput"] == pytest.approx(1000 / ort["latency_ms"]["mean"])


def test_acl_dynamic_batch_gears(zoo, ascend_env, eval_metrics, fixture_onnx, tmp_path):
    gears = "atc.dynamic_batch=[1,2,8]"
    zoo.ok("run", "model=fixture", "stage=convert", gears, f"model_file={fixture_onnx}", env=ascend_env)
    argv = json.loads((tmp_path / "atc_argv.json").read_text())
    assert "--dynamic_batch_size=1,2,8" in argv and "--input_shape=image:-1,1,64,64" in argv
    zoo.ok("run", "model=fixture", "stage=eval", "backend=acl", "backend.dynamic_batch=true", gears,
           "batch_size=5", env=ascend_env)
    m = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "metrics.json").read_text())
    assert m["metrics"] == eval_metrics["metrics"] and m["images"] == 12
    perf = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "perf.json").read_text())
    assert perf["dynamic_batch_gears"] == [1, 2, 8] and perf["batches"] == 3


def test_acl_without_ais_bench_gives_install_hint(zoo, fixtures_dir):
    rc, out, err = zoo("run", "model=fixture", "stage=eval", "backend=acl")
    assert rc != 0 and "Traceback" not in err
    assert "ais_bench" in err and "aclruntime" in err and "CANN" in err
