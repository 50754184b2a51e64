"""PyTorch eager backend (parity and debugging); torch is imported only here."""
from __future__ import annotations

import numpy as np

from zoo_core.api.optional import require_torch
from zoo_core.backends.base import Backend, Batch


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, ctx):
        super().__init__(ctx)
        torch = require_torch("the torch backend")

        threads = int(ctx.cfg.backend.get("threads", 0) or 0)
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = ctx.hooks.build_model(cfg=ctx.cfg, weights=ctx.weights())
        self.model.eval()
        self.input_names = [s.name for s in ctx.hooks.input_spec(cfg=ctx.cfg)]

    def infer(self, batch: Batch) -> list[np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(*[torch.from_numpy(np.ascontiguousarray(batch.inputs[n])) for n in self.input_names])
        if isinstance(out, torch.Tensor):
            out = (out,)
        return [o.float().numpy() for o in out]

    def describe(self) -> dict:
        return {"backend": self.name, "threads": self.torch.get_num_threads(), "weights": self.ctx.weights()}
