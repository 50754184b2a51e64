"""ONNX export: onnxruntime graphs (DeformConv / GridSample) against the golden outputs, and the
Ascend DeformableConv2D graph (node count, attributes, offset re-layout, names, out-nodes)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from zoo_centernet.dcn import DCN  # noqa: E402
from zoo_centernet.export import (  # noqa: E402
    AUTO_ORT_DCN_IMPL,
    export_onnx,
    head_out_nodes,
    ort_supports_deformconv,
    resolve_dcn_impl,
)
from zoo_core.api.errors import ConfigError  # noqa: E402

REL_TOL = 1e-4
GOLDEN_HW = (256, 256)
OUTPUTS = ["output1", "output2", "output3"]


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _dim0(value_info):
    d = value_info.type.tensor_type.shape.dim[0]
    return d.dim_param or d.dim_value


@pytest.fixture(scope="module")
def exported(ctdet_model, tmp_path_factory):
    """``{impl: ExportResult}`` for the golden 256x256 input size."""
    out = tmp_path_factory.mktemp("centernet_onnx")
    res = {"ascend": export_onnx(ctdet_model, out / "ascend.onnx", "ascend", input_hw=GOLDEN_HW)}
    for impl in ("deformconv", "gridsample"):
        if impl == "deformconv" and not ort_supports_deformconv():
            continue
        res[impl] = export_onnx(ctdet_model, out / f"{impl}.onnx", "onnxruntime", dcn_impl=impl,
                                input_hw=GOLDEN_HW)
    return res


@pytest.mark.slow
@pytest.mark.parametrize("impl,op,opset", [("deformconv", "DeformConv", 19), ("gridsample", "GridSample", 17)])
def test_onnxruntime_export_matches_golden(exported, model_io, impl, op, opset):
    if impl not in exported:
        pytest.skip("this onnxruntime has no DeformConv kernel")
    res = exported[impl]
    assert res.target == "onnxruntime"
    assert res.input_names == ["actual_input"] and res.output_names == OUTPUTS
    model = onnx.load(str(res.path))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(op) == 16 and "DeformableConv2D" not in ops
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert max(o.version for o in model.opset_import) == opset
    assert [i.name for i in model.graph.input] == ["actual_input"]
    assert [o.name for o in model.graph.output] == OUTPUTS
    assert all(isinstance(_dim0(v), str) and _dim0(v) for v in [*model.graph.input, *model.graph.output])

    sess = _session(res.path)
    x = model_io["x"]
    outs = sess.run(OUTPUTS, {"actual_input": x})
    for name, out in zip(("hm", "wh", "reg"), outs):
        assert rel_err(out, model_io[name]) <= REL_TOL, name
    batch = np.concatenate([x[:, :, ::-1], x]).copy()
    outs2 = sess.run(OUTPUTS, {"actual_input": batch})
    for out, out2 in zip(outs, outs2):
        assert out2.shape[0] == 2
        np.testing.assert_allclose(out2[1:], out, rtol=0, atol=1e-5 * np.abs(out).max())
    assert head_out_nodes(res.path) == _producers(model)


#: Non-square keep_res-style input sizes (multiples of the stride 32) the golden 256x256 trace never saw.
NON_SQUARE_HW = ((384, 512), (512, 672))


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["deformconv", "gridsample"])
def test_onnxruntime_export_has_dynamic_height_and_width(exported, ctdet_model, impl):
    """One ONNX (traced at 256x256) serves fix_res and keep_res: named H/W axes, and on non-square
    inputs it matches the torch model (pure DCN) within 1e-4 of each output's max |value|."""
    if impl not in exported:
        pytest.skip("this onnxruntime has no DeformConv kernel")
    res = exported[impl]
    model = onnx.load(str(res.path))
    assert _dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert [_dims(o) for o in model.graph.output] == [["batch", ch, "out_height", "out_width"] for ch in (80, 2, 2)]
    sess = _session(res.path)
    rng = np.random.default_rng(2)
    for h, w in NON_SQUARE_HW:
        x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        outs = sess.run(OUTPUTS, {"actual_input": x})
        with torch.no_grad():
            ref = [t.numpy() for t in ctdet_model(torch.from_numpy(x))]
        for name, out, r in zip(("hm", "wh", "reg"), outs, ref):
            assert out.shape == r.shape == (1, r.shape[1], h // 4, w // 4), name
            assert rel_err(out, r) <= REL_TOL, (name, (h, w), rel_err(out, r))
    # a batch of two at the last size: each item as alone
    batch = np.concatenate([x, x[:, :, ::-1]]).copy()
    outs2 = sess.run(OUTPUTS, {"actual_input": batch})
    for out, out2 in zip(outs, outs2):
        np.testing.assert_allclose(out2[:1], out, rtol=0, atol=1e-5 * np.abs(out).max())


@pytest.mark.slow
def test_ascend_export_keeps_the_configured_size(exported):
    """ATC fixes H and W with --input_shape: the ascend graph keeps input_hw, only the batch is dynamic."""
    model = onnx.load(str(exported["ascend"].path))
    assert _dims(model.graph.input[0]) == ["batch", 3, *GOLDEN_HW]


def _producers(model):
    producer = {o: n for n in model.graph.node for o in n.output}
    nodes = [producer[o.name] for o in model.graph.output]
    assert all(n.op_type == "Conv" for n in nodes)
    inits = {i.name for i in model.graph.initializer}
    assert [n.input[1] for n in nodes] == ["hm.2.weight", "wh.2.weight", "reg.2.weight"]
    assert all(n.input[1] in inits for n in nodes)
    return [n.name for n in nodes]


@pytest.mark.slow
def test_ascend_export_graph(exported):
    res = exported["ascend"]
    assert res.target == "ascend"
    assert res.input_names == ["actual_input"] and res.output_names == OUTPUTS
    model = onnx.load(str(res.path))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 11)]
    dcn_nodes = [n for n in model.graph.node if n.op_type == "DeformableConv2D"]
    assert len(dcn_nodes) == 16
    assert not any(n.op_type in ("DeformConv", "GridSample") for n in model.graph.node)
    for n in dcn_nodes:
        assert n.domain == ""
        assert len(n.input) == 4
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert attrs == {"strides": [1, 1], "pads": [1, 1], "dilations": [1, 1], "groups": 1,
                         "deformable_groups": 1}
    assert [i.name for i in model.graph.input] == ["actual_input"]
    assert [o.name for o in model.graph.output] == OUTPUTS
    assert all(isinstance(_dim0(v), str) and _dim0(v) for v in [*model.graph.input, *model.graph.output])
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert shape == [3, *GOLDEN_HW]
    assert head_out_nodes(res.path) == _producers(model)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidGraph, match="No Op registered for DeformableConv2D"):
        _session(res.path)


def _subgraph(model, inp, out):
    """The nodes computing ``out`` from ``inp`` (plus initializers), as a standalone model."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    nodes, used, todo, seen = [], set(), [out], set()
    while todo:
        name = todo.pop()
        if name in seen or name == inp or name == "":
            continue
        seen.add(name)
        if name in inits:
            used.add(name)
            continue
        node = producer[name]
        assert node.op_type != "DeformableConv2D", "offset path must not go through another DCN"
        if node not in nodes:
            nodes.append(node)
        todo.extend(node.input)
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    graph = helper.make_graph(
        nodes, "offsets", [helper.make_tensor_value_info(inp, onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
        initializer=[inits[n] for n in used],
    )
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


@pytest.mark.slow
def test_ascend_offsets_are_dx_dy_sigmoid_mask(exported, ctdet_model, model_io):
    """For each of the 16 nodes: W, B are the DCN's; offset = [dx x9, dy x9, sigmoid(mask) x9]
    computed by the graph from the DCN's actual input equals the re-layout of conv_offset_mask."""
    model = onnx.load(str(exported["ascend"].path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dcn_nodes = [n for n in model.graph.node if n.op_type == "DeformableConv2D"]
    dcns = [m for m in ctdet_model.modules() if isinstance(m, DCN)]
    calls = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append((mod, args[0]))) for m in dcns]
    try:
        with torch.no_grad():
            ctdet_model(torch.from_numpy(model_io["x"]))
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == len(dcn_nodes) == 16
    for node, (mod, x_in) in zip(dcn_nodes, calls):
        np.testing.assert_array_equal(inits[node.input[1]], mod.weight.detach().numpy())
        np.testing.assert_array_equal(inits[node.input[3]], mod.bias.detach().numpy())
        sub = _subgraph(model, node.input[0], node.input[2])
        (got,) = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {node.input[0]: x_in.numpy()})
        with torch.no_grad():
            om = mod.conv_offset_mask(x_in).numpy().astype(np.float64)
        expect = np.concatenate([om[:, 1:18:2], om[:, 0:18:2], 1 / (1 + np.exp(-om[:, 18:27]))], axis=1)
        assert got.shape == expect.shape == (1, 27, *x_in.shape[2:])
        np.testing.assert_allclose(got, expect, rtol=0, atol=1e-4 * max(1.0, np.abs(om).max()))
        assert np.abs(om[:, :18]).max() > 0.5


def test_resolve_dcn_impl_and_opset_validation(ctdet_model, tmp_path):
    expected_auto = AUTO_ORT_DCN_IMPL if ort_supports_deformconv() or AUTO_ORT_DCN_IMPL == "gridsample" \
        else "gridsample"
    assert resolve_dcn_impl("onnxruntime") == expected_auto
    assert resolve_dcn_impl("onnxruntime", "gridsample") == "gridsample"
    assert resolve_dcn_impl("ascend") == "ascend"
    for target, impl in (("tensorrt", "auto"), ("onnxruntime", "cuda"), ("ascend", "gridsample")):
        with pytest.raises(ConfigError):
            resolve_dcn_impl(target, impl)
    out = tmp_path / "never.onnx"
    with pytest.raises(ConfigError):
        export_onnx(ctdet_model, out, "onnxruntime", dcn_impl="deformconv", opset=17)
    with pytest.raises(ConfigError):
        export_onnx(ctdet_model, out, "onnxruntime", dcn_impl="gridsample", opset=15)
    with pytest.raises(ConfigError):
        export_onnx(ctdet_model, out, "ascend", opset=18)
    with pytest.raises(ConfigError):
        export_onnx(ctdet_model, out, "ascend", input_hw=(500, 512))
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert all(m.impl is None for m in ctdet_model.modules() if isinstance(m, DCN))
