"""Scoring shared by ``eval``, ``evaluate`` and ``postprocess``: call the plugin, write metrics.json."""
from __future__ import annotations

from typing import Any

from zoo_core.api.atomic import write_json
from zoo_core.api.types import Detections, Sample
from zoo_core.runs.context import RunContext
from zoo_core.runs.records import metrics_record, write_result_files


def score(ctx: RunContext, detections: dict[str, Detections], skipped: list[dict],
          extra: dict[str, Any] | None = None, samples: list[Sample] | None = None) -> dict[str, Any]:
    """Evaluate ``detections`` over ``samples`` (default: the run's samples that have detections; a sample
    without an entry counts as "no detections"); write metrics.json (+ plugin files)."""
    if samples is None:
        samples = [s for s in ctx.samples if s.id in detections]
    result = ctx.hooks.evaluate(cfg=ctx.cfg, detections=detections, dataset=ctx.dataset,
                                samples=samples, out_dir=ctx.record_dir)
    files = write_result_files(ctx, result.files)
    record = metrics_record(ctx, result.metrics, len(samples), result.info, skipped, files, extra)
    write_json(ctx.record("metrics.json"), record)
    return record
