"""Helpers shared by stages: backends, run records, result files, skip policy."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from zoo_core.api.atomic import write_bytes, write_json
from zoo_core.api.errors import ZooError
from zoo_core.runs.fingerprint import config_hash, dataset_files, file_record, model_config_hash, sha256_file, versions

log = logging.getLogger("zoo")


def make_backend(ctx):
    name = str(ctx.cfg.backend.name)
    cls = ctx.manager.backend_class(name)
    return cls(ctx)


def write_result_files(ctx, files: dict[str, bytes]) -> list[str]:
    written = []
    root = ctx.run_dir.resolve()
    for rel, data in files.items():
        p = (ctx.run_dir / rel).resolve()
        if root not in p.parents:
            raise ZooError(f"the {ctx.model_name} plugin asked to write {rel!r}, outside the run dir")
        write_bytes(p, data)
        written.append(rel)
    return written


def finish_with_skips(ctx, skipped: list[dict]) -> None:
    """With skips: exit non-zero unless ``allow_skips=true`` (the files were already written)."""
    if skipped and not bool(ctx.cfg.allow_skips):
        raise ZooError(f"{len(skipped)} input(s) were skipped (listed in metrics.json); "
                       f"pass allow_skips=true to accept a run with skips")


def input_records(ctx, model_file: str | None = None) -> dict:
    """Path, size and sha256 of the weights, the model file and (if loaded) the dataset's annotations."""
    out = {}
    w = ctx.weights()
    if w:
        out["weights"] = file_record(w)
    if model_file and Path(model_file).is_file():
        out["model_file"] = file_record(model_file)
    if "dataset" in ctx.__dict__:  # only a dataset this stage already loaded
        files = dataset_files(ctx.dataset)
        if files:
            out["dataset_files"] = [file_record(f) for f in files]
    return out


def write_run_record(ctx, extra: dict | None = None) -> Path:
    """``run.json``: config, versions (zoo-core, the model's plugin, onnxruntime, torch if imported)
    and input file hashes, so a result can be traced to exactly what produced it."""
    backend = (extra or {}).get("backend") or {}
    rec = {
        "stage": ctx.stage,
        "model": ctx.model_name,
        "versions": versions(ctx.hooks.info.distribution),
        "config": ctx.resolved_config(),
        "inputs": input_records(ctx, backend.get("model_file") if isinstance(backend, dict) else None),
    }
    if extra:
        rec.update(extra)
    return write_json(ctx.path("run.json"), rec)


def discard_stale_results(ctx) -> None:
    """Remove a previous run's ``metrics.json`` so that a failing run never leaves one that looks current."""
    ctx.path("metrics.json").unlink(missing_ok=True)


def artifact_fingerprint(ctx, model_file: str | None = None, **parts) -> dict:
    """What must not change between an interrupted run and its resumption (hashes only)."""
    w = ctx.weights()
    fp = {
        "model": model_config_hash(ctx.cfg.model),
        "dataset": config_hash(ctx.cfg.dataset),
        "weights_sha256": sha256_file(w) if w else None,
        "model_file_sha256": sha256_file(model_file) if model_file and Path(model_file).is_file() else None,
    }
    fp.update(parts)
    return fp


def start_resumable(ctx, state_path: Path, fingerprint: dict, reset) -> bool:
    """Open a resumable artifact dir; True when resuming it (``resume=true`` and a matching state).

    When not resuming, ``reset()`` removes the old artifacts *before* the new state is written, so
    a kill in between never pairs old artifacts with a new fingerprint.
    ``state.json`` records the fingerprint (plus the model config, for ``evaluate``'s provenance
    check) and ``complete: false`` until :func:`mark_complete`. With ``resume=true`` a different
    fingerprint is refused with the list of what changed; without a state file there is nothing
    trustworthy to resume, so the caller starts over.
    """
    state_path = Path(state_path)
    resuming = False
    if bool(ctx.cfg.resume) and state_path.is_file():
        try:
            old = json.loads(state_path.read_text()).get("fingerprint", {})
        except (ValueError, AttributeError):
            raise ZooError("cannot resume: the state file is unreadable", path=state_path,
                           hint="run again without resume=true to start over") from None
        if old != fingerprint:
            changed = sorted(k for k in set(fingerprint) | set(old) if fingerprint.get(k) != old.get(k))
            raise ZooError(f"cannot resume: {', '.join(changed)} changed since the interrupted run",
                           path=state_path, hint="run again without resume=true to start over")
        resuming = True
    elif bool(ctx.cfg.resume):
        log.info("resume=true but %s does not exist: starting from the beginning", state_path)
    if not resuming:
        state_path.unlink(missing_ok=True)
        reset()
    write_json(state_path, {"stage": ctx.stage, "model_name": ctx.model_name, "fingerprint": fingerprint,
                            "model_config": ctx.resolved_config()["model"],
                            "dataset_config": ctx.resolved_config()["dataset"], "complete": False})
    return resuming


def mark_complete(state_path: Path) -> None:
    """Flag a resumable artifact dir as finished (every item written)."""
    state_path = Path(state_path)
    state = json.loads(state_path.read_text())
    state["complete"] = True
    write_json(state_path, state)


def read_meta_jsonl(path: Path) -> dict[str, dict]:
    """``inputs/meta.jsonl`` -> ``{id: record}``; a torn last line (killed run) is ignored."""
    out = {}
    if not path.is_file():
        return out
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                log.warning("%s:%d: ignoring an incomplete line (interrupted run)", path, n)
                continue
            out[rec["id"]] = rec
    return out
