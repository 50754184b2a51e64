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


# ------------------------------------------------------------------ in-process, against the ais_bench double


def _relu_om(tmp_path, input_shape: str, dims: list, **contract) -> "os.PathLike":
    """A contract-double "OM" (an ONNX Relu) with the shapes the fake atc would record for ``input_shape``."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    graph = helper.make_graph([helper.make_node("Relu", ["image"], ["y"])], "g", [x], [y])
    om = tmp_path / "m.om"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(om))
    (tmp_path / "m.om.contract.json").write_text(json.dumps(
        {"input_shape": input_shape, "dynamic_batch_size": None, "dynamic_image_size": None, **contract}))
    return om


@pytest.fixture
def fake_acl(monkeypatch, fixtures_dir):
    monkeypatch.syspath_prepend(str(fixtures_dir / "fake_ascend"))
    from zoo_core.backends.acl_backend import AclBackend
    from zoo_core.backends.base import Batch

    return AclBackend, Batch


def test_dynamic_batch_gear_is_set_as_an_int(tmp_path, fake_acl):
    """aclruntime binds ``int SetDynamicBatchsize(int)`` (pybind11) and ais_bench's CLI passes --dymBatch as an int.
    Before: zoo passed str(gear), a TypeError on the device (the double now refuses it as pybind11 does)."""
    import numpy as np

    AclBackend, Batch = fake_acl
    om = _relu_om(tmp_path, "image:-1,1,4,4", [-1, 1, 4, 4], dynamic_batch_size="1,2,8")
    backend = AclBackend(om, {"dynamic_batch": True, "gears": [1, 2, 8]})
    with pytest.raises(TypeError, match="incompatible function arguments"):
        backend.session.set_dynamic_batchsize("8")
    x = -np.arange(5 * 16, dtype=np.float32).reshape(5, 1, 4, 4) + 20
    (out,) = backend.infer(Batch(ids=list("abcde"), inputs={"image": x}, metas=[{}] * 5))
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    assert backend.session._dyn_batch == 8


@pytest.mark.parametrize("h, w", [(64, 96), (96, 64)])
def test_image_size_gear_is_set_height_first(tmp_path, fake_acl, h, w):
    """ais_bench's CLI calls set_dynamic_hw(int(h), int(w)) from --dymHW "h,w" and aclruntime passes the pair to
    aclmdlSetDynamicHWSize(height, width), whatever the Python parameters are called (REFERENCE 5.1 writes
    set_dynamic_hw(w,h)). Before: zoo passed (width, height): a landscape input selected the portrait gear, refused
    by the device (or, with both gears compiled, ran at the wrong size)."""
    import numpy as np

    AclBackend, Batch = fake_acl
    om = _relu_om(tmp_path, "image:1,1,-1,-1", [1, 1, "h", "w"], dynamic_image_size="64,96;96,64")
    (tmp_path / "m.om.gears.json").write_text(json.dumps(
        {"dynamic_image_size": [[64, 96], [96, 64]], "sizes": [[64, 96, 1], [96, 64, 1]]}))
    backend = AclBackend(om, {})
    x = np.linspace(-1, 1, h * w, dtype=np.float32).reshape(1, 1, h, w)
    (out,) = backend.infer(Batch(ids=["a"], inputs={"image": x}, metas=[{}]))
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    assert backend.session.gear_log == [(h, w)]


@pytest.mark.parametrize("version, attr", [("2023", "sumary"), ("new", "summary")])
def test_device_times_from_either_summary(tmp_path, fake_acl, monkeypatch, version, attr):
    """2023 ais_bench: sumary().exec_time_list holds one float (ms) per infer; newer aclruntime keeps (start, end)
    pairs and ais_bench takes end - start. Before: float((start, end)) made stage=perf backend=acl a TypeError."""
    import numpy as np

    AclBackend, Batch = fake_acl
    monkeypatch.setenv("FAKE_AIS_BENCH", version)
    backend = AclBackend(_relu_om(tmp_path, "image:1,1,4,4", [1, 1, 4, 4]), {})
    assert hasattr(backend.session, attr) and not hasattr(backend.session, {"sumary": "summary"}.get(attr, "sumary"))
    for _ in range(3):
        backend.infer(Batch(ids=["a"], inputs={"image": np.ones((1, 1, 4, 4), np.float32)}, metas=[{}]))
    times = backend.device_times_ms()
    assert times == pytest.approx(backend.session._exec_ms, abs=1e-9) and len(times) == 3
