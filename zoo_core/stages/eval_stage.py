"""``eval``: dataset -> preprocess -> backend -> postprocess -> evaluate, streamed in one process.

No intermediate files unless ``save_outputs=true`` (then ``outputs/<stem>_<i>.bin`` are written in
ais_bench layout). Detections are appended to ``detections/`` as images finish, so ``resume=true``
continues a killed run and scores each image exactly once.
"""
from __future__ import annotations

import logging

from zoo_core.api.aisbench import output_path, write_bin
from zoo_core.api.atomic import write_json
from zoo_core.runs.detstore import DetectionStore
from zoo_core.runs.fingerprint import config_hash
from zoo_core.pipeline.runner import WorkerPool, run_stream
from zoo_core.stages.common import (artifact_fingerprint, discard_stale_results, finish_with_skips, make_backend, mark_complete,
                     start_resumable, write_run_record)
from zoo_core.stages.scoring import score

log = logging.getLogger("zoo")


def resume_fingerprint(ctx, backend) -> dict:
    """What must not change between a run and its resumption: model, dataset and backend config,
    weights and model file (by sha256)."""
    return artifact_fingerprint(ctx, backend.describe().get("model_file"), backend=config_hash(ctx.cfg.backend))


def open_store(ctx, backend) -> tuple[DetectionStore, dict]:
    """The run dir's detection store and, when resuming, the detections already in it."""
    st = ctx.cfg.stage
    store = DetectionStore(ctx.path("detections"), flush_every=int(st.get("flush_every", 64) or 64),
                           flush_seconds=float(st.get("flush_seconds", 5.0)))
    done = {}
    if start_resumable(ctx, ctx.path("detections", "state.json"), resume_fingerprint(ctx, backend), store.reset):
        done = store.load()
        log.info("resuming: %d images already done", len(done))
    return store, done


def run(ctx) -> dict:
    cfg = ctx.cfg
    samples = ctx.samples
    workers = int(cfg.num_workers) if len(samples) > 1 else 0
    discard_stale_results(ctx)
    with WorkerPool(ctx.hooks, cfg, workers) as pool:
        backend = make_backend(ctx)
        return _run(ctx, backend, pool)


def _run(ctx, backend, pool) -> dict:
    cfg = ctx.cfg
    samples = ctx.samples
    try:
        store, done = open_store(ctx, backend)
        wanted = {s.id for s in samples}
        todo = [s for s in samples if s.id not in done]
        save = bool(cfg.save_outputs)
        out_dir = ctx.path("outputs")

        def on_result(sample, det, outs):
            store.add(sample.id, det)
            if save and outs is not None:
                for i, o in enumerate(outs):
                    write_bin(output_path(out_dir, sample.id, i), o)

        stats = run_stream(ctx, backend, todo, on_result, keep_outputs=save, progress=cfg.get("progress"), pool=pool)
        store.flush()
        mark_complete(ctx.path("detections", "state.json"))
        describe = backend.describe()
    finally:
        backend.close()
    detections = {k: v for k, v in store.load().items() if k in wanted}
    perf = {"stage": "eval", **describe, **stats.summary(int(cfg.batch_size)), "resumed_images": len(done)}
    write_json(ctx.path("perf.json"), perf)
    write_run_record(ctx, {"backend": describe})
    record = score(ctx, detections, stats.skipped, {"perf": {k: perf[k] for k in ("throughput_img_s", "wall_s")}})
    finish_with_skips(ctx, stats.skipped)
    return record
