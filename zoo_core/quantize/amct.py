"""``export.target=ascend``: AMCT's calibration (``amct_onnx calibration``) on the calibration set written as
raw ``.bin`` files, its deploy model reused while its fingerprint holds, and the ATC flags an INT8 OM cannot take."""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.atomic import write_bytes, write_json, write_text
from zoo_core.api.errors import ConfigError, ZooError
from zoo_core.api.types import Sample
from zoo_core.quantize.calibration import (
    CalibrationSet,
    calibration_inputs,
    calibration_record,
    calibration_samples,
    check_calibration_skips,
    image_sha256,
    settings,
)
from zoo_core.quantize.source import source_model
from zoo_core.runs.context import RunContext
from zoo_core.runs.export_keys import flatten
from zoo_core.runs.fingerprint import producer_versions, sha256_file
from zoo_core.runs.model_files import (
    amct_deploy_model,
    amct_save_prefix,
    amct_tag,
    ensure_onnx,
    model_dir,
    read_record,
    reusable,
)
from zoo_core.runs.record_seal import sealed

log = logging.getLogger("zoo")


@contextlib.contextmanager
def _staged_dir(final: Path) -> Iterator[Path]:
    """A temporary directory path beside ``final`` (``.<name>.<pid>.<random>.tmp``, not created) that replaces
    ``final`` whole when the block completes; removed when it raises, so ``final`` stays as it was.
    ``final`` that is a symbolic link (or not a directory) is refused before anything is written: zoo replaces
    this directory and never removes or writes a link's target."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        what = f"a symbolic link (to {os.readlink(final)})" if final.is_symlink() else "not a directory"
        raise ZooError(f"is {what}; zoo replaces this directory whole and does not follow links in model_dir",
                       path=final, hint="remove it, or pass model_dir=<another directory>")
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_calibration_bins(ctx: RunContext, cal: CalibrationSet, specs: Sequence[Any]) -> dict[str, Path]:
    """``<model_dir>/calibration/<input>/<000000>.bin``: one raw C-order tensor of shape (1, *spec.shape) each.

    Every tensor is checked before anything is written (an error names the image); the set is written to a
    temporary directory that replaces ``calibration/`` whole, so a failure leaves the previous set as it was."""
    for sample, batch in zip(cal.samples, cal.batches):
        for spec in specs:
            want = (1, *tuple(int(x) for x in spec.shape))
            a = batch.get(spec.name)
            if a is None or tuple(a.shape) != want or a.dtype != np.dtype(spec.dtype):
                got = "missing" if a is None else f"{a.dtype}{list(a.shape)}"
                raise ZooError(f"calibration image: input {spec.name!r} is {got}, AMCT needs the static "
                               f"{spec.dtype}{list(want)} of the model's input_spec", path=sample.path,
                               hint="set the model's fixed input size (e.g. model.input_hw=[h,w] for centerface)")
    root = model_dir(ctx) / "calibration"
    root.parent.mkdir(parents=True, exist_ok=True)
    with _staged_dir(root) as tmp:
        for spec in specs:
            d = tmp / spec.name.replace(os.sep, "_")
            d.mkdir(parents=True)
            for i, batch in enumerate(cal.batches):
                write_bytes(d / f"{i:06d}.bin", batch[spec.name].tobytes())
    return {spec.name: root / spec.name.replace(os.sep, "_") for spec in specs}


def amct_argv(ctx: RunContext, onnx: Path, specs: Sequence[Any], dirs: dict[str, Path], batches: int) -> list[str]:
    """``amct_onnx calibration`` with the documented flags (``--key=value``; list values joined by ``;``)."""
    shape = ";".join(f"{s.name}:{','.join(str(x) for x in (1, *s.shape))}" for s in specs)
    return ["amct_onnx", "calibration", f"--model={onnx}", f"--save_path={amct_save_prefix(ctx)}",
            f"--input_shape={shape}", f"--data_dir={';'.join(str(dirs[s.name]) for s in specs)}",
            f"--data_types={';'.join(str(np.dtype(s.dtype)) for s in specs)}", f"--batch_num={batches}"]


def ascend_onnx(ctx: RunContext) -> Path:
    given = ctx.cfg.get("model_file")
    if given and str(given).endswith(".onnx"):
        p = Path(str(given)).expanduser()
        if not p.is_file():
            raise ZooError("model file not found", path=p)
        return p.resolve()
    return ensure_onnx(ctx, "ascend").resolve()


def onnx_input_context(ctx: RunContext) -> RunContext:
    """The run as the ONNX that AMCT calibrates sees its input. With ``model.aipp=true`` the uint8 HWC input
    exists only in the OM (ATC inserts AIPP after AMCT); the ONNX takes the model's float32 NCHW input, so the
    calibration data are preprocessed with ``model.aipp=false``."""
    if not bool((ctx.cfg.get("model") or {}).get("aipp", False)):
        return ctx
    from omegaconf import open_dict

    cfg = ctx.cfg.copy()
    with open_dict(cfg):
        cfg.model.aipp = False
    return RunContext(cfg, ctx.manager, ctx.root, ctx.record_dir)


def amct_fingerprint(ctx: RunContext, onnx: Path, samples: Sequence[Sample]) -> dict[str, Any]:
    """What AMCT's deploy model depends on: the ONNX it calibrates, the calibration draw (``quantize.
    calibration_images``, ``quantize.seed``), the dataset, each calibration image's id and file sha256 and the model
    section (the preprocessing); and the code that made it: the plugin's and zoo-core's versions
    (:func:`~zoo_core.runs.fingerprint.producer_versions`: an upgrade may change the preprocessing the calibration
    tensors come from) and AMCT's (:func:`amct_version`). The onnxruntime quantizer's settings (method,
    types...) do not reach AMCT."""
    return {
        "model": ctx.model_name,
        **producer_versions(ctx.hooks.info),
        "quantizer": amct_version(),
        "source_sha256": sha256_file(onnx),
        "model_config": flatten(ctx.resolved_config()["model"]),
        **amct_calibration(ctx, samples),
    }


def amct_version() -> str | None:
    """``amct_onnx <version>`` of the AMCT Python package installed here (CANN installs it as a wheel), None when
    unknown: AMCT may run from a toolkit whose package this interpreter does not see."""
    from importlib import metadata

    try:
        return f"amct_onnx {metadata.version('amct_onnx')}"
    except metadata.PackageNotFoundError:
        return None


def amct_calibration(ctx: RunContext, samples: Sequence[Sample]) -> dict[str, Any]:
    """The calibration part of :func:`amct_fingerprint` (also what an INT8 OM's record is checked on):
    ``quantize.calibration_images`` and ``quantize.seed``, the dataset, each calibration image's id and sha256."""
    d = ctx.cfg.dataset
    q = ctx.cfg.quantize
    return {
        "quantize": {"calibration_images": int(q.calibration_images), "seed": int(q.seed)},
        "dataset": {"name": str(d.get("name")), "root": str(d.get("root")) if d.get("root") is not None else None},
        "calibration_ids": [s.id for s in samples],
        "calibration_sha256": [image_sha256(s) for s in samples],
    }


def run_amct(ctx: RunContext) -> dict[str, Any]:
    """Calibration ``.bin`` files + the AMCT script; AMCT run when installed (its deploy model recorded).

    AMCT writes into a temporary ``--save_path`` directory, moved onto ``amct_<tag>/`` (with the deploy model's
    ``.json`` record: fingerprint, sha256) only when it exits 0; a failed run leaves the previous files as they were.
    """
    settings(ctx)  # checked before anything is exported
    onnx = ascend_onnx(ctx)
    onnx_ctx = onnx_input_context(ctx)
    specs = list(ctx.hooks.input_spec(cfg=onnx_ctx.cfg))
    source_model(ctx, onnx, specs)
    samples = calibration_samples(ctx)
    fingerprint = amct_fingerprint(ctx, onnx, samples)
    cal = calibration_inputs(onnx_ctx, samples)
    check_calibration_skips(ctx, cal.skipped, "nothing was written for AMCT")
    batches = cal.batches
    dirs = write_calibration_bins(ctx, cal, specs)
    argv = amct_argv(ctx, onnx, specs, dirs, len(batches))
    script = model_dir(ctx) / f"amct_{amct_tag(ctx)}.sh"
    write_text(script, "#!/usr/bin/env bash\nset -euo pipefail\n" + shlex.join(argv) + "\n")
    script.chmod(0o755)
    calibration: dict[str, Any] = {**calibration_record(cal), "dir": str(model_dir(ctx) / "calibration")}
    base = {"stage": "quantize", "target": "ascend", "script": str(script), "argv": argv, "calibration": calibration}
    ctx.notes["amct_calibration"] = {"images": len(batches), "ids": calibration["ids"], "skipped": list(cal.skipped)}
    exe = shutil.which("amct_onnx")
    if exe is None:
        return {**base, "quantized": False,
                "reason": "amct_onnx is not on PATH (Ascend AMCT, with the CANN toolkit), so nothing was "
                          f"quantized: run {script} where it is installed, then stage=convert quantize=int8"}
    deploy = amct_deploy_model(ctx)
    final = deploy.parent
    final.parent.mkdir(parents=True, exist_ok=True)
    log_path = model_dir(ctx) / f"amct_{amct_tag(ctx)}.log"
    with _staged_dir(final) as tmp:
        prefix = tmp / amct_save_prefix(ctx).name
        run_argv = [exe, *(f"--save_path={prefix}" if a.startswith("--save_path=") else a for a in argv[1:])]
        log.info("running %s", shlex.join(run_argv))
        proc = subprocess.run(run_argv, capture_output=True, text=True, shell=False)
        write_text(log_path, f"$ {shlex.join(run_argv)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ZooError(f"amct_onnx failed with exit code {proc.returncode} (its partial files were removed): "
                           + " | ".join(tail), path=log_path)
        written = tmp / deploy.name
        if not written.is_file():
            raise ZooError(f"amct_onnx exited 0 but wrote no deploy model {written.name}", path=log_path)
        write_json(written.with_suffix(".json"), sealed({
            "fingerprint": fingerprint, "sha256": sha256_file(written), "source": str(onnx),
            "source_sha256": fingerprint["source_sha256"], "argv": argv, "calibration": base["calibration"]}))
    return {**base, "quantized": True, "deploy_model": str(deploy), "log": str(log_path)}


def ensure_amct_model(ctx: RunContext) -> Path:
    """The AMCT deploy model ``stage=convert quantize=int8`` converts: reused when its zoo record's fingerprint
    (:func:`amct_fingerprint`) matches this run and its bytes still match, else AMCT is run again (logging what
    changed). A deploy model without a zoo record (AMCT run outside zoo, or files of unknown origin) is never
    trusted silently: AMCT is re-run when installed, else it is refused (pass it as ``model_file=`` to convert
    it as it is)."""
    deploy = amct_deploy_model(ctx)
    if deploy.is_file():
        if deploy.with_suffix(".json").is_file():
            samples = calibration_samples(ctx)
            if reusable(deploy, amct_fingerprint(ctx, ascend_onnx(ctx), samples), "AMCT calibration"):
                rec = read_record(deploy.with_suffix(".json")).get("calibration") or {}
                check_calibration_skips(ctx, rec.get("skipped") or [],
                                        f"AMCT's deploy model {deploy} was calibrated without them")
                return deploy
        elif shutil.which("amct_onnx") is None:
            script = model_dir(ctx) / f"amct_{amct_tag(ctx)}.sh"
            raise ZooError("AMCT deploy model without the zoo record written when zoo runs AMCT: which ONNX and "
                           "calibration images it came from is unknown, so it is not converted silently",
                           path=deploy,
                           hint=f"to convert it as it is (e.g. made by {script} on "
                                f"another machine), pass model_file={deploy} with quantize=int8; or remove it and "
                                "run stage=quantize export.target=ascend where amct_onnx is installed")
        else:
            log.info("re-running AMCT: %s has no zoo record beside it (written outside zoo)", deploy)
    res = run_amct(ctx)
    if not res["quantized"]:
        state = "is missing" if not deploy.is_file() else \
            "was calibrated with other settings or has a record this user's zoo did not seal (logged above)"
        raise ZooError(f"quantize=int8 converts AMCT's deploy model, which {state}; {res['reason']}", path=deploy)
    return deploy


#: ATC flags a quantized deploy model cannot be converted with (ATC's general restrictions, repeated in AMCT's
#: quick start): dynamic shapes (no INT8 input in dynamic-shape mode: the conversion fails) ...
INT8_DYNAMIC_FLAGS = ("--dynamic_batch_size", "--dynamic_image_size", "--dynamic_dims", "--input_shape_range")
#: ... and the high-precision modes (neither INT8's speed nor the high-precision accuracy).
INT8_PRECISION_VALUES = {"--precision_mode": ("force_fp32", "cube_fp16in_fp32out", "must_keep_origin_dtype"),
                         "--precision_mode_v2": ("origin",)}


def check_int8_atc_args(args: Sequence[str], what: str = "ATC's command line") -> None:
    """Refuse (exit 2) an ATC flag that ATC / AMCT document as not usable with a quantized deploy model."""
    for arg in (str(a) for a in args):
        flag, _, value = arg.partition("=")
        if flag in INT8_DYNAMIC_FLAGS:
            raise ConfigError(f"quantize=int8: {what} has {flag}, but ATC cannot convert an AMCT quantized deploy "
                              "model with dynamic-shape flags (--dynamic_batch_size, --dynamic_image_size...: "
                              "no INT8 input in dynamic-shape mode, the conversion fails; ATC's general restrictions, "
                              "AMCT quick start)",
                              hint="convert the INT8 model at a fixed batch_size (one OM per batch size), without "
                                   "atc.dynamic_batch / atc.dynamic_image_size")
        if value.strip("'\"") in INT8_PRECISION_VALUES.get(flag, ()):
            raise ConfigError(f"quantize=int8: {what} has {flag}={value}, a high-precision mode ATC / AMCT say not "
                              "to use with an AMCT quantized deploy model (--precision_mode force_fp32 or "
                              "must_keep_origin_dtype, --precision_mode_v2 origin: neither INT8's speed nor FP32's "
                              "accuracy)", hint="leave atc.precision_mode unset (or force_fp16 / "
                                                "allow_mix_precision) for the INT8 OM")


def check_int8_atc_config(ctx: RunContext) -> None:
    """The ``atc.*`` settings of a ``stage=convert quantize=int8``, checked before AMCT runs
    (:func:`check_int8_atc_args`; the full ATC command line is checked again once the plugin has built it)."""
    atc = ctx.cfg.atc
    if atc.get("dynamic_batch"):
        check_int8_atc_args(["--dynamic_batch_size"], f"atc.dynamic_batch={list(atc.dynamic_batch)}")
    if atc.get("dynamic_image_size"):
        check_int8_atc_args(["--dynamic_image_size"], "atc.dynamic_image_size=true")
    if atc.get("precision_mode") is not None:
        check_int8_atc_args([f"--precision_mode={atc.precision_mode}"], "atc.precision_mode")
    check_int8_atc_args([str(x) for x in (atc.get("extra") or [])], "atc.extra")
