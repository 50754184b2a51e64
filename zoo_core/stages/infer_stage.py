"""``infer``: ``inputs/*.bin`` (ours, or a seed ``prep_dataset``) -> ``outputs/<stem>_<i>.bin`` + perf.json.

Streams like ``eval``: the feeder reads the next batch's files while the device runs the current
one. Outputs are checked (finite) and listed in ``outputs/index.jsonl`` with their sizes and CRC-32,
which ``resume=true`` verifies before trusting a file. Without ``resume`` the stage clears
``outputs/`` first. Inputs of a preprocess run that did not finish (its ``state.json`` says
``complete: false``) are refused unless ``allow_skips=true``, which infers them and records so. So are inputs
another model made; inputs made under other model or dataset settings are warned about, naming both values
(:func:`~zoo_core.runs.producer.refuse_other_producer`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from zoo_core.api.atomic import write_text
from zoo_core.api.errors import ZooError
from zoo_core.pipeline.sinks import OutputBinSink
from zoo_core.pipeline.sources import BinInputSource, list_bin_inputs
from zoo_core.pipeline.stream import Stream
from zoo_core.reports.progress import Progress
from zoo_core.runs.context import RunContext
from zoo_core.runs.fingerprint import backend_section, config_hash, sha256_file
from zoo_core.runs.layout import artifact_state, clear_dir
from zoo_core.runs.producer import refuse_other_producer
from zoo_core.runs.records import finish_with_skips, write_perf
from zoo_core.runs.resume import (
    Ledger,
    artifact_fingerprint,
    dump_fingerprint,
    mark_complete,
    refuse_changed_quantize,
    start_resumable,
)
from zoo_core.stages.open_backend import open_backend

log = logging.getLogger("zoo")


def _output_spec(ctx: RunContext, meta: dict) -> list | None:
    """The model's output spec for ``meta``, or ``None`` when a bare seed meta cannot tell it."""
    try:
        return ctx.hooks.output_spec(cfg=ctx.cfg, meta=meta)
    except Exception:
        if set(meta) <= {"id"}:
            return None
        raise


def _with_dataset_keys(ctx: RunContext, items: list, inputs_dir: Path) -> None:
    """``backend=oracle`` encodes each image's ground truth, found by the dataset's key of the image: the
    items of a ``.bin`` inputs dir get their dataset sample's key (an id that is not an image of the
    dataset is an error; before, the oracle saw no key and encoded an empty image)."""
    from dataclasses import replace

    by_id = {s.id: s for s in ctx.dataset.samples()}
    unknown = [it.sample.id for it in items if it.sample.id not in by_id]
    if unknown:
        raise ZooError(f"backend=oracle encodes each image's ground truth, but {len(unknown)} input(s) are not "
                       f"images of dataset {ctx.cfg.dataset.get('name')} (first: {unknown[0]!r})", path=inputs_dir,
                       hint="pass the dataset the inputs were made from")
    for it in items:
        it.sample = replace(it.sample, key=by_id[it.sample.id].key)


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    inputs_dir = Path(str(cfg.inputs_dir)) if cfg.get("inputs_dir") else ctx.path("inputs")
    if not inputs_dir.is_dir():
        raise ZooError("inputs directory not found", path=inputs_dir,
                       hint="run stage=preprocess first or pass inputs_dir=")
    items = list_bin_inputs(inputs_dir, ctx.hooks.input_spec(cfg=cfg))
    if not items:
        nested = sorted(p for p in inputs_dir.glob("*/*.bin") if p.is_file())
        if nested:  # e.g. the seed's older CenterFace prep: <out>/<event>/<img>.bin (REFERENCE 3.4)
            raise ZooError(f"no input .bin files found in the folder itself, but {len(nested)} lie one level down, "
                           f"in {len({p.parent for p in nested})} sub-folder(s) (e.g. "
                           f"{nested[0].relative_to(inputs_dir)}): infer reads <inputs_dir>/<id>.bin (ais_bench's "
                           "flat layout) or stage=preprocess's layout with meta.jsonl, not per-folder inputs",
                           path=inputs_dir,
                           hint="move the .bin files into one folder (their names are the image ids) and pass it "
                                "as inputs_dir=, or re-run stage=preprocess")
        raise ZooError("no input .bin files found", path=inputs_dir)
    partial = artifact_state(inputs_dir).get("complete") is False
    if partial:
        said = (f"the preprocess run that wrote these inputs did not finish (complete: false): "
                f"{len(items)} input(s) were written")
        if not bool(cfg.allow_skips):
            raise ZooError(said, path=inputs_dir / "state.json",
                           hint="run it again with stage=preprocess resume=true, then stage=infer; or pass "
                                "allow_skips=true to infer only the inputs it wrote")
        log.warning("%s: %s; allow_skips=true: inferring those only (recorded in run.json and outputs/state.json)",
                    inputs_dir / "state.json", said)
        ctx.notes["partial_inputs"] = {"state": str(inputs_dir / "state.json"), "inputs": len(items)}
    refuse_other_producer(ctx, inputs_dir, "preprocess", "inputs")
    if str(cfg.backend.name) == "oracle":
        _with_dataset_keys(ctx, items, inputs_dir)
    out_dir = ctx.path("outputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    refuse_changed_quantize(ctx, out_dir / "state.json")
    backend = open_backend(ctx)
    try:
        meta_file = inputs_dir / "meta.jsonl"
        describe = backend.describe()
        section = backend_section(cfg.backend, describe)
        fingerprint = artifact_fingerprint(ctx, describe.get("model_file"), backend=config_hash(section),
                                           inputs_dir=str(inputs_dir.resolve()),
                                           inputs_meta_sha256=sha256_file(meta_file) if meta_file.is_file() else None,
                                           **dump_fingerprint(backend))
        ledger = Ledger(out_dir / "index.jsonl")
        resuming = start_resumable(ctx, out_dir / "state.json", fingerprint,
                                   lambda: clear_dir(out_dir, keep=("state.json",)), backend=str(cfg.backend.name),
                                   backend_config=section)
        done = ledger.verified() if resuming else set()
        todo = [it for it in items if it.sample.id not in done]
        sink = OutputBinSink(out_dir, ledger)
        stats = Stream(BinInputSource(todo), [sink], backend=backend, keep_outputs=True,
                       batch_size=int(cfg.batch_size), skip_errors=ctx.skip_errors,
                       expect=lambda meta: _output_spec(ctx, meta),
                       progress=Progress(len(todo), cfg.get("progress"), "infer")).run()
        mark_complete(out_dir / "state.json", pinned=sink.pinned, **({"inputs_complete": False} if partial else {}))
        describe = backend.describe()
    finally:
        backend.close()
    perf = {**describe, **stats.summary(int(cfg.batch_size)), "resumed_images": len(done)}
    write_perf(ctx, perf)
    if stats.skipped:
        write_text(ctx.record("skipped.json"), json.dumps(stats.skipped, indent=2) + "\n")
    result = {"stage": "infer", "outputs_dir": str(out_dir), "backend": describe, "perf": perf,
              "images": stats.images, "resumed_images": len(done), "skipped": stats.skipped,
              **({"partial_inputs": True} if partial else {})}
    finish_with_skips(ctx, stats.skipped, "skipped.json")
    return result
