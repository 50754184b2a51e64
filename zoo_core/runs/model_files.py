"""Find or produce the model file a backend loads (exported ONNX, converted OM)."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from zoo_core.api.atomic import temp_path, write_json
from zoo_core.api.checkpoint import MAX_RECORD_BYTES, read_at_most, regular_file
from zoo_core.api.errors import ZooError
from zoo_core.runs.export_keys import changed_keys, export_values
from zoo_core.runs.fingerprint import PRODUCER_KEYS, file_record, producer_versions, sha256_file, version_change
from zoo_core.runs.record_seal import SEAL, seal_problem, sealed
from zoo_core.runs.weights import WeightsChoice

log = logging.getLogger("zoo")


def export_fingerprint(ctx, target: str, choice: WeightsChoice | None = None) -> dict:
    """What an export depends on: model, target, the plugin's distribution and version and zoo-core's
    version (an upgraded exporter re-exports), the plugin's export keys (``model.export_keys``, see
    :mod:`zoo_core.runs.export_keys`), the run-level ``export`` section and the weights (a file by its
    sha256 wherever it lies, ``"default"`` or ``"random"``, see :mod:`zoo_core.runs.weights`).

    Evaluation-only keys (thresholds, evaluator choices) are not in it, so changing them reuses the
    export. Values are recorded, not hashed, so a re-export can name what changed.
    """
    choice = choice or ctx.weights_choice()
    return {
        "model": ctx.model_name,
        "target": target,
        **producer_versions(ctx.hooks.info),
        "model_config": export_values(ctx.cfg.model, target),
        "export_config": {f"export.{k}": v for k, v in sorted(ctx.resolved_config()["export"].items())
                          if k != "target"},
        "weights": "file" if choice.source == "file" else choice.label,  # a file counts by its bytes, not its path
        "weights_sha256": sha256_file(choice.path) if choice.path else None,
    }


def _why_stale(old: dict, new: dict) -> str:
    """What differs between a recorded export fingerprint and this run's, in words."""
    reasons = []
    for section in ("model_config", "export_config"):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            reasons += changed_keys(a, b)
        elif a != b:
            reasons.append(f"{section} (recorded in an older format)")
    for key in ("model", "target", "plugin", "zoo_core", "weights", "weights_sha256"):
        if old.get(key) != new.get(key):
            reasons.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return "; ".join(reasons) or "its record is unreadable"


def _default_file_unchanged(rec: dict | None) -> bool:
    """The default weights file an earlier export read still has the bytes it had (or none was named)."""
    if not rec:
        return True
    p = Path(str(rec.get("path")))
    return p.is_file() and sha256_file(p) == rec.get("sha256")


def model_dir(ctx) -> Path:
    """Where exports and OMs live: ``model_dir`` (default ``<work_dir>/model``), shared by the jobs of a sweep.

    The default ``<work_dir>/model`` is a directory zoo owns inside the run dir: a symbolic link there is a
    ZooError (:func:`~zoo_core.runs.layout.refuse_symlink`), as for ``inputs/``, so a link planted in a prepared
    run dir never sends exports elsewhere. A ``model_dir=`` elsewhere may be a link (the user chose it)."""
    from zoo_core.runs.layout import refuse_symlink

    set_to = ctx.cfg.get("model_dir")
    given = Path(str(set_to or ctx.path("model"))).expanduser()
    work_dir = ctx.cfg.get("work_dir")
    default = Path(str(work_dir)).expanduser() / "model" if work_dir else None
    if not set_to or (default is not None and os.path.abspath(given) == os.path.abspath(default)):
        refuse_symlink(given, hint="remove the link, or pass model_dir=<its target> to keep exports there")
    return given.resolve()


def onnx_path(ctx, target: str) -> Path:
    return model_dir(ctx) / f"{ctx.model_name}_{target}.onnx"


def ensure_onnx(ctx, target: str, force: bool = False, given: str | None = None) -> Path:
    """The ONNX for ``target``: ``model_file`` if given, else a fresh-enough export in the run dir.

    An existing export is reused only if its ``.json`` fingerprint (:func:`export_fingerprint`: the
    plugin and zoo-core versions, the plugin's export keys, the export section, the weights' sha256, or
    ``default`` / ``random``)
    matches this run, the file's bytes match the sha256 recorded with it, its recorded input names are
    the plugin's ``input_spec`` names, the default weights file it was made from (if any) is unchanged and
    the record carries this user's seal (:mod:`zoo_core.runs.record_seal`: a record planted or edited by
    someone else, or written by an older zoo, is not trusted); otherwise it is re-exported, never trusted stale.
    Both decisions are logged, the re-export naming what changed. Exporting needs weights: without
    ``weights=`` and real default weights this raises (see :mod:`zoo_core.runs.weights`).
    """
    given = given or ctx.cfg.get("model_file")
    if given and str(given).endswith(".onnx") and not force:
        path = regular_file(str(given), "model file")
        note_recorded_random_weights(ctx, path)
        return path
    out = onnx_path(ctx, target)
    meta = out.with_suffix(".json")
    choice = ctx.weights_choice()
    fp = export_fingerprint(ctx, target, choice)
    if out.is_file() and meta.is_file() and not force:
        old = read_record(meta)
        recorded = old.get("fingerprint") or {}
        unsealed = seal_problem(old) if old else None  # the rest of an unsealed record is not acted on
        same_bytes = old.get("sha256") == sha256_file(out)
        default_ok = unsealed is None and _default_file_unchanged(old.get("default_weights_file"))
        spec_names = [s.name for s in ctx.hooks.input_spec(cfg=ctx.cfg)]
        names_ok = old.get("input_names") in (None, spec_names)
        if recorded == fp and same_bytes and default_ok and names_ok and unsealed is None:
            log.info("reusing %s: its export keys, export config and weights are unchanged", out)
            _name_default_file(ctx, choice, old.get("default_weights_file"))
            return out
        if not old:
            log.info("re-exporting %s: the record of %s is unreadable", ctx.model_name, out.name)
        elif unsealed is not None:
            log.warning("re-exporting %s: its record %s was not written by this user's zoo (%s), so %s is rebuilt, "
                        "not trusted", ctx.model_name, meta, unsealed, out.name)
        elif recorded != fp:
            log.info("re-exporting %s: %s was exported with other settings (%s)", ctx.model_name, out.name,
                     _why_stale(recorded, fp))
        elif not names_ok:  # exported by an older plugin version under other input names
            log.info("re-exporting %s: %s has the inputs %s, the plugin's input_spec names %s", ctx.model_name,
                     out.name, old.get("input_names"), spec_names)
        elif not same_bytes:
            log.info("re-exporting %s: %s no longer matches the sha256 recorded when it was written",
                     ctx.model_name, out.name)
        else:
            log.info("re-exporting %s: the default weights file %s was made from has changed",
                     ctx.model_name, out.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = ctx.hooks.export(cfg=ctx.cfg, weights=choice.hook_weights, output=out, target=target)
    written = Path(res.path)
    if not written.is_file():
        raise ZooError(f"the {ctx.model_name} plugin's export hook did not write the file it returned", path=written)
    default_file = file_record(res.weights) if choice.source == "default" and res.weights else None
    _name_default_file(ctx, choice, default_file)
    write_json(written.with_suffix(".json"), sealed({
        "fingerprint": fp, "sha256": sha256_file(written), "weights_file": choice.path,
        "input_names": list(res.input_names), "output_names": list(res.output_names), "target": target,
        **({"default_weights_file": default_file} if default_file else {}),
    }))
    return written


def note_recorded_random_weights(ctx, model_file: Path) -> None:
    """A given ``model_file=`` whose zoo record (the ``.json`` beside it, describing these bytes) says it
    was exported with ``weights=random`` (an export's record; an OM's convert record, whose ONNX was): warned as
    ``weights=random`` itself is, and recorded in ``run.json`` as ``"weights": "random"`` (the run chose no
    weights, but its scores mean nothing)."""
    meta = Path(model_file).with_suffix(".json")
    if ctx.weights_used is not None or not meta.is_file():
        return
    rec = read_record(meta)
    said = [part.get("weights") for part in (rec.get("fingerprint"), rec.get("source")) if isinstance(part, dict)]
    if "random" not in said or rec.get("sha256") != sha256_file(model_file):
        return
    log.warning("weights=random: %s runs with seeded random weights (model_file=%s was exported with "
                "weights=random, says %s); its outputs and scores mean nothing", ctx.model_name, model_file, meta)
    ctx.weights_used = WeightsChoice("random")


def _name_default_file(ctx, choice: WeightsChoice, rec: dict | None) -> None:
    """Say which file the plugin's default weights came from (stderr and, through the choice, run.json)."""
    if choice.source == "default" and rec:
        choice.file = rec
        log.info("default weights file: %s (sha256 %s)", rec.get("path"), str(rec.get("sha256", "?"))[:16])


def om_path(ctx, batch_size: int | None = None, dynamic: bool = False) -> Path:
    """Where ``stage=convert`` writes the OM: ``<model_dir>/<model>_bs<N>.om`` or ``_dyn.om``
    (``<model>_int8_bs<N>.om`` from the AMCT model with ``quantize=int8``: ATC takes no dynamic-shape flag
    for a quantized deploy model, so there is no ``_int8_dyn.om``)."""
    name = f"{ctx.model_name}_int8" if quantize_int8(ctx) else ctx.model_name
    if dynamic:
        return model_dir(ctx) / f"{name}_dyn.om"
    return model_dir(ctx) / f"{name}_bs{int(batch_size or ctx.cfg.batch_size)}.om"


def quantize_int8(ctx) -> bool:
    """``quantize=int8``: the run uses the INT8 model (docs/quantize.md)."""
    q = ctx.cfg.get("quantize")
    return q is not None and str(q.get("name", "none")) == "int8"


def int8_onnx_path(ctx) -> Path:
    """The onnxruntime INT8 model, next to the FP32 export: ``<model_dir>/<model>_onnxruntime_int8.onnx``."""
    return model_dir(ctx) / f"{ctx.model_name}_onnxruntime_int8.onnx"


def amct_tag(ctx) -> str:
    """The tag of the AMCT files (``amct_<tag>.sh``, ``amct_<tag>/``): the calibration batch, as ATC's."""
    return "bs1"


def amct_save_prefix(ctx) -> Path:
    """AMCT's ``--save_path`` (a directory plus the model-name prefix of the files it writes)."""
    return model_dir(ctx) / f"amct_{amct_tag(ctx)}" / ctx.model_name


def amct_deploy_model(ctx) -> Path:
    """The deployable model AMCT writes for ATC: ``<save_path>_deploy_model.onnx`` (AMCT save_model docs)."""
    prefix = amct_save_prefix(ctx)
    return prefix.with_name(f"{prefix.name}_deploy_model.onnx")


#: The types of the keys zoo reads from a model file's record (``None`` is allowed too).
_RECORD_TYPES: dict[str, type] = {"fingerprint": dict, "sha256": str, "weights_file": str, "default_weights_file": dict,
                                  "input_names": list, "calibration": dict, "settings": dict,
                                  "pending_script_replaces_sha256": str, SEAL: str}


def read_record(meta: Path) -> dict:
    """A model file's ``.json`` record; ``{}`` (logged) when it is not a JSON object or one of the keys zoo
    reads has another type (a ``"fingerprint"`` list, a ``"sha256"`` number): the file is then rebuilt,
    never trusted. So is one that exists but is not a regular file (a FIFO, a device: never opened)."""
    if meta.exists() and not meta.is_file():
        log.info("%s: not a regular file; what it describes is not trusted", meta)
        return {}
    try:
        old = json.loads(read_at_most(meta, MAX_RECORD_BYTES, "model file record"))
    except ZooError as exc:  # (over MAX_RECORD_BYTES: unread)
        log.info("%s; what it describes is not trusted", exc)
        return {}
    except (ValueError, RecursionError):
        log.info("%s: not a JSON record zoo can read; what it describes is not trusted", meta)
        return {}
    if not isinstance(old, dict):
        log.info("%s: not a JSON object; what it describes is not trusted", meta)
        return {}
    for key, kind in _RECORD_TYPES.items():
        if old.get(key) is not None and not isinstance(old[key], kind):
            log.info("%s: its %r is a %s, not a JSON %s; what it describes is not trusted", meta, key,
                     type(old[key]).__name__, "object" if kind is dict else "list" if kind is list else "string")
            return {}
    return old


def reusable(out: Path, fingerprint: dict, what: str) -> bool:
    """True when ``out`` and its ``.json`` record exist, the record's seal is valid
    (:mod:`zoo_core.runs.record_seal`: written by this user's zoo), the recorded fingerprint equals ``fingerprint``
    and the file's bytes still match the recorded sha256; the decision is logged with what changed."""
    return reusable_record(out, fingerprint, what) is not None


def reusable_record(out: Path, fingerprint: dict, what: str, data: Path | None = None) -> dict | None:
    """:func:`reusable`, returning the record read (``None``: not reusable). ``data``: the file whose bytes are
    checked against the record's sha256 (default ``out``), e.g. a link to ``out`` taken before the record is read
    (:func:`link_model_file`), so the bytes checked are the bytes then used even if another run (a job of a
    parallel sweep sharing ``model_dir``) replaces ``out`` meanwhile."""
    meta = out.with_suffix(".json")
    data = data or out
    if not (data.is_file() and meta.is_file()):
        return None
    old = read_record(meta)
    recorded = old.get("fingerprint") or {}
    unsealed = seal_problem(old) if old else None
    if recorded == fingerprint and old.get("sha256") == sha256_file(data) and unsealed is None:
        log.info("reusing %s: its %s inputs are unchanged", out, what)
        return old
    if not old:
        log.info("rebuilding %s: its record is unreadable", out.name)
    elif unsealed is not None:
        log.warning("rebuilding %s: its record %s was not written by this user's zoo (%s), so it is not trusted",
                    out.name, meta, unsealed)
    elif recorded != fingerprint:
        older = "its record was written by an older zoo"
        changed = [version_change(k, recorded, fingerprint, older) if k in (*PRODUCER_KEYS, "quantizer") else k
                   for k in sorted(set(recorded) | set(fingerprint)) if recorded.get(k) != fingerprint.get(k)]
        log.info("rebuilding %s: it was built with other %s inputs (%s)", out.name, what, ", ".join(changed))
    else:
        log.info("rebuilding %s: it no longer matches the sha256 recorded when it was written", out.name)
    return None


def link_model_file(src: Path, dst: Path) -> Path:
    """Make ``dst`` (atomically) a hard link to the bytes ``src`` names now, or a copy of them where the file
    system refuses the link (``model_dir`` on another one). zoo replaces a file of ``model_dir`` by a rename,
    never in place, so ``dst`` keeps these bytes whatever another run writes at ``src`` later."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # EXDEV, EPERM (no hard links there): the same bytes, copied
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def resolve_model_file(ctx, kind: str | None, given: str | None = None) -> Path | None:
    """The model file a backend of ``kind`` loads: ``given`` (or ``model_file=``) if set, else the
    export (``onnx``, re-exported when stale) or the converted OM (``om``, refused when its convert record
    names other settings: :mod:`zoo_core.runs.om_record`)."""
    given = given or ctx.cfg.get("model_file")
    if kind == "onnx":
        if given and not str(given).endswith(".onnx"):
            raise ZooError(f"model_file={given} is not an .onnx file, which this backend needs")
        return ensure_onnx(ctx, "onnxruntime", given=given)
    if kind == "om":
        if given:
            path = Path(str(given)).expanduser()
            if path.is_file():
                note_recorded_random_weights(ctx, path)
            return path
        from zoo_core.runs.om_record import check_om

        om = om_path(ctx, dynamic=bool(ctx.cfg.backend.get("dynamic_batch", False)))
        check_om(ctx, om)
        return om
    return Path(str(given)).expanduser() if given else None
