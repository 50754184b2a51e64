"""``eval``: dataset -> preprocess -> backend -> postprocess -> evaluate, streamed in one process.

No intermediate files unless ``save_outputs=true`` (then ``outputs/<stem>_<i>.bin`` are written in
ais_bench layout). Detections are appended to ``detections/`` as images finish, so ``resume=true``
continues a killed run and scores each image exactly once.
"""
from __future__ import annotations

import json
import logging

from ..aisbench import output_path, write_bin
from ..atomic import write_json
from ..detstore import DetectionStore
from ..errors import ZooError
from ..fingerprint import config_hash, sha256_file
from ..runner import WorkerPool, run_stream
from .common import finish_with_skips, make_backend, write_run_record
from .scoring import score

log = logging.getLogger("zoo")


def resume_fingerprint(ctx, backend) -> dict:
    """What must not change between a run and its resumption."""
    desc = backend.describe()
    model_file = desc.get("model_file")
    w = ctx.weights()
    return {
        "model": config_hash(ctx.cfg.model),
        "dataset": config_hash(ctx.cfg.dataset),
        "backend": config_hash(ctx.cfg.backend),
        "weights_sha256": sha256_file(w) if w else None,
        "model_file_sha256": sha256_file(model_file) if model_file else None,
    }


def open_store(ctx, backend) -> tuple[DetectionStore, dict]:
    store = DetectionStore(ctx.path("detections"))
    state_path = ctx.path("detections", "state.json")
    fp = resume_fingerprint(ctx, backend)
    done = {}
    if bool(ctx.cfg.resume) and state_path.is_file():
        old = json.loads(state_path.read_text())
        if old != fp:
            changed = sorted(k for k in fp if fp.get(k) != old.get(k))
            raise ZooError(f"cannot resume: {', '.join(changed)} changed since the interrupted run",
                           path=state_path, hint="run again without resume=true to start over")
        done = store.load()
        log.info("resuming: %d images already done", len(done))
    else:
        store.reset()
    write_json(state_path, fp)
    return store, done


def run(ctx) -> dict:
    cfg = ctx.cfg
    samples = ctx.samples
    workers = int(cfg.num_workers) if len(samples) > 1 else 0
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
