"""The Hydra application behind ``zoo run``: compose, pick the stage, run it, report errors cleanly."""
from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from pathlib import Path

log = logging.getLogger("zoo")


def task(cfg):
    """Hydra task function: one stage of one model, in the run (or sweep job) dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from zoo_core.config import pinning
    from zoo_core.api.atomic import write_json, write_text
    from zoo_core.runs.context import RunContext
    from zoo_core.api.errors import ZooError
    from zoo_core.plugins.manager import ZooPluginManager
    from zoo_core.stages import get_stage

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        pinning.allow_nested_spawn()
        if multirun:
            (run_dir / "error.json").unlink(missing_ok=True)
        with pinning.pinned_job(cfg, hc) if multirun else contextlib.nullcontext():
            manager = ZooPluginManager()
            ctx = RunContext(cfg, manager, run_dir)
            result = get_stage(ctx.stage)(ctx)
            manager.notify_stage_finished(cfg=cfg, stage=ctx.stage, run_dir=run_dir, result=result)
        return result
    except (Exception, KeyboardInterrupt) as exc:
        known = isinstance(exc, ZooError)
        message = str(exc) if known else f"{type(exc).__name__}: {exc}"
        if multirun and not isinstance(exc, KeyboardInterrupt):
            write_json(run_dir / "error.json", {"error": message, "type": type(exc).__name__,
                                                "traceback": None if known else traceback.format_exc()})
            log.error("job failed: %s", message)
            return {"status": "failed", "error": message}
        if isinstance(exc, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        if not known:
            trace = run_dir / "error_traceback.txt"
            try:
                write_text(trace, traceback.format_exc())
                message += f"\n  (unexpected error; traceback in {trace})"
            except OSError:
                pass
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(getattr(exc, "exit_code", 1)) from None


def run_hydra(args: list[str]) -> int:
    """Run ``zoo run <args>`` through Hydra's own entry point (all Hydra flags work)."""
    import hydra

    from zoo_core.config import schema
    from zoo_core.config.confpaths import core_conf_dir
    from zoo_core.reports.sweep_report import LAST_SWEEP

    schema.register()
    main = hydra.main(version_base="1.3", config_path=str(core_conf_dir()), config_name="config")(task)
    saved = sys.argv
    sys.argv = ["zoo run", *args]
    LAST_SWEEP.clear()
    try:
        main()
    finally:
        sys.argv = saved
    problems = []
    if LAST_SWEEP.get("failed"):
        problems.append(f"{LAST_SWEEP['failed']} of {LAST_SWEEP['jobs']} sweep jobs failed")
    if LAST_SWEEP.get("failed_merges"):
        problems.append(f"{LAST_SWEEP['failed_merges']} of {LAST_SWEEP['merges']} shard merges failed")
    if problems:
        print(f"error: {', '.join(problems)} (see {LAST_SWEEP['report']})", file=sys.stderr)
        return 1
    return 0
