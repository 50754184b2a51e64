"""``evaluate``: score saved detections (``detections=<dir>`` or the run dir's). Never imports torch.

The detections' ``state.json`` (written by ``eval`` / ``postprocess``) says what produced them, the
backend included: the plugin's references are judged for that backend (``backend=oracle`` detections as
``eval`` judged them), not for this run's ``backend``.
Detections of another model, or of weights / a model file other than the ones given on the
command line, are refused. Other model or dataset config differences are allowed (re-scoring saved
detections under other evaluation settings, e.g. ``model.iou_thresh``, is legitimate) but warned
about on stderr and listed in ``metrics.json`` under ``provenance``. The ``quantize`` settings the detections
were made with (``quantize=int8``: the INT8 model's) become this run's, in ``run.json`` and for the references'
protocol, with a warning when they differ from the command line's.

``detections=`` may also be results the user brings, recognised by content: anything that is not
zoo's own detections directory goes to the ``read_detections`` hook (the model's reader, then
zoo-core's for the dataset's kind: a WIDER prediction tree ``<event>/<stem>.txt`` for ``widerface``, a
COCO results json for ``coco``). An image without results counts as "no detections" and is reported
(``missing_predictions``); what was read and the reading policies go to ``metrics.json`` under ``read``.
No images are needed: the dataset is opened with ``images_required: false`` (ground truth only).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from omegaconf import open_dict

from zoo_core.api.atomic import write_json
from zoo_core.api.checkpoint import MAX_RECORD_BYTES, read_at_most
from zoo_core.api.errors import ZooError
from zoo_core.datasets import bootstrap_request
from zoo_core.runs.context import RunContext
from zoo_core.runs.detstore import DetectionStore, class_count
from zoo_core.runs.fingerprint import sha256_file
from zoo_core.runs.producer import config_differences, describe
from zoo_core.runs.resume import quantize_changes
from zoo_core.stages.scoring import score

log = logging.getLogger("zoo")


def check_provenance(ctx, src: Path) -> dict:
    """Compare the detections' ``state.json`` with this run; raise on a mismatch that makes them stale."""
    state_path = src / "state.json"
    if state_path.exists() and not state_path.is_file():
        raise ZooError("is not a regular file, so where these detections came from cannot be read", path=state_path)
    if not state_path.is_file():
        msg = f"{src}: no state.json, so where these detections came from is unknown"
        log.warning(msg)
        return {"state": None, "warnings": [msg]}
    try:
        state = json.loads(read_at_most(state_path, MAX_RECORD_BYTES, "detections state file"))
        fp = state["fingerprint"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ZooError("unreadable detections state file", path=state_path) from None
    bad = [k for k in ("fingerprint", "model_config", "dataset_config", "quantize_config")
           if not isinstance(state.get(k), dict) and (k == "fingerprint" or state.get(k) is not None)]
    if bad:
        raise ZooError(f"unreadable detections state file: its {bad[0]!r} is not a JSON object", path=state_path)
    if state.get("model_name") != ctx.model_name:
        raise ZooError(f"these detections were made by model {state.get('model_name')!r}, not {ctx.model_name!r}",
                       path=state_path)
    w = ctx.weights()
    if w and fp.get("weights_sha256") != sha256_file(w):
        raise ZooError(f"these detections were not made with weights={w} (sha256 differs)", path=state_path,
                       hint="re-run stage=eval with these weights, or drop weights= to score them as they are")
    mf = ctx.cfg.get("model_file")
    unknown_model_file = []
    if mf and Path(str(mf)).is_file():
        if fp.get("model_file_sha256") is None:  # e.g. postprocess of a dump whose model is not recorded
            unknown_model_file = [f"these detections do not record the model file they were made with "
                                  f"(model_file={mf} not checked)"]
        elif fp.get("model_file_sha256") != sha256_file(str(mf)):
            raise ZooError(f"these detections were not made with model_file={mf} (sha256 differs)", path=state_path)
    cfg = ctx.resolved_config()
    warnings = unknown_model_file + describe(config_differences(state, cfg))
    made_with = state.get("quantize_config")
    quantize = quantize_changes(ctx, made_with, cfg.get("quantize"))
    if quantize:
        warnings += [*quantize, f"these detections were made with quantize.name={made_with.get('name')}: they are "
                     "scored, judged against the references and recorded (run.json) under the quantize settings "
                     "they were made with"]
    if not state.get("complete", False):
        warnings.insert(0, "the run that wrote these detections did not finish")
    if warnings:
        log.warning("scoring detections from %s made under a different setup:\n  %s", src, "\n  ".join(warnings))
    backend = state.get("backend") if isinstance(state.get("backend"), str) else None
    out = {"state": str(state_path), "fingerprint": fp, "backend": backend, "warnings": warnings}
    if isinstance(made_with, dict):
        out["quantize"] = made_with
    return out


def adopt_quantize(ctx: RunContext, made_with: dict) -> None:
    """This run's ``quantize`` section becomes the one the scored detections were made with (their
    ``state.json``'s copy), as ``made_by`` stands for ``backend.name``: ``run.json`` then says ``int8`` for INT8
    detections and the references are judged under that protocol. Keys this zoo's section does not have are
    left out; a section it cannot take (values of another type, from another zoo) leaves the run's own, with a
    warning."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(ctx.cfg.quantize, {k: v for k, v in made_with.items() if k in ctx.cfg.quantize})
    except OmegaConfBaseException as exc:
        log.warning("the quantize settings these detections were made with cannot be read as this zoo's (%s): "
                    "run.json keeps this run's", exc)
        return
    with open_dict(ctx.cfg):
        ctx.cfg.quantize = merged


def is_detection_store(path: Path) -> bool:
    """``path`` is a zoo detections directory: ``chunk-*.npz`` files, or a ``state.json`` and no sub-directory
    (a WIDER prediction tree with a stray ``state.json`` at its root is still a tree)."""
    if not path.is_dir():
        return False
    if any(path.glob("chunk-*.npz")):
        return True
    return (path / "state.json").is_file() and not any(p.is_dir() for p in path.iterdir())


def ground_truth_only(ctx: RunContext) -> None:
    """Scoring needs no images: open a dataset with a ``kind`` with ``images_required: false``."""
    ds = ctx.cfg.get("dataset")
    if ds is not None and ds.get("kind") and "dataset" not in ctx.__dict__:
        with open_dict(ds):
            ds.images_required = False


def run(ctx: RunContext) -> dict:
    bootstrap_request(ctx.cfg)  # a bad bootstrap= / bootstrap_seed= fails before any file is read
    ground_truth_only(ctx)
    given = ctx.cfg.get("detections")
    src = Path(str(given)).expanduser() if given else ctx.path("detections")
    if given and not src.exists():
        raise ZooError("detections not found", path=src,
                       hint="pass zoo's detections/ folder, a WIDER prediction tree or a COCO results json")
    if given and not is_detection_store(src):
        return score_user_results(ctx, src)
    detections = DetectionStore(src, num_classes=class_count(ctx.cfg)).load()
    if not detections:
        raise ZooError("no saved detections found", path=src,
                       hint="run stage=postprocess or stage=eval first, or pass detections=<dir or file>")
    provenance = check_provenance(ctx, src)
    if isinstance(provenance.get("quantize"), dict):
        adopt_quantize(ctx, provenance["quantize"])
    wanted = {s.id for s in ctx.samples}
    detections = {k: v for k, v in detections.items() if k in wanted}
    missing = sorted(wanted - set(detections))
    if missing and not bool(ctx.cfg.allow_skips):
        raise ZooError(f"{len(missing)} image(s) of the dataset have no saved detections "
                       f"(first: {missing[0]}); pass allow_skips=true to score the rest", path=src)
    skipped = [{"id": m, "reason": "no detections saved for this image"} for m in missing]
    return score(ctx, detections, skipped, {"provenance": provenance}, made_by=provenance.get("backend"))


def score_user_results(ctx: RunContext, src: Path) -> dict:
    """Score a results file / folder through the ``read_detections`` hook (every scored image counts)."""
    with warnings.catch_warnings(record=True) as caught:  # a reader's warnings: one line each, kept in metrics.json
        warnings.simplefilter("always")
        read = ctx.hooks.read_detections(cfg=ctx.cfg, path=src, dataset=ctx.dataset, samples=ctx.samples)
    said = list(dict.fromkeys(str(w.message) for w in caught))
    for message in said:
        log.warning("%s", message)
    if read is None:
        kind = ctx.cfg.dataset.get("kind")
        hint = ("pass zoo's detections/ folder, a WIDER prediction tree (<event>/<stem>.txt, dataset kind "
                "widerface) or a COCO results json (dataset kind coco)")
        if src.is_dir() and any(src.glob("*.txt")) and not any(src.glob("*/*.txt")):
            hint = (f"{src.name}/ holds .txt files itself, as one event folder of a WIDER prediction tree does: "
                    f"pass the folder that holds the event folders ({src.parent}); else {hint}")
        raise ZooError(f"not a detections format model {ctx.model_name!r} or dataset kind {kind!r} reads", path=src,
                       hint=hint)
    info = dict(read.info)
    if said:
        info["warnings"] = said
    n_missing = int(info.get("missing_predictions", 0))
    if n_missing:
        log.warning("%d of %d image(s) have no results in %s: they count as no detections", n_missing,
                    len(ctx.samples), src)
    log.info("scoring %s (%s): %d image(s)", src, info.get("format", "?"), len(ctx.samples))
    record = score(ctx, read.detections, [], {"read": info}, samples=list(ctx.samples))
    if record.setdefault("info", {}).get("missing_predictions") != n_missing:  # a scorer that does not count them
        record["info"]["missing_predictions"] = n_missing
        write_json(ctx.record("metrics.json"), record)
    return record
