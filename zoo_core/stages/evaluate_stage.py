"""``evaluate``: score saved detections (``detections=<dir>`` or the run dir's). Never imports torch."""
from __future__ import annotations

from pathlib import Path

from ..detstore import DetectionStore
from ..errors import ZooError
from .scoring import score


def run(ctx) -> dict:
    src = Path(str(ctx.cfg.detections)) if ctx.cfg.get("detections") else ctx.path("detections")
    detections = DetectionStore(src).load()
    if not detections:
        raise ZooError("no saved detections found", path=src,
                       hint="run stage=postprocess or stage=eval first, or pass detections=<dir>")
    wanted = {s.id for s in ctx.samples}
    detections = {k: v for k, v in detections.items() if k in wanted}
    missing = sorted(wanted - set(detections))
    skipped = [{"id": m, "reason": "no detections saved for this image"} for m in missing]
    record = score(ctx, detections, skipped)
    if missing and not bool(ctx.cfg.allow_skips):
        raise ZooError(f"{len(missing)} image(s) of the dataset have no saved detections "
                       f"(first: {missing[0]}); pass allow_skips=true to score the rest", path=src)
    return record
