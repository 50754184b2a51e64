"""Make the shipped Star-Clouds ``centerface.onnx`` runnable and fast in onnxruntime (REFERENCE 3.2).

The file declares ``input.1 [10,3,32,32]`` and outputs ``537..540 [10,C,8,8]``, which ORT enforces,
and lists all 194 initializers as graph inputs, which disables ORT's constant folding (about 2x
slower). ``prepare_starclouds_onnx`` rewrites the dims and drops those inputs.
"""
from __future__ import annotations

from pathlib import Path

from zoo_core.api.atomic import write_bytes
from zoo_core.api.errors import ZooError

INPUT_NAME = "input.1"
OUTPUT_NAMES = ("537", "538", "539", "540")
"""Raw outputs in order: heatmap, scale (h, w), offset (y, x), landmarks (y, x pairs)."""
STRIDE = 4
SIZE_MULTIPLE = 32


def _set_dims(value_info, dims) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = int(d)


def _channels(value_info) -> int:
    dims = value_info.type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[1].dim_value:
        raise ValueError(f"{value_info.name}: expected a 4-D tensor with a fixed channel dim")
    return dims[1].dim_value


def prepare_starclouds_onnx(src: str | Path, dst: str | Path, remove_initializer_inputs: bool = True,
                            fixed_hw: tuple[int, int] | None = None) -> Path:
    """Write an ORT-ready copy of the Star-Clouds ONNX ``src`` to ``dst`` (atomically).

    * ``input.1`` becomes ``[B,3,H,W]`` and ``537..540`` become ``[B,C,h,w]`` (symbolic), or, with
      ``fixed_hw=(H, W)`` (multiples of 32), ``[B,3,H,W]`` / ``[B,C,H/4,W/4]`` with fixed H, W.
    * ``remove_initializer_inputs``: initializers are no longer listed as graph inputs (ORT can
      then fold constants; same outputs, about 2x faster) and initializers no node reads (the
      orphan ``num_batches_tracked``) are dropped.

    :returns: ``Path(dst)``.
    :raises ZooError: ``src`` is not this model (no ``input.1`` / ``537..540``) or bad ``fixed_hw``.
    """
    import onnx

    src, dst = Path(src), Path(dst)
    try:
        model = onnx.load(str(src))
    except Exception as e:
        raise ZooError(f"not an ONNX model ({type(e).__name__}: {e})", path=src) from e
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    inputs = {vi.name: vi for vi in graph.input}
    outputs = {vi.name: vi for vi in graph.output}
    missing = [n for n in (INPUT_NAME, *OUTPUT_NAMES) if n not in inputs and n not in outputs]
    if missing:
        raise ZooError(f"not the Star-Clouds CenterFace ONNX: tensors {missing} are missing "
                       f"(inputs {list(inputs)[:3]}..., outputs {list(outputs)})", path=src)

    in_hw: tuple[str | int, str | int]
    out_hw: tuple[str | int, str | int]
    if fixed_hw is None:
        in_hw, out_hw = ("H", "W"), ("h", "w")
    else:
        h, w = (int(v) for v in fixed_hw)
        if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ZooError(f"fixed_hw must be positive multiples of {SIZE_MULTIPLE}, got {fixed_hw}")
        in_hw, out_hw = (h, w), (h // STRIDE, w // STRIDE)
    _set_dims(inputs[INPUT_NAME], ("B", 3, *in_hw))
    for name in OUTPUT_NAMES:
        _set_dims(outputs[name], ("B", _channels(outputs[name]), *out_hw))

    if remove_initializer_inputs:
        kept = [vi for vi in graph.input if vi.name not in init_names]
        del graph.input[:]
        graph.input.extend(kept)
        used = {i for node in graph.node for i in node.input}
        kept_init = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept_init)

    onnx.checker.check_model(model)
    write_bytes(dst, model.SerializeToString())
    return dst
