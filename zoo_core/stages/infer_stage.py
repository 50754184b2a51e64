"""``infer``: ``inputs/*.bin`` (ours, or a seed ``prep_dataset``) -> ``outputs/<stem>_<i>.bin`` + perf.json."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from zoo_core.api.aisbench import output_path, read_bin, write_bin
from zoo_core.api.atomic import write_json
from zoo_core.api.errors import InputError, ZooError
from zoo_core.pipeline.runner import Batcher, Prepared, RunStats
from zoo_core.api.types import Sample, TensorSpec
from zoo_core.runs.fingerprint import config_hash, sha256_file
from zoo_core.stages.common import (artifact_fingerprint, finish_with_skips, make_backend, mark_complete, read_meta_jsonl,
                     start_resumable, write_run_record)


def list_inputs(ctx, inputs_dir: Path) -> list[tuple[str, dict[str, Path], dict[str, TensorSpec], dict]]:
    """(id, {input name: file}, {input name: spec}, meta) for every image in ``inputs_dir``."""
    records = read_meta_jsonl(inputs_dir / "meta.jsonl")
    specs = {s.name: s for s in ctx.hooks.input_spec(cfg=ctx.cfg)}
    multi = len(specs) > 1
    items = []
    if records:
        for sid, rec in records.items():
            files = {n: (inputs_dir / n / f"{sid}.bin") if multi else inputs_dir / f"{sid}.bin" for n in rec["inputs"]}
            sp = {n: TensorSpec(n, tuple(v["shape"]), v["dtype"]) for n, v in rec["inputs"].items()}
            items.append((sid, files, sp, rec["meta"]))
        return items
    name = next(iter(specs))
    if multi:
        raise ZooError("no meta.jsonl: a model with several inputs needs the preprocess stage's layout", path=inputs_dir)
    for p in sorted(inputs_dir.glob("*.bin")):
        items.append((p.stem, {name: p}, specs, {"id": p.stem}))
    return items


def run(ctx) -> dict:
    cfg = ctx.cfg
    inputs_dir = Path(str(cfg.inputs_dir)) if cfg.get("inputs_dir") else ctx.path("inputs")
    if not inputs_dir.is_dir():
        raise ZooError("inputs directory not found", path=inputs_dir, hint="run stage=preprocess first or pass inputs_dir=")
    items = list_inputs(ctx, inputs_dir)
    if not items:
        raise ZooError("no input .bin files found", path=inputs_dir)
    out_dir = ctx.path("outputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = make_backend(ctx)
    meta_file = inputs_dir / "meta.jsonl"
    fingerprint = artifact_fingerprint(ctx, backend.describe().get("model_file"), backend=config_hash(cfg.backend),
                                       inputs_meta_sha256=sha256_file(meta_file) if meta_file.is_file() else None)
    resuming = start_resumable(ctx, out_dir / "state.json", fingerprint,
                               lambda: [p.unlink() for p in out_dir.glob("*_*.bin")])
    bs = int(cfg.batch_size)
    batcher = Batcher(min(bs, backend.fixed_batch) if backend.fixed_batch else bs, backend.fixed_batch)
    stats = RunStats()
    skipped = []
    t_start = time.perf_counter()

    def run_batch(batch):
        t0 = time.perf_counter()
        outs = backend.infer(batch)
        dt = time.perf_counter() - t0
        stats.device_s += dt
        stats.device_calls_ms.append(dt * 1000)
        stats.batches += 1
        for j, sid in enumerate(batch.ids[: batch.n_valid]):
            for i, o in enumerate(outs):
                write_bin(output_path(out_dir, sid, i), np.asarray(o[j]))
            stats.images += 1

    try:
        for sid, files, specs, meta in items:
            if resuming:
                k = len(ctx.hooks.output_spec(cfg=cfg, meta=meta))
                if all(output_path(out_dir, sid, i).is_file() for i in range(k)):
                    continue
            try:
                arrays = {n: read_bin(p, specs[n], allow_fp16=False) for n, p in files.items()}
            except InputError as exc:
                if not ctx.skip_errors:
                    raise
                skipped.append({"id": sid, "reason": str(exc)})
                continue
            batch = batcher.add(Prepared(Sample(sid, files[next(iter(files))]), arrays, meta))
            if batch is not None:
                run_batch(batch)
        for batch in batcher.flush():
            run_batch(batch)
        mark_complete(out_dir / "state.json")
        describe = backend.describe()
    finally:
        backend.close()
    stats.wall_s = time.perf_counter() - t_start
    perf = {"stage": "infer", **describe, **stats.summary(int(cfg.batch_size))}
    write_json(ctx.path("perf.json"), perf)
    write_run_record(ctx, {"backend": describe})
    print(f"inferred {stats.images} images -> {out_dir} ({perf['throughput_img_s']} img/s)")
    finish_with_skips(ctx, skipped)
    return perf
