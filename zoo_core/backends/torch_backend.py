"""PyTorch eager backend (parity and debugging); torch is imported only here."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.errors import ConfigError
from zoo_core.api.optional import require_torch
from zoo_core.backends.base import Backend, Batch, ModelIO


class TorchBackend(Backend):
    name = "torch"
    builds_model = True

    def __init__(self, model_file: str | Path | None = None, options: Mapping[str, Any] | None = None,
                 io: ModelIO | None = None):
        super().__init__(model_file, options, io)
        torch = require_torch("the torch backend")

        threads = int(self.options.get("threads", 0) or 0)
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        if self.io.build_model is None:
            raise ConfigError("backend=torch needs the model's build_model hook")
        self.model = self.io.build_model()
        self.model.eval()
        self.input_names = [s.name for s in self.io.input_specs()] if self.io.input_specs else None

    def infer(self, batch: Batch) -> list[np.ndarray]:
        torch = self.torch
        names = self.input_names or list(batch.inputs)
        with torch.inference_mode():
            out = self.model(*[torch.from_numpy(np.ascontiguousarray(batch.inputs[n])) for n in names])
        if isinstance(out, torch.Tensor):
            out = (out,)
        return [o.float().numpy() for o in out]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "threads": self.torch.get_num_threads(),
                "weights": self.options.get("weights")}
