"""``export.target=onnxruntime``: ONNX Runtime's static quantizer (QDQ, per-channel weights) writes
``<model_dir>/<model>_onnxruntime_int8.onnx`` with a ``.json`` record (fingerprint, sha256, calibration, exclusions)."""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.atomic import temp_path, write_json
from zoo_core.api.errors import ConfigError
from zoo_core.api.types import Sample
from zoo_core.quantize.calibration import (
    Calibration,
    CalibrationSet,
    calibration_inputs,
    calibration_record,
    calibration_samples,
    check_calibration_skips,
    image_sha256,
    settings,
)
from zoo_core.quantize.source import load_onnx, source_model
from zoo_core.runs.context import RunContext
from zoo_core.runs.export_keys import flatten
from zoo_core.runs.fingerprint import producer_versions, sha256_file
from zoo_core.runs.model_files import (
    ensure_onnx,
    int8_onnx_path,
    link_model_file,
    reusable_record,
)
from zoo_core.runs.record_seal import sealed

log = logging.getLogger("zoo")


def int8_fingerprint(ctx: RunContext, fp32: Path, samples: Sequence[Sample]) -> dict[str, Any]:
    """What the INT8 model depends on: the FP32 file's bytes, the quantize settings, the calibration images (ids
    and each file's sha256, so an image rewritten or restored under the same id re-quantizes) and the model
    section (preprocess keys are not declared apart from the others, so any change re-quantizes); and the code that
    made it: the plugin's, zoo-core's (:func:`~zoo_core.runs.fingerprint.producer_versions`: an upgrade that changes
    preprocessing changes the calibration tensors, though the re-export may write the same FP32 bytes) and the
    quantizer's (onnxruntime's) versions."""
    d = ctx.cfg.dataset
    return {
        "model": ctx.model_name,
        **producer_versions(ctx.hooks.info),
        "quantizer": quantizer_version(),
        "fp32_sha256": sha256_file(fp32),
        "quantize": settings(ctx),
        "model_config": flatten(ctx.resolved_config()["model"]),
        "dataset": {"name": str(d.get("name")), "root": str(d.get("root")) if d.get("root") is not None else None},
        "calibration_ids": [s.id for s in samples],
        "calibration_sha256": [image_sha256(s) for s in samples],
    }


def quantizer_version() -> str:
    """``onnxruntime <version>``: the quantizer an INT8 ONNX was built with (whichever onnxruntime distribution
    provides the module)."""
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def _named_nodes(model: Any) -> None:
    """Give every unnamed node a unique name (the quantizer addresses nodes by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def check_exclude_op_types(ctx: RunContext, model: Any, source: Any, path: Path) -> None:
    """``quantize.exclude_op_types`` names op types of ``model``, the graph as it is quantized (after
    ``quantize.preprocess``), as unknown ``exclude_nodes`` are an error; a type of the ``source`` FP32 graph that
    pre-processing folded away (BatchNormalization) is refused saying so. The plugin's own
    ``model.quantize_exclude_op_types`` may name types a graph variant lacks (DeformConv)."""
    present = {n.op_type for n in model.graph.node}
    unknown = [str(t) for t in ctx.cfg.quantize.exclude_op_types if str(t) not in present]
    if not unknown:
        return
    source_count: dict[str, int] = {}
    for n in source.graph.node:
        source_count[n.op_type] = source_count.get(n.op_type, 0) + 1
    folded = [t for t in unknown if t in source_count]
    absent = [t for t in unknown if t not in source_count]
    why = []
    if absent:
        why.append(f"no {', '.join(map(repr, absent))} node in the {ctx.model_name} graph {path.name} (op types are "
                   f"case-sensitive; it has: {', '.join(sorted(present))})")
    if folded:
        nodes = ", ".join(f"{source_count[t]} {t}" for t in folded)
        why.append(f"{', '.join(map(repr, folded))}: no such node is left in the graph that is quantized: "
                   f"quantize.preprocess (onnxruntime's quant_pre_process) folded the {nodes} node(s) of "
                   f"{path.name} into the operators before them, so excluding the type would exclude nothing")
    raise ConfigError("quantize.exclude_op_types: " + "; ".join(why),
                      hint="quantize.preprocess=false keeps BatchNormalization nodes (unfolded, so they can be "
                           "kept in FP32); or keep the nodes they were folded into with quantize.exclude_nodes"
                      if folded else None)


#: How many nodes an unknown ``quantize.exclude_nodes`` entry lists: close to each entry, and writing the outputs.
MAX_CLOSE_NODES = 4
MAX_OUTPUT_NODES = 8


def nodes_to_exclude(ctx: RunContext, model: Any, conf: dict[str, Any], source: Any, path: Path) -> list[str]:
    """Names of the nodes of ``model`` (the graph as it is quantized, its nodes named by :func:`_named_nodes`)
    kept in FP32: those of the excluded op types (checked by :func:`check_exclude_op_types`), then each
    ``quantize.exclude_nodes`` entry: a node's name or, failing that, the name of a tensor a node writes
    (e.g. ``539``, a CenterFace output: the Star-Clouds nodes have no names, their tensors do). An entry that
    is neither is refused, listing the names closest to it and the nodes writing the graph's outputs."""
    check_exclude_op_types(ctx, model, source, path)
    names = [n.name for n in model.graph.node]
    writer = {o: n.name for n in model.graph.node for o in n.output if o}
    picked: list[str] = []
    missing = []
    for want in conf["exclude_nodes"]:
        name = want if want in set(names) else writer.get(want)
        if name is None:
            missing.append(want)
        elif name not in picked:
            if name != want:
                log.info("quantize.exclude_nodes: %r is the tensor node %s writes: keeping %s in FP32", want, name,
                         name)
            picked.append(name)
    if missing:
        raise ConfigError(f"quantize.exclude_nodes: no node named {', '.join(map(repr, missing))} (nor writing a "
                          f"tensor of that name) in the {ctx.model_name} graph {path.name} as it is quantized "
                          f"({len(names)} nodes; {_node_choices(model, missing)})",
                          hint="name a node by the tensor it writes (its output, as Netron shows it), e.g. "
                               f"quantize.exclude_nodes=[{model.graph.output[0].name}]; a node the model left "
                               "unnamed is named <op type>_<index> in the graph after quantize.preprocess")
    types = set(conf["exclude_op_types"])
    typed = [n.name for n in model.graph.node if n.op_type in types]
    return typed + [n for n in picked if n not in typed]


def _node_choices(model: Any, missing: Sequence[str]) -> str:
    """A bounded list of nodes to pick from, ``name (-> output tensors)``: those whose name or output tensor is
    close to a missing entry, and those writing the graph's outputs."""
    import difflib

    nodes = list(model.graph.node)
    by_key: dict[str, Any] = {}
    for n in nodes:
        for key in (n.name, *n.output):
            if key:
                by_key.setdefault(key, n)
    close: list[Any] = []
    for want in missing:
        for key in difflib.get_close_matches(want, list(by_key), n=MAX_CLOSE_NODES, cutoff=0.6):
            if by_key[key] not in close:
                close.append(by_key[key])
    outputs = {o.name for o in model.graph.output}
    ends = [n for n in nodes if any(o in outputs for o in n.output)]

    def fmt(group: list[Any], limit: int) -> str:
        text = ", ".join(f"{n.name} (-> {', '.join(o for o in n.output if o)})" for n in group[:limit])
        return text + (f" and {len(group) - limit} more" if len(group) > limit else "")

    parts = [f"close: {fmt(close, 2 * MAX_CLOSE_NODES)}"] if close else []
    if ends:
        parts.append(f"writing the graph's outputs: {fmt(ends, MAX_OUTPUT_NODES)}")
    return "; ".join(parts) or "none close"


#: QDQ with per-channel scales needs ``axis`` on (De)QuantizeLinear: opset 13.
MIN_QDQ_OPSET = 13


def prepared_model(fp32: Path, preprocess: bool, work: Path) -> Any:
    """The FP32 graph the quantizer gets: upgraded to opset 13 when older (per-channel QDQ needs it), then with
    ``quantize.preprocess`` ONNX Runtime's ``quant_pre_process`` (shape inference + graph optimisation, which
    folds BatchNormalization into the convolutions so that they quantize as one).

    ``quant_pre_process`` runs with a temporary directory as the current directory: when its symbolic shape
    inference gives up (CenterFace, CenterNet) onnxruntime saves the partial model as
    ``sym_shape_infer_temp.onnx`` + ``<uuid>.data`` (7 MB for CenterFace, 78 MB for CenterNet) in the current
    directory before raising, and removes neither. (zoo runs no thread of its own here: the stream has not
    started, the calibration pool has closed.)"""
    import contextlib
    import tempfile

    import onnx
    from onnx import version_converter

    model = load_onnx(fp32)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_QDQ_OPSET)
    if opset < MIN_QDQ_OPSET:
        log.info("upgrading %s from opset %d to %d for QDQ quantization", fp32.name, opset, MIN_QDQ_OPSET)
        model = version_converter.convert_version(model, MIN_QDQ_OPSET)
    if not preprocess:
        return model
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=work, prefix=".quant-pre-") as tmp:
        src, dst = Path(tmp).resolve() / "in.onnx", Path(tmp).resolve() / "out.onnx"
        cwd = src.parent / "cwd"
        cwd.mkdir()
        onnx.save(model, str(src))
        with contextlib.chdir(cwd):
            try:
                quant_pre_process(str(src), str(dst))
            except Exception as exc:  # symbolic shape inference gives up (an op it does not know, dims to merge)
                log.info("quantization pre-processing without symbolic shape inference (%s: %s)",
                         type(exc).__name__, exc)
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return onnx.load(str(dst))


class _PerTensorFallback(logging.Filter):
    """Holds back onnxruntime's ``Axis 1 is out-of-range for weight '<w>' with rank 1`` warnings (one per
    BatchNormalization left in the graph, 16 on CenterNet, whose BNs follow the FP32 DeformConvs): the QDQ
    quantizer gives a BN scale the channel axis 1, out of range for its rank-1 tensor, and quantizes it per tensor
    instead. Harmless here: the BN scales of CenterNet's seeded checkpoint (0.82-1.18) come back within 0.52% of
    their values (measured). Collected, and logged as one info line."""

    PATTERN = re.compile(r"Axis -?\d+ is out-of-range for weight '(.*)' with rank \d+$")

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        m = self.PATTERN.match(record.getMessage()) if record.levelno == logging.WARNING else None
        if m:
            self.weights.append(m.group(1))
        return m is None


def _reader(batches: Calibration) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds the calibration batches once, in order."""

        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(batches)

    return Reader()


def node_summary(path: Path, excluded: Sequence[str] = ()) -> dict[str, Any]:
    """Compute nodes of a QDQ model by op type: quantized (fed through DequantizeLinear) or FP32 (excluded, or
    fed by no DequantizeLinear). An excluded node may still read a DequantizeLinear output (its producer was
    quantized); it computes in FP32."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    inits = {t.name for t in graph.initializer}
    skip = set(excluded)
    quantized: dict[str, int] = {}
    fp32: dict[str, int] = {}
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        feeds = [i for i in n.input if i and i not in inits]
        bucket = quantized if n.name not in skip and feeds and any(i in dq_out for i in n.input) else fp32
        bucket[n.op_type] = bucket.get(n.op_type, 0) + 1
    return {"quantized_nodes": dict(sorted(quantized.items())), "fp32_nodes": dict(sorted(fp32.items()))}


def build_onnxruntime_int8(ctx: RunContext, fp32: Path, model: Any, excluded: list[str], out: Path,
                           fingerprint: dict[str, Any], cal: CalibrationSet, pin: Path | None = None) -> dict[str, Any]:
    """Static INT8 QDQ quantization of ``model`` (``fp32`` as :func:`prepared_model` gives it, ``excluded``: its
    nodes kept in FP32) into ``out`` (atomically), and its ``.json`` record. The record (sha256, node counts) is
    taken from the file written, before it replaces ``out``, and with ``pin`` that file is linked there first
    (:func:`link_model_file`): another run may replace ``out`` at any time."""
    batches = cal.batches
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    conf = fingerprint["quantize"]
    shapes = {tuple((k, v.shape) for k, v in sorted(b.items())) for b in batches}
    if conf["method"] != "minmax" and len(shapes) > 1:
        raise ConfigError(f"quantize.method={conf['method']} needs calibration images of one input size (onnxruntime's "
                          f"histogram calibrators stack them), these have {len(shapes)} sizes",
                          hint="use quantize.method=minmax, or give the model a fixed input size "
                               "(e.g. model.input_hw=[h,w] for centerface)")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[conf["method"]]
    qtype = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}
    # ORT's calibrators hold every calibration image's activations until the end (memory grows with the count;
    # its CalibMaxIntermediateOutputs is not used: in onnxruntime 1.32 it drops the held outputs unmeasured)
    extra: dict[str, Any] = {}
    if conf["method"] == "percentile":
        extra["CalibPercentile"] = conf["percentile"]
    tmp = temp_path(out)
    log.info("quantizing %s to INT8 (%s calibration on %d images, %d nodes kept in FP32)", fp32.name,
             conf["method"], len(batches), len(excluded))
    per_tensor = _PerTensorFallback()
    root = logging.getLogger()
    try:
        root.addFilter(per_tensor)
        try:
            quantize_static(model, str(tmp), _reader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=conf["per_channel"], activation_type=qtype[conf["activation_type"]],
                            weight_type=qtype[conf["weight_type"]], nodes_to_exclude=excluded or None,
                            calibrate_method=method, calibration_providers=["CPUExecutionProvider"],
                            extra_options=extra)
        finally:
            root.removeFilter(per_tensor)
        if per_tensor.weights:
            log.info("%d weight(s) with no channel axis quantized per tensor (onnxruntime's per-channel axis 1 is "
                     "out of range for a rank-1 BatchNormalization scale), first: %s", len(per_tensor.weights),
                     per_tensor.weights[0])
        record = sealed({
            "fingerprint": fingerprint, "sha256": sha256_file(tmp), "target": "onnxruntime", "format": "QDQ",
            "source": str(fp32), "bytes": tmp.stat().st_size, "fp32_bytes": fp32.stat().st_size,
            "calibration": calibration_record(cal),
            "excluded": {"op_types": conf["exclude_op_types"], "nodes": excluded},
            **node_summary(tmp, excluded),
        })
        if pin is not None:
            link_model_file(tmp, pin)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    write_json(out.with_suffix(".json"), record)
    return record


def _linked(out: Path, pin: Path) -> Path | None:
    """``pin`` linked to the bytes ``out`` names now; ``None`` when there is no such file."""
    try:
        return link_model_file(out, pin) if out.is_file() else None
    except FileNotFoundError:  # removed (replaced by another run) between the check and the link
        return None


def ensure_int8_onnx(ctx: RunContext, given: str | None = None) -> Path:
    """The onnxruntime INT8 model this run uses: reused when its record matches this run (FP32 bytes, quantize
    settings, calibration images' ids and sha256s, model section) and its bytes are intact, else built.
    ``given``: the FP32 ONNX to quantize (default: the export). The settings are checked, and the calibration
    images drawn from the dataset (a dataset without its files fails here), before anything is exported.

    The model is built or checked in ``model_dir``, which the jobs of a sweep share, and the file returned is a
    link to exactly the bytes built or checked, in the stage's record dir (``<record dir>/<model>_onnxruntime_int8
    .onnx``, with its ``.json`` record): no other run writes there, so the backend loads, and ``run.json`` hashes,
    this run's model even when a parallel job with other quantize settings replaces the shared file meanwhile.
    """
    settings(ctx)
    samples = calibration_samples(ctx)
    fp32 = ensure_onnx(ctx, "onnxruntime", given=given)
    fp = int8_fingerprint(ctx, fp32, samples)
    out = int8_onnx_path(ctx)
    pin = ctx.record(out.name)
    linked = _linked(out, pin)  # first the link, then the record and the linked bytes are checked
    record = reusable_record(out, fp, "quantization", data=linked) if linked else None
    if record is not None:
        cal_rec = record.get("calibration") or {}
        check_calibration_skips(ctx, cal_rec.get("skipped") or [],
                                f"the INT8 model {out} was calibrated without them")
    else:
        pin.unlink(missing_ok=True)
        source = source_model(ctx, fp32, list(ctx.hooks.input_spec(cfg=ctx.cfg)))
        out.parent.mkdir(parents=True, exist_ok=True)
        model = prepared_model(fp32, fp["quantize"]["preprocess"], out.parent)
        _named_nodes(model)
        excluded = nodes_to_exclude(ctx, model, fp["quantize"], source, fp32)  # before any calibration image
        del source
        cal = calibration_inputs(ctx, samples)
        check_calibration_skips(ctx, cal.skipped, "nothing was quantized")
        record = build_onnxruntime_int8(ctx, fp32, model, excluded, out, fp, cal, pin=pin)
        cal_rec = record["calibration"]
    write_json(pin.with_suffix(".json"), record)
    ctx.notes["int8_calibration"] = {"model": str(pin), "sha256": record.get("sha256"), "model_dir_file": str(out),
                                     "images": cal_rec.get("images"), "ids": cal_rec.get("ids"),
                                     "skipped": cal_rec.get("skipped") or []}
    return pin
