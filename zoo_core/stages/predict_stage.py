"""``predict``: images or a folder in (``input=``) -> ``predictions/<stem>.json`` + ``<stem>.jpg`` with boxes.

Detections below ``model.score_threshold`` (when the model config has one) are drawn/listed only
if they pass it; the JSON holds boxes in original-image pixels.
"""
from __future__ import annotations

import json

import numpy as np

from zoo_core.api.atomic import write_bytes, write_text
from zoo_core.reports.draw import draw_detections
from zoo_core.api.errors import ConfigError
from zoo_core.api.imaging import list_images, read_image
from zoo_core.pipeline.runner import run_stream
from zoo_core.api.types import Detections, Sample
from zoo_core.stages.common import finish_with_skips, make_backend


def _filter(det: Detections, thr: float | None) -> Detections:
    if thr is None:
        return det
    keep = det.scores >= thr
    return Detections(det.boxes[keep], det.scores[keep], det.labels[keep], {k: v[keep] for k, v in det.extras.items()})


def run(ctx) -> dict:
    import cv2

    cfg = ctx.cfg
    if not cfg.get("input"):
        raise ConfigError("stage=predict needs input=<image file or folder>")
    paths = list_images(str(cfg.input))
    samples = [Sample(p.stem, p, None) for p in paths]
    out_dir = ctx.path("predictions")
    thr = cfg.model.get("score_threshold")
    names = list(cfg.model.get("class_names") or []) or None
    written = []

    def on_result(sample, det, _outs):
        det = _filter(det, None if thr is None else float(thr))
        write_text(out_dir / f"{sample.id}.json",
                   json.dumps({"image": str(sample.path), **det.to_json()}) + "\n")
        img = draw_detections(read_image(sample.path), det, names)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        write_bytes(out_dir / f"{sample.id}.jpg", np.asarray(buf).tobytes())
        written.append(sample.id)
        print(f"{sample.path}: {len(det)} detections -> {out_dir / (sample.id + '.jpg')}")

    backend = make_backend(ctx)
    try:
        stats = run_stream(ctx, backend, samples, on_result, progress=False)
    finally:
        backend.close()
    finish_with_skips(ctx, stats.skipped)
    return {"images": len(written), "predictions_dir": str(out_dir), "skipped": stats.skipped}
