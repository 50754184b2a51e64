"""``quantize``: calibrate on the dataset and write the INT8 model (docs/quantize.md).

Calibration images: ``quantize.calibration_images`` drawn from the whole dataset (sorted by id; neither
``dataset.limit`` nor sharding applies, so every shard of a sweep gets the same INT8 model), one per
equal stratum of the sorted list, the position within each stratum drawn from ``quantize.seed``. They
go through the same worker pool and ``preprocess`` hook as ``eval`` (:class:`ImageSource`).

* ``export.target=onnxruntime``: ONNX Runtime's static quantizer (QDQ format, per-channel weights, the
  ``quantize.method`` calibrator) writes ``<model_dir>/<model>_onnxruntime_int8.onnx`` beside the FP32
  export, with a ``.json`` record (fingerprint, sha256, calibration ids and tensor digest, exclusions).
  Node types the plugin lists in ``model.quantize_exclude_op_types`` (plus ``quantize.exclude_op_types``
  and the node names in ``quantize.exclude_nodes``) stay FP32.
* ``export.target=ascend``: the calibration tensors as raw ``.bin`` files in ``<model_dir>/calibration/
  <input name>/<index>.bin`` (one image each, ascending names: AMCT's ``--data_dir`` layout) and the AMCT
  command ``amct_onnx calibration --model= --save_path= --input_shape= --data_dir= --data_types=
  --batch_num=`` in ``<model_dir>/amct_<tag>.sh``; run when ``amct_onnx`` is on PATH (its deploy model then
  feeds ``stage=convert quantize=int8``), else written and printed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.atomic import temp_path, write_bytes, write_json, write_text
from zoo_core.api.errors import ConfigError, InputError, ZooError
from zoo_core.api.types import Sample
from zoo_core.pipeline.sources import ImageSource
from zoo_core.pipeline.workers import WorkerPool
from zoo_core.runs.context import RunContext
from zoo_core.runs.export_keys import flatten
from zoo_core.runs.fingerprint import sha256_file
from zoo_core.runs.model_files import (
    amct_deploy_model,
    amct_save_prefix,
    amct_tag,
    ensure_onnx,
    int8_onnx_path,
    model_dir,
    read_record,
    reusable,
)

log = logging.getLogger("zoo")

Calibration = list[dict[str, np.ndarray]]


def _enum(value: Any) -> str:
    return str(value).split(".")[-1]


def settings(ctx: RunContext) -> dict[str, Any]:
    """The quantize settings that decide the INT8 model (recorded in its fingerprint)."""
    q = ctx.cfg.quantize
    n = int(q.calibration_images)
    if n < 1:
        raise ConfigError(f"quantize.calibration_images={n} is invalid: it must be >= 1")
    pct = float(q.percentile)
    if not 0.0 < pct <= 100.0:
        raise ConfigError(f"quantize.percentile={pct} is invalid: it must be within (0, 100]")
    return {
        "calibration_images": n, "method": _enum(q.method), "seed": int(q.seed), "per_channel": bool(q.per_channel),
        "activation_type": _enum(q.activation_type), "weight_type": _enum(q.weight_type),
        "percentile": pct if _enum(q.method) == "percentile" else None,
        "exclude_op_types": excluded_op_types(ctx), "exclude_nodes": [str(n) for n in q.exclude_nodes],
        "preprocess": bool(q.preprocess),
    }


def excluded_op_types(ctx: RunContext) -> list[str]:
    """Op types kept in FP32: the plugin's ``model.quantize_exclude_op_types`` plus ``quantize.exclude_op_types``."""
    plugin = ctx.cfg.model.get("quantize_exclude_op_types") or []
    return list(dict.fromkeys([str(t) for t in plugin] + [str(t) for t in ctx.cfg.quantize.exclude_op_types]))


def calibration_samples(ctx: RunContext) -> list[Sample]:
    """``quantize.calibration_images`` samples of the whole dataset, spread over it, drawn from ``quantize.seed``.

    The dataset's samples sorted by id are cut into N equal strata; one sample is drawn from each.
    """
    n = int(ctx.cfg.quantize.calibration_images)
    if n < 1:
        raise ConfigError(f"quantize.calibration_images={n} is invalid: it must be >= 1")
    samples = sorted(ctx.dataset.samples(), key=lambda s: s.id)
    if not samples:
        raise ZooError(f"dataset {ctx.cfg.dataset.get('name')} has no images to calibrate on")
    if n >= len(samples):
        return samples
    edges = (np.arange(n + 1) * len(samples)) // n
    rng = np.random.default_rng(int(ctx.cfg.quantize.seed))
    picks = rng.integers(edges[:-1], edges[1:])
    return [samples[int(i)] for i in picks]


def check_calibration_skips(ctx: RunContext, skipped: Sequence[dict[str, str]], consequence: str) -> None:
    """Calibration images ``on_error=skip`` left out fail the run (exit 2) unless ``allow_skips=true``, as in
    ``eval``; with it they are listed in the model's record and the stage's ``run.json``."""
    if skipped and not bool(ctx.cfg.get("allow_skips", False)):
        first = skipped[0]
        raise ZooError(f"{len(skipped)} calibration image(s) were skipped (on_error=skip; first: {first.get('path')}: "
                       f"{first.get('reason')}); {consequence}",
                       hint="pass allow_skips=true to calibrate on the other images, or fix the image(s)")


def calibration_record(cal: CalibrationSet) -> dict[str, Any]:
    """The record of a calibration: the images used (count, ids), those skipped, the tensors' digest."""
    return {"images": len(cal.batches), "ids": [s.id for s in cal.samples], "skipped": list(cal.skipped),
            "tensors_sha256": calibration_digest(cal.batches)}


@dataclass
class CalibrationSet:
    """The calibration tensors (one batch of one image each) and the images they came from, in order; ``skipped``:
    the images ``on_error=skip`` left out (``{"id", "path", "reason"}``)."""

    batches: Calibration
    samples: list[Sample]
    skipped: list[dict[str, str]] = field(default_factory=list)


def calibration_inputs(ctx: RunContext, samples: Sequence[Sample]) -> CalibrationSet:
    """Each sample preprocessed exactly as ``eval`` does it (worker pool + ``preprocess`` hook), batch of one."""
    cfg = ctx.cfg
    by_id: dict[str, dict[str, np.ndarray]] = {}
    skipped: dict[str, dict[str, str]] = {}
    workers = int(cfg.num_workers) if len(samples) > 1 else 0
    with WorkerPool(ctx.hooks, cfg, workers) as pool:
        for prep in ImageSource(samples, pool).items():
            if prep.error is not None or prep.inputs is None:
                if not ctx.skip_errors:
                    raise InputError(f"calibration image: {prep.error}", path=prep.sample.path)
                log.warning("calibration: skipping %s: %s", prep.sample.path, prep.error)
                skipped[prep.sample.id] = {"id": prep.sample.id, "path": str(prep.sample.path),
                                           "reason": str(prep.error)}
                continue
            # copies: the arrays may be views of the pool's shared-memory slots, unmapped when it closes
            by_id[prep.sample.id] = {k: np.array(v[None], copy=True, order="C") for k, v in prep.inputs.items()}
    used = [s for s in samples if s.id in by_id]
    if not used:
        raise ZooError("no calibration image could be preprocessed")
    return CalibrationSet([by_id[s.id] for s in used], used, [skipped[s.id] for s in samples if s.id in skipped])


def calibration_digest(batches: Calibration) -> str:
    """sha256 over every calibration tensor (name, dtype, shape, bytes) in order."""
    h = hashlib.sha256()
    for batch in batches:
        for name in sorted(batch):
            a = batch[name]
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def image_sha256(sample: Sample) -> str | None:
    """The sha256 of a calibration image file's bytes, ``None`` when it is not a readable file (it is then
    skipped or refused by the calibration itself; a file that appears or changes later changes the digest)."""
    try:
        return sha256_file(Path(sample.path))
    except (OSError, TypeError):
        return None


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
    folds BatchNormalization into the convolutions so that they quantize as one)."""
    import tempfile

    import onnx
    from onnx import version_converter

    model = onnx.load(str(fp32))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_QDQ_OPSET)
    if opset < MIN_QDQ_OPSET:
        log.info("upgrading %s from opset %d to %d for QDQ quantization", fp32.name, opset, MIN_QDQ_OPSET)
        model = version_converter.convert_version(model, MIN_QDQ_OPSET)
    if not preprocess:
        return model
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=work, prefix=".quant-pre-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        try:
            quant_pre_process(str(src), str(dst))
        except Exception as exc:  # symbolic shape inference does not know every op (e.g. DeformConv)
            log.info("quantization pre-processing without symbolic shape inference (%s: %s)", type(exc).__name__, exc)
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


@contextlib.contextmanager
def _staged_dir(final: Path) -> Iterator[Path]:
    """A temporary directory path beside ``final`` (``.<name>.<pid>.<random>.tmp``, not created) that replaces
    ``final`` whole when the block completes; removed when it raises, so ``final`` stays as it was."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_calibration_bins(ctx: RunContext, cal: CalibrationSet, specs: Sequence[Any]) -> dict[str, Path]:
    """``<model_dir>/calibration/<input>/<000000>.bin``: one raw C-order tensor of shape (1, *spec.shape) each.

    Every tensor is checked before anything is written (an error names the image); the set is written to a
    temporary directory that replaces ``calibration/`` whole, so a failure leaves the previous set as it was."""
    for sample, batch in zip(cal.samples, cal.batches):
        for spec in specs:
            want = (1, *tuple(int(x) for x in spec.shape))
            a = batch.get(spec.name)
            if a is None or tuple(a.shape) != want or a.dtype != np.dtype(spec.dtype):
                got = "missing" if a is None else f"{a.dtype}{list(a.shape)}"
                raise ZooError(f"calibration image: input {spec.name!r} is {got}, AMCT needs the static "
                               f"{spec.dtype}{list(want)} of the model's input_spec", path=sample.path,
                               hint="set the model's fixed input size (e.g. model.input_hw=[h,w] for centerface)")
    root = model_dir(ctx) / "calibration"
    root.parent.mkdir(parents=True, exist_ok=True)
    with _staged_dir(root) as tmp:
        for spec in specs:
            d = tmp / spec.name.replace(os.sep, "_")
            d.mkdir(parents=True)
            for i, batch in enumerate(cal.batches):
                write_bytes(d / f"{i:06d}.bin", batch[spec.name].tobytes())
    return {spec.name: root / spec.name.replace(os.sep, "_") for spec in specs}


def amct_argv(ctx: RunContext, onnx: Path, specs: Sequence[Any], dirs: dict[str, Path], batches: int) -> list[str]:
    """``amct_onnx calibration`` with the documented flags (``--key=value``; list values joined by ``;``)."""
    shape = ";".join(f"{s.name}:{','.join(str(x) for x in (1, *s.shape))}" for s in specs)
    return ["amct_onnx", "calibration", f"--model={onnx}", f"--save_path={amct_save_prefix(ctx)}",
            f"--input_shape={shape}", f"--data_dir={';'.join(str(dirs[s.name]) for s in specs)}",
            f"--data_types={';'.join(str(np.dtype(s.dtype)) for s in specs)}", f"--batch_num={batches}"]


def ascend_onnx(ctx: RunContext) -> Path:
    given = ctx.cfg.get("model_file")
    if given and str(given).endswith(".onnx"):
        p = Path(str(given)).expanduser()
        if not p.is_file():
            raise ZooError("model file not found", path=p)
        return p.resolve()
    return ensure_onnx(ctx, "ascend").resolve()


def onnx_input_context(ctx: RunContext) -> RunContext:
    """The run as the ONNX that AMCT calibrates sees its input. With ``model.aipp=true`` the uint8 HWC input
    exists only in the OM (ATC inserts AIPP after AMCT); the ONNX takes the model's float32 NCHW input, so the
    calibration data are preprocessed with ``model.aipp=false``."""
    if not bool((ctx.cfg.get("model") or {}).get("aipp", False)):
        return ctx
    from omegaconf import open_dict

    cfg = ctx.cfg.copy()
    with open_dict(cfg):
        cfg.model.aipp = False
    return RunContext(cfg, ctx.manager, ctx.root, ctx.record_dir)


def graph_inputs(model: Any) -> list[str]:
    """The names of a graph's real inputs (initializers listed as inputs left out)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


#: Node types of an already quantized graph: ONNX QDQ / QOperator / integer ops, AMCT's deploy-model ops.
QUANTIZED_OP_TYPES = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                                "MatMulInteger", "AscendQuant", "AscendDequant", "AscendAntiQuant",
                                "AscendWeightQuant"})


def quantized_nodes(model: Any) -> dict[str, int]:
    """Count of each quantization node type in ``model``'s graph (``QLinear*`` included); empty for an FP32 graph."""
    found: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in QUANTIZED_OP_TYPES or n.op_type.startswith("QLinear"):
            found[n.op_type] = found.get(n.op_type, 0) + 1
    return found


def source_model(ctx: RunContext, path: Path, specs: Sequence[Any]) -> Any:
    """The ONNX to quantize, loaded (without external data) and checked before any calibration: its inputs are
    the ones the plugin's ``input_spec`` names (the calibration tensors are fed, and AMCT's ``--input_shape``
    and ``--data_dir`` are written, under those names) and it is not quantized already (QDQ or integer ops)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError of a non-ONNX / truncated file, OSError...
        reason = " ".join(str(exc).split())[:200]
        raise ZooError(f"not a readable ONNX model ({type(exc).__name__}: {reason})", path=path) from exc
    if not model.graph.node:
        raise ZooError("not an ONNX model: it holds no graph nodes", path=path)
    quantized = quantized_nodes(model)
    if quantized:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(quantized.items()))
        raise ZooError(f"already quantized ({kinds}): stage=quantize and quantize=int8 calibrate an FP32 model",
                       path=path, hint="pass the FP32 ONNX as model_file=; an INT8 ONNX runs as it is with "
                                       "quantize=none model_file=<it>")
    names, want = graph_inputs(model), [s.name for s in specs]
    if sorted(names) != sorted(want):
        raise ZooError(f"its inputs {names} are not the {ctx.model_name} model's {want} (its input_spec), "
                       "which the calibration images are preprocessed for", path=path,
                       hint=f"is this an ONNX of the {ctx.model_name} model?")
    return model


def amct_fingerprint(ctx: RunContext, onnx: Path, samples: Sequence[Sample]) -> dict[str, Any]:
    """What AMCT's deploy model depends on: the ONNX it calibrates, the calibration draw (``quantize.
    calibration_images``, ``quantize.seed``), the dataset, each calibration image's id and file sha256 and the model
    section (the preprocessing). The onnxruntime quantizer's settings (method, types...) do not reach AMCT."""
    return {
        "model": ctx.model_name,
        "source_sha256": sha256_file(onnx),
        "model_config": flatten(ctx.resolved_config()["model"]),
        **amct_calibration(ctx, samples),
    }


def amct_calibration(ctx: RunContext, samples: Sequence[Sample]) -> dict[str, Any]:
    """The calibration part of :func:`amct_fingerprint` (also what an INT8 OM's record is checked on):
    ``quantize.calibration_images`` and ``quantize.seed``, the dataset, each calibration image's id and sha256."""
    d = ctx.cfg.dataset
    q = ctx.cfg.quantize
    return {
        "quantize": {"calibration_images": int(q.calibration_images), "seed": int(q.seed)},
        "dataset": {"name": str(d.get("name")), "root": str(d.get("root")) if d.get("root") is not None else None},
        "calibration_ids": [s.id for s in samples],
        "calibration_sha256": [image_sha256(s) for s in samples],
    }


def run_amct(ctx: RunContext) -> dict[str, Any]:
    """Calibration ``.bin`` files + the AMCT script; AMCT run when installed (its deploy model recorded).

    AMCT writes into a temporary ``--save_path`` directory, moved onto ``amct_<tag>/`` (with the deploy model's
    ``.json`` record: fingerprint, sha256) only when it exits 0; a failed run leaves the previous files as they were.
    """
    settings(ctx)  # checked before anything is exported
    onnx = ascend_onnx(ctx)
    onnx_ctx = onnx_input_context(ctx)
    specs = list(ctx.hooks.input_spec(cfg=onnx_ctx.cfg))
    source_model(ctx, onnx, specs)
    samples = calibration_samples(ctx)
    fingerprint = amct_fingerprint(ctx, onnx, samples)
    cal = calibration_inputs(onnx_ctx, samples)
    check_calibration_skips(ctx, cal.skipped, "nothing was written for AMCT")
    batches = cal.batches
    dirs = write_calibration_bins(ctx, cal, specs)
    argv = amct_argv(ctx, onnx, specs, dirs, len(batches))
    script = model_dir(ctx) / f"amct_{amct_tag(ctx)}.sh"
    write_text(script, "#!/usr/bin/env bash\nset -euo pipefail\n" + shlex.join(argv) + "\n")
    script.chmod(0o755)
    calibration: dict[str, Any] = {**calibration_record(cal), "dir": str(model_dir(ctx) / "calibration")}
    base = {"stage": "quantize", "target": "ascend", "script": str(script), "argv": argv, "calibration": calibration}
    ctx.notes["amct_calibration"] = {"images": len(batches), "ids": calibration["ids"], "skipped": list(cal.skipped)}
    exe = shutil.which("amct_onnx")
    if exe is None:
        return {**base, "quantized": False,
                "reason": "amct_onnx is not on PATH (Ascend AMCT, with the CANN toolkit), so nothing was "
                          f"quantized: run {script} where it is installed, then stage=convert quantize=int8"}
    deploy = amct_deploy_model(ctx)
    final = deploy.parent
    final.parent.mkdir(parents=True, exist_ok=True)
    log_path = model_dir(ctx) / f"amct_{amct_tag(ctx)}.log"
    with _staged_dir(final) as tmp:
        prefix = tmp / amct_save_prefix(ctx).name
        run_argv = [exe, *(f"--save_path={prefix}" if a.startswith("--save_path=") else a for a in argv[1:])]
        log.info("running %s", shlex.join(run_argv))
        proc = subprocess.run(run_argv, capture_output=True, text=True, shell=False)
        write_text(log_path, f"$ {shlex.join(run_argv)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ZooError(f"amct_onnx failed with exit code {proc.returncode} (its partial files were removed): "
                           + " | ".join(tail), path=log_path)
        written = tmp / deploy.name
        if not written.is_file():
            raise ZooError(f"amct_onnx exited 0 but wrote no deploy model {written.name}", path=log_path)
        write_json(written.with_suffix(".json"), {
            "fingerprint": fingerprint, "sha256": sha256_file(written), "source": str(onnx),
            "source_sha256": fingerprint["source_sha256"], "argv": argv, "calibration": base["calibration"]})
    return {**base, "quantized": True, "deploy_model": str(deploy), "log": str(log_path)}


def ensure_amct_model(ctx: RunContext) -> Path:
    """The AMCT deploy model ``stage=convert quantize=int8`` converts: reused when its zoo record's fingerprint
    (:func:`amct_fingerprint`) matches this run and its bytes still match, else AMCT is run again (logging what
    changed). A deploy model without a zoo record (AMCT run outside zoo, or files of unknown origin) is never
    trusted silently: AMCT is re-run when installed, else it is refused (pass it as ``model_file=`` to convert
    it as it is)."""
    deploy = amct_deploy_model(ctx)
    if deploy.is_file():
        if deploy.with_suffix(".json").is_file():
            samples = calibration_samples(ctx)
            if reusable(deploy, amct_fingerprint(ctx, ascend_onnx(ctx), samples), "AMCT calibration"):
                rec = read_record(deploy.with_suffix(".json")).get("calibration") or {}
                check_calibration_skips(ctx, rec.get("skipped") or [],
                                        f"AMCT's deploy model {deploy} was calibrated without them")
                return deploy
        elif shutil.which("amct_onnx") is None:
            script = model_dir(ctx) / f"amct_{amct_tag(ctx)}.sh"
            raise ZooError("AMCT deploy model without the zoo record written when zoo runs AMCT: which ONNX and "
                           "calibration images it came from is unknown, so it is not converted silently",
                           path=deploy,
                           hint=f"to convert it as it is (e.g. made by {script} on "
                                f"another machine), pass model_file={deploy} with quantize=int8; or remove it and "
                                "run stage=quantize export.target=ascend where amct_onnx is installed")
        else:
            log.info("re-running AMCT: %s has no zoo record beside it (written outside zoo)", deploy)
    res = run_amct(ctx)
    if not res["quantized"]:
        state = "is missing" if not deploy.is_file() else "was calibrated with other settings"
        raise ZooError(f"quantize=int8 converts AMCT's deploy model, which {state}; {res['reason']}", path=deploy)
    return deploy


#: ATC flags a quantized deploy model cannot be converted with (ATC's general restrictions, repeated in AMCT's
#: quick start): dynamic shapes (no INT8 input in dynamic-shape mode: the conversion fails) ...
INT8_DYNAMIC_FLAGS = ("--dynamic_batch_size", "--dynamic_image_size", "--dynamic_dims", "--input_shape_range")
#: ... and the high-precision modes (neither INT8's speed nor the high-precision accuracy).
INT8_PRECISION_VALUES = {"--precision_mode": ("force_fp32", "must_keep_origin_dtype"),
                         "--precision_mode_v2": ("origin",)}


def check_int8_atc_args(args: Sequence[str], what: str = "ATC's command line") -> None:
    """Refuse (exit 2) an ATC flag that ATC / AMCT document as not usable with a quantized deploy model."""
    for arg in (str(a) for a in args):
        flag, _, value = arg.partition("=")
        if flag in INT8_DYNAMIC_FLAGS:
            raise ConfigError(f"quantize=int8: {what} has {flag}, but ATC cannot convert an AMCT quantized deploy "
                              "model with dynamic-shape flags (--dynamic_batch_size, --dynamic_image_size...: "
                              "no INT8 input in dynamic-shape mode, the conversion fails; ATC's general restrictions, "
                              "AMCT quick start)",
                              hint="convert the INT8 model at a fixed batch_size (one OM per batch size), without "
                                   "atc.dynamic_batch / atc.dynamic_image_size")
        if value.strip("'\"") in INT8_PRECISION_VALUES.get(flag, ()):
            raise ConfigError(f"quantize=int8: {what} has {flag}={value}, a high-precision mode ATC / AMCT say not "
                              "to use with an AMCT quantized deploy model (--precision_mode force_fp32 or "
                              "must_keep_origin_dtype, --precision_mode_v2 origin: neither INT8's speed nor FP32's "
                              "accuracy)", hint="leave atc.precision_mode unset (or force_fp16 / "
                                                "allow_mix_precision) for the INT8 OM")


def check_int8_atc_config(ctx: RunContext) -> None:
    """The ``atc.*`` settings of a ``stage=convert quantize=int8``, checked before AMCT runs
    (:func:`check_int8_atc_args`; the full ATC command line is checked again once the plugin has built it)."""
    atc = ctx.cfg.atc
    if atc.get("dynamic_batch"):
        check_int8_atc_args(["--dynamic_batch_size"], f"atc.dynamic_batch={list(atc.dynamic_batch)}")
    if atc.get("dynamic_image_size"):
        check_int8_atc_args(["--dynamic_image_size"], "atc.dynamic_image_size=true")
    if atc.get("precision_mode") is not None:
        check_int8_atc_args([f"--precision_mode={atc.precision_mode}"], "atc.precision_mode")
    check_int8_atc_args([str(x) for x in (atc.get("extra") or [])], "atc.extra")


def run(ctx: RunContext) -> dict[str, Any]:
    target = _enum(ctx.cfg.export.target)
    if target == "ascend":
        return run_amct(ctx)
    given = ctx.cfg.get("model_file")
    if given and not str(given).endswith(".onnx"):
        raise ConfigError(f"model_file={given} is not an .onnx file, which stage=quantize needs")
    path = ensure_int8_onnx(ctx, given)
    info = json.loads(path.with_suffix(".json").read_text())
    return {"stage": "quantize", "target": target, "onnx": str(path),
            "size_ratio": info["bytes"] / info["fp32_bytes"], **info}
