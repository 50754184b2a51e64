"""ONNX Runtime backend (default): real batched ``InferenceSession.run``."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.errors import ConfigError, ZooError
from zoo_core.backends.base import Backend, Batch, ModelIO

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def make_session(path: str | Path, options: Mapping[str, Any] | None = None) -> Any:
    """An ``InferenceSession`` with threads, optimisation level and providers from ``options``."""
    import onnxruntime as ort

    options = options or {}
    so = ort.SessionOptions()
    intra = int(options.get("intra_op_threads", 0) or 0)
    if intra:
        so.intra_op_num_threads = intra
    so.inter_op_num_threads = int(options.get("inter_op_threads", 1) or 1)
    level = str(options.get("graph_optimization", "all"))
    if level not in _OPT_LEVELS:
        raise ConfigError(f"backend.graph_optimization={level!r}: choose one of {', '.join(_OPT_LEVELS)}")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[level])
    so.log_severity_level = 3
    providers = list(options.get("providers") or ["CPUExecutionProvider"])
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:
        raise ZooError(f"onnxruntime cannot load this model: {exc}", path=path) from exc


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    model_kind = "onnx"
    exact_output_dtypes = True  # (the ONNX's own output types: an output_spec that disagrees is caught)

    def __init__(self, model_file: str | Path | None = None, options: Mapping[str, Any] | None = None,
                 io: ModelIO | None = None):
        super().__init__(model_file, options, io)
        if self.model_file is None:
            raise ConfigError("backend=onnxruntime needs an ONNX model file")
        self.session = make_session(self.model_file, self.options)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.io.input_specs is not None:
            given = [s.name for s in self.io.input_specs()]
            if sorted(self.input_names) != sorted(given):
                raise ZooError(f"model inputs {self.input_names} do not match the {self.io.model} preprocess, "
                               f"which gives {given}", path=self.model_file,
                               hint=f"is this an ONNX of the {self.io.model} model?")

    def infer(self, batch: Batch) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in batch.inputs]
        if missing:
            raise ZooError(f"model inputs {missing} are not produced by the {self.io.model} preprocess "
                           f"(it gives {sorted(batch.inputs)})", path=self.model_file)
        feeds = {n: batch.inputs[n] for n in self.input_names}
        try:
            return list(self.session.run(self.output_names, feeds))
        except Exception as exc:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            expected = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
            raise ZooError(f"onnxruntime run failed for inputs {shapes} (the model expects {expected}): "
                           + " ".join(str(exc).split()), path=self.model_file) from exc

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model_file": str(self.model_file),
                "providers": self.session.get_providers(),
                "intra_op_threads": int(self.options.get("intra_op_threads", 0) or 0)}
