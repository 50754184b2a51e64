"""``evaluate``: score saved detections (``detections=<dir>`` or the run dir's). Never imports torch.

The detections' ``state.json`` (written by ``eval`` / ``postprocess``) says what produced them.
Detections of another model, or of weights / a model file other than the ones given on the
command line, are refused. Other model or dataset config differences are allowed (re-scoring saved
detections under other evaluation settings, e.g. ``model.iou_thresh``, is legitimate) but warned
about on stderr and listed in ``metrics.json`` under ``provenance``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from zoo_core.api.errors import ZooError
from zoo_core.runs.detstore import DetectionStore
from zoo_core.runs.fingerprint import sha256_file
from zoo_core.stages.scoring import score

log = logging.getLogger("zoo")

#: Dataset keys that only select images; differing values are not worth a warning.
_SELECTION_KEYS = ("limit", "shard", "num_shards")


def _diff(old: dict, new: dict, prefix: str, ignore=()) -> list[str]:
    keys = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    return [f"{prefix}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys]


def check_provenance(ctx, src: Path) -> dict:
    """Compare the detections' ``state.json`` with this run; raise on a mismatch that makes them stale."""
    state_path = src / "state.json"
    if not state_path.is_file():
        msg = f"{src}: no state.json, so where these detections came from is unknown"
        log.warning(msg)
        return {"state": None, "warnings": [msg]}
    try:
        state = json.loads(state_path.read_text())
        fp = state["fingerprint"]
    except (ValueError, KeyError, TypeError):
        raise ZooError("unreadable detections state file", path=state_path) from None
    if state.get("model_name") != ctx.model_name:
        raise ZooError(f"these detections were made by model {state.get('model_name')!r}, not {ctx.model_name!r}",
                       path=state_path)
    w = ctx.weights()
    if w and fp.get("weights_sha256") != sha256_file(w):
        raise ZooError(f"these detections were not made with weights={w} (sha256 differs)", path=state_path,
                       hint="re-run stage=eval with these weights, or drop weights= to score them as they are")
    mf = ctx.cfg.get("model_file")
    if mf and Path(str(mf)).is_file() and fp.get("model_file_sha256") != sha256_file(str(mf)):
        raise ZooError(f"these detections were not made with model_file={mf} (sha256 differs)", path=state_path)
    cfg = ctx.resolved_config()
    warnings = _diff(state.get("model_config") or {}, cfg["model"], "model")
    warnings += _diff(state.get("dataset_config") or {}, cfg["dataset"], "dataset", _SELECTION_KEYS)
    if not state.get("complete", False):
        warnings.insert(0, "the run that wrote these detections did not finish")
    if warnings:
        log.warning("scoring detections from %s made under a different setup:\n  %s", src, "\n  ".join(warnings))
    return {"state": str(state_path), "fingerprint": fp, "warnings": warnings}


def run(ctx) -> dict:
    src = Path(str(ctx.cfg.detections)) if ctx.cfg.get("detections") else ctx.path("detections")
    detections = DetectionStore(src).load()
    if not detections:
        raise ZooError("no saved detections found", path=src,
                       hint="run stage=postprocess or stage=eval first, or pass detections=<dir>")
    provenance = check_provenance(ctx, src)
    wanted = {s.id for s in ctx.samples}
    detections = {k: v for k, v in detections.items() if k in wanted}
    missing = sorted(wanted - set(detections))
    if missing and not bool(ctx.cfg.allow_skips):
        raise ZooError(f"{len(missing)} image(s) of the dataset have no saved detections "
                       f"(first: {missing[0]}); pass allow_skips=true to score the rest", path=src)
    skipped = [{"id": m, "reason": "no detections saved for this image"} for m in missing]
    return score(ctx, detections, skipped, {"provenance": provenance})
