"""``export``: the model plugin writes ``model/<model>_<target>.onnx`` for ``export.target``."""
from __future__ import annotations

import json

from zoo_core.runs.model_files import ensure_onnx


def run(ctx) -> dict:
    target = str(ctx.cfg.export.target).split(".")[-1]
    path = ensure_onnx(ctx, target, force=True)
    info = json.loads(path.with_suffix(".json").read_text())
    print(f"exported {ctx.model_name} for {target}: {path}\n  inputs {info['input_names']} outputs {info['output_names']}")
    return {"onnx": str(path), **info}
