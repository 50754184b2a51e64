"""``export.target=onnxruntime``: ONNX Runtime's static quantizer (QDQ, per-channel weights) writes
``<model_dir>/<model>_onnxruntime_int8.onnx`` with a ``.json`` record (fingerprint, sha256, calibration, exclusions)."""
from __future__ import annotations

import logging
import os
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
from zoo_core.runs.fingerprint import sha256_file
from zoo_core.runs.model_files import (
    ensure_onnx,
    int8_onnx_path,
    read_record,
    reusable,
)

log = logging.getLogger("zoo")


def int8_fingerprint(ctx: RunContext, fp32: Path, samples: Sequence[Sample]) -> dict[str, Any]:
    """What the INT8 model depends on: the FP32 file's bytes, the quantize settings, the calibration images (ids
    and each file's sha256, so an image rewritten or restored under the same id re-quantizes) and the model
    section (preprocess keys are not declared apart from the others, so any change re-quantizes)."""
    d = ctx.cfg.dataset
    return {
        "model": ctx.model_name,
        "fp32_sha256": sha256_file(fp32),
        "quantize": settings(ctx),
        "model_config": flatten(ctx.resolved_config()["model"]),
        "dataset": {"name": str(d.get("name")), "root": str(d.get("root")) if d.get("root") is not None else None},
        "calibration_ids": [s.id for s in samples],
        "calibration_sha256": [image_sha256(s) for s in samples],
    }


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


def check_exclude_op_types(ctx: RunContext, model: Any, path: Path) -> None:
    """``quantize.exclude_op_types`` names op types of the graph (as unknown ``exclude_nodes`` are an error); the
    plugin's own ``model.quantize_exclude_op_types`` may name types a graph variant lacks (DeformConv)."""
    present = {n.op_type for n in model.graph.node}
    unknown = [str(t) for t in ctx.cfg.quantize.exclude_op_types if str(t) not in present]
    if unknown:
        raise ConfigError(f"quantize.exclude_op_types: no {', '.join(map(repr, unknown))} node in the "
                          f"{ctx.model_name} graph {path.name} (op types are case-sensitive; it has: "
                          f"{', '.join(sorted(present))})")


def nodes_to_exclude(ctx: RunContext, model: Any, conf: dict[str, Any]) -> list[str]:
    """Names of the nodes kept in FP32 (excluded op types, then ``quantize.exclude_nodes``, checked)."""
    names = {n.name for n in model.graph.node}
    missing = [n for n in conf["exclude_nodes"] if n not in names]
    if missing:
        raise ConfigError(f"quantize.exclude_nodes: no node named {', '.join(map(repr, missing))} in the "
                          f"{ctx.model_name} graph")
    types = set(conf["exclude_op_types"])
    return [n.name for n in model.graph.node if n.op_type in types] + list(conf["exclude_nodes"])


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


def build_onnxruntime_int8(ctx: RunContext, fp32: Path, out: Path, fingerprint: dict[str, Any],
                           cal: CalibrationSet) -> dict[str, Any]:
    """Static INT8 QDQ quantization of ``fp32`` into ``out`` (atomically), and its ``.json`` record."""
    batches = cal.batches
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    conf = fingerprint["quantize"]
    shapes = {tuple((k, v.shape) for k, v in sorted(b.items())) for b in batches}
    if conf["method"] != "minmax" and len(shapes) > 1:
        raise ConfigError(f"quantize.method={conf['method']} needs calibration images of one input size (onnxruntime's "
                          f"histogram calibrators stack them), these have {len(shapes)} sizes",
                          hint="use quantize.method=minmax, or give the model a fixed input size "
                               "(e.g. model.input_hw=[h,w] for centerface)")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = prepared_model(fp32, conf["preprocess"], out.parent)
    _named_nodes(model)
    excluded = nodes_to_exclude(ctx, model, conf)
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
    try:
        quantize_static(model, str(tmp), _reader(batches), quant_format=QuantFormat.QDQ,
                        per_channel=conf["per_channel"], activation_type=qtype[conf["activation_type"]],
                        weight_type=qtype[conf["weight_type"]], nodes_to_exclude=excluded or None,
                        calibrate_method=method, calibration_providers=["CPUExecutionProvider"],
                        extra_options=extra)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    record = {
        "fingerprint": fingerprint, "sha256": sha256_file(out), "target": "onnxruntime", "format": "QDQ",
        "source": str(fp32), "bytes": out.stat().st_size, "fp32_bytes": fp32.stat().st_size,
        "calibration": calibration_record(cal),
        "excluded": {"op_types": conf["exclude_op_types"], "nodes": excluded},
        **node_summary(out, excluded),
    }
    write_json(out.with_suffix(".json"), record)
    return record


def ensure_int8_onnx(ctx: RunContext, given: str | None = None) -> Path:
    """The onnxruntime INT8 model: reused when its record matches this run (FP32 bytes, quantize settings,
    calibration images' ids and sha256s, model section) and its bytes are intact, else built. ``given``: the
    FP32 ONNX to quantize (default: the export). The settings are checked before anything is exported."""
    settings(ctx)
    fp32 = ensure_onnx(ctx, "onnxruntime", given=given)
    samples = calibration_samples(ctx)
    fp = int8_fingerprint(ctx, fp32, samples)
    out = int8_onnx_path(ctx)
    if reusable(out, fp, "quantization"):
        rec = read_record(out.with_suffix(".json")).get("calibration") or {}
        check_calibration_skips(ctx, rec.get("skipped") or [], f"the INT8 model {out} was calibrated without them")
    else:
        check_exclude_op_types(ctx, source_model(ctx, fp32, list(ctx.hooks.input_spec(cfg=ctx.cfg))), fp32)
        cal = calibration_inputs(ctx, samples)
        check_calibration_skips(ctx, cal.skipped, "nothing was quantized")
        rec = build_onnxruntime_int8(ctx, fp32, out, fp, cal)["calibration"]
    ctx.notes["int8_calibration"] = {"model": str(out), "images": rec.get("images"), "ids": rec.get("ids"),
                                     "skipped": rec.get("skipped") or []}
    return out
