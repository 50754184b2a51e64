"""What an ONNX graph says about its layers: node order, the torch module each node came from, and
which tensor leaves each module.

PyTorch's TorchScript exporter names every node after the module scope it ran in, e.g.
``/base/level2/tree1/conv1/Conv`` for module ``base.level2.tree1.conv1`` (children of a
``Sequential`` appear as ``/base_layer/base_layer.0/``). :func:`module_path` turns that back into the
module's qualified name. A module's *output tensor* is the one tensor produced inside its scope and
used outside it (or a graph output).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo_core.api.errors import ZooError

#: Nodes that compute no values worth comparing (sizes, constants).
SKIP_OPS = ("Constant", "ConstantOfShape", "Shape", "Size")


def module_path(node_name: str) -> str:
    """The qualified torch module name encoded in a TorchScript-exported node name (``""`` when none).

    ``/base/base_layer/base_layer.0/Conv`` -> ``base.base_layer.0``; ``/dla_up/ida_0/proj_1/conv/DeformConv``
    -> ``dla_up.ida_0.proj_1.conv``; ``Conv_12`` (no scope) -> ``""``.
    """
    if not node_name.startswith("/"):
        return ""
    parts = [p for p in node_name.split("/")[1:-1] if p]
    path, prev = "", ""
    for comp in parts:
        if prev and comp.startswith(prev + "."):
            path += comp[len(prev):]
        else:
            path = f"{path}.{comp}" if path else comp
        prev = comp
    return path


def sanitize_op_name(name: str) -> str:
    """A node name as Ascend dump files spell it: ``.``, ``/``, ``\\`` and spaces become ``_``."""
    for ch in "./\\ ":
        name = name.replace(ch, "_")
    return name


def _ancestors(path: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a"]`` (module paths containing it, innermost first)."""
    parts = path.split(".") if path else []
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


@dataclass
class OnnxGraph:
    """The computing nodes of a model (those that depend on its input, :data:`SKIP_OPS` aside) in
    graph (topological) order, with producer / consumer maps."""

    path: Path
    model: Any
    nodes: list[Any] = field(default_factory=list)
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> OnnxGraph:
        import onnx

        path = Path(path)
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise ZooError(f"cannot read this ONNX model ({type(exc).__name__}: {exc})", path=path) from None
        g = cls(path, model)
        graph = model.graph
        inits = {t.name for t in graph.initializer}
        g.inputs = [i.name for i in graph.input if i.name not in inits]
        g.outputs = [o.name for o in graph.output]
        dynamic = set(g.inputs)  # tensors that depend on the model input
        for node in graph.node:
            if not any(t in dynamic for t in node.input):
                continue  # a constant subgraph (weights passed through Identity, Constant nodes...)
            dynamic.update(t for t in node.output if t)
            if node.op_type in SKIP_OPS:
                continue
            idx = len(g.nodes)
            g.nodes.append(node)
            for t in node.output:
                if t:
                    g.producer[t] = idx
            for t in node.input:
                if t:
                    g.consumers.setdefault(t, []).append(idx)
        return g

    def node_of(self, tensor: str) -> Any | None:
        i = self.producer.get(tensor)
        return None if i is None else self.nodes[i]

    def order(self, tensor: str) -> int:
        return self.producer.get(tensor, -1)

    def tensors(self) -> list[str]:
        """Every tensor a computing node produces, in graph order."""
        return [t for n in self.nodes for t in n.output if t]

    def module_outputs(self, modules: set[str]) -> dict[str, list[str]]:
        """For each module of ``modules`` that has nodes: the tensors produced in its scope and used outside.

        A node belongs to its scope's module and every enclosing module (only names in ``modules``
        count, so a scope the exporter spelled differently is ignored rather than mis-matched).
        """
        paths = [self._known(module_path(n.name), modules) for n in self.nodes]
        graph_outputs = set(self.outputs)
        out: dict[str, list[str]] = {}
        for idx, node in enumerate(self.nodes):
            for owner in _ancestors(paths[idx]):
                out.setdefault(owner, [])
            for t in node.output:
                if not t:
                    continue
                users = [paths[c] for c in self.consumers.get(t, [])]
                for owner in _ancestors(paths[idx]):
                    inside = owner + "."
                    if t in graph_outputs or any(u != owner and not u.startswith(inside) for u in users):
                        out[owner].append(t)
        return out

    @staticmethod
    def _known(path: str, modules: set[str]) -> str:
        """The deepest prefix of ``path`` that is a real module (``""`` if none)."""
        for p in _ancestors(path):
            if p in modules:
                return p
        return ""


class ExtraOutputs:
    """A temporary copy of an ONNX model with intermediate tensors exposed as graph outputs.

    ``path`` is the copy (in a private temp dir removed by :meth:`close`); the original is never
    touched.
    """

    def __init__(self, graph: OnnxGraph, tensors: Iterable[str]):
        import onnx
        from onnx import helper

        model = onnx.ModelProto()
        model.CopyFrom(graph.model)
        have = {o.name for o in model.graph.output}
        for t in tensors:
            if t not in have:
                model.graph.output.append(helper.make_empty_tensor_value_info(t))
                have.add(t)
        self.dir = tempfile.mkdtemp(prefix="zoo-compare-")
        self.path = Path(self.dir) / graph.path.name
        try:
            large = model.ByteSize() > 1_800_000_000
            onnx.save(model, str(self.path), save_as_external_data=large)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
