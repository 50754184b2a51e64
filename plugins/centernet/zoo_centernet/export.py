"""ONNX export of the CenterNet DLA-34 model for onnxruntime (standard ops) or Ascend ATC (REFERENCE 2.4).

Both targets name the input ``actual_input`` and the outputs ``output1``, ``output2``, ``output3``
(hm logits, wh, reg), with a dynamic dimension 0, and use the TorchScript exporter
(``dynamo=False``).

* ``onnxruntime``: every DCN becomes either one ONNX ``DeformConv`` (opset 19) or a ``GridSample``
  decomposition (opset 17 by default, >= 16). ``dcn_impl='auto'`` takes :data:`AUTO_ORT_DCN_IMPL`
  (the faster one measured in onnxruntime) when the installed onnxruntime runs it, else the other.
  Height and width are dynamic too (named axes ``height`` / ``width``, outputs ``out_height`` /
  ``out_width``): one ONNX serves fix_res (``input_h x input_w``) and keep_res (every image its own
  padded size), any size a multiple of the stride :data:`STRIDE`. ``DeformConv`` reads its sizes at
  run time; the GridSample decomposition traces its sampling grid from the input's shape
  (:func:`zoo_centernet.dcn.deform_conv2d_gridsample`).
* ``ascend``: opset 11, 16 ``DeformableConv2D`` nodes in the default domain; only ATC accepts it
  (onnxruntime rejects the graph, and the ONNX checker is not run). Height and width stay those of
  ``input_hw`` (ATC fixes the shape with ``--input_shape`` anyway).
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

from zoo_core.api.atomic import temp_path
from zoo_core.api.errors import ConfigError, ZooError
from zoo_core.api.types import ExportResult

INPUT_NAME = "actual_input"
OUTPUT_NAMES = ("output1", "output2", "output3")
TARGETS = ("onnxruntime", "ascend")
ORT_DCN_IMPLS = ("deformconv", "gridsample")
# Measured (onnxruntime 1.31.1, CPU, 2 threads, 1x3x512x512, best of 10, two runs on a shared
# 2-vCPU VM): DeformConv 0.21 / 0.24 s, GridSample decomposition 0.26 / 0.28 s per image
# (torch eager: pure DCN 1.10 s, gridsample mode 0.58 s).
AUTO_ORT_DCN_IMPL = "deformconv"
DEFAULT_OPSET = {"deformconv": 19, "gridsample": 17, "ascend": 11}
MIN_OPSET = {"deformconv": 19, "gridsample": 16, "ascend": 9}
MAX_OPSET = {"deformconv": 20, "gridsample": 20, "ascend": 16}
ONNX_OP = {"deformconv": "DeformConv", "gridsample": "GridSample", "ascend": "DeformableConv2D"}
#: The network's total stride: input sides must be multiples of it (DLA-34 level 5).
STRIDE = 32


def dynamic_axes(target: str, output_names) -> dict[str, dict[int, str]]:
    """Named dynamic axes: batch for every target, height and width too for onnxruntime."""
    spatial = target == "onnxruntime"
    axes = {INPUT_NAME: {0: "batch", **({2: "height", 3: "width"} if spatial else {})}}
    for name in output_names:
        axes[name] = {0: "batch", **({2: "out_height", 3: "out_width"} if spatial else {})}
    return axes


@functools.lru_cache(maxsize=1)
def ort_supports_deformconv() -> bool:
    """Whether the installed onnxruntime (CPU) runs ONNX ``DeformConv``-19 (added around 1.25)."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return False
    node = helper.make_node("DeformConv", ["x", "w", "off"], ["y"], kernel_shape=[1, 1])
    graph = helper.make_graph(
        [node], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 1, 1]),
         helper.make_tensor_value_info("off", TensorProto.FLOAT, [1, 2, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        z = np.zeros
        sess.run(None, {"x": z((1, 1, 2, 2), np.float32), "w": z((1, 1, 1, 1), np.float32),
                        "off": z((1, 2, 2, 2), np.float32)})
    except Exception:
        return False
    return True


def resolve_dcn_impl(target: str, dcn_impl: str = "auto") -> str:
    """The DCN forward mode used to export for ``target`` (``ascend`` always gives ``ascend``)."""
    if target not in TARGETS:
        raise ConfigError(f"export target {target!r} is not one of {', '.join(TARGETS)}")
    if target == "ascend":
        if dcn_impl not in ("auto", "ascend"):
            raise ConfigError(f"model.export.dcn_impl={dcn_impl!r} is not available for the ascend target (use auto)")
        return "ascend"
    if dcn_impl == "auto":
        if AUTO_ORT_DCN_IMPL == "deformconv" and not ort_supports_deformconv():
            return "gridsample"
        return AUTO_ORT_DCN_IMPL
    if dcn_impl not in ORT_DCN_IMPLS:
        raise ConfigError(f"model.export.dcn_impl={dcn_impl!r} is not one of auto, {', '.join(ORT_DCN_IMPLS)}")
    return dcn_impl


def _resolve_opset(impl: str, opset) -> int:
    if opset is None:
        return DEFAULT_OPSET[impl]
    opset = int(opset)
    if not MIN_OPSET[impl] <= opset <= MAX_OPSET[impl]:
        raise ConfigError(
            f"export.opset={opset} does not work with DCN export {impl!r} "
            f"(needs {MIN_OPSET[impl]}..{MAX_OPSET[impl]})"
        )
    return opset


def export_onnx(model, output, target: str, dcn_impl: str = "auto", opset: int | None = None,
                input_hw=(512, 512)) -> ExportResult:
    """Export ``model`` (a :class:`~zoo_centernet.dla.DLASeg`, weights loaded) to ``output``.

    :param target: ``"onnxruntime"`` or ``"ascend"``.
    :param dcn_impl: for onnxruntime, ``"auto"``, ``"deformconv"`` or ``"gridsample"``.
    :param opset: ``None`` = 19 (DeformConv), 17 (GridSample) or 11 (ascend).
    :param input_hw: the tracing input's height and width (multiples of :data:`STRIDE`); the
        ascend graph keeps them fixed, the onnxruntime graph takes any multiple of the stride.
    :returns: the written path with input and output names.
    """
    import torch

    from .dcn import DCN

    impl = resolve_dcn_impl(target, dcn_impl)
    opset = _resolve_opset(impl, opset)
    h, w = (int(v) for v in input_hw)
    if h % STRIDE or w % STRIDE or h <= 0 or w <= 0:
        raise ConfigError(f"input size {h}x{w} must be positive multiples of {STRIDE} (DLA-34 has stride {STRIDE})")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    n_heads = len(getattr(model, "heads", OUTPUT_NAMES))
    output_names = [f"output{i + 1}" for i in range(n_heads)]
    dcns = [m for m in model.modules() if isinstance(m, DCN)]
    saved = [(m, m.impl) for m in dcns]
    was_training = model.training
    # .<name>.<pid>.<random>.tmp: swept by the next run if this process is killed; created by the
    # exporter with a plain open(), so the final file gets the umask's mode
    tmp = str(temp_path(output))
    try:
        for m in dcns:
            m.impl = impl
        model.eval()
        dummy = torch.zeros(1, 3, h, w)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model, (dummy,), tmp, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=output_names,
                dynamic_axes=dynamic_axes(target, output_names),
                do_constant_folding=True,
            )
        _check_dcn_nodes(tmp, ONNX_OP[impl], len(dcns))
        os.replace(tmp, output)
    except ZooError:
        raise
    except Exception as e:
        raise ZooError(f"ONNX export ({target}, DCN {impl}, opset {opset}) failed: {type(e).__name__}: {e}",
                       path=output) from e
    finally:
        for m, previous in saved:
            m.impl = previous
        model.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ExportResult(path=output, input_names=[INPUT_NAME], output_names=output_names, target=target)


def _check_dcn_nodes(path, op_type: str, expected: int) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = sum(1 for n in graph.node if n.op_type == op_type)
    if found != expected:
        raise ZooError(f"exported graph has {found} {op_type} nodes, expected {expected} (one per DCN)", path=path)


def head_out_nodes(onnx_path) -> list[str]:
    """Names of the nodes producing the graph outputs, in output order (for ATC ``--out_nodes``).

    For the CenterNet export these are the final 1x1 convs of the hm, wh and reg heads; append
    ``:0`` for ATC.
    """
    import onnx

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as e:
        raise ZooError(f"cannot read ONNX file: {type(e).__name__}: {e}", path=onnx_path) from None
    producer = {out: node for node in graph.node for out in node.output}
    names = []
    for value in graph.output:
        node = producer.get(value.name)
        if node is None or not node.name:
            raise ZooError(f"graph output {value.name!r} has no named producing node", path=onnx_path)
        names.append(node.name)
    return names
