"""The Ascend path with contract doubles: ATC as a subprocess (no shell) and ais_bench's InferSession.

``fixtures/fake_ascend/atc`` and ``fixtures/fake_ascend/ais_bench`` are contract doubles (REFERENCE
5.1/5.2), not Ascend tools: the "OM" is the ONNX, run by onnxruntime.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest


@pytest.fixture
def ascend_env(zoo, fixtures_dir, tmp_path):
    fake = fixtures_dir / "fake_ascend"
    # the test interpreter's bin next: the fake atc's python3 needs onnx to compile an AIPP config
    path = os.pathsep.join([str(fake), str(Path(sys.executable).parent), os.environ["PATH"]])
    return zoo.env(PATH=path, PYTHONPATH=str(fake), FAKE_ATC_LOG=str(tmp_path / "atc_argv.json"))


@pytest.mark.needs_torch
def test_convert_without_atc_writes_script(zoo):
    env = zoo.env(PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                       if not os.path.exists(os.path.join(p, "atc"))))
    rc, out, err = zoo("run", "model=fixture", "stage=convert", "batch_size=2", env=env)
    assert rc == 0, err
    script = zoo.cwd / "outputs" / "fixture" / "model" / "atc_bs2.sh"
    assert "atc is not on PATH" in out and str(script) in out
    argv = shlex.split(script.read_text().splitlines()[-1])
    onnx = zoo.cwd / "outputs" / "fixture" / "model" / "fixture_ascend.onnx"
    own = onnx.parent / "atc_bs2.onnx"  # the script's own copy of the export
    assert own.read_bytes() == onnx.read_bytes()
    assert argv[0] == "atc" and "--framework=5" in argv and f"--model={own}" in argv
    assert "--input_shape=image:2,1,64,64" in argv and "--soc_version=Ascend310P3" in argv
    assert f"--output={onnx.parent / 'fixture_bs2'}" in argv
    assert os.access(script, os.X_OK)
    assert not list(onnx.parent.glob("*.om"))


@pytest.mark.needs_torch
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


def _relu_om(tmp_path, input_shape: str, dims: list, **contract) -> Path:
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


def test_backend_device_id_reaches_the_session(tmp_path, fake_acl, monkeypatch):
    """backend.device_id selects the NPU: InferSession(device_id, om) (REFERENCE 5.1). The double logs the device of
    every session it opens."""
    monkeypatch.setenv("FAKE_ACL_LOG", str(tmp_path / "acl.jsonl"))
    monkeypatch.setenv("FAKE_ACL_DEVICE_COUNT", "4")
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    AclBackend, _ = fake_acl
    backend = AclBackend(_relu_om(tmp_path, "image:1,1,4,4", [1, 1, 4, 4]), {"device_id": 3})
    sessions = [json.loads(line) for line in (tmp_path / "acl.jsonl").read_text().splitlines()]
    assert [s["device_id"] for s in sessions] == [3] and sessions[0]["physical"] == 3
    assert backend.session.device_id == 3


@pytest.mark.parametrize("gears", [[1, 2, 8], [8, 2, 1]])
def test_dynamic_batch_uses_the_smallest_gear_that_holds_the_batch(tmp_path, fake_acl, gears):
    """A batch of n runs in the smallest gear >= n (a batch equal to a gear uses that gear, the largest gear is
    not refused), whatever order atc.dynamic_batch lists the gears in."""
    import numpy as np

    AclBackend, Batch = fake_acl
    om = _relu_om(tmp_path, "image:-1,1,4,4", [-1, 1, 4, 4], dynamic_batch_size="1,2,8")
    backend = AclBackend(om, {"dynamic_batch": True, "gears": gears})
    chosen = []
    for n in (1, 2, 4, 8):
        x = np.linspace(-1, 1, n * 16, dtype=np.float32).reshape(n, 1, 4, 4)
        (out,) = backend.infer(Batch(ids=[str(i) for i in range(n)], inputs={"image": x}, metas=[{}] * n))
        np.testing.assert_array_equal(out, np.maximum(x, 0))
        chosen.append(backend.session._dyn_batch)
    assert chosen == [1, 2, 8, 8]


def test_a_dynamic_batch_om_without_backend_dynamic_batch_is_a_config_error(tmp_path, fake_acl):
    """Before: model_file=<..._dyn.om> backend=acl (no backend.dynamic_batch=true) ran the dynamic-batch OM in static
    mode and the device refused it: RuntimeError, 'unexpected error' with a traceback, exit 1."""
    from zoo_core.api.errors import ConfigError

    AclBackend, _ = fake_acl
    om = _relu_om(tmp_path, "image:-1,1,4,4", [-1, 1, 4, 4], dynamic_batch_size="1,2,8")
    with pytest.raises(ConfigError, match=r"m.om is a dynamic-batch OM \(its input batch is -1\), loaded without "
                                          r"backend.dynamic_batch=true") as exc:
        AclBackend(om, {"batch_size": 4})
    assert "backend.dynamic_batch=true atc.dynamic_batch=[the gears it was converted with]" in exc.value.hint
    (tmp_path / "m.json").write_text(json.dumps({"settings": {"dynamic_batch": [1, 2, 8]}}))
    with pytest.raises(ConfigError) as exc:
        AclBackend(om, {"batch_size": 4})
    assert "atc.dynamic_batch=[the gears it was converted with: [1, 2, 8]]" in exc.value.hint
    assert AclBackend(om, {"dynamic_batch": True, "gears": [1, 2, 8]}).gears == [1, 2, 8]


def test_a_one_gear_plan_beside_a_fixed_size_om_does_not_make_it_a_gear_om(tmp_path, fake_acl, caplog):
    """An older zoo wrote <om>.gears.json for a one-size plan, which ATC compiles as a static OM. Before: the backend
    took the plan and called set_dynamic_hw / infer(mode="dymhw") on the static OM: RuntimeError, traceback, on every
    later run while the file stayed."""
    import logging

    import numpy as np

    AclBackend, Batch = fake_acl
    om = _relu_om(tmp_path, "image:1,1,4,4", [1, 1, 4, 4])
    (tmp_path / "m.om.gears.json").write_text(json.dumps({"dynamic_image_size": [[4, 4]], "sizes": [[4, 4, 1]]}))
    with caplog.at_level(logging.WARNING, logger="zoo"):
        backend = AclBackend(om, {})
    assert "m.om.gears.json lists 1 image-size gear(s): m.om is a fixed-size OM" in caplog.text
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    (out,) = backend.infer(Batch(ids=["a"], inputs={"image": x}, metas=[{}]))
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    assert backend.describe()["image_size_gears"] is None and backend.session.gear_log == []


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


_AIPP = """# a comment line
aipp_op {
    aipp_mode : static
    input_format : RGB888_U8
    src_image_size_w : 6
    src_image_size_h : 4
    crop : false
    min_chn_0 : 104
    min_chn_1 : 114
    min_chn_2 : 120
    mean_chn_1 : 3
    var_reci_chn_0 : 0.0135864
    var_reci_chn_1 : 0.0143080
    var_reci_chn_2 : 0.5
}
"""


def _fake_atc(fixtures_dir, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(fixtures_dir / "fake_ascend" / "atc"), *map(str, args)],
                          capture_output=True, text=True)


def test_the_fake_atc_compiles_the_aipp_config_into_the_om(tmp_path, fixtures_dir, fake_acl):
    """Before: the fake atc ignored --insert_op_conf and copied the float ONNX, so backend=acl model.aipp=true had
    never run (onnxruntime refused the uint8 input). Now the "OM" takes uint8 N,H,W,C and applies
    (x - mean_chn - min_chn) * var_reci_chn per channel (a non-square H x W, so a wrong transpose fails)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    AclBackend, Batch = fake_acl
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 4, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 4, 6])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "m.onnx"))
    (tmp_path / "m.aippconfig").write_text(_AIPP)
    common = ["--framework=5", f"--model={tmp_path / 'm.onnx'}", f"--output={tmp_path / 'm_bs2'}",
              "--input_format=NCHW", "--input_shape=image:2,3,4,6", "--soc_version=Ascend310P3"]
    proc = _fake_atc(fixtures_dir, *common, f"--insert_op_conf={tmp_path / 'm.aippconfig'}")
    assert proc.returncode == 0, proc.stderr
    backend = AclBackend(tmp_path / "m_bs2.om", {})
    (desc,) = backend.session.get_inputs()
    assert desc.datatype == "UINT8" and desc.shape == [2, 4, 6, 3]
    u8 = np.random.default_rng(0).integers(0, 256, (2, 4, 6, 3), dtype=np.uint8)
    (out,) = backend.infer(Batch(ids=["a", "b"], inputs={"image": u8}, metas=[{}, {}]))
    sub = np.array([104, 117, 120], np.float32)[:, None, None]
    mul = np.array([0.0135864, 0.0143080, 0.5], np.float32)[:, None, None]
    np.testing.assert_allclose(out, (u8.transpose(0, 3, 1, 2).astype(np.float32) - sub) * mul, rtol=0, atol=1e-6)
    with pytest.raises(Exception, match="uint8|UINT8|type"):  # the float input the model had is gone, as on device
        backend.infer(Batch(ids=["a", "b"], inputs={"image": u8.astype(np.float32)}, metas=[{}, {}]))
    (tmp_path / "bad.aippconfig").write_text(_AIPP.replace("src_image_size_w : 6", "src_image_size_w : 8"))
    proc = _fake_atc(fixtures_dir, *common, f"--insert_op_conf={tmp_path / 'bad.aippconfig'}")
    assert proc.returncode == 1 and "4x8, but --input_shape has 4x6" in proc.stderr


#: CenterFace's mean / std with mean x 255 whole numbers and 1 / (std x 255) the 7-decimal var_reci_chn values the
#: AIPP config gets (REFERENCE 3.4's constants): the AIPP OM and the host's float normalisation then compute the
#: same input up to float32 rounding (with the default mean / std they differ by up to 1.2e-3, REFERENCE 3.4).
_EXACT_AIPP = ["model.mean=[0.40784313725490196,0.4470588235294118,0.47058823529411764]",
               "model.std=[0.28863927364504066,0.27408223563397965,0.27809782202128724]"]


@pytest.mark.needs_torch
@pytest.mark.slow
def test_centerface_aipp_om_on_acl_gives_the_host_normalised_detections(zoo, ascend_env):
    """``eval backend=acl model.aipp=true`` (uint8 HWC fed to an OM whose AIPP stage the fake atc compiled from the
    .aippconfig zoo wrote) against ``eval backend=onnxruntime model.aipp=false`` (zoo's float normalisation on the
    host), at a non-square input: the same detections. Before: the fake atc ignored --insert_op_conf and the acl run
    died on its uint8 input (INVALID_ARGUMENT), so the AIPP path had never run."""
    import numpy as np

    common = ["model=centerface", "model.variant=ascend", "weights=random", "dataset.limit=2",
              "model.input_hw=[256,320]", *_EXACT_AIPP]
    zoo.ok("run", *common, "model.aipp=true", "stage=convert", "work_dir=acl", env=ascend_env)
    conf = (zoo.cwd / "acl" / "model" / "centerface_bs1.aippconfig").read_text()
    assert "min_chn_0 : 104" in conf and "var_reci_chn_2 : 0.0141014" in conf and "src_image_size_h : 256" in conf
    zoo.ok("run", *common, "model.aipp=true", "stage=eval", "backend=acl", "work_dir=acl", env=ascend_env)
    zoo.ok("run", *common, "stage=eval", "backend=onnxruntime", "work_dir=ort")

    def detections(run):
        (chunk,) = (zoo.cwd / run / "detections").glob("chunk-*.npz")
        d = np.load(chunk)
        out, start = {}, 0
        for i, n in zip(d["ids"], d["counts"]):
            rows = np.column_stack([d["boxes"][start:start + n], d["scores"][start:start + n]])
            out[str(i)] = rows[np.lexsort(np.round(rows, 2).T[::-1])]  # tied scores come in either order
            start += n
        return out

    acl, ort = detections("acl"), detections("ort")
    assert sorted(acl) == sorted(ort) and len(acl) == 2
    for key in acl:
        assert acl[key].shape == ort[key].shape and len(acl[key]) > 0
        np.testing.assert_allclose(acl[key], ort[key], rtol=0, atol=1e-3, err_msg=key)
