"""The Hydra application behind ``zoo run``: compose, pick the stage, run it, report errors cleanly."""
from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from pathlib import Path

from zoo_core.api.errors import in_chain
from zoo_core.printable import printable
from zoo_core.runs.layout import refuse_links  # (here too: zoo's CLI calls it before a single run)
from zoo_core.runs.storage import storage_error  # (zoo_core.cli imports it from here)

log = logging.getLogger("zoo")


def task(cfg):
    """Hydra task function: one stage of one model. Hydra's output dir is the stage's record dir;
    its parent is the run root (``work_dir`` in a single run, the job dir in a sweep). A sweep job run in a
    child of the launching ``zoo run -m`` (a joblib worker) stops when that process is gone
    (:mod:`zoo_core.runs.launcher_watch`)."""
    from zoo_core.runs.launcher_watch import watched_job

    with watched_job():
        return _task(cfg)


def _task(cfg):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from zoo_core.api.atomic import write_json, write_text
    from zoo_core.api.errors import ConfigError, PluginHookError, ZooError
    from zoo_core.config import pinning
    from zoo_core.config.plugin_schema import apply_schemas
    from zoo_core.plugins import get_manager
    from zoo_core.runs.context import RunContext
    from zoo_core.runs.lock import RunDirInUse, report_takeovers
    from zoo_core.runs.run_stage import interrupted, run_stage

    hc = HydraConfig.get()
    record_dir = Path(hc.runtime.output_dir)
    ctx = None
    multirun = hc.mode == RunMode.MULTIRUN
    logging.captureWarnings(True)  # evaluator warnings reach the console and zoo.log as "warning: ..."
    report_takeovers()  # a stale lock of a killed run, taken before this job's logging was set up
    try:
        pinning.allow_nested_spawn()
        if multirun:
            (record_dir / "error.json").unlink(missing_ok=True)
        elif record_dir.resolve() != (Path(str(cfg.work_dir)) / str(cfg.stage.name)).resolve():
            raise ConfigError(f"hydra.run.dir is set by zoo ({cfg.work_dir}/<stage>): pass work_dir=<dir> "
                              f"instead, which moves the records and model_dir together")
        choices = hc.runtime.choices
        apply_schemas(cfg, str(choices.get("model")), choices.get("dataset"))  # each sweep job's values typed
        with pinning.pinned_job(cfg, hc) if multirun else contextlib.nullcontext():
            ctx = RunContext(cfg, get_manager(), record_dir.parent, record_dir)
            return run_stage(ctx)
    except (Exception, KeyboardInterrupt) as exc:
        from zoo_core.pipeline.workers import HookTraceback

        if interrupted(exc):  # a Ctrl-C, or an error it caused (`import onnxruntime` cut short: ImportError)
            exc = exc if isinstance(exc, KeyboardInterrupt) else KeyboardInterrupt()
        exc = storage_error(exc) or exc
        known = isinstance(exc, ZooError)
        # a bug met on one item (a plugin's preprocess, in a worker or not) stops the run as that item's error
        # (exit 2); the traceback formatted where it happened is the cause, kept like any bug's
        remote = exc.__cause__ if isinstance(exc.__cause__, HookTraceback) else None
        plugin_bug = isinstance(exc, PluginHookError) or bool(remote and remote.plugin)
        message = str(exc) if known else f"{type(exc).__name__}: {exc}"
        keep_trace = plugin_bug or not known or remote is not None
        if multirun and isinstance(exc, RunDirInUse):  # (with zoo's job logging, refused before Hydra wrote)
            raise  # the holder's record dir: nothing written into it; the sweep stops (launcher_stopped)
        if ctx is not None and not _same_record_dir(ctx):  # replaced during the run: nothing written through it
            keep_trace = False
            if multirun:
                log.error("job failed: %s", message)
                return {"status": "failed", "error": message}
        if multirun and not isinstance(exc, KeyboardInterrupt):
            write_json(record_dir / "error.json", {"error": message, "type": type(exc).__name__,
                                                   "traceback": traceback.format_exc() if keep_trace else None})
            log.error("job failed: %s", message)
            return {"status": "failed", "error": message}
        if isinstance(exc, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        if keep_trace:
            trace = record_dir / "error_traceback.txt"
            try:
                write_text(trace, traceback.format_exc())
                what = "a bug in the plugin" if plugin_bug else "unexpected error"
                message += f"\n  ({what}; traceback in {trace})"
            except OSError:
                pass
        print(f"error: {printable(message)}", file=sys.stderr)
        raise SystemExit(getattr(exc, "exit_code", 1)) from None


def _same_record_dir(ctx) -> bool:
    """The run's record dir is still the one it started with (not replaced by a link during the run)."""
    from zoo_core.api.errors import ZooError

    try:
        ctx.record_pinned.check()
    except (ZooError, OSError):
        return False
    return True


def single_run(args: list[str]) -> bool:
    """Whether ``zoo run <args>`` is one plain run: overrides only, no Hydra flag, no ``hydra`` key."""
    return all("=" in a and not a.startswith("-") and not a.lstrip("+~").startswith("hydra") for a in args)


def run_single(overrides: list[str]) -> int:
    """One run of ``zoo run <overrides>`` (see :func:`single_run`) on one composition of the config.

    ``hydra.main`` composes the same config three times for a single run (zoo's check, Hydra's
    ``get_mode``, Hydra's ``run``; about 0.2 s each). Here it is composed once, checked as
    :func:`zoo_core.config.validate.compose` checks it (the same messages), and handed to Hydra's own
    job runner with the callbacks ``Hydra.run`` would call, so the records (``.hydra/``, ``zoo.log``)
    are the same.
    """
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import run_job
    from hydra.types import HydraContext, RunMode

    from zoo_core.api.errors import ZooError
    from zoo_core.cli import check_run_dirs
    from zoo_core.config.confpaths import core_conf_dir
    from zoo_core.config.validate import check_typed, composition_error, precheck
    from zoo_core.runs.lock import held_for_stage

    precheck(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(core_conf_dir()), version_base="1.3", job_name="app"):
            hydra = GlobalHydra.instance().hydra
            assert hydra is not None
            try:
                cfg = hydra.compose_config("config", [*overrides, "hydra.mode=RUN"], run_mode=RunMode.RUN,
                                           with_log_configuration=True)
            except ZooError:
                raise
            except Exception as exc:
                raise composition_error(exc, overrides) from None
            check_typed(cfg)
            check_run_dirs(cfg)
            record_dir = Path(str(cfg.work_dir)).expanduser() / str(cfg.stage.name)
            with held_for_stage(Path(str(cfg.work_dir)).expanduser(), str(cfg.stage.name)):
                refuse_links(record_dir)
                callbacks = Callbacks(cfg)
                callbacks.on_run_start(config=cfg, config_name="config")
                started: list[str] = []  # "started", then "finished" once the task returned (its run.json: ok)
                before = _hydra_records(record_dir, cfg.hydra.get("output_subdir"))

                def job(task_cfg):
                    started.append("started")
                    result = task(task_cfg)
                    started.append("finished")
                    return result

                try:
                    ret = run_job(hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks),
                                  task_function=job, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None)
                    callbacks.on_run_end(config=cfg, config_name="config", job_return=ret)
                except OSError as exc:
                    if started:
                        raise
                    raise hydra_files_error(exc, record_dir, cfg.hydra.get("output_subdir"), before) from None
                except KeyboardInterrupt:  # a Ctrl-C while Hydra closes a finished run: it stays finished
                    if "finished" not in started:
                        raise
                    log.warning("interrupted after the run finished: its records are complete (%s says ok)",
                                record_dir / "run.json")
                    return 0
                ret.return_value  # noqa: B018 - re-raises what the task raised
    finally:
        GlobalHydra.instance().clear()
    return 0


#: The files Hydra's ``run_job`` writes into ``<record dir>/<hydra.output_subdir>/`` before the task runs.
_HYDRA_RECORDS = ("config.yaml", "hydra.yaml", "overrides.yaml")


def _hydra_records(record_dir: Path, subdir: str | None) -> dict[str, tuple[int, int, int] | None]:
    """Each of :data:`_HYDRA_RECORDS` in ``<record dir>/<subdir>/``: its (inode, size, mtime), or None."""
    out: dict[str, tuple[int, int, int] | None] = {}
    for name in _HYDRA_RECORDS if subdir else ():
        try:
            st = (record_dir / str(subdir) / name).lstat()
            out[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            out[name] = None
    return out


def hydra_files_error(exc: OSError, record_dir: Path, subdir: str | None,
                      before: dict[str, tuple[int, int, int] | None]) -> BaseException:
    """What to raise for ``exc``, met by Hydra before the stage ran: making the record dir, writing
    ``.hydra/*.yaml`` (a ``write`` on a full disk names no file: ``<record dir>/.hydra/`` is named).

    The yaml files this run wrote (those not as ``before`` saw them: :func:`_hydra_records`) are removed,
    whole or cut short: they describe a run that never ran. (This run holds the run dir, and
    :func:`refuse_links` refused links there; an earlier run's files Hydra did not reach are kept.)"""
    hydra_dir = record_dir / subdir if subdir else None
    written = []  # (Hydra writes them in order: the last one is the one it was writing)
    if hydra_dir is not None:
        after = _hydra_records(record_dir, subdir)
        written = [name for name, seen in after.items() if seen is not None and seen != before.get(name)]
        for name in written:
            with contextlib.suppress(OSError):
                (hydra_dir / name).unlink()
    error = storage_error(exc)
    if error is None or exc.filename is not None:
        return error or exc
    from zoo_core.api.errors import ZooError

    where = hydra_dir / written[-1] if hydra_dir is not None and written else f"{hydra_dir or record_dir}/"
    return ZooError(f"{exc.strerror or exc} (Hydra's record of the run's config; this run's .hydra files "
                    f"are removed)" if written else f"{exc.strerror or exc}", path=where)


@contextlib.contextmanager
def _environ(values: dict[str, str | None]):
    """Set (or with None remove) environment variables for the block; put the old values back after it."""
    import os

    def put(items: dict[str, str | None]) -> None:
        for k, v in items.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    old = {k: os.environ.get(k) for k in values}
    try:
        put(values)
        yield
    finally:
        put(old)


def run_hydra(args: list[str]) -> int:
    """Run ``zoo run <args>`` through Hydra's own entry point (all Hydra flags work).

    A multirun's sweep report is built by the ``SweepReport`` callback at its end. When the launcher
    raises instead (a job's process was killed, no Slurm here...), Hydra never calls that end: Hydra is
    told to re-raise (``HYDRA_FULL_ERROR``) and :func:`launcher_stopped` builds the report of what ran
    and says in one line what stopped the sweep (exit 1; exit 2 when no job ran).
    """
    import json
    import os
    import tempfile

    import hydra

    from zoo_core.config import schema
    from zoo_core.config.confpaths import core_conf_dir
    from zoo_core.config.pinning import SWEEP_JOBS_ENV, planned_jobs
    from zoo_core.reports.sweep_report import STATUS_ENV
    from zoo_core.runs.launcher_watch import LAUNCHER_ENV
    from zoo_core.runs.lock import SweepRefused

    schema.register()
    main = hydra.main(version_base="1.3", config_path=str(core_conf_dir()), config_name="config")(task)
    multirun = any(a.split("=", 1)[0] in ("-m", "--multirun") for a in args if a.startswith("-"))
    saved = sys.argv
    sys.argv = ["zoo run", *args]
    fd, status_path = tempfile.mkstemp(prefix="zoo-sweep-", suffix=".json")
    os.close(fd)
    os.unlink(status_path)
    env: dict[str, str | None] = {STATUS_ENV: status_path}
    planned = None
    if multirun:
        env[LAUNCHER_ENV] = str(os.getpid())  # a job in a worker of the launcher stops when this process is gone
        env["HYDRA_FULL_ERROR"] = "1"  # a launcher's exception reaches launcher_stopped, not Hydra's printer
        planned = planned_jobs(args)
        env[SWEEP_JOBS_ENV] = str(len(planned)) if planned else None
    try:
        with _environ(env):
            try:
                main()
            except SweepRefused as refused:  # another sweep holds the sweep dir: nothing of this one written
                raise refused.error from None
            except Exception as exc:
                if not multirun:
                    raise
                return launcher_stopped(exc, Path(status_path), planned)
        status = json.loads(Path(status_path).read_text()) if os.path.exists(status_path) else {}
    finally:
        sys.argv = saved
        if os.path.exists(status_path):
            os.unlink(status_path)
    if status.get("error"):
        print(f"error: {printable(status['error'])}", file=sys.stderr)
        return 1
    problems = []
    if status.get("failed"):
        problems.append(f"{status['failed']} of {status['jobs']} sweep jobs failed")
    if status.get("failed_merges"):
        problems.append(f"{status['failed_merges']} of {status['merges']} shard merges failed")
    if problems:
        print(f"error: {', '.join(problems)} (see {status['report']})", file=sys.stderr)
        return 1
    return 0


def _chain_text(exc: BaseException | None) -> str:
    """The messages of ``exc`` and its causes: a job's error that came back from another process as text
    (joblib's remote traceback, submitit's ``FailedJobError``)."""
    texts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(texts)


def launcher_stopped(exc: BaseException, status_path: Path, planned: list[list[str]] | None = None) -> int:
    """A multirun's launcher raised: build the sweep report of the jobs that ran (it names the jobs without
    a result, and those never started, with the command that runs each), print one line naming the
    launcher and the error. ``planned``: each job's overrides, if known (:func:`pinning.planned_jobs`).
    Returns 1, or 2 when no job ran (the launcher could not start any)."""
    from zoo_core.api.errors import ZooError
    from zoo_core.reports.sweep_report import build_report, read_json
    from zoo_core.runs.lock import JobRefused, RunDirInUse

    in_use = in_chain(exc, RunDirInUse) or RunDirInUse.from_text(_chain_text(exc))
    if in_use is not None:  # another run holds a job dir: that run is writing this sweep; no report from here
        raise RunDirInUse(in_use.root, in_use.who, hint="the sweep stopped at that job; zoo wrote nothing into it "
                          "(with a hydra/job_logging other than zoo's, Hydra has rewritten its .hydra/); wait for that "
                          "run to finish, or pass another hydra.sweep.dir=")
    refused = in_chain(exc, JobRefused) or JobRefused.from_text(_chain_text(exc))
    if refused is not None:  # a link planted in a job's record dir: the sweep stops there, nothing written through it
        raise refused
    status = read_json(status_path) or {}
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if "sweep_dir" not in status:  # before the sweep started (Hydra's composition): not the launcher's doing
        if isinstance(exc, ZooError):
            raise exc
        print(f"error: {printable(what)}", file=sys.stderr)
        return 1
    launcher = f"hydra/launcher={status.get('launcher') or 'basic'}"
    sweep_dir = Path(str(status["sweep_dir"]))
    summary: dict = {"jobs": 0}
    if sweep_dir.is_dir():
        try:
            summary = build_report(sweep_dir, stopped=f"{launcher} raised {what}", planned=planned)
        except Exception as report_exc:
            log.warning("could not build the sweep report: %s", report_exc)
    if not summary["jobs"]:
        print(f"error: {launcher}: {printable(first or what)}", file=sys.stderr)
        return 2
    total = max(len(planned or []), summary["jobs"])
    undone = summary["no_result"] + total - summary["jobs"]
    print(f"error: {launcher} stopped the sweep: {printable(what)} ({undone} of {total} jobs without a result, "
          f"{summary['failed']} failed; see {summary['report']})", file=sys.stderr)
    return 1
