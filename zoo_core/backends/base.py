"""The backend interface: load a model, run a batch, report what it ran.

A backend is built from explicit arguments — a model file, its options (the ``backend`` config
section as a plain dict) and a :class:`ModelIO` of callables the stage hands in — never from the
run context, so it can be tested with a file and a dict.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo_core.api.types import Sample, TensorSpec


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


@dataclass
class ModelIO:
    """The model's side of the contract, as callables a stage hands to a backend.

    ``input_specs()`` and ``output_specs(meta)`` describe one item (no batch dimension);
    ``oracle(sample, meta)`` encodes ground truth as outputs; ``build_model()`` returns a torch module
    with its weights loaded.
    """

    model: str = "model"
    input_specs: Callable[[], list[TensorSpec]] | None = None
    output_specs: Callable[[dict], list[TensorSpec]] | None = None
    oracle: Callable[[Sample, dict], list[np.ndarray]] | None = None
    build_model: Callable[[], Any] | None = None


class Backend:
    """Base class of inference backends (entry-point group ``zoo.backends``).

    Subclasses implement :meth:`infer`. ``model_kind`` tells the stage which model file to resolve
    before building the backend (``"onnx"``, ``"om"`` or ``None``); ``builds_model`` says it calls
    ``io.build_model`` (so the run needs weights); ``fixed_batch`` set to an int makes the batcher
    pad every batch to that size (static-shape OMs); ``exact_output_dtypes`` says its outputs keep the model
    file's own element types, so the stream compares them with the model's ``output_spec`` dtypes.
    """

    name = "backend"
    model_kind: ClassVar[str | None] = None
    builds_model: ClassVar[bool] = False
    exact_output_dtypes: ClassVar[bool] = False
    fixed_batch: int | None = None

    def __init__(self, model_file: str | Path | None = None, options: Mapping[str, Any] | None = None,
                 io: ModelIO | None = None):
        self.model_file = Path(model_file) if model_file else None
        self.options: dict[str, Any] = dict(options or {})
        self.io = io or ModelIO()

    def infer(self, batch: Batch) -> list[np.ndarray]:
        """Run one batch; return one array per model output, batch dimension first."""
        raise NotImplementedError

    def device_times_ms(self) -> list[float] | None:
        """The device's own compute time of each call so far, in ms, when the device reports it (ais_bench's
        ``NPU_compute_time``), else ``None``: ``stage=perf`` then computes the throughput from it, as
        ais_bench does, and the host-measured latency stays beside it."""
        return None

    def describe(self) -> dict[str, Any]:
        """Facts for perf.json / run.json: which model file, providers, threads..."""
        return {"backend": self.name, "model_file": str(self.model_file) if self.model_file else None}

    def close(self) -> None:
        """Release the device / session."""
