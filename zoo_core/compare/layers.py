"""``compare.layers=true``: match the two sides' intermediate tensors and find the first that diverges.

Pairs supported (reference / candidate, either order where it makes sense):

* torch / onnxruntime: torch module outputs (forward hooks) against the ONNX tensors leaving each
  module's exporter scope (:meth:`OnnxGraph.module_outputs`). A BatchNorm the exporter folded into
  the convolution before it has no node of its own; the convolution's ONNX output is then compared
  with the BatchNorm's torch output, and the row says ``folded``.
* onnxruntime / onnxruntime (fp32 vs int8, original vs patched export): tensors of the same name; in a
  QDQ graph, the ``DequantizeLinear`` output of a tensor that is quantized (what the next layer consumes).
  A name whose producing op differs is a row marked ``op_differs`` (``"Relu vs LeakyRelu"``) that is
  compared like any other. Only the one known rename is exempt: ONNX Runtime's QDQ quantizer removes a
  Relu / Clip and gives the op before it the activation's output name, so on the QDQ side that name is
  computed by the op that feeds the activation on the other side (``quantizer_fused``, status
  ``op differs`` when beyond tolerance, never ``first_divergent``).
* torch / torch (two checkpoints): modules of the same name.
* onnxruntime / acl with ``compare.candidate_dump``: converted Ascend dump files, by op name
  (:mod:`zoo_core.compare.ascend_dump`).

Rows are in graph order (the ONNX node order, or torch execution order); ``first_divergent`` is the
first row beyond tolerance under the same rule as the model outputs (:mod:`zoo_core.compare.numbers`).
Layers that got no row (a tensor the other side does not have, a torch module without an ONNX tensor) are
listed as ``unmatched`` (:class:`Unmatched`), so a divergence hidden in them is not silently skipped: the
summary says how many of them come before ``first_divergent``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zoo_core.api.errors import ConfigError
from zoo_core.backends.base import Backend, Batch
from zoo_core.compare.ascend_dump import DumpTap, fused_chain
from zoo_core.compare.numbers import OutputStats, Tolerance
from zoo_core.compare.onnx_graph import OnnxGraph, module_path, sanitize_op_name
from zoo_core.compare.taps import OnnxTap, TorchTap

KIND_NAMES = {"onnx": "onnxruntime", "torch": "torch", "dump": "acl dump"}
SUPPORTED = "torch/onnxruntime, onnxruntime/onnxruntime, torch/torch, onnxruntime/acl with compare.candidate_dump"


@dataclass
class LayerPair:
    """One matched layer: how to find its tensor on each side, and what to call it."""

    name: str
    ref_key: str
    cand_key: str
    order: int
    op: str | None = None
    tensor: str | None = None
    folded: str | None = None
    aliases: list[str] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)
    shape_mismatch: tuple[Any, Any] | None = None
    op_differs: str | None = None      # "<reference op> vs <candidate op>" (compared like any other row)
    quantizer_fused: bool = False      # the QDQ quantizer's Relu/Clip removal: op_differs, never divergent
    pos: int | None = None             # position in the sequence :class:`Unmatched` layers are ordered by


@dataclass
class Unmatched:
    """Layers of one side that got no row. ``pos`` orders them in the same sequence as the pairs' ``pos``
    (the reference ONNX's node order, or the torch side's execution order)."""

    side: str                                                   # "reference" / "candidate"
    what: str                                                   # what counts as a layer there
    layers: list[tuple[int, str, str | None]] = field(default_factory=list)  # (pos, name, op)


def node_label(node: Any, tensor: str) -> str:
    """``<module path>/<node>`` for an exporter-scoped node (``base.conv/Conv``; the exporter numbers a
    scope's repeated ops: ``dcn/Slice``, ``dcn/Slice_1``), else the node's name, else the tensor's."""
    path = module_path(node.name)
    if path:
        return f"{path}/{node.name.rsplit('/', 1)[-1] or node.op_type}"
    return node.name or tensor


def unique_names(pairs: list[LayerPair]) -> list[LayerPair]:
    """Rows sharing a name (one node's several outputs, nodes named alike) get their tensor appended."""
    seen: dict[str, int] = {}
    for p in pairs:
        seen[p.name] = seen.get(p.name, 0) + 1
    for p in pairs:
        if seen[p.name] > 1 and p.tensor:
            p.name = f"{p.name} ({p.tensor})"
    return pairs


def _depth(module: str) -> int:
    return module.count(".") + 1


def _exec_pos(tap: TorchTap) -> dict[str, int]:
    """Each captured module's position in the torch execution order (its first call)."""
    return {m: i for i, m in enumerate(dict.fromkeys(tap.order))}


def torch_onnx_pairs(tap: TorchTap, graph: OnnxGraph, torch_is_ref: bool) -> list[LayerPair]:
    """Torch modules against the ONNX tensor leaving each module's scope (after one captured forward)."""
    outs = graph.module_outputs(tap.modules)
    executed = [m for m in dict.fromkeys(tap.order) if tap.calls.get(m) == 1]  # a module run twice is ambiguous
    pos = _exec_pos(tap)
    mods_for: dict[str, list[str]] = {}
    for m in executed:
        ts = outs.get(m)
        if ts is not None and len(ts) == 1:
            mods_for.setdefault(ts[0], []).append(m)
    mapped = {m: t for t, ms in mods_for.items() for m in ms}
    folded: dict[str, str] = {}
    for m in executed:  # modules without nodes, fed by a mapped module: folded (BatchNorm after a Conv)
        src = tap.fed_by.get(m)
        if m in outs or src not in mapped or mapped[src] in folded:  # one fold per tensor: the first
            continue
        a, b = tap.get([src, m]).values()
        if a.shape == b.shape:
            t = mapped[src]
            folded[t] = m
            mapped[m] = t
    pairs = []
    for t in sorted(mods_for, key=graph.order):
        ms = mods_for[t]
        leaf = max(ms, key=_depth)
        key = folded.get(t, leaf)
        node = graph.node_of(t)
        pairs.append(LayerPair(leaf, key if torch_is_ref else t, t if torch_is_ref else key, graph.order(t),
                               node.op_type if node is not None else None, t, folded.get(t),
                               [m for m in ms if m != leaf], pos=pos[leaf]))
    return pairs


def unmatched_modules(tap: TorchTap, pairs: list[LayerPair], side: str) -> Unmatched:
    """The leaf modules (no children) that ran and returned a tensor but got no row, in execution order.
    A module returning the very tensor of a compared module (``nn.Identity``) is not missing."""
    parents = {".".join(m.split(".")[:i]) for m in tap.modules for i in range(1, m.count(".") + 1)}
    covered = {m for p in pairs for m in [p.name, *p.aliases, *([p.folded] if p.folded else [])]}
    keys = {tap.tensor_key(m) for m in (p.folded or p.name for p in pairs) if tap.has(m)}  # what rows compare
    kinds = {name: type(mod).__name__ for name, mod in tap.model.named_modules() if name}
    out = Unmatched(side, "torch leaf modules")
    for m, i in _exec_pos(tap).items():
        if m not in parents and m not in covered and tap.tensor_key(m) not in keys:
            out.layers.append((i, m, kinds.get(m)))
    return out


def consumed(graph: OnnxGraph, tensor: str) -> str:
    """The value of ``tensor`` the next layers consume: in a QDQ (int8) graph a tensor that feeds
    ``QuantizeLinear -> DequantizeLinear`` is used through that chain, so its ``DequantizeLinear`` output;
    else the tensor itself."""
    for q in graph.consumers.get(tensor, []):
        qnode = graph.nodes[q]
        if qnode.op_type != "QuantizeLinear" or not qnode.output or not qnode.output[0]:
            continue
        for d in graph.consumers.get(qnode.output[0], []):
            dnode = graph.nodes[d]
            if dnode.op_type == "DequantizeLinear" and dnode.output and dnode.output[0]:
                return str(dnode.output[0])
    return tensor


def computing_op(graph: OnnxGraph, tensor: str) -> str:
    """The op type that computes ``tensor``; for the ``DequantizeLinear`` of a ``QuantizeLinear`` (a QDQ
    graph's output), the op whose output was quantized."""
    node = graph.node_of(tensor)
    if node is not None and node.op_type == "DequantizeLinear":
        q = graph.node_of(node.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            node = graph.node_of(q.input[0]) or node
    return node.op_type if node is not None else "?"


def is_qdq(graph: OnnxGraph) -> bool:
    """A QDQ (quantized) graph: it quantizes activations with ``QuantizeLinear``."""
    return any(n.op_type == "QuantizeLinear" for n in graph.nodes)


def quantizer_fused(plain: OnnxGraph, qdq: OnnxGraph, tensor: str) -> bool:
    """The one op rename that is not a change: ONNX Runtime's QDQ quantizer removes a Relu / Clip whose input
    is quantized and renames the output of the op before it (``Conv``, ``Add``...) to the activation's
    output. True when ``plain`` computes ``tensor`` with a Relu / Clip fed by op X and ``qdq`` (a QDQ graph)
    computes it with X."""
    node = plain.node_of(tensor)
    if node is None or node.op_type not in ("Relu", "Clip") or not node.input or not is_qdq(qdq):
        return False
    src = computing_op(plain, node.input[0])
    return src != "?" and src == computing_op(qdq, tensor)


def onnx_onnx_pairs(ref: OnnxGraph, cand: OnnxGraph) -> list[LayerPair]:
    """Tensors produced by a node in both graphs, by name, in the reference's order. A side whose tensor
    feeds a QuantizeLinear -> DequantizeLinear chain is read after it (:func:`consumed`). A tensor whose
    producing op differs is marked ``op_differs`` and compared like any other, except the quantizer's
    Relu / Clip removal (:func:`quantizer_fused`), which is never a divergence."""
    pairs = []
    for t in ref.tensors():
        if t in cand.producer:
            node = ref.node_of(t)
            op, cop = computing_op(ref, t), computing_op(cand, t)
            pair = LayerPair(node_label(node, t), consumed(ref, t), consumed(cand, t), ref.order(t), op, t)
            if cop != op:
                pair.op_differs = f"{op} vs {cop}"
                pair.quantizer_fused = quantizer_fused(ref, cand, t) or quantizer_fused(cand, ref, t)
            pairs.append(pair)
    return unique_names(pairs)


def unmatched_tensors(ref: OnnxGraph, pairs: list[LayerPair], side: str = "reference") -> Unmatched:
    """The reference tensors without a row, in graph order; the input of an activation the quantizer
    removed (:func:`quantizer_fused`, compared through the activation's row) is not missing."""
    covered = {p.tensor for p in pairs}
    for p in pairs:
        node = ref.node_of(p.tensor or "")
        if p.quantizer_fused and node is not None and node.op_type in ("Relu", "Clip"):
            covered.add(node.input[0])
    out = Unmatched(side, "tensors")
    for t in ref.tensors():
        if t not in covered:
            node = ref.node_of(t)
            out.layers.append((ref.order(t), node_label(node, t), node.op_type if node is not None else None))
    return out


def torch_torch_pairs(ref: TorchTap, cand: TorchTap) -> list[LayerPair]:
    """Modules of the same name; enclosing modules returning the same tensor are listed as aliases."""
    groups: dict[Any, list[str]] = {}
    for m in dict.fromkeys(ref.order):
        if cand.has(m) and ref.calls.get(m) == 1:
            groups.setdefault(ref.tensor_key(m), []).append(m)
    pos = _exec_pos(ref)
    pairs = []
    for i, ms in enumerate(groups.values()):
        leaf = max(ms, key=_depth)
        pairs.append(LayerPair(leaf, leaf, leaf, i, aliases=[m for m in ms if m != leaf], pos=pos[leaf]))
    return pairs


def onnx_dump_pairs(ref: OnnxGraph, dump: DumpTap) -> list[LayerPair]:
    """Dumped op outputs against the ONNX node of the same (sanitised) name; a fused op (named by
    concatenation) against the last output of its chain."""
    keys = set(dump.tensors)
    pairs = []
    for idx, node in enumerate(ref.nodes):
        name = sanitize_op_name(node.name)
        for i, t in enumerate(node.output):
            if t and f"{name}:{i}" in keys:
                pairs.append(LayerPair(node_label(node, t), t, f"{name}:{i}", idx, node.op_type, t))
        fused = fused_chain(ref, node.output[0], name, keys) if node.output and node.output[0] else None
        if fused is not None:
            key, end, chain = fused
            pairs.append(LayerPair(node_label(node, node.output[0]), end, key, idx, node.op_type, end, fused=chain))
    return unique_names(pairs)


def unmatched_dump_nodes(ref: OnnxGraph, pairs: list[LayerPair]) -> Unmatched:
    """The reference ONNX nodes whose output has no dumped counterpart (neither their own nor as part of a
    fused op), in graph order."""
    covered = {ref.order(p.ref_key) for p in pairs} | {p.order for p in pairs}
    names = {n for p in pairs for n in p.fused}
    out = Unmatched("reference", "ONNX nodes")
    for idx, node in enumerate(ref.nodes):
        if idx not in covered and node.name not in names:
            t = next((o for o in node.output if o), "")
            out.layers.append((idx, node_label(node, t), node.op_type))
    return out


def check_pair(reference: str, candidate: str, candidate_dump: str | None = None) -> None:
    """Refuse (before anything runs) a backend pair whose layers cannot be compared."""
    kinds = {"torch": "torch", "onnxruntime": "onnx"}
    ref = kinds.get(reference)
    cand = "dump" if candidate_dump else kinds.get(candidate)
    if candidate_dump and candidate != "acl":
        raise ConfigError(f"compare.candidate_dump is an Ascend dump: it needs compare.candidate=acl, not {candidate}")
    if ref is None or cand is None or (cand == "dump" and ref != "onnx"):
        hint = " (for acl: pass compare.candidate_dump=<converted dump dir>)" if "acl" in (reference, candidate) else ""
        raise ConfigError(f"compare.layers=true cannot compare the layers of {reference} (reference) with {candidate} "
                          f"(candidate){hint}; supported: {SUPPORTED}")


def tap_for(backend: Backend, dump_dir: str | None = None) -> Any:
    """The tap that reads ``backend``'s intermediate tensors (a :class:`ConfigError` if none can)."""
    from zoo_core.backends.onnxruntime_backend import OnnxRuntimeBackend
    from zoo_core.backends.torch_backend import TorchBackend

    if dump_dir:
        return DumpTap(dump_dir)
    if isinstance(backend, TorchBackend):
        return TorchTap(backend.model, backend.input_names)
    if isinstance(backend, OnnxRuntimeBackend):
        return OnnxTap(str(backend.model_file), backend.options)
    hint = " (for acl: pass compare.candidate_dump=<converted dump dir>)" if backend.name == "acl" else ""
    raise ConfigError(f"compare.layers=true cannot read the intermediate tensors of backend={backend.name}{hint}; "
                      f"supported: {SUPPORTED}")


class LayerCompare:
    """Captures both sides' layers on the first ``images`` items it sees and compares them.

    ``capture(batch)`` is called by :class:`zoo_core.compare.pair.PairBackend` with the very batch
    both backends ran; the matching is built on the first call.
    """

    def __init__(self, ref_tap: Any, cand_tap: Any, tol: Tolerance, images: int = 1, chunk: int = 48):
        kinds = (ref_tap.kind, cand_tap.kind)
        if kinds not in {("torch", "onnx"), ("onnx", "torch"), ("onnx", "onnx"), ("torch", "torch"), ("onnx", "dump")}:
            raise ConfigError(f"compare.layers=true cannot pair {KIND_NAMES[kinds[0]]} (reference) with "
                              f"{KIND_NAMES[kinds[1]]} (candidate); supported: {SUPPORTED}")
        self.ref, self.cand, self.tol = ref_tap, cand_tap, tol
        self.images = 1 if cand_tap.kind == "dump" else max(int(images), 1)
        self.chunk = max(int(chunk), 1)
        self.pairs: list[LayerPair] | None = None
        self.stats: list[OutputStats] = []
        self.image_ids: list[str] = []
        self.note: str | None = None
        self.unmatched: Unmatched | None = None

    @property
    def wanted(self) -> int:
        """How many more images to capture."""
        return self.images - len(self.image_ids)

    def _build(self) -> list[LayerPair]:
        r, c = self.ref, self.cand
        if r.kind == "torch" and c.kind == "onnx":
            pairs = torch_onnx_pairs(r, c.graph, torch_is_ref=True)
            self.unmatched = unmatched_modules(r, pairs, "reference")
        elif r.kind == "onnx" and c.kind == "torch":  # rows are torch modules: the candidate's are counted
            pairs = torch_onnx_pairs(c, r.graph, torch_is_ref=False)
            self.unmatched = unmatched_modules(c, pairs, "candidate")
        elif r.kind == "onnx" and c.kind == "onnx":
            pairs = onnx_onnx_pairs(r.graph, c.graph)
            self.unmatched = unmatched_tensors(r.graph, pairs)
        elif r.kind == "torch":
            pairs = torch_torch_pairs(r, c)
            self.unmatched = unmatched_modules(r, pairs, "reference")
        else:
            pairs = onnx_dump_pairs(r.graph, c)
            self.unmatched = unmatched_dump_nodes(r.graph, pairs)
        for p in pairs:
            if p.pos is None:
                p.pos = p.order
        if not pairs:
            self.note = self._why_nothing_matched()
        for tap, keys in ((r, [p.ref_key for p in pairs]), (c, [p.cand_key for p in pairs])):
            if tap.kind == "onnx" and keys:
                tap.prepare(keys)
        return pairs

    def _why_nothing_matched(self) -> str:
        kinds = {self.ref.kind, self.cand.kind}
        if kinds == {"torch", "onnx"}:
            return ("no ONNX node carries the scope of a torch module: layer matching needs an ONNX exported "
                    "from this torch model by the TorchScript exporter (e.g. zoo's own export)")
        if "dump" in kinds:
            return "no dumped op name equals a node name of the reference ONNX (was the OM converted from it?)"
        return "the two sides have no intermediate tensor names in common"

    def capture(self, batch: Batch) -> None:
        n = min(self.wanted, batch.n_valid)
        if n <= 0:
            return
        inputs = {k: np.ascontiguousarray(v[:n]) for k, v in batch.inputs.items()}
        ids = list(batch.ids[:n])
        self.ref.start(inputs)
        self.cand.start(inputs)
        try:
            if self.pairs is None:
                self.pairs = self._build()
                self.stats = [OutputStats(self.tol) for _ in self.pairs]
            for i in range(0, len(self.pairs), self.chunk):
                part = list(enumerate(self.pairs))[i:i + self.chunk]
                ra = self.ref.get([p.ref_key for _, p in part])
                ca = self.cand.get([p.cand_key for _, p in part])
                for k, p in part:
                    self._add(k, p, ids, np.asarray(ra[p.ref_key]), np.asarray(ca[p.cand_key]))
        finally:
            self.ref.finish()
            self.cand.finish()
        self.image_ids += ids

    def _add(self, k: int, p: LayerPair, ids: list[str], a: np.ndarray, b: np.ndarray) -> None:
        n = len(ids)
        per_item = a.ndim > 0 and b.ndim > 0 and a.shape[0] == n and b.shape[0] >= n
        if per_item:
            b = b[:n]
        if a.shape != b.shape:
            p.shape_mismatch = (list(a.shape), list(b.shape))
            return
        if per_item:
            for j, item in enumerate(ids):
                self.stats[k].add(item, a[j], b[j])
        else:
            self.stats[k].add("+".join(ids), a, b)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for p, s in zip(self.pairs or [], self.stats):
            row: dict[str, Any] = {"name": p.name, "op": p.op, "tensor": p.tensor, "order": p.order}
            if p.shape_mismatch is not None:
                row.update(status="shape", reference_shape=p.shape_mismatch[0], candidate_shape=p.shape_mismatch[1])
            else:
                row.update(s.as_dict())
                row["status"] = "ok" if s.passed else "op differs" if p.quantizer_fused else "diverged"
            for key in ("folded", "aliases", "fused", "op_differs", "quantizer_fused"):
                if getattr(p, key):
                    row[key] = getattr(p, key)
            for key, side in ((p.ref_key, "reference"), (p.cand_key, "candidate")):
                if p.tensor and key != p.tensor:
                    row[f"{side}_tensor"] = key  # read after QuantizeLinear -> DequantizeLinear
            out.append(row)
        return out

    def summary(self) -> dict[str, Any]:
        """The ``layers`` section of compare.json and the ``first_divergent`` entry."""
        rows = self.rows()
        k = next((i for i, r in enumerate(rows) if r["status"] == "diverged"), None)
        first = None if k is None else rows[k]
        um = self.unmatched or Unmatched("reference", "layers")
        before: list[tuple[int, str, str | None]] = []
        if k is not None and self.pairs:
            before = [u for u in um.layers if u[0] < (self.pairs[k].pos or 0)]
        out: dict[str, Any] = {
            "reference": KIND_NAMES[self.ref.kind], "candidate": KIND_NAMES[self.cand.kind], "images": self.image_ids,
            "matched": len(rows), "compared": sum(r["status"] != "shape" for r in rows),
            "diverged": sum(r["status"] == "diverged" for r in rows),
            "shape_mismatches": sum(r["status"] == "shape" for r in rows),
            "op_differs": sum(r["status"] == "op differs" for r in rows),
            "unmatched": {"side": um.side, "what": um.what, "count": len(um.layers),
                          "layers": [{"name": n, "op": op, "order": i} for i, n, op in um.layers]},
            "first_divergent": None if first is None else
            {**{k: first.get(k) for k in ("name", "op", "tensor", "order", "max_abs", "max_rel", "cosine",
                                          "beyond_tolerance", "folded", "op_differs")},
             "unmatched_before": len(before), "unmatched_before_layers": [n for _, n, _ in before]},
            "rows": rows,
        }
        if self.note:
            out["note"] = self.note
        return out

    def close(self) -> None:
        for tap in (self.ref, self.cand):
            close = getattr(tap, "close", None)
            if close is not None:
                close()
