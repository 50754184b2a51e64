"""Oracle backend: the model plugin encodes each sample's ground truth as raw outputs (no weights)."""
from __future__ import annotations

from typing import Any

import numpy as np

from zoo_core.api.errors import ConfigError
from zoo_core.backends.base import Backend, Batch


class OracleBackend(Backend):
    name = "oracle"

    def infer(self, batch: Batch) -> list[np.ndarray]:
        if self.io.oracle is None:
            raise ConfigError("backend=oracle needs the model's oracle_outputs hook")
        per_item = [self.io.oracle(s, m) for s, m in zip(batch.samples, batch.metas, strict=True)]
        per_item += [per_item[-1]] * (batch.size - len(per_item))
        return [np.stack([np.asarray(item[k]) for item in per_item]) for k in range(len(per_item[0]))]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "note": "ground truth encoded by the model plugin (no weights)"}
