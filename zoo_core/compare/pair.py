"""The compare stream's two pieces: a backend that runs both sides on each batch, a sink that compares.

:class:`PairBackend` is an ordinary :class:`~zoo_core.backends.base.Backend` to the stream: it runs
the reference and then the candidate on the same batch (the very arrays the batcher built) and
returns the reference outputs followed by the candidate outputs, so the stream's guarantees hold
for both sides: finite outputs (checked here per side, so the error names the side), output shapes
against the model's ``output_spec``, every image exactly once. :class:`CompareSink` splits each
finished item back into the two sides, accumulates the per-output differences and matches the
decoded detections.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from zoo_core.api.errors import ConfigError, InputError, ZooError
from zoo_core.api.types import Detections, TensorSpec
from zoo_core.backends.base import Backend, Batch
from zoo_core.compare.detections import DEFAULT_IOU, MatchSummary, match_image
from zoo_core.compare.numbers import OutputStats, Tolerance
from zoo_core.pipeline.stream import Result, find_nonfinite

SIDES = ("reference", "candidate")

DecodeFn = Callable[[list[np.ndarray], list[dict]], list[Detections]]


class PairBackend(Backend):
    """Runs ``reference`` then ``candidate`` on every batch; optional ``layers`` capture the first images."""

    name = "compare"

    def __init__(self, reference: Backend, candidate: Backend, layers: Any = None):
        super().__init__()
        self.sides = (reference, candidate)
        self.layers = layers
        fixed = {b.fixed_batch for b in self.sides if b.fixed_batch}
        if len(fixed) > 1:
            raise ConfigError(f"the reference runs batches of {reference.fixed_batch} and the candidate batches of "
                              f"{candidate.fixed_batch}: compare two models of one batch size (or a dynamic one)")
        self.fixed_batch = fixed.pop() if fixed else None
        self.seconds = [0.0, 0.0]
        self.calls = 0
        self.n_outputs: int | None = None

    def infer(self, batch: Batch) -> list[np.ndarray]:
        outs = []
        for k, backend in enumerate(self.sides):
            t0 = time.perf_counter()
            got = [np.asarray(o) for o in backend.infer(batch)]
            self.seconds[k] += time.perf_counter() - t0
            bad = find_nonfinite(got, batch.n_valid)
            if bad:
                s = batch.samples[bad[0]] if batch.samples else None
                where = s.path if s is not None else batch.ids[bad[0]]
                raise InputError(f"{where}: the {SIDES[k]} ({_label(backend)}) output contains NaN or inf")
            outs.append(got)
        if len(outs[0]) != len(outs[1]):
            raise ZooError(f"the reference ({_label(self.sides[0])}) returns {len(outs[0])} outputs, the candidate "
                           f"({_label(self.sides[1])}) {len(outs[1])}: are both models of this model and config?")
        self.n_outputs = len(outs[0])
        self.calls += 1
        if self.layers is not None and self.layers.wanted > 0:
            self.layers.capture(batch)
        return outs[0] + outs[1]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "reference": self.sides[0].describe(), "candidate": self.sides[1].describe()}

    def close(self) -> None:
        try:
            if self.layers is not None:
                self.layers.close()
        finally:
            for b in self.sides:
                b.close()


def _label(backend: Backend) -> str:
    d = backend.describe()
    where = d.get("model_file") or d.get("dir") or d.get("weights")
    return f"{backend.name}, {where}" if where else backend.name


class CompareSink:
    """Per finished item: differences of each output, and (with ``decode``) the two detection sets matched.

    ``specs(meta)`` names the outputs (the model's ``output_spec``); ``plot_points`` values of each
    output are kept per image (a seeded sample) for the scatter plot.
    """

    def __init__(self, specs: Callable[[dict], list[TensorSpec]], tol: Tolerance, decode: DecodeFn | None = None,
                 iou: float = DEFAULT_IOU, plot_points: int = 0, seed: int = 0):
        self.specs, self.tol, self.decode = specs, tol, decode
        self.outputs: dict[str, OutputStats] = {}
        self.matches = MatchSummary(iou)
        self.detections: tuple[dict[str, Detections], dict[str, Detections]] = ({}, {})
        self.plot_points = int(plot_points)
        self.samples: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._rng = np.random.default_rng(seed)

    def write(self, result: Result) -> None:
        assert result.outputs is not None, "CompareSink needs a stream with keep_outputs=True"
        k = len(result.outputs) // 2
        ref, cand = result.outputs[:k], result.outputs[k:]
        names = [s.name for s in self.specs(result.meta)]
        if len(names) != k:
            names = [f"output{i}" for i in range(k)]
        item = result.sample.id
        for name, r, c in zip(names, ref, cand):
            self.outputs.setdefault(name, OutputStats(self.tol)).add(item, r, c)
            if self.plot_points:
                take = self._rng.choice(r.size, size=min(self.plot_points, r.size), replace=False)
                self.samples.setdefault(name, []).append((r.ravel()[take].astype(np.float32),
                                                          c.ravel()[take].astype(np.float32)))
        if self.decode is not None:
            dr = self.decode([r[None] for r in ref], [result.meta])[0]
            dc = self.decode([c[None] for c in cand], [result.meta])[0]
            self.detections[0][item], self.detections[1][item] = dr, dc
            self.matches.add(match_image(item, dr, dc, self.matches.iou))

    def close(self) -> None:
        pass

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(s.passed for s in self.outputs.values())
