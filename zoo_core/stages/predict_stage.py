"""``predict``: images or a folder in (``input=``) -> ``<root>/predict/<file name>.json`` + ``.jpg`` drawn.

Outputs are named after the whole input file name (``x.jpg`` -> ``x.jpg.json`` and ``x.jpg.jpg``), so
``x.jpg`` and ``x.png`` never overwrite each other. ``stage.score_threshold`` (default: the model's
``predict_threshold``) filters what is listed and drawn; boxes carry the model's ``class_names``; the
JSON holds boxes in original-image pixels.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.aisbench import safe_stem
from zoo_core.api.atomic import write_bytes, write_text
from zoo_core.api.errors import ConfigError, InputError
from zoo_core.api.imaging import IMAGE_EXTENSIONS, list_images, read_image
from zoo_core.api.types import Sample
from zoo_core.pipeline.sinks import CallbackSink
from zoo_core.pipeline.sources import ImageSource
from zoo_core.pipeline.stream import Result, Stream
from zoo_core.pipeline.workers import WorkerPool
from zoo_core.reports.draw import draw_detections, filter_detections, predict_options
from zoo_core.runs.context import RunContext
from zoo_core.runs.records import finish_with_skips
from zoo_core.stages.open_backend import open_backend

log = logging.getLogger("zoo")


def predict_samples(given: Path) -> list[Sample]:
    """The images of ``input=`` (a file or the image files of a folder), their whole file name as id.

    A name that cannot name the output files (a newline or other control character...) is refused with
    one line naming it, as ``eval`` refuses such an image stem; the other files of a folder (not an image
    by their extension, not a regular file) are left out and logged, never silently. A folder without
    any image is an :class:`InputError` naming it."""
    files = list_images(given)
    for p in files:
        safe_stem(p.name, p.parent, "image file name")
    if given.is_dir():
        chosen = set(files)
        others = sorted(q.name for q in given.iterdir() if q not in chosen)
        if others:
            log.info("predict: %d file(s) of %s are left out, not image files by their extension (%s) or not "
                     "regular files: %s", len(others), given, "/".join(IMAGE_EXTENSIONS),
                     ", ".join(repr(n) for n in others[:10]) + (" ..." if len(others) > 10 else ""))
        if not files:  # before: exit 0 with no output and no word
            raise InputError(f"no images found (looked for: {'/'.join(IMAGE_EXTENSIONS)}, any case)", path=given)
    return [Sample(p.name, p, None) for p in files]


def run(ctx: RunContext) -> dict[str, Any]:
    import cv2

    cfg = ctx.cfg
    if not cfg.get("input"):
        raise ConfigError("stage=predict needs input=<image file or folder>")
    samples = predict_samples(Path(str(cfg.input)))
    out_dir = ctx.record_dir
    opts = predict_options(cfg)
    written: list[dict] = []

    def draw(r: Result) -> None:
        assert r.detections is not None
        det = filter_detections(r.detections, opts.score_threshold)
        write_text(ctx.record(f"{r.sample.id}.json"), json.dumps({"image": str(r.sample.path), **det.to_json()}) + "\n")
        _ok, buf = cv2.imencode(".jpg", draw_detections(read_image(r.sample.path), det, opts.class_names),
                               [cv2.IMWRITE_JPEG_QUALITY, 92])
        write_bytes(ctx.record(f"{r.sample.id}.jpg"), np.asarray(buf).tobytes())
        written.append({"image": str(r.sample.path), "detections": len(det),
                        "picture": str(out_dir / f"{r.sample.id}.jpg")})

    hooks = ctx.hooks
    with WorkerPool(hooks, cfg, int(cfg.num_workers) if len(samples) > 1 else 0) as pool:
        backend = open_backend(ctx)
        try:
            stats = Stream(ImageSource(samples, pool), [CallbackSink(draw)], backend=backend,
                           decode=lambda outs, metas: hooks.postprocess(cfg=cfg, outputs=outs, metas=metas),
                           batch_size=int(cfg.batch_size), skip_errors=ctx.skip_errors,
                           expect=lambda meta: hooks.output_spec(cfg=cfg, meta=meta)).run()
            describe = backend.describe()
        finally:
            backend.close()
    result = {"stage": "predict", "images": len(written), "predictions_dir": str(out_dir),
              "threshold": opts.score_threshold, "predictions": written, "skipped": stats.skipped, "backend": describe}
    if stats.skipped:
        write_text(ctx.record("skipped.json"), json.dumps(stats.skipped, indent=2) + "\n")
    finish_with_skips(ctx, stats.skipped, "skipped.json")
    return result
