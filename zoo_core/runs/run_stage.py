"""Run one stage in its run root: lock the root, own the record dir, record the run, notify observers."""
from __future__ import annotations

import contextlib
import logging
from typing import Any

from zoo_core.api.atomic import sweep_stale_temps
from zoo_core.runs.context import RunContext
from zoo_core.runs.layout import HYDRA_FILES, clear_dir
from zoo_core.runs.lock import RunLock
from zoo_core.runs.model_files import model_dir
from zoo_core.runs.records import write_run_record
from zoo_core.runs.weights import preflight as preflight_weights

log = logging.getLogger("zoo")


def run_stage(ctx: RunContext) -> dict[str, Any]:
    """Run ``ctx.stage`` with the root locked; return the stage's summary.

    The record dir belongs to this stage run: what an earlier run of the stage left there is removed
    first (Hydra's ``.hydra/`` and ``zoo.log`` of this run excepted). ``run.json`` says ``running``
    while the stage runs and ``ok`` or ``failed`` (with the error) at the end.
    """
    from zoo_core.stages import get_stage

    stage = get_stage(ctx.stage)
    with RunLock(ctx.root, ctx.stage, reenter=True):  # (zoo run may hold it already: cli/app.py)
        for d in (ctx.root, model_dir(ctx)):
            for p in sweep_stale_temps(d):
                log.info("removed %s, left by a killed run", p)
        ctx.record_dir.mkdir(parents=True, exist_ok=True)
        clear_dir(ctx.record_dir, keep=HYDRA_FILES)
        write_run_record(ctx, {"status": "running"})
        try:
            preflight_weights(ctx)
            result = stage(ctx)
        except BaseException as exc:
            _record_failure(ctx, exc)
            raise
        backend = result.get("backend") if isinstance(result.get("backend"), dict) else None
        write_run_record(ctx, {"status": "ok", **ctx.notes, **({"backend": backend} if backend else {})})
        _write_html_report(ctx)
    ctx.manager.notify_stage_finished(cfg=ctx.cfg, stage=ctx.stage, run_dir=ctx.record_dir, result=result)
    return result


def _record_failure(ctx: RunContext, exc: BaseException) -> None:
    """``run.json`` says ``failed``. When it cannot be written (a full disk), the stage's partial records
    are removed first (Hydra's files kept) and it is tried again, so the run never looks unfinished;
    the original error matters more than its record, so nothing here raises."""
    record = {"status": "failed", "error": str(exc) or type(exc).__name__}
    try:
        write_run_record(ctx, record)
        return
    except Exception:
        pass
    with contextlib.suppress(Exception):  # (said in run.json only: the error stays the one line printed)
        clear_dir(ctx.record_dir, keep=HYDRA_FILES)
        write_run_record(ctx, {**record, "partial_records_removed": True})


def _write_html_report(ctx: RunContext) -> None:
    """``report.html`` next to the stage's records; a report problem never fails the run."""
    try:
        from zoo_core.reports.html import write_report

        write_report(ctx.record_dir)
    except Exception as exc:
        log.warning("could not write %s: %s", ctx.record("report.html"), exc)
