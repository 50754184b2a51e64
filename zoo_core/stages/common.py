"""Helpers shared by stages: backends, run records, result files, skip policy."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..atomic import write_bytes, write_json
from ..errors import ZooError
from ..fingerprint import versions

log = logging.getLogger("zoo")


def make_backend(ctx):
    name = str(ctx.cfg.backend.name)
    cls = ctx.manager.backend_class(name)
    return cls(ctx)


def skip_policy(ctx) -> bool:
    return str(ctx.cfg.on_error).split(".")[-1] == "skip"


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


def write_run_record(ctx, extra: dict | None = None) -> Path:
    """``run.json``: config, versions, stage and backend facts, so a result can be traced."""
    rec = {
        "stage": ctx.stage,
        "model": ctx.model_name,
        "versions": versions(ctx.hooks.info.distribution),
        "config": ctx.resolved_config(),
    }
    if extra:
        rec.update(extra)
    return write_json(ctx.path("run.json"), rec)


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
