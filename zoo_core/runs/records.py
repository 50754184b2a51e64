"""A stage run's records in its record dir: ``run.json``, ``perf.json``, ``metrics.json``, plugin files.

``metrics.json`` schema (version 1, docs/run-directory.md), stable for tools that read it::

    {"schema": 1, "stage": "eval", "model": "centerface", "dataset": "widerface_sample",
     "images": 24,                       # images scored
     "metrics": {"easy": 0.9688, ...},   # flat name -> number, or null when undefined
     "null_metrics": {"<name>": "why"},  # present when a metric is null
     "info": {...},                      # the evaluator's non-numeric facts (IoU threshold used...)
     "skipped": [{"id", "path", "reason"}], "files": ["<plugin files written>"],
     ...}                                # stage extras: "perf", "provenance"; "reference",
                                         # "reference_mismatches", "ci95", "bootstrap" (stages/scoring.py)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from zoo_core.api.atomic import write_bytes, write_json
from zoo_core.api.errors import PluginHookError, ZooError
from zoo_core.runs.context import RunContext
from zoo_core.runs.fingerprint import dataset_files, file_record, producer_versions, versions

METRICS_SCHEMA = 1
#: Key of an evaluator's ``info``: ``{metric: why it is undefined}`` for the metrics it returned as NaN;
#: moved into ``metrics.json``'s ``null_metrics`` (the generic reason is used for the others).
NULL_REASONS = "null_reasons"


def input_records(ctx: RunContext, model_file: str | None = None, strict: bool = True) -> dict[str, Any]:
    """Path, size and sha256 of the weights, the model file and (if loaded) the dataset's annotations.
    A file that cannot be read is a :class:`ZooError` naming it; with ``strict=False`` (the record of a failed
    run, which may have failed on that very file) it is recorded as ``{"path", "error"}`` instead."""
    def record(p: str | Path) -> dict[str, Any]:
        try:
            return file_record(p)
        except ZooError as exc:
            if strict:
                raise
            return {"path": str(p), "error": str(exc)}

    out: dict[str, Any] = {}
    w = ctx.weights()
    if w:
        out["weights"] = record(w)
    if model_file and Path(model_file).is_file():
        out["model_file"] = record(model_file)
    if "dataset" in ctx.__dict__:  # only a dataset this stage already loaded
        files = dataset_files(ctx.dataset)
        if files:
            out["dataset_files"] = [record(f) for f in files]
    return out


def write_run_record(ctx: RunContext, extra: dict[str, Any] | None = None) -> Path:
    """``run.json``: stage, config, versions (zoo-core, the model's plugin, onnxruntime, torch if
    imported; ``producer``: the plugin and zoo-core versions as the fingerprints hold them, which a shard merge
    compares) and input file hashes, so a result can be traced to exactly what produced it."""
    backend = (extra or {}).get("backend") or {}
    rec = {
        "stage": ctx.stage,
        "model": ctx.model_name,
        "root": str(ctx.root),
        "versions": versions(ctx.hooks.info.distribution),
        "producer": producer_versions(ctx.hooks.info),
        "config": ctx.resolved_config(),
        "inputs": input_records(ctx, backend.get("model_file") if isinstance(backend, dict) else None,
                                strict=(extra or {}).get("status") != "failed"),
    }
    if ctx.weights_used is not None:  # the stage built or exported the model: which weights (random said so)
        rec.update(ctx.weights_used.record())
    if extra:
        rec.update(extra)
    return write_json(ctx.record("run.json"), rec)


def write_perf(ctx: RunContext, perf: dict[str, Any]) -> Path:
    return write_json(ctx.record("perf.json"), {"stage": ctx.stage, **perf})


def metrics_record(ctx: RunContext, metrics: dict[str, Any], images: int, info: dict[str, Any],
                   skipped: list[dict], files: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` record; a NaN/inf metric becomes ``null`` with its reason in ``null_metrics``, a
    numpy scalar a plain number (:func:`zoo_core.plugins.results.metric_number`, the contract kit's rule)."""
    from zoo_core.plugins.results import metric_number

    bad = {k: v for k, v in metrics.items() if metric_number(v) is None}
    if bad:
        raise PluginHookError(f"the {ctx.model_name} evaluate hook returned non-numeric metrics: {sorted(bad)}")
    clean: dict[str, float | None] = {}
    nulls: dict[str, str] = {}
    reasons = info.get(NULL_REASONS)
    reasons = reasons if isinstance(reasons, dict) else {}
    info = {k: v for k, v in info.items() if k != NULL_REASONS}
    for k, v in metrics.items():
        f = float(metric_number(v))  # type: ignore[arg-type]  # (checked above)
        if math.isfinite(f):
            clean[k] = f
        else:
            clean[k] = None
            why = (f" (e.g. no ground truth of this kind among the {images} images scored)" if math.isnan(f)
                   else " (JSON has no infinity)")
            nulls[k] = str(reasons.get(k) or f"the evaluator returned {f}{why}")
    rec: dict[str, Any] = {"schema": METRICS_SCHEMA, "stage": ctx.stage, "model": ctx.model_name,
                           "dataset": str(ctx.cfg.dataset.get("name", "")), "images": images, "metrics": clean}
    if nulls:
        rec["null_metrics"] = nulls
    rec.update({"info": info, "skipped": skipped, "files": files})
    if extra:
        rec.update(extra)
    return rec


def write_result_files(ctx: RunContext, files: dict[str, bytes]) -> list[str]:
    """Write a plugin's result files (e.g. a WIDER prediction tree) inside the record dir only."""
    written = []
    root = ctx.record().resolve()  # (checked: not replaced by a link during the run)
    for rel, data in files.items():
        p = (ctx.record_dir / rel).resolve()
        if root not in p.parents:
            raise ZooError(f"the {ctx.model_name} plugin asked to write {rel!r}, outside the run's record dir")
        write_bytes(p, data)
        written.append(rel)
    return written


def finish_with_skips(ctx: RunContext, skipped: list[dict], listed_in: str) -> None:
    """With skips: exit non-zero unless ``allow_skips=true`` (the records were already written).
    ``listed_in``: the record file (in the record dir) this stage wrote the skips to."""
    if skipped and not bool(ctx.cfg.allow_skips):
        raise ZooError(f"{len(skipped)} input(s) were skipped (listed in {ctx.record(listed_in)}); "
                       f"pass allow_skips=true to accept a run with skips")
