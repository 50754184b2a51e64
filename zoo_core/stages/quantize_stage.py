"""``quantize``: calibrate on the dataset and write the INT8 model (:mod:`zoo_core.quantize`, docs/quantize.md)."""
from __future__ import annotations

import json
import logging
from typing import Any

from zoo_core.api.errors import ConfigError
from zoo_core.quantize.amct import run_amct
from zoo_core.quantize.calibration import enum_name
from zoo_core.quantize.onnxruntime_int8 import ensure_int8_onnx
from zoo_core.runs.context import RunContext
from zoo_core.runs.model_files import int8_onnx_path

log = logging.getLogger("zoo")


def run(ctx: RunContext) -> dict[str, Any]:
    target = enum_name(ctx.cfg.export.target)
    if target == "ascend":
        return run_amct(ctx)
    given = ctx.cfg.get("model_file")
    if given and not str(given).endswith(".onnx"):
        raise ConfigError(f"model_file={given} is not an .onnx file, which stage=quantize needs")
    path = ensure_int8_onnx(ctx, given)  # this run's link to the model it built or checked, with its record
    info = json.loads(path.with_suffix(".json").read_text())
    return {"stage": "quantize", "target": target, "onnx": str(int8_onnx_path(ctx)), "run_copy": str(path),
            "size_ratio": info["bytes"] / info["fp32_bytes"], **info}
