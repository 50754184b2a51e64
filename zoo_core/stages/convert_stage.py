"""``convert``: ONNX (ascend target) -> OM with Ascend ATC, run as a subprocess without a shell.

With no ``atc`` on PATH the exact command is written to ``model/atc_bs<N>.sh`` and printed, and the
stage exits 0 saying so: the user runs it on a machine with the CANN toolkit.
"""
from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from pathlib import Path

from zoo_core.api.atomic import write_text
from zoo_core.api.errors import ZooError
from zoo_core.runs.context import RunContext
from zoo_core.runs.model_files import ensure_onnx, model_dir, quantize_int8

log = logging.getLogger("zoo")


def run(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    given = cfg.get("model_file")
    if quantize_int8(ctx) and not (given and str(given).endswith(".onnx")):
        from zoo_core.stages.quantize_stage import ensure_amct_model

        onnx = ensure_amct_model(ctx)  # quantize=int8: AMCT's deploy model (docs/quantize.md)
    else:
        onnx = Path(str(given)) if given and str(given).endswith(".onnx") else ensure_onnx(ctx, "ascend")
    if not onnx.is_file():
        raise ZooError("ONNX model not found", path=onnx)
    onnx = onnx.resolve()
    gears = list(cfg.atc.dynamic_batch) if cfg.atc.get("dynamic_batch") else None
    tag = ("int8_" if quantize_int8(ctx) else "") + ("dyn" if gears else f"bs{int(cfg.batch_size)}")
    output = model_dir(ctx) / f"{ctx.model_name}_{tag}"
    args = ctx.hooks.atc_args(cfg=cfg, onnx_path=str(onnx), batch_size=gears or int(cfg.batch_size),
                              soc_version=str(cfg.atc.soc_version), output=str(output))
    args = [str(a) for a in args]
    atc = shutil.which("atc")
    script = model_dir(ctx) / f"atc_{tag}.sh"
    command = ["atc", *args]
    write_text(script, "#!/usr/bin/env bash\nset -euo pipefail\n" + shlex.join(command) + "\n")
    script.chmod(0o755)
    if atc is None:
        return {"stage": "convert", "converted": False, "script": str(script), "argv": command,
                "reason": "atc is not on PATH (it ships with the Ascend CANN toolkit), so nothing was converted"}
    log.info("running %s", shlex.join(command))
    proc = subprocess.run([atc, *args], capture_output=True, text=True, shell=False)
    log_path = model_dir(ctx) / f"atc_{tag}.log"
    write_text(log_path, f"$ {shlex.join(command)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    om = output.with_suffix(".om")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ZooError(f"atc failed with exit code {proc.returncode}: " + " | ".join(tail), path=log_path)
    if not om.is_file():
        raise ZooError("atc exited 0 but wrote no OM file", path=om)
    return {"stage": "convert", "converted": True, "onnx": str(onnx), "om": str(om), "argv": command,
            "log": str(log_path)}
