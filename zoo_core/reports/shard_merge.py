"""Merge a sharded evaluation: score the union of the shards' detections once, as an unsharded run.

A sweep over ``dataset.shard`` (stage ``eval`` or ``postprocess``) is merged per combination of the
other swept keys into ``<sweep dir>/merged/`` (or ``merged/<key=value,...>/``).
"""
from __future__ import annotations

import logging
from pathlib import Path

from zoo_core.reports.job_files import JobFiles
from zoo_core.reports.sweep_report import read_json, sweep_jobs

log = logging.getLogger("zoo")

MERGEABLE_STAGES = ("eval", "postprocess")


def _label(values: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def merge_shards(sweep_dir: Path, rows: list[dict], swept: list[str]) -> list[dict]:
    """Score the union of an ``eval`` sweep over ``dataset.shard``, once per combination of the other
    swept keys, into ``merged/`` (or ``merged/<key=value,...>/``). Returns one report row per merge.

    A merge needs every shard ``0..num_shards-1`` present and ok; otherwise its row is failed.
    """
    if "dataset.shard" not in swept:
        return []
    from omegaconf import OmegaConf

    jobs = {f.root.name: f for f in sweep_jobs(sweep_dir)}
    others = [k for k in swept if k != "dataset.shard"]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_label({k: r.get("@" + k) for k in others}), []).append(r)
    merged_rows = []
    for label, members in groups.items():
        cfg = OmegaConf.load(jobs[members[0]["job"]].config)
        if str(cfg.stage.name) not in MERGEABLE_STAGES:
            return []
        row = {"job": "merged" + (f"[{label}]" if label else ""),
               **{f"@{k}": members[0].get("@" + k) for k in others}, "@dataset.shard": "all"}
        n = int(cfg.dataset.get("num_shards", 1))
        shards = sorted(int(r["@dataset.shard"]) for r in members)
        bad = [r["job"] for r in members if r["status"] != "ok"]
        if bad:
            merged_rows.append({**row, "status": "failed", "error": f"not merged: shard job(s) {', '.join(bad)} failed"})
            continue
        if shards != list(range(n)):
            merged_rows.append({**row, "status": "failed",
                                "error": f"not merged: shards {shards} do not cover dataset.num_shards={n}"})
            continue
        out_dir = sweep_dir / "merged" / label if label else sweep_dir / "merged"
        try:
            record = score_union(cfg, [jobs[r["job"]] for r in members], out_dir)
        except Exception as exc:
            log.error("merging shards failed: %s", exc)
            merged_rows.append({**row, "status": "failed", "error": f"merge failed: {exc}"})
            continue
        row.update(status="ok", images=record["images"])
        row.update({f"metric:{k}": v for k, v in record["metrics"].items() if "/" not in k})
        merged_rows.append(row)
    return merged_rows


def score_union(cfg, shards: list[JobFiles], out_dir: Path) -> dict:
    """Score the detections of all ``shards`` as one unsharded run in ``out_dir``."""
    from omegaconf import open_dict

    from zoo_core.runs.context import RunContext
    from zoo_core.runs.detstore import DetectionStore
    from zoo_core.plugins.manager import ZooPluginManager
    from zoo_core.stages.scoring import score

    with open_dict(cfg):
        cfg.dataset.shard = 0
        cfg.dataset.num_shards = 1
    detections: dict = {}
    skipped: list = []
    for f in shards:
        part = DetectionStore(f.detections).load()
        overlap = set(part) & set(detections)
        if overlap:
            raise ValueError(f"shards overlap on {len(overlap)} image(s), e.g. {sorted(overlap)[0]}")
        detections.update(part)
        skipped += (read_json(f.metrics) or {}).get("skipped", [])
    ctx = RunContext(cfg, ZooPluginManager(), out_dir)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    return score(ctx, detections, skipped, {"merged_from": [str(f.root) for f in shards]})
