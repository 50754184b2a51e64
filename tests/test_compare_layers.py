"""compare.layers in-process: a small CNN (BatchNorms the exporter folds, in-place ReLUs, a residual)
exported with PyTorch's TorchScript exporter, compared layer by layer against torch, itself, a
perturbed copy and a converted Ascend dump (contract double)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from zoo_core.api.errors import ConfigError, InputError, ZooError
from zoo_core.backends.base import Batch
from zoo_core.compare.ascend_dump import DumpTap, read_dump_dir
from zoo_core.compare.layers import LayerCompare
from zoo_core.compare.numbers import Tolerance
from zoo_core.compare.onnx_graph import OnnxGraph, module_path, sanitize_op_name
from zoo_core.compare.taps import OnnxTap, TorchTap

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

TOL = Tolerance()

#: The layers of :class:`Tiny` as the ONNX export has them, in graph order: (name, folded BN, aliases).
EXPECTED = [("stem.0", "stem.1", []), ("stem.2", None, ["stem"]), ("block.conv1", "block.bn1", []),
            ("block.relu1", None, []), ("block.conv2", "block.bn2", []), ("block.relu2", None, ["block"]),
            ("head", None, [])]


def _tiny():
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1, self.relu1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
            self.conv2, self.bn2, self.relu2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + x)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
            self.block = Block(8)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return (self.head(self.block(self.stem(x))),)

    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # BN statistics far from identity, so folding changes the conv outputs
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    torch.onnx.export(tiny, (torch.zeros(1, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
    return path


def _batch(n=1, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)
    return Batch(ids=[f"im{i}" for i in range(n)], inputs={"x": x}, metas=[{}] * n)


def _scaled_copy(src, dst, node_name, factor):
    """``src`` with the weight of node ``node_name`` multiplied by ``factor`` (a patched export)."""
    from onnx import numpy_helper

    m = onnx.load(str(src))
    node = next(n for n in m.graph.node if n.name == node_name)
    init = next(t for t in m.graph.initializer if t.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(m, str(dst))
    return dst


def _compare(ref_tap, cand_tap, batch=None, images=1):
    lc = LayerCompare(ref_tap, cand_tap, TOL, images)
    lc.capture(batch or _batch())
    return lc.summary()


def test_module_path_and_dump_names():
    assert module_path("/base/base_layer/base_layer.0/Conv") == "base.base_layer.0"
    assert module_path("/dla_up/ida_0/proj_1/conv/DeformConv") == "dla_up.ida_0.proj_1.conv"
    assert module_path("/a/b.0/b.0.1/Relu") == "a.b.0.1"
    assert module_path("Conv_12") == "" and module_path("/Add") == ""
    assert sanitize_op_name("/block/conv1/Conv") == "_block_conv1_Conv"


def test_the_export_really_folds_the_batchnorms(tiny_onnx):
    ops = [n.op_type for n in OnnxGraph.load(tiny_onnx).nodes]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 4


def test_torch_vs_its_export_matches_every_layer_and_folded_batchnorms(tiny, tiny_onnx):
    s = _compare(TorchTap(tiny, ["x"]), OnnxTap(str(tiny_onnx)), _batch(2), images=2)
    got = [(r["name"], r.get("folded"), r.get("aliases", [])) for r in s["rows"]]
    assert got == EXPECTED
    assert s["first_divergent"] is None and s["images"] == ["im0", "im1"]
    assert all(r["status"] == "ok" and r["max_rel"] < 1e-5 for r in s["rows"])
    orders = [r["order"] for r in s["rows"]]
    assert orders == sorted(orders)


def test_without_the_fold_the_conv_alone_would_diverge(tiny):
    """The oracle for the fold rule: the torch conv output itself is far from conv+BN."""
    tap = TorchTap(tiny, ["x"])
    tap.start(_batch().inputs)
    conv, bn = tap.get(["stem.0", "stem.1"]).values()
    assert np.abs(conv - bn).max() > 0.1


@pytest.mark.parametrize("torch_is_ref", [True, False])
def test_a_scaled_conv_is_the_first_divergent_layer(tiny, tiny_onnx, tmp_path, torch_is_ref):
    bad = _scaled_copy(tiny_onnx, tmp_path / "bad.onnx", "/block/conv2/Conv", 1.1)
    taps = (TorchTap(tiny, ["x"]), OnnxTap(str(bad)))
    s = _compare(*(taps if torch_is_ref else taps[::-1]))
    first = s["first_divergent"]
    assert first["name"] == "block.conv2" and first["folded"] == "block.bn2"
    assert first["cosine"] > 0.999  # a scaled layer: only the relative bound catches it
    rows = {r["name"]: r for r in s["rows"]}
    assert all(rows[n]["status"] == "ok" for n in ("stem.0", "stem.2", "block.conv1", "block.relu1"))
    assert rows["head"]["status"] == "diverged"


def test_onnx_vs_patched_onnx_by_tensor_name(tiny_onnx, tmp_path):
    bad = _scaled_copy(tiny_onnx, tmp_path / "bad.onnx", "/block/conv1/Conv", 0.8)
    before = hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    s = _compare(OnnxTap(str(tiny_onnx)), OnnxTap(str(bad)))
    assert s["first_divergent"]["name"] == "block.conv1/Conv"
    assert s["first_divergent"]["tensor"] == "/block/conv1/Conv_output_0"
    assert [r["name"] for r in s["rows"]][:3] == ["stem.0/Conv", "stem.2/Relu", "block.conv1/Conv"]
    assert hashlib.sha256(tiny_onnx.read_bytes()).hexdigest() == before  # only a temporary copy is changed


def test_torch_vs_torch_by_module_name(tiny):
    other = _tiny()
    with torch.no_grad():
        other.block.relu1.inplace = True
        other.block.conv1.bias += 0.5
    s = _compare(TorchTap(tiny, ["x"]), TorchTap(other, ["x"]))
    assert s["first_divergent"]["name"] == "block.conv1"
    assert [r["name"] for r in s["rows"]][:3] == ["stem.0", "stem.1", "stem.2"]


def test_an_onnx_without_exporter_scopes_matches_nothing_and_says_why(tiny, tiny_onnx, tmp_path):
    m = onnx.load(str(tiny_onnx))
    for i, n in enumerate(m.graph.node):
        n.name = f"node_{i}"
    onnx.save(m, str(tmp_path / "plain.onnx"))
    s = _compare(TorchTap(tiny, ["x"]), OnnxTap(str(tmp_path / "plain.onnx")))
    assert s["matched"] == 0 and s["first_divergent"] is None and "TorchScript exporter" in s["note"]


@pytest.fixture
def dump_double(fixtures_dir):
    sys.path.insert(0, str(fixtures_dir / "fake_ascend"))
    try:
        from dump import write_converted_dump
    finally:
        sys.path.pop(0)
    return write_converted_dump


def test_converted_ascend_dump_against_the_onnx(tiny_onnx, tmp_path, dump_double):
    b = _batch()
    dump_double(tiny_onnx, b.inputs, tmp_path / "dump")
    s = _compare(OnnxTap(str(tiny_onnx)), DumpTap(tmp_path / "dump"), b)
    assert s["first_divergent"] is None and s["candidate"] == "acl dump"
    rows = {r["name"]: r for r in s["rows"]}
    assert rows["stem.0/Conv"]["fused"] == ["/stem/stem.2/Relu"]  # Conv+ReLU dumped as one op
    assert rows["stem.0/Conv"]["tensor"] == "/stem/stem.2/Relu_output_0"
    assert "block.conv2/Conv" in rows and "fused" not in rows["block.conv2/Conv"]  # its consumer is the Add
    dump_double(tiny_onnx, b.inputs, tmp_path / "bad", perturb={"/block/conv2/Conv": 1.2})
    s = _compare(OnnxTap(str(tiny_onnx)), DumpTap(tmp_path / "bad"), b)
    assert s["first_divergent"]["name"] == "block.conv2/Conv"


def test_dump_dir_errors(tiny_onnx, tmp_path, dump_double):
    with pytest.raises(ZooError, match="msaccucmp.py convert"):
        read_dump_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooError, match="no converted dump files"):
        read_dump_dir(tmp_path / "empty")
    files = dump_double(tiny_onnx, _batch().inputs, tmp_path / "twice")
    first = files[0]
    second = first.with_name(first.name.replace(".1700000000123456.", ".1700000000999999."))
    second.write_bytes(first.read_bytes())
    with pytest.raises(ZooError, match="dumped twice") as e:
        read_dump_dir(tmp_path / "twice")
    assert first.name in str(e.value) and second.name in str(e.value)
    fifo = tmp_path / "fifo" / "Conv.c1.1.1.1700000000123456.output.0.1x4.npy"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    unblock = threading.Timer(10, _open_writer, (fifo,))  # the old code's open() blocked until a writer came
    unblock.start()
    try:
        with pytest.raises(ZooError, match=r"\.npy: \.npy dump file is a FIFO \(named pipe\), not a regular file"):
            read_dump_dir(fifo.parent)["c1:0"].load()  # refused unopened
    finally:
        unblock.cancel()


def _open_writer(fifo) -> None:
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_unsupported_pairs_are_config_errors(tiny, tmp_path, dump_double, tiny_onnx):
    dump_double(tiny_onnx, _batch().inputs, tmp_path / "d")
    with pytest.raises(ConfigError, match="cannot pair acl dump .reference. with onnxruntime"):
        LayerCompare(DumpTap(tmp_path / "d"), OnnxTap(str(tiny_onnx)), TOL)
    with pytest.raises(ConfigError, match="cannot pair torch .reference. with acl dump"):
        LayerCompare(TorchTap(tiny, ["x"]), DumpTap(tmp_path / "d"), TOL)


def _conv(x, w, b=None):
    """NCHW convolution, stride 1, 'same' padding (numpy, float64)."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # n, c, h, w, k, k
    y = np.einsum("nchwij,ocij->nohw", win, w)
    return y if b is None else y + b[None, :, None, None]


def _int8_conv_relu(tmp_path):
    """fp.onnx: Conv -> Relu -> Conv; q.onnx: it quantized (QDQ) by onnxruntime's static quantizer, which
    fuses the Relu into the first Conv and gives the Conv's output the Relu's name (r1)."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(size=(4, 2, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    w2 = rng.normal(size=(3, 4, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "fp.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": rng.normal(size=(1, 2, 6, 6)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp_path / "fp.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return w1, b1, w2


def test_fp32_vs_int8_compares_what_the_next_layer_consumes_and_never_blames_a_fused_tensor(tmp_path):
    w1, b1, w2 = _int8_conv_relu(tmp_path)
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert {n.output[0]: n.op_type for n in q.graph.node}["r1"] == "Conv"  # the quantizer fused the Relu
    init = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in q.graph.initializer}

    def qdq(v, name):  # QuantizeLinear (round half to even, saturate to uint8) then DequantizeLinear
        s, z = init[f"{name}_scale"], init[f"{name}_zero_point"]
        return (np.clip(np.rint(v / s) + z, 0, 255) - z) * s

    def deq(name, scale, zero):
        return (init[name] - init[zero]) * init[scale]

    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6)).astype(np.float32)
    fp_r1 = np.maximum(_conv(x.astype(np.float64), w1, b1), 0)
    fp_y = _conv(fp_r1, w2)
    # the unfused int8 graph: each Conv in float on dequantized values, its output quantized and dequantized
    q_r1 = qdq(_conv(qdq(x.astype(np.float64), "x"), deq("w1_quantized", "w1_scale", "w1_zero_point"),
                     deq("b1_quantized", "b1_quantized_scale", "b1_quantized_zero_point")), "r1")
    q_y = qdq(_conv(q_r1, deq("w2_quantized", "w2_scale", "w2_zero_point")), "y")

    s = _compare(OnnxTap(str(tmp_path / "fp.onnx")), OnnxTap(str(tmp_path / "q.onnx")),
                 Batch(ids=["im0"], inputs={"x": x}, metas=[{}]))
    rows = {r["tensor"]: r for r in s["rows"]}
    assert set(rows) == {"r1", "y"}  # c1 has no tensor of that name in the int8 graph
    r1, y = rows["r1"], rows["y"]
    assert r1["op_differs"] == "Relu vs Conv" and r1["candidate_tensor"] == "r1_DequantizeLinear_Output"
    assert r1["quantizer_fused"] is True  # the quantizer's Relu removal, not a changed op
    assert s["unmatched"]["count"] == 0  # c1 was compared through r1 (the fused Conv's output)
    assert "op_differs" not in y and y["op"] == "Conv"  # the int8 graph's y is the DequantizeLinear of a Conv
    for row, a, b in ((r1, fp_r1, q_r1), (y, fp_y, q_y)):
        d = np.abs(a - b)
        cos = float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))
        assert row["max_abs"] == pytest.approx(d.max(), rel=1e-5)
        assert row["max_rel"] == pytest.approx(d.max() / np.abs(a).max(), rel=1e-5)
        assert row["cosine"] == pytest.approx(cos, abs=1e-6)
    assert r1["status"] in ("ok", "op differs")
    first = s["first_divergent"]
    assert first is None or first["tensor"] == "y"
    assert s["diverged"] == (y["status"] == "diverged")


def _chain(path, act="Relu", head="Sigmoid", bias=0.0, rename=False, **act_attrs):
    """x -> /c1/Conv -> /act/<act> -> /c2/Conv -> /head/<head> -> y (exporter-style scoped node names).
    ``bias`` is added to c1's bias; ``rename`` renames every tensor from c1's output on (y aside)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(size=(4, 2, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32) + bias
    w2 = rng.normal(size=(3, 4, 1, 1)).astype(np.float32)
    t = {n: (f"{n}_renamed" if rename else n) for n in ("c1", "a1", "c2")}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], [t["c1"]], name="/c1/Conv", pads=[1, 1, 1, 1]),
         helper.make_node(act, [t["c1"]], [t["a1"]], name=f"/act/{act}", **act_attrs),
         helper.make_node("Conv", [t["a1"], "w2"], [t["c2"]], name="/c2/Conv"),
         helper.make_node(head, [t["c2"]], ["y"], name=f"/head/{head}")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _chain_batch():
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6)).astype(np.float32)
    return Batch(ids=["im0"], inputs={"x": x}, metas=[{}])


def _result(s):
    """A compare result around a layers summary, as the stage writes it (for the report functions)."""
    return {"model": "m", "dataset": "d", "images": 1, "reference": {"backend": "onnxruntime"},
            "candidate": {"backend": "onnxruntime"}, "outputs": {}, "passed": False, "layers": s,
            "tolerance": {"atol": 1e-4, "rtol": 1e-2, "min_cosine": 0.999}}


def test_a_changed_activation_in_an_fp32_graph_is_the_first_divergent_layer(tmp_path):
    from zoo_core.compare.report import markdown, summary_lines

    ref = _chain(tmp_path / "ref.onnx")
    cand = _chain(tmp_path / "leaky.onnx", act="LeakyRelu", alpha=0.1)
    s = _compare(OnnxTap(str(ref)), OnnxTap(str(cand)), _chain_batch())
    first = s["first_divergent"]
    assert first["tensor"] == "a1" and first["name"] == "act/Relu" and first["op_differs"] == "Relu vs LeakyRelu"
    assert {r["tensor"]: r["status"] for r in s["rows"]} == {"c1": "ok", "a1": "diverged", "c2": "diverged",
                                                             "y": "diverged"}
    assert s["op_differs"] == 0 and s["diverged"] == 3 and "quantizer_fused" not in s["rows"][1]
    line = next(x for x in summary_lines(_result(s)) if "layers:" in x)
    assert "first divergent: act/Relu (op differs (Relu vs LeakyRelu); " in line and "fused" not in line
    md = markdown(_result(s), None)
    assert "| 1 | act/Relu | Relu |" in md and "**first divergent**, op differs (Relu vs LeakyRelu)" in md
    assert "fused" not in md

    # the changed op is the graph output: still named, not "none beyond tolerance"
    s = _compare(OnnxTap(str(ref)), OnnxTap(str(_chain(tmp_path / "hard.onnx", head="HardSigmoid"))),
                 _chain_batch())
    assert s["first_divergent"]["tensor"] == "y" and s["first_divergent"]["op_differs"] == "Sigmoid vs HardSigmoid"
    assert s["diverged"] == 1


def test_reference_layers_without_a_counterpart_before_the_first_divergent_are_reported(tmp_path):
    from zoo_core.compare.report import markdown, summary_lines

    ref = _chain(tmp_path / "ref.onnx")
    cand = _chain(tmp_path / "renamed.onnx", bias=1.0, rename=True)  # c1 changed, every name after it renamed
    s = _compare(OnnxTap(str(ref)), OnnxTap(str(cand)), _chain_batch())
    assert s["matched"] == 1 and s["first_divergent"]["tensor"] == "y"
    um = s["unmatched"]
    assert um["side"] == "reference" and um["count"] == 3
    assert [u["name"] for u in um["layers"]] == ["c1/Conv", "act/Relu", "c2/Conv"]
    assert s["first_divergent"]["unmatched_before"] == 3
    assert s["first_divergent"]["unmatched_before_layers"] == ["c1/Conv", "act/Relu", "c2/Conv"]
    line = next(x for x in summary_lines(_result(s)) if "layers:" in x)
    assert "(3 reference tensors unmatched)" in line
    assert "first divergent among matched layers: head/Sigmoid" in line
    assert "3 unmatched layers before it: c1/Conv, act/Relu, c2/Conv" in line
    md = markdown(_result(s), None)
    assert "3 unmatched layers before it: c1/Conv, act/Relu, c2/Conv" in md
    assert "Unmatched reference tensors (no counterpart on the other side" in md

    s = _compare(OnnxTap(str(ref)), OnnxTap(str(ref)), _chain_batch())
    assert s["unmatched"]["count"] == 0 and s["first_divergent"] is None


def test_a_torch_module_without_an_onnx_node_name_is_reported_before_the_next_matched_layer(tiny, tiny_onnx,
                                                                                             tmp_path):
    bad = _scaled_copy(tiny_onnx, tmp_path / "bad.onnx", "/block/conv2/Conv", 1.1)
    m = onnx.load(str(bad))
    next(n for n in m.graph.node if n.name == "/block/conv2/Conv").name = ""  # no scope: no module maps to it
    onnx.save(m, str(bad))
    s = _compare(TorchTap(tiny, ["x"]), OnnxTap(str(bad)))
    first = s["first_divergent"]
    assert first["name"] == "block.relu2"  # the next matched module
    assert s["unmatched"]["side"] == "reference" and s["unmatched"]["what"] == "torch leaf modules"
    assert first["unmatched_before_layers"] == ["block.conv2", "block.bn2"]
    assert [u["name"] for u in s["unmatched"]["layers"]] == ["block.conv2", "block.bn2"]


def test_every_layer_of_the_export_is_matched_so_none_is_reported_unmatched(tiny, tiny_onnx):
    for taps in ((TorchTap(tiny, ["x"]), OnnxTap(str(tiny_onnx))), (OnnxTap(str(tiny_onnx)), TorchTap(tiny, ["x"])),
                 (TorchTap(tiny, ["x"]), TorchTap(_tiny(), ["x"]))):
        assert _compare(*taps)["unmatched"]["count"] == 0


def test_nodes_of_one_scope_get_distinct_names_and_the_report_numbers_rows_by_graph_order(tmp_path):
    from onnx import TensorProto, helper

    from zoo_core.compare.report import markdown

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="/pre/Relu"),
         helper.make_node("Slice", ["r", "s0", "e0", "ax"], ["a"], name="/dcn/Slice"),
         helper.make_node("Slice", ["r", "s1", "e1", "ax"], ["b"], name="/dcn/Slice_1"),
         helper.make_node("Split", ["r"], ["p", "q"], name="/dcn/Split", axis=1, num_outputs=2),
         helper.make_node("Concat", ["a", "b", "p", "q"], ["y"], name="/out/Concat", axis=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
         (("s0", 0), ("e0", 2), ("s1", 2), ("e1", 4), ("ax", 1))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 4, 2, 2)).astype(np.float32)
    s = _compare(OnnxTap(str(tmp_path / "m.onnx")), OnnxTap(str(tmp_path / "m.onnx")),
                 Batch(ids=["im0"], inputs={"x": x}, metas=[{}]))
    names = [r["name"] for r in s["rows"]]
    assert names == ["pre/Relu", "dcn/Slice", "dcn/Slice_1", "dcn/Split (p)", "dcn/Split (q)", "out/Concat"]
    assert [r["order"] for r in s["rows"]] == [0, 1, 2, 3, 3, 4]
    md = markdown(_result(s), None)
    assert "| 3 | dcn/Split (q) | Split |" in md and "| 4 | out/Concat | Concat |" in md


def _npy_header(path: Path, shape: tuple[int, ...], descr: str = "<f4") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
    return path


def test_a_dump_file_whose_header_announces_more_data_than_it_holds_is_an_error_naming_it(tmp_path):
    """Before: np.load of a 128-byte file announcing (100000, 100000) float32 raised ``MemoryError: Unable to
    allocate 37.3 GiB``, which the compare stage reported as an unexpected error."""
    huge = _npy_header(tmp_path / "huge" / "Conv.c1.1.1.1700000000123456.output.0.100000x100000.npy",
                       (100000, 100000))
    with pytest.raises(InputError) as e:
        DumpTap(huge.parent).get(["c1:0"])
    assert str(e.value) == f"{huge}: its header announces 40000000000 bytes of data but the file holds 0"
    assert e.value.exit_code == 2
    cut = _npy_header(tmp_path / "cut" / "Conv.c1.1.1.1700000000123456.output.0.1x4.npy", (1, 4))
    with open(cut, "ab") as f:
        f.write(np.arange(2, dtype="<f4").tobytes())  # 8 of its 16 bytes
    with pytest.raises(InputError, match=r"1x4\.npy: its header announces 16 bytes of data but the file holds 8"):
        DumpTap(cut.parent).get(["c1:0"])
    with open(cut, "ab") as f:
        f.write(np.arange(2, 4, dtype="<f4").tobytes())
    np.testing.assert_array_equal(DumpTap(cut.parent).get(["c1:0"])["c1:0"], [[0, 1, 2, 3]])
    pickled = tmp_path / "obj" / "Conv.c1.1.1.1700000000123456.output.0.1.npy"
    pickled.parent.mkdir()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"1\.npy: holds Python objects \(pickles are never loaded\)"):
        DumpTap(pickled.parent).get(["c1:0"])
