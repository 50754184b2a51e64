"""Taps: the intermediate tensors of one side for one set of inputs.

* :class:`TorchTap`: forward hooks on every module of the torch backend's model, one forward pass;
  it also records which module's output fed which module (to spot a BatchNorm the ONNX exporter
  folded into the convolution before it);
* :class:`OnnxTap`: the backend's ONNX model with the wanted tensors exposed as extra outputs (a
  temporary copy), run in chunks so that only a chunk of tensors is in memory at once;
* :class:`DumpTap`: Ascend dump files converted to ``.npy`` (see :mod:`zoo_core.compare.ascend_dump`).

Every tap is used as ``start(inputs)``, ``get(keys)`` (any number of times), ``finish()``.
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zoo_core.compare.onnx_graph import ExtraOutputs, OnnxGraph


class TorchTap:
    """Module outputs of a torch model, captured with forward hooks during one forward pass.

    After :meth:`start`: ``order`` lists the modules with a tensor output in the order they
    finished (``calls[m]`` > 1 for a module run twice: its last output is kept), ``fed_by[m]``
    names the innermost module whose output object was ``m``'s first input, and ``modules`` holds
    every module name. The root module (``""``) is not captured.
    """

    kind = "torch"

    def __init__(self, model: Any, input_names: Sequence[str] | None = None):
        self.model = model
        self.input_names = list(input_names) if input_names else None
        self.modules = {name for name, _ in model.named_modules() if name}
        self.order: list[str] = []
        self.fed_by: dict[str, str] = {}
        self.calls: dict[str, int] = {}
        self._key: dict[str, int] = {}
        self._arrays: list[np.ndarray] = []

    def start(self, inputs: Mapping[str, np.ndarray]) -> None:
        import torch

        self.finish()
        producer: dict[int, tuple[weakref.ref, str]] = {}
        seen: dict[tuple[int, int], tuple[weakref.ref, int]] = {}

        def alive(entry: tuple | None, obj: Any) -> bool:  # ``id`` is only unique while the object lives
            return entry is not None and entry[0]() is obj

        def make_hook(name: str):
            def hook(module, args, output):
                if args and isinstance(args[0], torch.Tensor) and alive(producer.get(id(args[0])), args[0]):
                    self.fed_by[name] = producer[id(args[0])][1]
                if not isinstance(output, torch.Tensor):
                    return
                # one array per tensor state: an in-place op (ReLU(inplace=True)) bumps _version
                state = (id(output), output._version)
                entry = seen.get(state)
                if not alive(entry, output):
                    entry = (weakref.ref(output), len(self._arrays))
                    seen[state] = entry
                    self._arrays.append(output.detach().cpu().numpy().copy())
                if not alive(producer.get(id(output)), output):
                    producer[id(output)] = (weakref.ref(output), name)
                assert entry is not None
                self._key[name] = entry[1]
                self.calls[name] = self.calls.get(name, 0) + 1
                self.order.append(name)
            return hook

        handles = [m.register_forward_hook(make_hook(n)) for n, m in self.model.named_modules() if n]
        try:
            names = self.input_names or list(inputs)
            with torch.no_grad():  # not inference_mode: its tensors have no version counter
                self.model(*[torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names])
        finally:
            for h in handles:
                h.remove()

    def has(self, module: str) -> bool:
        return module in self._key

    def tensor_key(self, module: str) -> int:
        """Modules with equal keys returned the very same tensor (a container and its last child)."""
        return self._key[module]

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {k: self._arrays[self._key[k]] for k in keys}

    def finish(self) -> None:
        self.order, self.fed_by, self.calls, self._key, self._arrays = [], {}, {}, {}, []


class OnnxTap:
    """Intermediate tensors of an ONNX model in onnxruntime (a temporary copy with extra outputs).

    Each :meth:`get` is one ``session.run`` fetching just those tensors, so a caller asking for a
    chunk at a time holds one chunk in memory (each run recomputes the graph).
    """

    kind = "onnx"

    def __init__(self, model_file: str, options: Mapping[str, Any] | None = None):
        self.graph = OnnxGraph.load(model_file)
        self.options = dict(options or {})
        self._copy: ExtraOutputs | None = None
        self._session: Any = None
        self._inputs: dict[str, np.ndarray] = {}

    def prepare(self, tensors: Sequence[str]) -> None:
        """Build the session exposing ``tensors`` (once; later calls are no-ops)."""
        if self._session is not None:
            return
        from zoo_core.backends.onnxruntime_backend import make_session

        self._copy = ExtraOutputs(self.graph, tensors)
        try:
            self._session = make_session(self._copy.path, self.options)
        finally:
            self._copy.close()

    def start(self, inputs: Mapping[str, np.ndarray]) -> None:
        self._inputs = {n: inputs[n] for n in self.graph.inputs if n in inputs}

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        assert self._session is not None, "call prepare() first"
        keys = list(dict.fromkeys(keys))
        return dict(zip(keys, self._session.run(keys, self._inputs))) if keys else {}

    def finish(self) -> None:
        self._inputs = {}

    def close(self) -> None:
        self._session = None
        if self._copy is not None:
            self._copy.close()
