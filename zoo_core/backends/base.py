"""The backend interface: load a model, run a batch, report what it ran."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Batch:
    """A batch on its way to the device.

    ``inputs`` maps graph input names to arrays with the batch dimension first; ``n_valid`` is the
    number of real items (the rest is padding for fixed-batch models, dropped after inference).
    """

    ids: list[str]
    inputs: dict[str, np.ndarray]
    metas: list[dict]
    samples: list[Any] = field(default_factory=list)
    n_valid: int = 0

    def __post_init__(self) -> None:
        if not self.n_valid:
            self.n_valid = len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        """Items in the arrays sent to the device, padding included (``>= len(self)``)."""
        return len(next(iter(self.inputs.values()))) if self.inputs else len(self.ids)


class Backend:
    """Base class of inference backends (entry-point group ``zoo.backends``).

    Subclasses are built with the run context and implement :meth:`infer`. ``fixed_batch`` set to
    an int makes the runner pad every batch to that size (static-shape OMs).
    """

    name = "backend"
    fixed_batch: int | None = None

    def __init__(self, ctx):
        self.ctx = ctx

    def infer(self, batch: Batch) -> list[np.ndarray]:
        """Run one batch; return one array per model output, batch dimension first."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Facts for perf.json / run.json: which model file, providers, threads..."""
        return {"backend": self.name}

    def close(self) -> None:
        pass
