"""``convert``: ONNX (ascend target) -> OM with Ascend ATC, run as a subprocess without a shell.

With no ``atc`` on PATH the exact command is written to ``model/atc_bs<N>.sh`` and printed, and the
stage exits 0 saying so: the user runs it on a machine with the CANN toolkit. The script converts its own copy
of the ONNX (``model/atc_bs<N>.onnx``) with its own AIPP config (the plugin's, e.g. ``<model>_bs<N>.aippconfig``),
so a later convert of another batch size or config cannot change what it builds, and it checks their sha256
before it runs ``atc``.

``atc.dynamic_image_size=true`` (models whose input size varies per image, e.g. CenterNet ``keep_res``):
the dataset's images go through the model's ``preprocess``, their input sizes are planned into at most
``atc.max_image_gears`` gears (``atc.image_gear_policy``: ``pad`` sizes up into that many gears, or
``refuse``), the gears reach the ``atc_args`` hook as ``image_sizes`` (``--dynamic_image_size``) and, with two
or more gears (ATC's minimum), the plan is written to ``<om>.gears.json`` (read by the ``acl`` backend). One input
size is compiled as a fixed-size OM, without a plan. H and W are taken as the model's ``input_spec`` lays the
input out (C, H, W, or an AIPP input's H, W, C).
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from zoo_core.api.atc import MAX_GEARS
from zoo_core.api.atomic import write_json, write_text
from zoo_core.api.errors import ConfigError, PluginError, ZooError
from zoo_core.backends.image_gears import GearPlan, gears_file, plan_gears
from zoo_core.pipeline.sources import ImageSource
from zoo_core.pipeline.workers import WorkerPool, stop_error
from zoo_core.runs.context import RunContext
from zoo_core.runs.fingerprint import files_with_sha256, sha256_file
from zoo_core.runs.model_files import ensure_onnx, model_dir, note_recorded_random_weights, quantize_int8, read_record
from zoo_core.runs.om_record import AMCT_CALIBRATION_KEYS, write_om_record

log = logging.getLogger("zoo")


def run(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    if not ctx.hooks.implements("atc_args"):  # no Ascend path: refused before anything is exported
        raise PluginError(f"model {ctx.model_name!r} cannot be converted: its plugin {ctx.hooks.info.entry_point} "
                          f"does not implement the 'atc_args' hook, which stage=convert needs (implements: "
                          f"{', '.join(ctx.hooks.info.hooks)})")
    given = cfg.get("model_file")
    given_onnx = bool(given and str(given).endswith(".onnx"))
    if quantize_int8(ctx):
        from zoo_core.quantize.amct import check_int8_atc_config

        check_int8_atc_config(ctx)  # ATC flags an AMCT deploy model cannot take, refused before AMCT runs
    if quantize_int8(ctx) and not given_onnx:
        from zoo_core.quantize.amct import ensure_amct_model

        onnx, kind = ensure_amct_model(ctx), "amct"  # quantize=int8: AMCT's deploy model (docs/quantize.md)
    elif given_onnx:
        onnx, kind = Path(str(given)), "model_file"
        if onnx.is_file():
            note_recorded_random_weights(ctx, onnx)
    else:
        onnx, kind = ensure_onnx(ctx, "ascend"), "export"
    if not onnx.is_file():
        raise ZooError("ONNX model not found", path=onnx)
    onnx = onnx.resolve()
    source = onnx_source(onnx, kind)
    gears = list(cfg.atc.dynamic_batch) if cfg.atc.get("dynamic_batch") else None
    tag = ("int8_" if quantize_int8(ctx) else "") + ("dyn" if gears else f"bs{int(cfg.batch_size)}")
    output = model_dir(ctx) / f"{ctx.model_name}_{tag}"
    om = output.with_suffix(".om")
    plan = image_gear_plan(ctx, bool(gears)) if cfg.atc.get("dynamic_image_size") else None
    image_sizes = [list(g) for g in plan.gears] if plan is not None else None
    atc = shutil.which("atc")
    own_copy = model_dir(ctx) / f"atc_{tag}.onnx"
    own_dir = model_dir(ctx) / f"atc_{tag}"  # (a model with external data: copied whole into its own folder)
    if atc is None:  # the script runs later: it gets its own copy, which a later convert or export cannot change
        onnx = _copy_model(onnx, own_copy, own_dir)
        source.update(atc_model=str(onnx), sha256=sha256_file(onnx))
    args = ctx.hooks.atc_args(cfg=cfg, onnx_path=str(onnx), batch_size=gears or int(cfg.batch_size),
                              soc_version=str(cfg.atc.soc_version), output=str(output), image_sizes=image_sizes)
    args = [str(a) for a in args]
    if quantize_int8(ctx):
        from zoo_core.quantize.amct import check_int8_atc_args

        check_int8_atc_args(args, f"the {ctx.model_name} plugin's ATC command line")
    gear_info: dict = {}
    if plan is not None:
        if len(plan.gears) > 1 and not any(a.startswith("--dynamic_image_size") for a in args):
            raise ZooError(f"the {ctx.model_name} plugin's atc_args hook ignored image_sizes (no --dynamic_image_size "
                           "in its command line), so the OM could not take the planned gears")
        gear_info = {"image_size_gears": image_sizes, **plan.padding()}
        if len(plan.gears) > 1:
            gear_info["gears_file"] = str(gears_file(om))
        else:  # ATC takes 2..100 gears: one input size is a fixed-size OM, which has no gear plan
            plan = None
    script = model_dir(ctx) / f"atc_{tag}.sh"
    command = ["atc", *args]
    write_text(script, script_text(script, command, {**files_with_sha256(onnx), **_aipp_config(args)}))
    script.chmod(0o755)
    if atc is None:
        _write_gears(om, plan)
        record = write_om_record(ctx, om, source, script, converted=False, args=args)
        return {"stage": "convert", "converted": False, "script": str(script), "argv": command, **gear_info,
                "record": str(record),
                "reason": "atc is not on PATH (it ships with the Ascend CANN toolkit), so nothing was converted"}
    log.info("running %s", shlex.join(command))
    proc = subprocess.run([atc, *args], capture_output=True, text=True, shell=False)
    log_path = model_dir(ctx) / f"atc_{tag}.log"
    write_text(log_path, f"$ {shlex.join(command)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ZooError(f"atc failed with exit code {proc.returncode}: " + " | ".join(tail), path=log_path)
    if not om.is_file():
        raise ZooError("atc exited 0 but wrote no OM file", path=om)
    _write_gears(om, plan)
    own_copy.unlink(missing_ok=True)  # an earlier script's copy: this convert's script names the ONNX it ran on
    shutil.rmtree(own_dir, ignore_errors=True)
    record = write_om_record(ctx, om, source, script, converted=True, args=args)
    return {"stage": "convert", "converted": True, "onnx": str(onnx), "om": str(om), "argv": command,
            "log": str(log_path), "record": str(record), **gear_info}


def _copy_model(onnx: Path, own_copy: Path, own_dir: Path) -> Path:
    """A copy of the ONNX model the script will compile, which a later convert or export cannot change: at
    ``own_copy``, or, for a model with external data, the model and its data files in ``own_dir`` (each data file
    at its ``location``, as the model names it). Returns the copy's model file."""
    files = files_with_sha256(onnx)
    if len(files) == 1:
        shutil.rmtree(own_dir, ignore_errors=True)
        _copy(onnx, own_copy)
        return own_copy
    own_copy.unlink(missing_ok=True)
    shutil.rmtree(own_dir, ignore_errors=True)
    for src in files:
        _copy(src, own_dir / src.relative_to(onnx.parent))
    return own_dir / onnx.name


def _copy(src: Path, dst: Path) -> None:
    """``src``'s bytes at ``dst`` (a new file, renamed into place: never written through an older link)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _aipp_config(args: list[str]) -> dict[Path, str]:
    """The AIPP config the ATC line compiles in (``--insert_op_conf=``), with its sha256."""
    conf = next((Path(a.partition("=")[2]) for a in args if a.startswith("--insert_op_conf=")), None)
    return {conf: sha256_file(conf)} if conf is not None and conf.is_file() else {}


def script_text(script: Path, command: list[str], inputs: dict[Path, str]) -> str:
    """``atc_<tag>.sh``: ``command``, run only when ``inputs`` (the ONNX, the AIPP config) still have the sha256
    ``stage=convert`` recorded (``sha256sum --check``); else it stops, saying so."""
    def line(path: Path, sha: str) -> str:  # sha256sum's escaped form for a name with a backslash or newline
        name = str(path)
        if "\\" in name or "\n" in name:
            return "\\" + sha + "  " + name.replace("\\", "\\\\").replace("\n", "\\n")
        return f"{sha}  {name}"

    check = "\n".join(line(p, sha) for p, sha in inputs.items())
    said = (f"{script.name}: its input files ({', '.join(p.name for p in inputs)}) are missing or changed since "
            "stage=convert wrote this script, so atc would build another model than the OM's record says: "
            "re-run stage=convert with this config")
    return ("#!/usr/bin/env bash\nset -euo pipefail\n"
            "# the inputs stage=convert recorded for this OM: atc runs only on those bytes\n"
            f"if ! sha256sum --check --quiet --strict <<'ZOO_SHA256'\n{check}\nZOO_SHA256\nthen\n"
            f"    echo {shlex.quote(said)} >&2\n    exit 1\nfi\n" + shlex.join(command) + "\n")


def _write_gears(om: Path, plan: GearPlan | None) -> None:
    """The OM's image-size gear plan beside it; a fixed-size OM removes the plan of an earlier convert."""
    if plan is None:
        gears_file(om).unlink(missing_ok=True)
    else:
        write_json(gears_file(om), plan.to_json())


def onnx_source(onnx: Path, kind: str) -> dict[str, Any]:
    """Where the ONNX ATC converts came from (``export``: zoo's export, with the weights its record names;
    ``model_file``: the user's ONNX; ``amct``: AMCT's INT8 deploy model, with its calibration and the weights of
    the ONNX it calibrated), for the OM's record."""
    source: dict[str, Any] = {"kind": kind, "onnx": str(onnx), "sha256": sha256_file(onnx)}
    if kind == "export":
        rec = read_record(onnx.with_suffix(".json"))
        fp = rec.get("fingerprint") or {}
        source.update(weights=rec.get("weights_file") or fp.get("weights"), weights_sha256=fp.get("weights_sha256"))
    elif kind == "amct":  # the calibration AMCT ran, and the weights of the ONNX it calibrated
        deploy = read_record(onnx.with_suffix(".json"))
        fp = deploy.get("fingerprint") or {}
        source["calibration"] = {k: fp.get(k) for k in AMCT_CALIBRATION_KEYS}
        src = deploy.get("source")
        calibrated = read_record(Path(str(src)).with_suffix(".json")) if src else {}
        cfp = calibrated.get("fingerprint") or {}
        source.update(weights=calibrated.get("weights_file") or cfp.get("weights"),
                      weights_sha256=cfp.get("weights_sha256"))
    return source


def channels_last(shape: tuple[int, ...] | list[int]) -> bool:
    """A 3-d per-item input shape laid out H, W, C: its last dim is a channel count (1, 3 or 4) and its first is
    not (an AIPP OM's packed uint8 HWC input, REFERENCE 3.4); otherwise C, H, W (ATC's ``--input_format=NCHW``)."""
    return len(shape) == 3 and int(shape[-1]) in (1, 3, 4) and int(shape[0]) not in (1, 3, 4)


def input_sizes(ctx: RunContext) -> tuple[list[tuple[int, int]], bool]:
    """The (H, W) of the first 3-d input of every dataset image, from the model's own ``preprocess``, and whether
    that input is laid out H, W, C (its ``input_spec`` shape, :func:`channels_last`) rather than C, H, W."""
    samples = ctx.samples
    specs = {s.name: tuple(s.shape) for s in ctx.hooks.input_spec(cfg=ctx.cfg)}
    hwc = False
    pool = WorkerPool(ctx.hooks, ctx.cfg, int(ctx.cfg.num_workers) if len(samples) > 1 else 0)
    sizes: list[tuple[int, int]] = []
    try:
        for prep in ImageSource(samples, pool).items():
            if prep.error is not None:
                raise stop_error(ZooError(f"preprocess failed: {prep.error}", path=prep.sample.path), prep.trace)
            name, arr = next(((k, a) for k, a in (prep.inputs or {}).items() if a.ndim == 3), (None, None))
            if arr is None:
                raise ZooError(f"atc.dynamic_image_size needs a C,H,W input; {ctx.model_name}'s inputs are "
                               f"{ {k: v.shape for k, v in (prep.inputs or {}).items()} }")
            hwc = channels_last(specs.get(str(name), arr.shape))
            sizes.append((int(arr.shape[0]), int(arr.shape[1])) if hwc else (int(arr.shape[1]), int(arr.shape[2])))
    finally:
        pool.close()
    return sizes, hwc


def image_gear_plan(ctx: RunContext, dynamic_batch: bool) -> GearPlan:
    """Plan the OM's image-size gears from the dataset's input sizes; log how many images are padded."""
    cfg = ctx.cfg
    if dynamic_batch:
        raise ConfigError("atc.dynamic_image_size cannot be combined with atc.dynamic_batch: ATC does not "
                          "combine --dynamic_image_size with --dynamic_batch_size (REFERENCE 5.2)")
    sizes, hwc = input_sizes(ctx)
    plan = plan_gears(sizes, int(cfg.atc.get("max_image_gears", MAX_GEARS)),
                      str(cfg.atc.get("image_gear_policy", "pad")))
    if hwc and len(plan.gears) > 1:
        raise ConfigError(f"atc.dynamic_image_size: the dataset's inputs have {len(plan.sizes)} sizes, but "
                          f"{ctx.model_name}'s input is H,W,C (an AIPP OM's uint8 input, whose static AIPP config "
                          "fixes one src_image_size): image-size gears need a C,H,W input",
                          hint="convert without model.aipp, or at one input size")
    pad = plan.padding()
    one = "" if len(plan.gears) > 1 else " (one size: a fixed-size OM of {}x{}, no gear plan)".format(*plan.gears[0])
    log.info("image-size gears: %d distinct input sizes over %d images -> %d gear(s)%s", len(plan.sizes),
             plan.images, len(plan.gears), one)
    if pad["padded_images"]:
        log.warning("image-size gears: %d of %d images are padded up to a larger gear (up to %d rows and %d columns, "
                    "%.1f%% more pixels on average, at most %.1f%%)", pad["padded_images"], plan.images,
                    pad["max_extra_rows"], pad["max_extra_cols"], 100 * pad["mean_extra_pixels"],
                    100 * pad["max_extra_pixels"])
    return plan
