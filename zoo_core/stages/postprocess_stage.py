"""``postprocess``: raw outputs (ours or an ais_bench / legacy benchmark dump) -> detections.

Outputs are matched to dataset images by file stem (``<stem>_<i>.bin``, ``_0..`` or legacy ``_1..``),
never by position. Metas come from ``inputs/meta.jsonl`` when present, otherwise they are recomputed
by preprocessing the image (what the seed scripts did). Writes ``detections/`` and, when the
dataset has ground truth, scores it like ``evaluate``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from zoo_core.api.aisbench import DumpDir
from zoo_core.runs.detstore import DetectionStore
from zoo_core.api.errors import InputError, ZooError
from zoo_core.pipeline.runner import prepare_one
from zoo_core.stages.common import (artifact_fingerprint, discard_stale_results, finish_with_skips, mark_complete, read_meta_jsonl,
                     start_resumable, write_run_record)
from zoo_core.stages.scoring import score


def run(ctx) -> dict:
    cfg = ctx.cfg
    src = Path(str(cfg.outputs_dir)) if cfg.get("outputs_dir") else ctx.path("outputs")
    inputs_dir = Path(str(cfg.inputs_dir)) if cfg.get("inputs_dir") else ctx.path("inputs")
    metas = {k: v["meta"] for k, v in read_meta_jsonl(inputs_dir / "meta.jsonl").items()}
    samples = ctx.samples
    dump = None
    store = DetectionStore(ctx.path("detections"))
    discard_stale_results(ctx)
    if start_resumable(ctx, ctx.path("detections", "state.json"), artifact_fingerprint(ctx, outputs_dir=str(src)),
                       store.reset):
        store.reset()  # postprocess is fast: it always recomputes every image
    skipped = []
    bs = int(cfg.batch_size)
    pending: list[tuple] = []
    t0 = time.perf_counter()
    n = 0

    def flush():
        nonlocal n
        if not pending:
            return
        outs = [np.stack([p[1][k] for p in pending]) for k in range(len(pending[0][1]))]
        dets = ctx.hooks.postprocess(cfg=cfg, outputs=outs, metas=[p[2] for p in pending])
        if len(dets) != len(pending):
            raise ZooError(f"the {ctx.model_name} postprocess returned {len(dets)} results for {len(pending)} images")
        for (sid, _o, _m), d in zip(pending, dets):
            store.add(sid, d)
        n += len(pending)
        pending.clear()

    for s in samples:
        try:
            meta = metas.get(s.id)
            if meta is None:
                prep = prepare_one(ctx.hooks, cfg, s)
                if prep.error:
                    raise InputError(prep.error)
                meta = prep.meta
            specs = ctx.hooks.output_spec(cfg=cfg, meta=meta)
            if dump is None:
                dump = DumpDir(src, len(specs))
            outputs = dump.read(s.id, specs)
        except InputError as exc:
            if not ctx.skip_errors:
                raise
            skipped.append({"id": s.id, "path": str(s.path), "reason": str(exc)})
            continue
        if pending and [o.shape for o in pending[0][1]] != [o.shape for o in outputs]:
            flush()  # variable-size models: a batch holds one output shape
        pending.append((s.id, outputs, meta))
        if len(pending) >= bs:
            flush()
    flush()
    store.flush()
    mark_complete(ctx.path("detections", "state.json"))
    if n == 0:
        raise ZooError("no image of the dataset had output files", path=src)
    print(f"postprocessed {n} images from {src} in {time.perf_counter() - t0:.1f}s"
          + (f" (output suffixes start at _{dump.base})" if dump else ""))
    write_run_record(ctx, {"outputs_dir": str(src)})
    record = score(ctx, store.load(), skipped)
    finish_with_skips(ctx, skipped)
    return record
