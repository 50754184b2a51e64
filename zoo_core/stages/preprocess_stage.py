"""``preprocess``: dataset images -> ``inputs/<stem>.bin`` (ais_bench raw layout) + ``inputs/meta.jsonl``.

One input per model: ``inputs/<stem>.bin``; several: ``inputs/<input name>/<stem>.bin``. Each
``.bin`` is written atomically before its ``meta.jsonl`` line (which records each file's size and
CRC-32, and the image file's size and mtime), so after a kill every listed image is complete and
``resume=true`` redoes exactly the images whose ``.bin`` files are missing or changed, or whose image
file changed since. Without ``resume`` the stage clears ``inputs/`` first.
"""
from __future__ import annotations

import json
import logging
import stat
from typing import Any

from zoo_core.api.aisbench import input_file
from zoo_core.api.atomic import write_text
from zoo_core.pipeline.sinks import InputBinSink
from zoo_core.pipeline.sources import ImageSource
from zoo_core.pipeline.stream import Stream
from zoo_core.pipeline.workers import WorkerPool
from zoo_core.reports.progress import Progress
from zoo_core.runs.context import RunContext
from zoo_core.runs.layout import clear_dir
from zoo_core.runs.records import finish_with_skips
from zoo_core.runs.resume import (
    artifact_fingerprint,
    file_crc32,
    file_identity,
    mark_complete,
    read_own_jsonl,
    source_changed,
    start_resumable,
)

log = logging.getLogger("zoo")


def verified_records(inputs_dir: Any, paths: dict[str, Any] | None = None) -> list[dict]:
    """``meta.jsonl`` records whose every input file still has its recorded size and CRC-32 and, given ``paths``
    (each id's image file), whose image still has the size and mtime its record's ``"source"`` says (a record
    without one, from an older zoo, is trusted as before)."""
    keep = []
    changed: list[str] = []
    for n, rec in read_own_jsonl(inputs_dir / "meta.jsonl"):
        inputs = rec.get("inputs") or {}
        ok = (isinstance(rec.get("id"), str) and isinstance(inputs, dict) and bool(inputs)
              and all(isinstance(v, dict) for v in inputs.values()))
        if not ok:
            log.warning("%s: line %d is not a record as zoo writes it; its image is redone",
                        inputs_dir / "meta.jsonl", n)
        for name, v in inputs.items() if ok else ():
            p = input_file(inputs_dir, name, rec["id"], len(inputs) > 1)
            try:
                st = p.stat()
                ok = stat.S_ISREG(st.st_mode) and st.st_size == v.get("bytes") and file_crc32(p) == v.get("crc32")
            except OSError:
                ok = False
            if not ok:
                break
        if ok and paths and "source" in rec and rec["id"] in paths and source_changed(rec["source"], paths[rec["id"]]):
            changed.append(rec["id"])
            ok = False
        if ok:
            keep.append(rec)
    if changed:
        log.warning("resume: %d image(s) changed since the interrupted run preprocessed them (first: %s): they are "
                    "preprocessed again", len(changed), paths[changed[0]] if paths else changed[0])
    return keep


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    inputs_dir = ctx.path("inputs")
    inputs_dir.mkdir(parents=True, exist_ok=True)
    state = inputs_dir / "state.json"
    resuming = start_resumable(ctx, state, artifact_fingerprint(ctx), lambda: clear_dir(inputs_dir))
    done = verified_records(inputs_dir, {s.id: s.path for s in ctx.samples}) if resuming else []
    if resuming:  # keep only the lines of verified images; the others are redone
        write_text(inputs_dir / "meta.jsonl", "".join(json.dumps(r) + "\n" for r in done))
    done_ids = {r["id"] for r in done}
    todo = [s for s in ctx.samples if s.id not in done_ids]
    workers = int(cfg.num_workers) if len(todo) > 1 else 0
    with WorkerPool(ctx.hooks, cfg, workers) as pool:
        sources = {s.id: file_identity(s.path) for s in todo}  # before any is read: a later change shows
        sink = InputBinSink(inputs_dir, sources)
        stats = Stream(ImageSource(todo, pool), [sink], skip_errors=ctx.skip_errors,
                       progress=Progress(len(todo), cfg.get("progress"), "preprocess")).run()
    mark_complete(state, pinned=sink.pinned)
    result = {"stage": "preprocess", "images": stats.images + len(done), "resumed_images": len(done),
              "skipped": stats.skipped, "inputs_dir": str(inputs_dir)}
    ctx.record_dir.mkdir(parents=True, exist_ok=True)
    if stats.skipped:
        write_text(ctx.record("skipped.json"), json.dumps(stats.skipped, indent=2) + "\n")
    finish_with_skips(ctx, stats.skipped, "skipped.json")
    return result
