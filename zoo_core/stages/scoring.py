"""Scoring shared by ``eval``, ``evaluate`` and ``postprocess``: call the plugin, write metrics.json."""
from __future__ import annotations

import logging

from zoo_core.api.atomic import write_json
from zoo_core.api.types import Detections
from zoo_core.stages.common import write_result_files

log = logging.getLogger("zoo")


def score(ctx, detections: dict[str, Detections], skipped: list[dict], extra: dict | None = None) -> dict:
    """Evaluate ``detections`` over the samples that have them; write metrics.json (+ plugin files)."""
    samples = [s for s in ctx.samples if s.id in detections]
    result = ctx.hooks.evaluate(cfg=ctx.cfg, detections=detections, dataset=ctx.dataset,
                                samples=samples, out_dir=ctx.run_dir)
    files = write_result_files(ctx, result.files)
    bad = {k: v for k, v in result.metrics.items() if not isinstance(v, (int, float))}
    if bad:
        from zoo_core.api.errors import PluginError

        raise PluginError(f"the {ctx.model_name} evaluate hook returned non-numeric metrics: {sorted(bad)}")
    record = {
        "model": ctx.model_name,
        "dataset": str(ctx.cfg.dataset.get("name", "")),
        "images": len(samples),
        "metrics": {k: float(v) for k, v in result.metrics.items()},
        "info": result.info,
        "skipped": skipped,
        "files": files,
    }
    if extra:
        record.update(extra)
    write_json(ctx.path("metrics.json"), record)
    print_metrics(ctx, record)
    return record


def print_metrics(ctx, record: dict) -> None:
    m = record["metrics"]
    headline = {k: v for k, v in m.items() if "/" not in k}
    lines = [f"{ctx.model_name} on {record['dataset']} ({record['images']} images"
             + (f", {len(record['skipped'])} skipped" if record["skipped"] else "") + "):"]
    for k, v in headline.items():
        lines.append(f"  {k:<12} {v:.4f}")
    for k, v in record.get("info", {}).items():
        if isinstance(v, (str, int, float)):
            lines.append(f"  ({k}: {v})")
    lines.append(f"  -> {ctx.path('metrics.json')}")
    print("\n".join(lines), flush=True)
