"""``export``: the model plugin writes ``<model_dir>/<model>_<target>.onnx`` for ``export.target``.

The export's shape comes from the model config (e.g. ``model.input_h`` / ``model.input_w``); the
result names the graph's inputs and outputs.
"""
from __future__ import annotations

import json
from typing import Any

from zoo_core.runs.context import RunContext
from zoo_core.runs.model_files import ensure_onnx


def run(ctx: RunContext) -> dict[str, Any]:
    target = str(ctx.cfg.export.target).split(".")[-1]
    path = ensure_onnx(ctx, target, force=True)
    info = json.loads(path.with_suffix(".json").read_text())
    return {"stage": "export", "target": target, "onnx": str(path), **info}
