"""``postprocess``: raw outputs (ours or an ais_bench / legacy benchmark dump) -> detections.

Outputs are matched to images by file stem (``<stem>_<i>.bin``, ``_0..`` or legacy ``_1..``), never by
position, through the replay backend, so a dump gets the same checks as ``eval`` (finite values, exact
file sizes, a stem found twice is an error). The images are those listed in ``inputs/meta.jsonl``
(with their metas) when it exists, else those zoo's own ``outputs/index.jsonl`` lists, else the
dataset's (metas recomputed by preprocessing each image, as the seed scripts did). Outputs whose
``state.json`` says they were made with other values of the model keys that decide the network or its input
are refused; other differences, and those of the inputs, are warned about
(:func:`~zoo_core.runs.producer.refuse_other_producer`). Writes ``detections/``
and, when the dataset has ground truth, scores it. ``stage.score=false`` does not score: it writes the
detections in the dataset kind's native results format next to the stage's records (a WIDER prediction
tree ``postprocess/predictions/<event>/<stem>.txt``, a COCO results ``postprocess/detections.json``) and
reports only where.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from zoo_core.api.atomic import write_json
from zoo_core.api.errors import ZooError
from zoo_core.pipeline.sinks import DetectionSink
from zoo_core.pipeline.sources import ImageSource, MetaSource, list_bin_inputs
from zoo_core.pipeline.stream import Source, Stream
from zoo_core.pipeline.workers import WorkerPool
from zoo_core.reports.progress import Progress
from zoo_core.runs.context import RunContext
from zoo_core.runs.detstore import DetectionStore, class_count
from zoo_core.runs.layout import artifact_state
from zoo_core.runs.producer import refuse_other_producer
from zoo_core.runs.records import finish_with_skips, write_result_files
from zoo_core.runs.resume import artifact_fingerprint, mark_complete, read_jsonl, start_resumable
from zoo_core.stages.open_backend import open_backend
from zoo_core.stages.scoring import score

log = logging.getLogger("zoo")


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    src = Path(str(cfg.outputs_dir)) if cfg.get("outputs_dir") else ctx.path("outputs")
    if not src.is_dir():
        raise ZooError("outputs directory not found", path=src,
                       hint="run stage=infer first, or pass outputs_dir=<ais_bench output dir>")
    inputs_dir = Path(str(cfg.inputs_dir)) if cfg.get("inputs_dir") else ctx.path("inputs")
    hooks = ctx.hooks

    def key(meta: dict) -> tuple:
        return tuple(tuple(s.shape) for s in hooks.output_spec(cfg=cfg, meta=meta))

    store = DetectionStore(ctx.path("detections"), num_classes=class_count(cfg))
    refuse_other_producer(ctx, src, "infer", "outputs")
    if (inputs_dir / "meta.jsonl").is_file():  # their metas are decoded with
        refuse_other_producer(ctx, inputs_dir, "preprocess", "inputs")
    outputs_state = artifact_state(src)
    fp = outputs_state.get("fingerprint")
    recorded = fp.get("model_file_sha256") if isinstance(fp, dict) else None
    made_by = outputs_state.get("backend") if isinstance(outputs_state.get("backend"), str) else None
    start_resumable(ctx, ctx.path("detections", "state.json"),
                    artifact_fingerprint(ctx, outputs_dir=str(src.resolve()),
                                         model_file_sha256=recorded if isinstance(recorded, str) else None),
                    store.reset, backend=made_by)
    store.reset()  # postprocess is fast: it always recomputes every image
    backend = open_backend(ctx, "replay", options={"dir": str(src), "device_latency_ms": 0.0,
                                                    "latency_per_item_ms": 0.0})
    pool = None
    source: Source
    unlisted: list[dict] = []
    if (inputs_dir / "meta.jsonl").is_file():
        listed = {it.sample.id: it.meta for it in list_bin_inputs(inputs_dir, hooks.input_spec(cfg=cfg))}
        by_id = {s.id: s for s in ctx.samples}
        unknown = [i for i in listed if i not in by_id]
        if unknown:
            raise ZooError(f"{len(unknown)} image(s) of {inputs_dir / 'meta.jsonl'} are not in the dataset "
                           f"(first: {unknown[0]!r})", hint="pass the dataset the inputs were made from")
        samples = [by_id[i] for i in listed]
        unlisted = _unlisted(ctx, set(listed), inputs_dir / "meta.jsonl", outputs_state)
        source = MetaSource([(s, listed[s.id]) for s in samples], key)
        log.info("postprocess: %d images listed in %s", len(samples), inputs_dir / "meta.jsonl")
    else:
        samples = ctx.samples
        index = src / "index.jsonl"  # zoo's own outputs list their images: score those, not the whole dataset
        if index.is_file():
            ids = {rec.get("id") for _n, rec in read_jsonl(index, drop_torn_tail=True)}
            samples = [s for s in samples if s.id in ids]
            unlisted = _unlisted(ctx, ids, index, outputs_state)
            log.info("postprocess: %d images listed in %s", len(samples), index)
        pool = WorkerPool(hooks, cfg, int(cfg.num_workers) if len(samples) > 1 else 0)
        source = ImageSource(samples, pool, drop_inputs=True, key=key)
    try:
        stats = Stream(source, [DetectionSink(store)], backend=backend,
                       decode=lambda outs, metas: hooks.postprocess(cfg=cfg, outputs=outs, metas=metas),
                       batch_size=int(cfg.batch_size), skip_errors=ctx.skip_errors,
                       progress=Progress(len(samples), cfg.get("progress"), "postprocess")).run()
    finally:
        if pool is not None:
            pool.close()
        backend.close()
    mark_complete(ctx.path("detections", "state.json"), pinned=store.pinned)
    dump = getattr(backend, "_dump", None)
    base = dump.base if dump is not None else None
    skipped = unlisted + stats.skipped
    scored = bool(cfg.stage.get("score", True))
    if not scored:
        record = write_native(ctx, store.load(), samples, skipped)
    else:
        record = score(ctx, store.load(), skipped, {"outputs_dir": str(src), "output_suffix_base": base},
                       made_by=made_by)
    finish_with_skips(ctx, skipped, "metrics.json" if scored else "postprocess.json")
    return record


def _unlisted(ctx: RunContext, listed: set, list_file: Path, outputs_state: dict) -> list[dict]:
    """The run's images that ``list_file`` does not list (an interrupted infer, preprocess on a subset or
    with skips): an error, or with ``allow_skips=true`` skip entries, never a smaller dataset said nothing of."""
    missing = [s.id for s in ctx.samples if s.id not in listed]
    if not missing:
        return []
    if not bool(ctx.cfg.allow_skips):
        if outputs_state.get("complete") is False:
            hint = "the infer run that wrote these outputs did not finish: run it again with resume=true"
        elif outputs_state.get("inputs_complete") is False or artifact_state(list_file.parent).get("complete") is False:
            hint = ("the preprocess run that wrote the inputs did not finish: run it again (stage=preprocess "
                    "resume=true), then stage=infer")
        else:
            hint = ("if preprocess/infer ran on a subset, repeat its dataset.limit / dataset.shard here; or pass "
                    "allow_skips=true to score the rest")
        raise ZooError(f"{len(missing)} of the {len(ctx.samples)} image(s) of the dataset are not listed "
                       f"(first: {missing[0]!r})", path=list_file, hint=hint)
    return [{"id": m, "reason": f"not listed in {list_file}"} for m in missing]


def write_native(ctx: RunContext, detections: dict, samples: list, skipped: list[dict]) -> dict[str, Any]:
    """``stage.score=false``: the detections in the dataset kind's results format, no scoring."""
    from zoo_core.datasets import results_files

    done = [s for s in samples if s.id in detections]
    files = results_files(ctx.cfg, detections, done)
    written: list[str] = []
    if files:
        written = write_result_files(ctx, files)
    if any(f.startswith("predictions/") for f in files or {}):
        where = str(ctx.record("predictions"))
        fmt = "widerface_tree"
    elif files:
        where = str(ctx.record(next(iter(files))))
        fmt = next(iter(files))
    else:
        where, fmt = str(ctx.path("detections")), "zoo detections"
    record = {"stage": "postprocess", "scored": False, "images": len(done), "format": fmt, "written": where,
              "files": len(written), "detections_dir": str(ctx.path("detections")), "skipped": skipped}
    write_json(ctx.record("postprocess.json"), record)
    return record
