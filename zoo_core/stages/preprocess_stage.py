"""``preprocess``: dataset images -> ``inputs/<stem>.bin`` (ais_bench raw layout) + ``inputs/meta.jsonl``.

One input per model: ``inputs/<stem>.bin``; several: ``inputs/<input name>/<stem>.bin``. Each
``.bin`` is written atomically before its ``meta.jsonl`` line, so after a kill every listed image
is complete and ``resume=true`` skips exactly those. ``inputs/state.json`` holds the model and dataset
config fingerprint: resuming under a different one is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from zoo_core.api.aisbench import write_bin
from zoo_core.api.atomic import write_json
from zoo_core.pipeline.runner import WorkerPool, iter_prepared
from zoo_core.api.errors import InputError
from zoo_core.stages.common import (artifact_fingerprint, finish_with_skips, mark_complete, read_meta_jsonl,
                     start_resumable, write_run_record)


def input_file(inputs_dir: Path, name: str, stem: str, multi: bool) -> Path:
    return (inputs_dir / name / f"{stem}.bin") if multi else (inputs_dir / f"{stem}.bin")


def drop_torn_tail(path: Path) -> None:
    """Cut a killed run's incomplete last line off ``meta.jsonl`` so appended lines stay whole."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def run(ctx) -> dict:
    cfg = ctx.cfg
    inputs_dir = ctx.path("inputs")
    inputs_dir.mkdir(parents=True, exist_ok=True)
    meta_path = inputs_dir / "meta.jsonl"
    state_path = inputs_dir / "state.json"

    def reset():
        meta_path.unlink(missing_ok=True)
        (inputs_dir / "skipped.json").unlink(missing_ok=True)

    resuming = start_resumable(ctx, state_path, artifact_fingerprint(ctx), reset)
    if resuming:
        drop_torn_tail(meta_path)
    done = read_meta_jsonl(meta_path) if resuming else {}
    todo = [s for s in ctx.samples if s.id not in done]
    skipped = []
    n = 0
    with open(meta_path, "a") as meta_f, WorkerPool(ctx.hooks, cfg, int(cfg.num_workers) if len(todo) > 1 else 0) as pool:
        for prep in iter_prepared(ctx.hooks, cfg, todo, pool, 4 * max(int(cfg.num_workers), 1)):
            if prep.error:
                if not ctx.skip_errors:
                    raise InputError(prep.error)
                skipped.append({"id": prep.sample.id, "path": str(prep.sample.path), "reason": prep.error})
                continue
            multi = len(prep.inputs) > 1
            shapes = {}
            for name, arr in prep.inputs.items():
                write_bin(input_file(inputs_dir, name, prep.sample.id, multi), arr)
                shapes[name] = {"shape": list(arr.shape), "dtype": arr.dtype.name}
            meta_f.write(json.dumps({"id": prep.sample.id, "meta": prep.meta, "inputs": shapes}) + "\n")
            meta_f.flush()
            os.fsync(meta_f.fileno())
            n += 1
    mark_complete(state_path)
    write_run_record(ctx)
    print(f"preprocessed {n} images ({len(done)} already done, {len(skipped)} skipped) -> {inputs_dir}")
    if skipped:
        write_json(inputs_dir / "skipped.json", skipped)
    finish_with_skips(ctx, skipped)
    return {"images": n + len(done), "skipped": skipped, "inputs_dir": str(inputs_dir)}
