"""The calibration set of ``quantize``: which images (:func:`calibration_samples`), their tensors
(:func:`calibration_inputs`, through the same worker pool and ``preprocess`` hook as ``eval``), the settings
that decide an INT8 model (:func:`settings`) and what a model's record says of its calibration."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.errors import ConfigError, InputError, ZooError
from zoo_core.api.types import Sample
from zoo_core.pipeline.sources import ImageSource
from zoo_core.pipeline.workers import WorkerPool, stop_error
from zoo_core.runs.context import RunContext
from zoo_core.runs.fingerprint import sha256_file

log = logging.getLogger("zoo")


Calibration = list[dict[str, np.ndarray]]


def enum_name(value: Any) -> str:
    """``Method.minmax`` (a config enum) or ``"minmax"`` -> ``"minmax"``."""
    return str(value).split(".")[-1]


def settings(ctx: RunContext) -> dict[str, Any]:
    """The quantize settings that decide the INT8 model (recorded in its fingerprint)."""
    q = ctx.cfg.quantize
    n = int(q.calibration_images)
    if n < 1:
        raise ConfigError(f"quantize.calibration_images={n} is invalid: it must be >= 1")
    pct = float(q.percentile)
    if not 0.0 < pct <= 100.0:
        raise ConfigError(f"quantize.percentile={pct} is invalid: it must be within (0, 100]")
    seed = int(q.seed)
    if seed < 0:  # numpy's generator refuses it, but only when the dataset has more images than are drawn
        raise ConfigError(f"quantize.seed={seed} is invalid: it must be >= 0")
    return {
        "calibration_images": n, "method": enum_name(q.method), "seed": seed, "per_channel": bool(q.per_channel),
        "activation_type": enum_name(q.activation_type), "weight_type": enum_name(q.weight_type),
        "percentile": pct if enum_name(q.method) == "percentile" else None,
        "exclude_op_types": excluded_op_types(ctx), "exclude_nodes": [str(n) for n in q.exclude_nodes],
        "preprocess": bool(q.preprocess),
    }


def excluded_op_types(ctx: RunContext) -> list[str]:
    """Op types kept in FP32: the plugin's ``model.quantize_exclude_op_types`` plus ``quantize.exclude_op_types``."""
    plugin = ctx.cfg.model.get("quantize_exclude_op_types") or []
    return list(dict.fromkeys([str(t) for t in plugin] + [str(t) for t in ctx.cfg.quantize.exclude_op_types]))


def calibration_samples(ctx: RunContext) -> list[Sample]:
    """``quantize.calibration_images`` samples of the whole dataset, spread over it, drawn from ``quantize.seed``.

    The dataset's samples sorted by id are cut into N equal strata; one sample is drawn from each.
    """
    n = int(ctx.cfg.quantize.calibration_images)
    if n < 1:
        raise ConfigError(f"quantize.calibration_images={n} is invalid: it must be >= 1")
    samples = sorted(ctx.dataset.samples(), key=lambda s: s.id)
    if not samples:
        raise ZooError(f"dataset {ctx.cfg.dataset.get('name')} has no images to calibrate on")
    if n >= len(samples):
        return samples
    edges = (np.arange(n + 1) * len(samples)) // n
    rng = np.random.default_rng(int(ctx.cfg.quantize.seed))
    picks = rng.integers(edges[:-1], edges[1:])
    return [samples[int(i)] for i in picks]


def check_calibration_skips(ctx: RunContext, skipped: Sequence[dict[str, str]], consequence: str) -> None:
    """Calibration images ``on_error=skip`` left out fail the run (exit 2) unless ``allow_skips=true``, as in
    ``eval``; with it they are listed in the model's record and the stage's ``run.json``."""
    if skipped and not bool(ctx.cfg.get("allow_skips", False)):
        first = skipped[0]
        raise ZooError(f"{len(skipped)} calibration image(s) were skipped (on_error=skip; first: {first.get('path')}: "
                       f"{first.get('reason')}); {consequence}",
                       hint="pass allow_skips=true to calibrate on the other images, or fix the image(s)")


def calibration_record(cal: CalibrationSet) -> dict[str, Any]:
    """The record of a calibration: the images used (count, ids), those skipped, the tensors' digest."""
    return {"images": len(cal.batches), "ids": [s.id for s in cal.samples], "skipped": list(cal.skipped),
            "tensors_sha256": calibration_digest(cal.batches)}


@dataclass
class CalibrationSet:
    """The calibration tensors (one batch of one image each) and the images they came from, in order; ``skipped``:
    the images ``on_error=skip`` left out (``{"id", "path", "reason"}``)."""

    batches: Calibration
    samples: list[Sample]
    skipped: list[dict[str, str]] = field(default_factory=list)


def calibration_inputs(ctx: RunContext, samples: Sequence[Sample]) -> CalibrationSet:
    """Each sample preprocessed exactly as ``eval`` does it (worker pool + ``preprocess`` hook), batch of one."""
    cfg = ctx.cfg
    by_id: dict[str, dict[str, np.ndarray]] = {}
    skipped: dict[str, dict[str, str]] = {}
    workers = int(cfg.num_workers) if len(samples) > 1 else 0
    with WorkerPool(ctx.hooks, cfg, workers) as pool:
        for prep in ImageSource(samples, pool).items():
            if prep.error is not None or prep.inputs is None:
                reason = _without_path(str(prep.error or "no inputs"), prep.sample.path)
                if not ctx.skip_errors:
                    raise stop_error(InputError(f"calibration image: {reason}", path=prep.sample.path), prep.trace)
                log.warning("calibration: skipping %s: %s", prep.sample.path, reason)
                skipped[prep.sample.id] = {"id": prep.sample.id, "path": str(prep.sample.path), "reason": reason}
                continue
            # copies: the arrays may be views of the pool's shared-memory slots, unmapped when it closes
            by_id[prep.sample.id] = {k: np.array(v[None], copy=True, order="C") for k, v in prep.inputs.items()}
    used = [s for s in samples if s.id in by_id]
    if not used:
        raise ZooError("no calibration image could be preprocessed")
    return CalibrationSet([by_id[s.id] for s in used], used, [skipped[s.id] for s in samples if s.id in skipped])


def _without_path(error: str, path: Any) -> str:
    """A preprocessing error without the ``<path>: `` it starts with (the caller names the file once)."""
    prefix = f"{path}: "
    return error[len(prefix):] if error.startswith(prefix) else error


def calibration_digest(batches: Calibration) -> str:
    """sha256 over every calibration tensor (name, dtype, shape, bytes) in order."""
    h = hashlib.sha256()
    for batch in batches:
        for name in sorted(batch):
            a = batch[name]
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def image_sha256(sample: Sample) -> str | None:
    """The sha256 of a calibration image file's bytes, ``None`` when it is not a readable file (it is then
    skipped or refused by the calibration itself; a file that appears or changes later changes the digest)."""
    try:
        return sha256_file(Path(sample.path))
    except (OSError, ZooError, TypeError):  # (sha256_file: ZooError naming the file)
        return None
