"""The record ``stage=convert`` writes beside an OM, and the check a run makes before it loads that OM.

Nothing in an OM's bytes says which model config, weights or batch gears it was compiled for, and every
config writes to the same ``<model>_bs<N>.om``. ``stage=convert`` therefore writes ``<model>_bs<N>.json``
beside it, also when ``atc`` is missing and only the script is written: the model's export keys (the
values that change the graph or its inputs, e.g. CenterFace's ``model.aipp``), the dynamic-batch gears,
where the ONNX came from (zoo's export and its weights, ``model_file=``, or AMCT's INT8 model) and, once
ATC has run, the OM's sha256. When the ATC line inserts AIPP (``--insert_op_conf``), the normalisation it
compiles into the OM is recorded too: the values of the plugin's ``model.aipp_keys`` (CenterFace's
``model.mean`` / ``model.std``) and the AIPP config's path and sha256. So is the sha256 of the OM's
image-size gear plan (``<om>.gears.json``, read by the ``acl`` backend), or that it has none.

A run that loads the OM from its default path (no ``model_file=``) checks it with :func:`check_om`:
another value of an export key or, for an AIPP OM, of an AIPP key (the device would normalise with the
convert-time values), other dynamic-batch gears, other ``weights=`` than the OM was made from,
an OM whose bytes changed since ``convert`` wrote it, or an OM older than the pending ``atc`` script is
refused with one line naming what differs, instead of scoring another model than the config says; so is a
gear plan changed, removed or put beside the OM since ``convert`` (the backend would pad inputs to gears the
OM was not compiled for, or treat a fixed-size OM as one with gears).
ATC-only settings (``atc.soc_version``, ``atc.extra``, ...) are recorded, not compared: a run on the
device does not repeat them. An OM without a record (put there by hand) is loaded with a warning.

The record is sealed (:mod:`zoo_core.runs.record_seal`). One without this user's valid seal (an older zoo's,
one edited or planted by someone else) cannot vouch for the OM: what it says still refuses the OM when it names
other settings, but otherwise the OM is loaded with the warning of an OM without a record, saying why.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo_core.api.atomic import write_json
from zoo_core.api.errors import ConfigError
from zoo_core.backends.image_gears import gears_file
from zoo_core.runs.export_keys import aipp_values, changed_keys, export_values
from zoo_core.runs.fingerprint import sha256_file
from zoo_core.runs.record_seal import seal_problem, sealed

log = logging.getLogger("zoo")

_HINT = "re-run stage=convert with this config, or pass model_file=<om> to load that file as it is"


def record_path(om: Path) -> Path:
    """``<model>_bs<N>.json`` for ``<model>_bs<N>.om``."""
    return om.with_suffix(".json")


def _settings(ctx: Any) -> dict[str, Any]:
    """What the check compares: the model's export keys, and the gears of a dynamic-batch OM."""
    cfg = ctx.cfg
    gears = cfg.atc.get("dynamic_batch")
    return {"model": ctx.model_name, "model_config": export_values(cfg.model, "ascend"),
            "dynamic_batch": [int(g) for g in gears] if gears else None}


def write_om_record(ctx: Any, om: Path, source: dict[str, Any], script: Path, converted: bool,
                    args: Sequence[str] = ()) -> Path:
    """Write ``om``'s record after ``convert`` (``converted``: ATC ran and wrote ``om``; else only its
    ``script`` was written, and an OM already at that path is recorded as the one the script replaces).

    ``source``: where the ONNX came from, e.g. ``{"kind": "export", "weights": ..., "weights_sha256": ...}``.
    ``args``: ATC's command line; with ``--insert_op_conf=<file>`` the settings also hold the values of the
    model's ``aipp_keys`` (compared by :func:`check_om`) and the record that file's path and sha256.
    """
    settings = _settings(ctx)
    conf = next((str(a).partition("=")[2] for a in args if str(a).startswith("--insert_op_conf=")), None)
    if conf is not None:
        settings["aipp"] = aipp_values(ctx.cfg.model)
    rec: dict[str, Any] = {"settings": settings, "source": source, "atc": ctx.resolved_config()["atc"],
                           "script": str(script),
                           "sha256": sha256_file(om) if converted else None}
    if conf is not None:
        rec["aipp_config"] = {"path": conf, "sha256": sha256_file(Path(conf)) if Path(conf).is_file() else None}
    plan = gears_file(om)
    rec["image_gears_sha256"] = sha256_file(plan) if plan.is_file() else None
    if not converted and om.is_file():
        rec["pending_script_replaces_sha256"] = sha256_file(om)
    path = record_path(om)
    write_json(path, sealed(rec))
    return path


def _read(path: Path) -> dict[str, Any] | None:
    from zoo_core.runs.model_files import read_record

    rec = read_record(path)
    return rec if isinstance(rec.get("settings"), dict) else None


def check_om(ctx: Any, om: Path) -> None:
    """Refuse ``om`` (loaded from its default path) when its record says it was made for another config.

    Raises :class:`ConfigError` naming what differs; logs a warning when the OM has no record, or one without
    this user's seal (which can refuse the OM, never vouch for it).
    """
    if not om.is_file():
        return  # the backend says the OM is missing, with its own hint
    path = record_path(om)
    if not path.is_file():
        log.warning("%s has no convert record (%s), so zoo cannot tell which config and weights it was converted "
                    "from; it is loaded as it is", om, path.name)
        return
    rec = _read(path)
    if rec is None:
        raise ConfigError(f"{om.name}'s convert record {path} is unreadable", hint=_HINT)
    was, now = rec["settings"], _settings(ctx)
    diffs = []
    if was.get("model") != now["model"]:
        diffs.append(f"model: {was.get('model')!r} -> {now['model']!r}")
    old_cfg = was.get("model_config")
    diffs += changed_keys(old_cfg if isinstance(old_cfg, dict) else {}, now["model_config"])
    if isinstance(was.get("aipp"), dict):  # normalisation compiled into the OM: the host no longer applies it
        diffs += [f"AIPP {d}" for d in changed_keys(was["aipp"], aipp_values(ctx.cfg.model))]
    if om.stem.endswith("_dyn") and was.get("dynamic_batch") != now["dynamic_batch"]:
        diffs.append(f"atc.dynamic_batch: {was.get('dynamic_batch')!r} -> {now['dynamic_batch']!r}")
    diffs += _weights_diff(ctx, rec.get("source"))
    diffs += _calibration_diff(ctx, rec.get("source"))
    if diffs:
        raise ConfigError(f"{om} was converted with other settings than this run's ({'; '.join(diffs)})", hint=_HINT)
    _check_gears(om, rec)
    replaced = rec.get("pending_script_replaces_sha256")
    recorded = rec.get("sha256")
    if replaced is not None or recorded is not None:
        sha = sha256_file(om)
        if replaced is not None and sha == replaced:
            raise ConfigError(f"{om} predates its convert script: stage=convert wrote the atc command for this "
                              f"config to {rec.get('script')} but it has not been run",
                              hint="run that script on a machine with the CANN toolkit, "
                              "or pass model_file=<om> to load the old OM as it is")
        if recorded is not None and sha != recorded:
            raise ConfigError(f"{om} no longer matches the sha256 recorded when stage=convert wrote it "
                              f"({recorded[:12]} -> {sha[:12]})", hint=_HINT)
    unsealed = seal_problem(rec)  # checked last: what an unsealed record says can refuse the OM, never vouch for it
    if unsealed is not None:
        log.warning("%s's convert record %s was not written by this user's zoo (%s), so zoo cannot tell which config "
                    "and weights the OM was converted from; it is loaded as it is, like an OM without a record "
                    "(re-run stage=convert to record it)", om, path, unsealed)


def _check_gears(om: Path, rec: dict[str, Any]) -> None:
    """Refuse an image-size gear plan that is not the one ``convert`` wrote beside ``om`` (a record of an older
    zoo, which has no ``image_gears_sha256``, is not checked)."""
    if "image_gears_sha256" not in rec:
        return
    plan, recorded = gears_file(om), rec["image_gears_sha256"]
    now = sha256_file(plan) if plan.is_file() else None
    if now == recorded:
        return
    if recorded is None:
        what = f"{om.name} was converted without image-size gears, but this gear plan lies beside it"
    elif now is None:
        what = f"{om.name}'s image-size gear plan, written by stage=convert, is gone"
    else:
        what = (f"{om.name}'s image-size gear plan no longer matches the sha256 recorded by stage=convert "
                f"({str(recorded)[:12]} -> {now[:12]})")
    raise ConfigError(what, path=plan, hint=_HINT)


#: What an INT8 OM's AMCT calibration is compared on (the deploy model's fingerprint, docs/quantize.md).
AMCT_CALIBRATION_KEYS = ("quantize", "dataset", "calibration_ids", "calibration_sha256")


def _calibration_diff(ctx: Any, source: Any) -> list[str]:
    """An INT8 OM calibrated otherwise than this run's ``quantize.*`` settings, dataset and calibration images
    say (the CPU INT8 model would be rebuilt; an OM cannot be, so it is refused)."""
    if not isinstance(source, dict) or source.get("kind") != "amct" or not isinstance(source.get("calibration"), dict):
        return []
    from zoo_core.quantize.amct import amct_calibration
    from zoo_core.quantize.calibration import calibration_samples

    was = source["calibration"]
    now = amct_calibration(ctx, calibration_samples(ctx))
    diffs = []
    for key in AMCT_CALIBRATION_KEYS:
        if was.get(key) == now.get(key):
            continue
        if key == "quantize" and isinstance(was.get(key), dict):
            diffs += [f"quantize.{d}" for d in changed_keys(was[key], now[key])]
        elif key == "calibration_sha256":
            if was.get("calibration_ids") == now.get("calibration_ids"):
                diffs.append("calibration images: other bytes under the same ids")
        elif key == "calibration_ids":
            diffs.append(f"calibration images: {len(was.get(key) or [])} -> {len(now[key])} (other ids)")
        else:
            diffs.append(f"{key}: {was.get(key)!r} -> {now.get(key)!r}")
    return diffs


def _weights_diff(ctx: Any, source: Any) -> list[str]:
    """``weights=<file>`` given to this run but other than the file the OM's ONNX was exported from (for an
    INT8 OM: the file of the ONNX AMCT calibrated)."""
    w = ctx.cfg.get("weights")
    if not isinstance(source, dict) or source.get("kind") not in ("export", "amct") or w is None \
            or str(w) in ("", "random") or not source.get("weights_sha256"):
        return []
    from zoo_core.runs.weights import user_weights

    path = user_weights(ctx.cfg)
    if path is None or sha256_file(path) == source.get("weights_sha256"):
        return []
    return [f"weights: {source.get('weights')!r} -> {path!r} (other bytes)"]
