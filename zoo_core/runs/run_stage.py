"""Run one stage in its run root: lock the root, own the record dir, record the run, notify observers."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import stat
from pathlib import Path
from typing import Any

from zoo_core.api.atomic import sweep_stale_temps, write_json
from zoo_core.api.errors import in_chain
from zoo_core.runs import interrupts
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
    while the stage runs and ``ok`` or ``failed`` (with the error) at the end. A Ctrl-C once it says ``ok``
    (``report.html``, the observers: the summary printed) is said and leaves the run finished; so does an
    observer that raises (a warning, listed in ``run.json["observer_errors"]``).
    """
    from zoo_core.stages import get_stage

    stage = get_stage(ctx.stage)
    with RunLock(ctx.root, ctx.stage, reenter=True):  # (zoo run may hold it already: cli/app.py)
        for d in (ctx.root, model_dir(ctx)):
            for p in sweep_stale_temps(d):
                log.info("removed %s, left by a killed run", p)
        ctx.record_dir.mkdir(parents=True, exist_ok=True)
        clear_dir(ctx.record_dir, keep=HYDRA_FILES)
        try:  # (a weights file that cannot be read to hash it fails the run, recorded as failed like any error)
            write_run_record(ctx, {"status": "running"})
            preflight_weights(ctx)
            interrupts.raise_if_pending()
            result = stage(ctx)
            interrupts.raise_if_pending()  # (one an import swallowed: the run must not say ok)
            backend = result.get("backend") if isinstance(result.get("backend"), dict) else ctx.opened_backend
            # (inside the try: a run whose "ok" cannot be written, a full disk, is recorded as failed)
            write_run_record(ctx, {"status": "ok", **ctx.notes, **({"backend": backend} if backend else {})})
        except BaseException as exc:
            _record_failure(ctx, exc)
            raise
        _write_html_report(ctx)
        try:
            failed = ctx.manager.notify_stage_finished(cfg=ctx.cfg, stage=ctx.stage, run_dir=ctx.record_dir,
                                                       result=result)
        except KeyboardInterrupt:  # (the summary on the terminal is an observer): the run stays the finished run
            log.warning("interrupted after the run finished: its records are complete (%s says ok)",
                        ctx.record("run.json"))
            return result
        if failed:
            _record_observer_errors(ctx, failed)
    return result


def _record_observer_errors(ctx: RunContext, errors: list[str]) -> None:
    """An observer failed after the run's records were complete: a warning per observer and ``run.json``'s
    ``observer_errors``; the run stays ok (exit code, sweep status and merge follow run.json)."""
    for line in errors:
        log.warning("%s (the run's records are complete; it stays ok)", line)
    path = ctx.record("run.json")
    try:
        rec = json.loads(path.read_text())
        rec["observer_errors"] = errors
        write_json(path, rec)
    except Exception as exc:  # (a full disk: the warnings were said)
        log.warning("could not record the observer errors in %s: %s", path, exc)


def interrupted(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a Ctrl-C (SIGTERM unwinds as one, :mod:`zoo_core.cli`), or was raised because of one: a
    ``KeyboardInterrupt`` among its causes and contexts (``import onnxruntime`` interrupted raises
    ``ImportError: initialization failed`` from it)."""
    return in_chain(exc, KeyboardInterrupt) is not None


def _record_failure(ctx: RunContext, exc: BaseException) -> None:
    """``run.json`` says ``failed``. When it cannot be written (a full disk), the stage's partial records
    are removed (Hydra's files and ``run.json`` kept) and it is tried again; when that fails too, a minimal
    failed record is written over the ``running`` one in place (:func:`_overwrite_in_place`: no new space
    needed), so the run never looks unfinished. The original error matters more than its record, so nothing
    here raises."""
    try:
        ctx.record_pinned.check()
    except Exception:
        return  # the record dir was replaced during the run (the error says so): nothing is written through it
    chained = not isinstance(exc, KeyboardInterrupt) and interrupted(exc)  # (an error the Ctrl-C caused)
    record: dict[str, Any] = {"status": "failed",
                              "error": "KeyboardInterrupt" if chained else str(exc) or type(exc).__name__}
    try:  # (what the stage noted and the model file it opened: a gate=true failure has scored that file)
        opened = {"backend": ctx.opened_backend} if ctx.opened_backend else {}
        write_run_record(ctx, {**ctx.notes, **record, **opened})
        return
    except Exception:
        pass
    record["partial_records_removed"] = True
    try:  # (said in run.json only: the error stays the one line printed)
        clear_dir(ctx.record_dir, keep=(*HYDRA_FILES, "run.json"))
    except Exception:
        record["partial_records_removed"] = False
    try:
        write_run_record(ctx, record)
        return
    except Exception:
        pass
    with contextlib.suppress(Exception):
        minimal = {"stage": ctx.stage, "model": ctx.model_name, "root": str(ctx.root), **record,
                   "error": record["error"][:400], "minimal_record": "config, versions and inputs left out: "
                                                                      "run.json could not be written whole"}
        _overwrite_in_place(ctx.record("run.json"), json.dumps(minimal, indent=1).encode())


def _overwrite_in_place(path: Path, data: bytes) -> None:
    """Write ``data`` over the existing regular file ``path`` in place (opened without following a link, never
    a file with another hard link), padded with spaces to the old length first, so it reuses the blocks the
    file already holds (no new space on a full disk) and a kill at any point leaves valid JSON; then cut the
    padding off."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return
        padded = data + b" " * max(st.st_size - len(data) - 1, 0) + b"\n"
        view = memoryview(padded)
        while view:
            view = view[os.pwrite(fd, view, len(padded) - len(view)):]
        os.ftruncate(fd, len(data) + 1)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_html_report(ctx: RunContext) -> None:
    """``report.html`` next to the stage's records; a report problem never fails the run. Neither does a Ctrl-C
    while it is written: ``run.json`` already says ``ok`` and the records are complete, so the report is left
    out (said, with the command that writes it) and the run ends as the finished run it is (exit 0)."""
    try:
        from zoo_core.reports.html import write_report

        write_report(ctx.record_dir)
    except Exception as exc:
        log.warning("could not write %s: %s", ctx.record("report.html"), exc)
    except KeyboardInterrupt:
        log.warning("interrupted while writing %s: the run is complete without it (python -m zoo_core.reports.html "
                    "%s writes it)", ctx.record("report.html"), shlex.quote(str(ctx.record_dir)))
