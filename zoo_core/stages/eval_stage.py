"""``eval``: dataset -> preprocess -> backend -> postprocess -> evaluate, streamed in one process.

No intermediate files unless ``save_outputs=true`` (then ``outputs/<stem>_<i>.bin`` in ais_bench
layout, listed with sizes and CRC-32 in ``outputs/index.jsonl``). Detections are appended to
``detections/`` as images finish, so ``resume=true`` continues a killed run and scores each image
exactly once; an image counts as done only when its detections and (with ``save_outputs``) its
verified output files are there, and its image file has the size and mtime recorded with its detections
(an image rewritten since is redone). Without ``resume`` the stage clears what it owns first.
``stage.score=false`` stops there: ``detections/`` and ``perf.json`` are kept for a later
``stage=evaluate detections=<run>/detections`` (a throughput run pays no scoring).
"""
from __future__ import annotations

import logging
from typing import Any

from zoo_core.api.atomic import write_json
from zoo_core.api.errors import ConfigError
from zoo_core.datasets import bootstrap_request
from zoo_core.pipeline.sinks import DetectionSink, OutputBinSink
from zoo_core.pipeline.sources import ImageSource
from zoo_core.pipeline.stream import Sink, Stream
from zoo_core.pipeline.workers import WorkerPool
from zoo_core.reports.progress import Progress
from zoo_core.runs.context import RunContext
from zoo_core.runs.detstore import DetectionStore, class_count
from zoo_core.runs.fingerprint import backend_section, config_hash
from zoo_core.runs.layout import clear_dir
from zoo_core.runs.records import finish_with_skips, write_perf
from zoo_core.runs.resume import (
    Ledger,
    artifact_fingerprint,
    dump_fingerprint,
    file_identity,
    mark_complete,
    refuse_changed_quantize,
    start_resumable,
)
from zoo_core.stages.open_backend import open_backend
from zoo_core.stages.scoring import score

log = logging.getLogger("zoo")


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    bootstrap_request(cfg)  # a bad bootstrap= fails before the images run
    scoring = bool(cfg.stage.get("score", True))
    if not scoring and bool(cfg.get("gate", False)):
        raise ConfigError("gate=true compares the run's scores with the references: it cannot run with "
                          "stage.score=false (drop one of them)")
    # the workers start first, so their interpreters come up while the dataset is listed and the backend
    # opens (first input 0.34-0.44 s -> 0.01-0.11 s after the stream starts, 480 images); one image needs none
    with WorkerPool(ctx.hooks, cfg, 0 if _one_image(cfg) else int(cfg.num_workers)) as pool:
        samples = ctx.samples
        refuse_changed_quantize(ctx, ctx.path("detections", "state.json"))
        backend = open_backend(ctx)
        try:
            stats, done, describe, store = _stream(ctx, backend, pool)
        finally:
            backend.close()
    wanted = {s.id for s in samples}
    detections = {k: v for k, v in store.load().items() if k in wanted}
    perf = {**describe, **stats.summary(int(cfg.batch_size)), "resumed_images": len(done)}
    write_perf(ctx, perf)
    if not scoring:
        record = {"stage": "eval", "scored": False, "images": len(detections),
                  "detections_dir": str(ctx.path("detections")), "skipped": stats.skipped,
                  "perf": {k: perf[k] for k in ("throughput_img_s", "wall_s")}}
        write_json(ctx.record("eval.json"), record)
        finish_with_skips(ctx, stats.skipped, "eval.json")
        return {**record, "backend": describe}
    record = score(ctx, detections, stats.skipped,
                   {"perf": {k: perf[k] for k in ("throughput_img_s", "wall_s")}})
    finish_with_skips(ctx, stats.skipped, "metrics.json")
    return {**record, "backend": describe}


def _one_image(cfg: Any) -> bool:
    """``dataset.limit`` asks for at most one image (decided before the dataset is listed)."""
    try:
        limit = cfg.dataset.get("limit")
        return limit is not None and int(limit) <= 1
    except (TypeError, ValueError):
        return False  # a bad limit is reported when the dataset is listed


def _stream(ctx: RunContext, backend: Any, pool: WorkerPool) -> tuple:
    cfg = ctx.cfg
    st = cfg.stage
    save = bool(cfg.save_outputs)
    store = DetectionStore(ctx.path("detections"), flush_every=int(st.get("flush_every", 64) or 64),
                           flush_seconds=float(st.get("flush_seconds", 5.0)), num_classes=class_count(cfg))
    out_dir = ctx.path("outputs")
    ledger = Ledger(out_dir / "index.jsonl")
    describe = backend.describe()
    section = backend_section(cfg.backend, describe)
    fingerprint = artifact_fingerprint(ctx, describe.get("model_file"), backend=config_hash(section),
                                       save_outputs=save, **dump_fingerprint(backend))

    def reset() -> None:
        store.reset()
        if save:
            clear_dir(out_dir)

    done: set[str] = set()
    if start_resumable(ctx, ctx.path("detections", "state.json"), fingerprint, reset, backend=str(cfg.backend.name),
                       backend_config=section):
        store.drop_unverified()  # a damaged or changed chunk is removed: its images are redone
        paths = {s.id: s.path for s in ctx.samples}
        changed = store.drop_changed_images(paths)  # an image rewritten since: its chunk is removed and redone
        if changed:
            log.warning("resume: %d image(s) changed since the interrupted run made their detections (first: %s): "
                        "the detections chunks holding them are removed, and their images redone",
                        len(changed), paths[changed[0]])
        done = set(store.load())
        if save:
            done &= ledger.verified()
        log.info("resuming: %d images already done", len(done))
    todo = [s for s in ctx.samples if s.id not in done]
    store.sources = {s.id: file_identity(s.path) for s in todo}  # before any is read: a later change shows
    sinks: list[Sink] = [OutputBinSink(out_dir, ledger)] if save else []
    sinks.append(DetectionSink(store))
    hooks = ctx.hooks
    stats = Stream(ImageSource(todo, pool), sinks, backend=backend,
                   decode=lambda outs, metas: hooks.postprocess(cfg=cfg, outputs=outs, metas=metas),
                   batch_size=int(cfg.batch_size), skip_errors=ctx.skip_errors,
                           expect=lambda meta: hooks.output_spec(cfg=cfg, meta=meta), keep_outputs=save,
                   progress=Progress(len(todo), cfg.get("progress"), "eval")).run()
    mark_complete(ctx.path("detections", "state.json"), pinned=store.pinned)
    return stats, done, backend.describe(), store
