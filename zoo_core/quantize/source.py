"""The FP32 ONNX handed to a quantizer, checked before any calibration: its inputs are the plugin's and it
is not quantized already."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo_core.api.errors import ZooError
from zoo_core.runs.context import RunContext

log = logging.getLogger("zoo")


def graph_inputs(model: Any) -> list[str]:
    """The names of a graph's real inputs (initializers listed as inputs left out)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


#: Node types of an already quantized graph: ONNX QDQ / QOperator / integer ops, AMCT's deploy-model ops.
QUANTIZED_OP_TYPES = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                                "MatMulInteger", "AscendQuant", "AscendDequant", "AscendAntiQuant",
                                "AscendWeightQuant"})


def quantized_nodes(model: Any) -> dict[str, int]:
    """Count of each quantization node type in ``model``'s graph (``QLinear*`` included); empty for an FP32 graph."""
    found: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in QUANTIZED_OP_TYPES or n.op_type.startswith("QLinear"):
            found[n.op_type] = found.get(n.op_type, 0) + 1
    return found


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def load_onnx(path: Path) -> Any:
    """``onnx.load(path)`` with its external data; :class:`ZooError` naming the file and the reason (not an
    ONNX model, or external data onnx refuses: outside the model's folder, an absolute path, a symbolic
    link, missing, shorter than its tensor)."""
    import onnx

    model = read_graph(path)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # onnx's ValidationError, FileNotFoundError, a short file...
        raise ZooError(f"cannot load the ONNX model's external data ({_reason(exc)})", path=path) from None
    return model


def read_graph(path: Path) -> Any:
    """``onnx.load(path, load_external_data=False)``; :class:`ZooError` naming the file if it is no ONNX model."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError of a non-ONNX / truncated file, OSError...
        raise ZooError(f"not a readable ONNX model ({_reason(exc)[:250]})", path=path) from None


def source_model(ctx: RunContext, path: Path, specs: Sequence[Any]) -> Any:
    """The ONNX to quantize, loaded and checked before any calibration: it loads with its external data, if
    any (:func:`load_onnx`), its inputs are the ones the plugin's ``input_spec`` names (the calibration
    tensors are fed, and AMCT's ``--input_shape`` and ``--data_dir`` are written, under those names) and it
    is not quantized already (QDQ or integer ops)."""
    model = load_onnx(path)
    if not model.graph.node:
        raise ZooError("not an ONNX model: it holds no graph nodes", path=path)
    quantized = quantized_nodes(model)
    if quantized:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(quantized.items()))
        raise ZooError(f"already quantized ({kinds}): stage=quantize and quantize=int8 calibrate an FP32 model",
                       path=path, hint="pass the FP32 ONNX as model_file=; an INT8 ONNX runs as it is with "
                                       "quantize=none model_file=<it>")
    names, want = graph_inputs(model), [s.name for s in specs]
    if sorted(names) != sorted(want):
        raise ZooError(f"its inputs {names} are not the {ctx.model_name} model's {want} (its input_spec), "
                       "which the calibration images are preprocessed for", path=path,
                       hint=f"is this an ONNX of the {ctx.model_name} model?")
    return model
