"""ONNX Runtime backend (default): real batched ``InferenceSession.run``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo_core.api.errors import ZooError
from zoo_core.runs.model_files import ensure_onnx
from zoo_core.backends.base import Backend, Batch

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def make_session(path: str | Path, bcfg=None):
    """An ``InferenceSession`` with threads, optimisation level and providers from ``bcfg``."""
    import onnxruntime as ort

    bcfg = bcfg or {}
    so = ort.SessionOptions()
    intra = int(bcfg.get("intra_op_threads", 0) or 0)
    if intra:
        so.intra_op_num_threads = intra
    so.inter_op_num_threads = int(bcfg.get("inter_op_threads", 1) or 1)
    level = str(bcfg.get("graph_optimization", "all"))
    if level not in _OPT_LEVELS:
        raise ZooError(f"backend.graph_optimization={level!r}: choose one of {', '.join(_OPT_LEVELS)}")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[level])
    so.log_severity_level = 3
    providers = list(bcfg.get("providers") or ["CPUExecutionProvider"])
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:
        raise ZooError(f"onnxruntime cannot load this model: {exc}", path=path) from exc


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, ctx, model_path: str | Path | None = None):
        super().__init__(ctx)
        self.model_path = Path(model_path) if model_path else ensure_onnx(ctx, "onnxruntime")
        self.session = make_session(self.model_path, ctx.cfg.backend)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        given = [s.name for s in ctx.hooks.input_spec(cfg=ctx.cfg)]
        if sorted(self.input_names) != sorted(given):
            raise ZooError(f"model inputs {self.input_names} do not match the {ctx.model_name} preprocess, "
                           f"which gives {given}", path=self.model_path,
                           hint=f"is this an ONNX of the {ctx.model_name} model?")

    def infer(self, batch: Batch) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in batch.inputs]
        if missing:
            raise ZooError(
                f"model inputs {missing} are not produced by the {self.ctx.model_name} preprocess "
                f"(it gives {sorted(batch.inputs)})", path=self.model_path)
        feeds = {n: batch.inputs[n] for n in self.input_names}
        try:
            return self.session.run(self.output_names, feeds)
        except Exception as exc:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            expected = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
            raise ZooError(f"onnxruntime run failed for inputs {shapes} (the model expects {expected}): "
                           + " ".join(str(exc).split()), path=self.model_path) from exc

    def describe(self) -> dict:
        return {"backend": self.name, "model_file": str(self.model_path),
                "providers": self.session.get_providers(),
                "intra_op_threads": int(self.ctx.cfg.backend.get("intra_op_threads", 0) or 0)}
