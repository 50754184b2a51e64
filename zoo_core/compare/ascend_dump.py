"""Ascend operator dumps, after ``msaccucmp.py convert``: the documented file names, parsed.

What is public (CANN "Model Accuracy Analyzer" guide, "Data Format Requirements" and "Converting
Dump File Formats"): a dump file of an offline model (``ais_bench --dump`` / ``acl.json`` with
``"dump"``) is named ``{op_type}.{op_name}.{task_id}.{stream_id}.{timestamp}``, where ``.``, ``/``,
``\\`` and spaces of the op type and name are replaced by ``_``; ``msaccucmp.py convert -d <dump>
-out <dir>`` (shipped with the CANN toolkit) writes each tensor as
``<dump file name>.output.{index}.{shape}.npy`` (and ``.input.``), the shape spelled ``1x3x224x224``.
The raw dump itself (a serialized header plus tensors in device formats such as NC1HWC0) is not
specified in a public document, so zoo reads the converted ``.npy`` files only (convert with
``-f NCHW`` to get NCHW tensors).

ATC fuses chains such as Conv + BatchNorm + ReLU into one op named by concatenating the original
names (the acl.json example of the same guide dumps ``conv1conv1_relu``: ``conv1`` fused with
``conv1_relu``); the dumped tensor is then the chain's last output. :func:`fused_chain` finds it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo_core.api.aisbench import _load_npy
from zoo_core.api.checkpoint import regular_file
from zoo_core.api.errors import ZooError
from zoo_core.compare.onnx_graph import OnnxGraph, sanitize_op_name

FILE_PATTERN = re.compile(r"^(?P<op_type>[A-Za-z0-9_-]+)\.(?P<op_name>[A-Za-z0-9_-]+)\.(?P<ids>[0-9.A-Za-z_-]+?)"
                          r"\.(?P<io>input|output)\.(?P<index>\d+)\.(?P<shape>\d+(?:x\d+)*)\.npy$")

#: Ops ATC fuses into the op before them (elementwise on that op's output).
FUSABLE_OPS = ("BatchNormalization", "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish",
               "Tanh", "Elu")

CONVERT_HINT = ("convert the device dump with the CANN toolkit first: python3 msaccucmp.py convert -d <dump dir> "
                "-out <npy dir> -f NCHW (msaccucmp.py is in <CANN>/tools/operator_cmp/compare)")


@dataclass(frozen=True)
class DumpTensor:
    """One output tensor of one dumped op."""

    op_type: str
    op_name: str
    index: int
    shape: tuple[int, ...]
    path: Path

    @property
    def key(self) -> str:
        return f"{self.op_name}:{self.index}"

    def load(self) -> np.ndarray:
        regular_file(self.path, ".npy dump file")  # unopened: a FIFO would block the read forever
        # header-checked, no pickles: a header announcing more data than the file holds (40 GB in 128 bytes) is
        # an InputError naming the file, never a MemoryError from allocating it
        a = _load_npy(self.path, None)
        if tuple(a.shape) != self.shape and a.size == int(np.prod(self.shape)):
            a = a.reshape(self.shape)
        return a


def read_dump_dir(d: str | Path) -> dict[str, DumpTensor]:
    """The output tensors of a converted dump dir, by ``"<op_name>:<index>"``.

    An op dumped twice (two inferences, two timestamps) is an error naming both files: zoo compares
    one inference with the reference's first image.
    """
    d = Path(d)
    if not d.is_dir():
        raise ZooError("Ascend dump directory not found", path=d, hint=CONVERT_HINT)
    found: dict[str, DumpTensor] = {}
    for p in sorted(d.rglob("*.npy")):
        m = FILE_PATTERN.match(p.name)
        if m is None or m["io"] != "output":
            continue
        t = DumpTensor(m["op_type"], m["op_name"], int(m["index"]), tuple(int(v) for v in m["shape"].split("x")), p)
        other = found.setdefault(t.key, t)
        if other is not t:
            raise ZooError(f"op {t.op_name!r} output {t.index} was dumped twice: {other.path} and {p}", path=d,
                           hint="dump a single inference (one input file) and compare it with dataset.limit=1")
    if not found:
        raise ZooError("no converted dump files named <op_type>.<op_name>.<ids>.output.<i>.<shape>.npy here",
                       path=d, hint=CONVERT_HINT)
    return found


def fused_chain(graph: OnnxGraph, tensor: str, name: str, keys: set[str]) -> tuple[str, str, list[str]] | None:
    """The dump key, last tensor and followed nodes of a fused op that starts at the node producing
    ``tensor`` (sanitised name ``name``): successors in a single-consumer chain of
    :data:`FUSABLE_OPS` whose concatenated names form a dumped op's name. ``None`` if there is none."""
    chain: list[str] = []
    outputs = set(graph.outputs)
    while tensor not in outputs:
        users = graph.consumers.get(tensor, [])
        if len(users) != 1:
            return None
        nxt = graph.nodes[users[0]]
        if nxt.op_type not in FUSABLE_OPS or nxt.input[0] != tensor:
            return None
        name += sanitize_op_name(nxt.name)
        chain.append(nxt.name)
        tensor = nxt.output[0]
        if f"{name}:0" in keys:
            return f"{name}:0", tensor, chain
    return None


class DumpTap:
    """The candidate side of a layer compare from converted Ascend dump files (one inference)."""

    kind = "dump"

    def __init__(self, dump_dir: str | Path):
        self.dir = Path(dump_dir)
        self.tensors = read_dump_dir(self.dir)

    def start(self, inputs) -> None:
        pass

    def get(self, keys) -> dict[str, np.ndarray]:
        return {k: self.tensors[k].load() for k in keys}

    def finish(self) -> None:
        pass
