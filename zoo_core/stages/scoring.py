"""Scoring shared by ``eval``, ``evaluate`` and ``postprocess``: call the plugin, compare with the plugin's
references, write metrics.json, and with ``gate=true`` fail a run that does not reproduce them."""
from __future__ import annotations

import logging
from typing import Any

from zoo_core.api.atomic import write_json
from zoo_core.api.errors import ZooError
from zoo_core.api.types import Detections, EvalResult, Sample
from zoo_core.runs.context import RunContext
from zoo_core.runs.records import metrics_record, write_result_files
from zoo_core.runs.references import gate_failures, judge

log = logging.getLogger("zoo")


class GateFailed(ZooError):
    """``gate=true`` and the run does not reproduce a declared reference (metrics.json was written)."""

    exit_code = 1
    #: One line per reference not reproduced (or why none could be checked).
    failures: tuple[str, ...] = ()


def score(ctx: RunContext, detections: dict[str, Detections], skipped: list[dict],
          extra: dict[str, Any] | None = None, samples: list[Sample] | None = None,
          made_by: str | None = None) -> dict[str, Any]:
    """Evaluate ``detections`` over ``samples`` (default: the run's samples that have detections; a sample
    without an entry counts as "no detections"); write metrics.json (+ plugin files). ``made_by``: the
    backend that made them, when recorded and not this run's (see :func:`~zoo_core.runs.references.judge`).

    The record gets ``reference`` / ``reference_mismatches`` (the plugin's declared references judged
    against this run's protocol) and, with ``bootstrap=N``, ``ci95`` and ``bootstrap``. With ``gate=true``,
    raises :class:`GateFailed` (exit 1) after writing it when a matched reference is not reproduced or
    none matches; a single shard of several is not gated (the sweep's merged scoring is).
    """
    if samples is None:
        samples = [s for s in ctx.samples if s.id in detections]
    result = ctx.hooks.evaluate(cfg=ctx.cfg, detections=detections, dataset=ctx.dataset,
                                samples=samples, out_dir=ctx.record_dir)
    files = write_result_files(ctx, result.files)
    record = metrics_record(ctx, result.metrics, len(samples), result.info, skipped, files, extra)
    record.update(reference_fields(ctx, result, record["metrics"], made_by, len(samples)))
    write_json(ctx.record("metrics.json"), record)
    if bool(ctx.cfg.get("gate", False)):
        if int(ctx.cfg.dataset.get("num_shards", 1) or 1) > 1:
            log.info("gate: this run scored one shard; the gate applies to the merged shards (merged/metrics.json)")
        else:
            check_gate(ctx, record)
    return record


def reference_fields(ctx: RunContext, result: EvalResult, metrics: dict[str, float | None],
                     made_by: str | None = None, images: int | None = None) -> dict[str, Any]:
    """``ci95`` / ``bootstrap`` / ``reference`` / ``reference_mismatches`` entries of metrics.json (``images``:
    the number scored, for the references that name theirs)."""
    out: dict[str, Any] = {}
    from zoo_core.datasets import bootstrap_request

    n, seed = bootstrap_request(ctx.cfg)
    ci95 = {k: [None if v is None else float(v) for v in pair] for k, pair in (result.ci95 or {}).items()}
    if n:
        boot = dict(result.info.pop("bootstrap", None) or {})
        boot.setdefault("n", n)
        boot.setdefault("seed", seed)
        if not ci95:
            boot.setdefault("note", f"the evaluator ({ctx.hooks.provider('evaluate', ctx.cfg)}) computed no bootstrap "
                            "intervals for this dataset")
            log.warning("bootstrap=%d: %s", n, boot["note"])
        out["bootstrap"] = boot
        out["ci95"] = ci95
    verdicts, mismatches = judge(ctx.cfg, ctx.hooks.references(cfg=ctx.cfg), metrics, ci95, made_by, images)
    if verdicts:
        out["reference"] = verdicts
    if mismatches:
        out["reference_mismatches"] = mismatches
    return out


def check_gate(ctx: RunContext, record: dict[str, Any]) -> None:
    """Raise :class:`GateFailed` unless every matched reference is reproduced (and at least one matched)."""
    from zoo_core.reports.terminal import format_summary

    verdicts = record.get("reference") or {}
    failures = gate_failures(verdicts)
    if not verdicts:
        failures = [f"no reference of model {ctx.model_name} matches this run's protocol, so there is nothing "
                    "to gate on" + (" (see the protocol mismatches below)" if record.get("reference_mismatches")
                                    else "")]
    if failures:
        summary = "\n".join(format_summary(ctx.model_name, ctx.stage, ctx.record_dir, record))
        exc = GateFailed("gate: the run does not reproduce its reference:\n  " + "\n  ".join(failures)
                         + "\n" + summary)
        exc.failures = tuple(failures)
        raise exc
