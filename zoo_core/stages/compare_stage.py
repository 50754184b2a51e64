"""``compare``: the same preprocessed images through two backends; where and how much they differ.

One :class:`~zoo_core.pipeline.sources.ImageSource` feeds a :class:`~zoo_core.pipeline.stream.Stream`
whose backend is a :class:`~zoo_core.compare.pair.PairBackend` (reference, then candidate, on each
batch) and whose sink is a :class:`~zoo_core.compare.pair.CompareSink`; ``compare.layers=true``
adds a layer capture of the first images. Writes ``compare.json``, ``compare.md`` and
``compare.png`` in the record dir, then exits non-zero (exit code 1) when the candidate is not
within tolerance. Options: docs/compare.md.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import open_dict

from zoo_core.api.atomic import write_json, write_text
from zoo_core.api.errors import ConfigError, ZooError
from zoo_core.backends.base import Backend
from zoo_core.compare.layers import LayerCompare, check_pair, tap_for
from zoo_core.compare.numbers import Tolerance
from zoo_core.compare.pair import CompareSink, PairBackend
from zoo_core.compare.report import SCHEMA, failure_reasons, jsonable, markdown, plot, summary_lines
from zoo_core.pipeline.sources import ImageSource
from zoo_core.pipeline.stream import Stream
from zoo_core.pipeline.workers import WorkerPool
from zoo_core.reports.plotting import draw_or_warn
from zoo_core.reports.progress import Progress, progress_enabled
from zoo_core.runs.context import RunContext
from zoo_core.runs.fingerprint import file_record
from zoo_core.runs.records import finish_with_skips
from zoo_core.stages.open_backend import open_backend

log = logging.getLogger("zoo")


class CompareFailed(ZooError):
    """The candidate is not within tolerance of the reference (the report was written)."""

    exit_code = 1


def tolerance(cfg: Any) -> Tolerance:
    c = cfg.compare
    tol = Tolerance(float(c.atol), float(c.rtol), float(c.min_cosine))
    if not (tol.atol >= 0 and tol.rtol >= 0 and math.isfinite(tol.atol + tol.rtol)):
        raise ConfigError(f"compare.atol={c.atol} and compare.rtol={c.rtol} must be finite and >= 0")
    if not -1.0 <= tol.min_cosine <= 1.0:
        raise ConfigError(f"compare.min_cosine={c.min_cosine} must be within [-1, 1]")
    if not 0.0 < float(c.iou) <= 1.0:
        raise ConfigError(f"compare.iou={c.iou} must be within (0, 1]")
    return tol


def check_config(ctx: RunContext) -> Tolerance:
    """Everything that can be refused before a worker or a model starts."""
    c = ctx.cfg.compare
    tol = tolerance(ctx.cfg)
    for side in ("reference", "candidate"):
        if str(c[side]) not in ctx.manager.backends:
            raise ConfigError(f"compare.{side}={c[side]!r} is not an installed backend; installed: "
                              f"{', '.join(sorted(ctx.manager.backends))}")
    if c.get("candidate_dump") and not bool(c.layers):
        raise ConfigError("compare.candidate_dump is read by the layer compare: add compare.layers=true")
    if bool(c.layers):
        if int(c.layer_images) < 1:
            raise ConfigError(f"compare.layer_images={c.layer_images} must be >= 1")
        check_pair(str(c.reference), str(c.candidate), c.get("candidate_dump"))
    if str(ctx.cfg.quantize.get("name", "none")) != "none":  # before the reference side exports its FP32 model
        from zoo_core.quantize.calibration import settings

        settings(ctx)
    return tol


def side_context(ctx: RunContext, side: str) -> tuple[RunContext, str, dict[str, Any] | None]:
    """The run context one side opens its backend with: ``compare.<side>_model`` in place of
    ``model_file`` (for torch: in place of ``weights``; for replay: the dump dir). The candidate
    falls back to ``model_file``; the reference never does, so it defaults to the export / OM. ``quantize=int8``
    applies to the candidate only: the reference is the FP32 model it is compared with."""
    c = ctx.cfg.compare
    name = str(c[side])
    given = c.get(f"{side}_model")
    if side == "candidate" and not given:
        given = ctx.cfg.get("model_file")
    cfg = copy.deepcopy(ctx.cfg)
    options = None
    with open_dict(cfg):
        cfg.model_file = None
        if side == "reference":  # quantize=int8 quantizes the candidate; the reference stays FP32
            cfg.quantize.name = "none"
        if name == "torch" and given:
            cfg.weights = str(given)
        elif name == "replay" and given:
            options = {"dir": str(given)}
        elif given:
            cfg.model_file = str(given)
    sctx = dataclasses.replace(ctx, cfg=cfg)
    sctx.notes = ctx.notes  # (what a side notes, e.g. the INT8 candidate's int8_calibration, is the run's)
    if cfg.get("weights") == ctx.cfg.get("weights"):  # the run's weights: chosen once, recorded in run.json
        sctx.weights_used = ctx.weights_used
    return sctx, name, options


def open_side(ctx: RunContext, side: str) -> Backend:
    """The backend of ``side``; the candidate's (the model under test) is the run's ``opened_backend``, whose model
    file ``run.json`` names."""
    sctx, name, options = side_context(ctx, side)
    backend = open_backend(sctx, name, options=options)
    if side == "candidate":
        ctx.opened_backend = sctx.opened_backend
    return backend


def _identity(backend: Backend) -> tuple[dict[str, Any], str | None]:
    """What a side runs: its ``describe()`` with each model file / weights / dump dir replaced by its sha256
    (a copy of a file is the same model) or resolved path; and the first such file, to name."""
    ident = dict(backend.describe())
    named = None
    for key in ("model_file", "weights", "dir"):
        value = ident.get(key)
        if not value or not isinstance(value, str) or not Path(value).exists():
            continue
        named = named or value
        rec = file_record(value) if Path(value).is_file() else {}
        ident[key] = rec.get("sha256") or str(Path(value).resolve())
    return ident, named


def refuse_same_sides(reference: Backend, candidate: Backend) -> None:
    """The same backend running the same model (same bytes) with the same options on both sides: every
    difference is 0 and the compare would pass without comparing anything (a forgotten candidate_model)."""
    (ref, named), (cand, _) = _identity(reference), _identity(candidate)
    if ref != cand:
        return
    what = f"{reference.name} on {named}" if named else f"{reference.name} with the same options"
    raise ConfigError(f"compare: the reference and the candidate are the same model ({what}, identical on "
                      f"both sides): the compare would pass without comparing anything",
                      hint="set compare.candidate_model=<the converted model>, quantize=int8, or a different "
                           "compare.candidate backend (compare.allow_same=true compares a model with itself "
                           "on purpose, e.g. a determinism check)")


def open_pair(ctx: RunContext, tol: Tolerance) -> PairBackend:
    """Both sides' backends (and the layer capture) in one :class:`PairBackend`; nothing left open on failure."""
    c = ctx.cfg.compare
    opened: list[Backend] = []
    try:
        opened.append(open_side(ctx, "reference"))
        opened.append(open_side(ctx, "candidate"))
        if not bool(c.get("allow_same", False)):
            refuse_same_sides(*opened)
        layers = None
        if bool(c.layers):
            layers = LayerCompare(tap_for(opened[0]), tap_for(opened[1], c.get("candidate_dump")), tol,
                                  int(c.layer_images))
        return PairBackend(opened[0], opened[1], layers)
    except BaseException:
        for backend in opened:
            backend.close()
        raise


def score_both(ctx: RunContext, sink: CompareSink) -> tuple[dict[str, Any] | None, str | None]:
    """Both detection sets scored by the model's ``evaluate`` hook, and the candidate's delta."""
    cfg = ctx.cfg
    if not bool(cfg.compare.metrics):
        return None, "not scored (compare.metrics=false)"
    if ctx.hooks.provider("evaluate", cfg) is None:
        return None, f"not scored: neither the {ctx.model_name} plugin nor zoo-core's dataset API evaluates it"
    if getattr(ctx.dataset, "has_ground_truth", True) is False:
        return None, f"not scored: dataset {ctx.dataset.name} has no ground truth"
    ref_dets, cand_dets = sink.detections
    samples = [s for s in ctx.samples if s.id in ref_dets]
    if not samples:
        return None, "not scored: no image was compared"
    scored = []
    for dets in (ref_dets, cand_dets):
        res = ctx.hooks.evaluate(cfg=cfg, detections=dets, dataset=ctx.dataset, samples=samples,
                                 out_dir=ctx.record_dir)
        scored.append({k: (float(v) if math.isfinite(float(v)) else None) for k, v in res.metrics.items()})
        info = res.info
    ref, cand = scored
    delta = {k: (c - v if v is not None and (c := cand.get(k)) is not None else None) for k, v in ref.items()}
    return {"reference": ref, "candidate": cand, "delta": delta, "images": len(samples), "info": jsonable(info)}, None


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    c = cfg.compare
    tol = check_config(ctx)
    samples = ctx.samples
    if not samples:
        raise ZooError(f"dataset {cfg.dataset.get('name')} has no images to compare (dataset.limit?)")
    hooks = ctx.hooks

    def specs(meta: dict) -> list:
        return hooks.output_spec(cfg=cfg, meta=meta)

    decode = None
    if hooks.implements("postprocess"):
        decode = lambda outs, metas: hooks.postprocess(cfg=cfg, outputs=outs, metas=metas)  # noqa: E731

    sink = CompareSink(specs, tol, decode, float(c.iou), int(c.plot_points))
    workers = int(cfg.num_workers) if len(samples) > 1 else 0
    with WorkerPool(hooks, cfg, workers) as pool:
        pair = open_pair(ctx, tol)
        try:
            stats = Stream(ImageSource(samples, pool), [sink], backend=pair, batch_size=int(cfg.batch_size),
                           skip_errors=ctx.skip_errors, keep_outputs=True,
                           expect=lambda meta: list(specs(meta)) * 2,
                           progress=Progress(len(samples), progress_enabled(cfg.get("progress")), "compare ")).run()
            describe = pair.describe()
        finally:
            pair.close()
    metrics, metrics_note = score_both(ctx, sink) if decode is not None else (None, "not scored: no postprocess hook")
    result = build_result(ctx, tol, sink, pair, describe, stats, metrics, metrics_note)
    write_reports(ctx, result, sink)
    finish_with_skips(ctx, stats.skipped, "compare.json")
    if not result["passed"]:
        reasons = "\n  ".join(failure_reasons(result))
        raise CompareFailed(f"compare: the candidate is not within tolerance of the reference:\n  {reasons}\n"
                            + "\n".join(summary_lines(result, ctx.record_dir)))
    return result


def build_result(ctx: RunContext, tol: Tolerance, sink: CompareSink, pair: PairBackend, describe: dict,
                 stats: Any, metrics: dict | None, metrics_note: str | None) -> dict[str, Any]:
    """The compare.json record (schema 1; docs/compare.md)."""
    n = stats.images
    sides = {}
    for k, side in enumerate(("reference", "candidate")):
        sides[side] = {**describe[side], "ms_per_image": 1000 * pair.seconds[k] / n if n else None}
    layers = pair.layers.summary() if pair.layers is not None else None
    result: dict[str, Any] = {
        "schema": SCHEMA, "stage": "compare", "model": ctx.model_name,
        "dataset": str(ctx.cfg.dataset.get("name", "")),
        "reference": sides["reference"], "candidate": sides["candidate"],
        "images": n, "skipped": stats.skipped, "tolerance": tol.as_dict(),
        "outputs": {name: o.as_dict() for name, o in sink.outputs.items()},
        "detections": sink.matches.as_dict() if sink.decode is not None else None,
        "metrics": metrics,
        "layers": layers,
        "first_divergent": layers["first_divergent"] if layers else None,
        "passed": sink.passed,
        "files": ["compare.json", "compare.md"],
    }
    if metrics_note:
        result["metrics_note"] = metrics_note
    result["failures"] = failure_reasons(result) if not result["passed"] else []
    return jsonable(result)


def write_reports(ctx: RunContext, result: dict[str, Any], sink: CompareSink) -> None:
    ctx.record_dir.mkdir(parents=True, exist_ok=True)
    has_plot = bool(sink.samples or result.get("layers")) and bool(
        draw_or_warn("compare.png", lambda: plot(ctx.record("compare.png"), sink.samples, result)))
    if has_plot:
        result["files"].append("compare.png")
    write_json(ctx.record("compare.json"), result)
    write_text(ctx.record("compare.md"), markdown(result, "compare.png" if has_plot else None))
