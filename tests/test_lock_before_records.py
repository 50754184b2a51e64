"""A run refused because another run holds its run root writes nothing into the holder's records.

Before, the lock was taken by the stage runner, after Hydra had written the stage's ``.hydra/`` and opened
(truncated) its log: on Hydra's own path (a ``hydra.*`` override, any sweep) a refused run rewrote the
holder's ``.hydra/config.yaml`` and ``overrides.yaml``, truncated its ``zoo.log``, and a refused sweep job
wrote ``error.json`` into the holder's record dir. The holder is simulated here: the test takes the lock.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo_core.runs.lock import RunLock


def holder_records(root: Path) -> dict[Path, bytes]:
    """A finished-looking eval record dir in ``root``, as the holder wrote it; returns every file's bytes."""
    rec = root / "eval"
    (rec / ".hydra").mkdir(parents=True)
    for name, text in ((".hydra/config.yaml", "model:\n  name: fixture\n"), (".hydra/hydra.yaml", "hydra: {}\n"),
                       (".hydra/overrides.yaml", "- model=fixture\n- stage=eval\n"),
                       ("zoo.log", "[holder] running\n" * 20), ("metrics.json", '{"metrics": {"AP50": 1.0}}'),
                       ("run.json", '{"status": "running"}')):
        (rec / name).write_text(text)
    return snapshot(rec)


def snapshot(d: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_refused_run_on_hydras_path_leaves_the_holders_records_as_they_were(zoo):
    root = zoo.cwd / "run"
    before = holder_records(root)
    with RunLock(root, "eval"):
        rc, out, err = zoo("run", "model=fixture", "backend=oracle", "stage=eval", f"work_dir={root}",
                           "dataset.limit=3", "hydra.job.name=other")
    assert rc == 2, out + err
    assert err.startswith(f"error: {root}: this run directory is in use by another zoo run (pid {os.getpid()}, "
                          f"stage=eval"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # the error and its hint
    assert snapshot(root / "eval") == before  # no .hydra/ rewritten, zoo.log whole, no other.log


def test_a_refused_sweep_job_leaves_the_holders_records_as_they_were_and_the_sweep_stops(zoo):
    """Two identical sweeps on one sweep dir: the second is refused at the first job the other holds; it
    says so in one line (exit 2), writes no error.json there and runs no further job."""
    sweep = zoo.cwd / "sweep"
    before = holder_records(sweep / "0")
    with RunLock(sweep / "0", "eval"):
        rc, out, err = zoo("run", "-m", "model=fixture", "backend=oracle", "stage=eval", "dataset.num_shards=2",
                           "dataset.shard=range(0,2)", f"hydra.sweep.dir={sweep}")
    assert rc == 2, out + err
    assert err.startswith(f"error: {sweep / '0'}: this run directory is in use by another zoo run "
                          f"(pid {os.getpid()}, stage=eval"), err
    assert "the sweep stopped at that job" in err and "Traceback" not in err
    assert snapshot(sweep / "0" / "eval") == before  # no error.json, .hydra/ and zoo.log untouched
    assert not (sweep / "1").exists() and not (sweep / "sweep_report.md").exists()


def test_with_another_job_logging_a_refused_sweep_job_still_writes_no_error_json_there(zoo):
    """hydra/job_logging=default has no zoo handler to lock first: Hydra writes .hydra/ (its doing), but zoo
    writes no error.json into the holder's record dir, and the sweep stops naming the holder."""
    sweep = zoo.cwd / "sweep"
    holder_records(sweep / "0")
    (sweep / "0" / "eval" / "result.json").write_text('{"holder": true}')
    with RunLock(sweep / "0", "eval"):
        rc, out, err = zoo("run", "-m", "model=fixture", "backend=oracle", "stage=eval", "hydra/job_logging=default",
                           "dataset.num_shards=2", "dataset.shard=0", f"hydra.sweep.dir={sweep}")
    assert rc == 2 and "this run directory is in use by another zoo run" in err, out + err
    assert "Hydra has rewritten its .hydra/" in err
    assert not (sweep / "0" / "eval" / "error.json").exists()
    assert (sweep / "0" / "eval" / "result.json").read_text() == '{"holder": true}'  # (was overwritten)
    assert (sweep / "0" / "eval" / "metrics.json").read_text() == '{"metrics": {"AP50": 1.0}}'


def test_a_refusal_that_came_back_from_a_job_process_as_text_is_said_in_one_line(tmp_path):
    """joblib and submitit hand a job's error back as a traceback's text (the ValueError logging.config
    wraps it in loses its cause): the refusal is still named, not "Unable to configure handler 'file'"."""
    import pytest

    from tests.test_sweep_links import as_remote_traceback
    from zoo_core.cli.app import launcher_stopped
    from zoo_core.runs.lock import RunDirInUse

    exc = ValueError("Unable to configure handler 'file'")
    exc.__cause__ = as_remote_traceback(RunDirInUse(tmp_path / "sweep" / "0", "pid 7, stage=eval, host h"))
    with pytest.raises(RunDirInUse) as got:
        launcher_stopped(exc, tmp_path / "status.json")
    assert str(got.value).startswith(f"{tmp_path / 'sweep' / '0'}: this run directory is in use by another zoo run "
                                     f"(pid 7, stage=eval, host h)\n  hint: the sweep stopped at that job")


def test_a_second_sweep_into_a_sweep_dir_in_use_is_refused_before_it_writes_anything(zoo):
    """Two sweeps started together on one hydra.sweep.dir: the refused one rewrote multirun.yaml and emptied
    sweep_jobs.json before any job's lock, so the first sweep's report dropped its own job ("shard 0 of 2 is
    missing"). The sweep dir's own lock is now taken first; the holder's files are left as they were."""
    from zoo_core.runs.lock import SWEEP_LOCK_NAME

    sweep = zoo.cwd / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}  # the holder's\n")
    (sweep / "sweep_jobs.json").write_text('{"jobs": ["0"]}')
    before = snapshot(sweep)
    with RunLock(sweep, "sweep", name=SWEEP_LOCK_NAME):
        rc, out, err = zoo("run", "-m", "model=fixture", "backend=oracle", "stage=eval", "dataset.num_shards=2",
                           "dataset.shard=0,1", f"hydra.sweep.dir={sweep}")
    assert rc == 2 and "Traceback" not in err, out + err
    assert err.startswith(f"error: {sweep}: this run directory is in use by another zoo run (pid {os.getpid()}, "
                          "stage=sweep") and "hint: another sweep is writing into this sweep dir" in err, err
    after = snapshot(sweep)
    assert {p: b for p, b in after.items() if p.name != SWEEP_LOCK_NAME} == before
    assert not (sweep / "0").exists() and not (sweep / "1").exists()
    rc, out, err = zoo("run", "-m", "model=fixture", "backend=oracle", "stage=eval", "dataset.num_shards=2",
                       "dataset.shard=0,1", f"hydra.sweep.dir={sweep}")  # the lock is free again: it runs
    assert rc == 0, out + err


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("how", ["single", "hydra_path", pytest.param("sweep", marks=pytest.mark.slow)])
def test_taking_over_a_killed_runs_lock_is_a_zoo_warning(zoo, how):
    """Before: a run that took over the lock of a killed run said so in Hydra's log format
    (``[2026-12-07 12:40:54,376][HYDRA] .../.zoo.lock: taking over ...``), unlike every other zoo warning, and
    its zoo.log did not have it. Now: ``warning: ...`` on the console, and the line in the stage's zoo.log."""
    pid = dead_pid()
    args = ["model=fixture", "backend=oracle", "stage=eval", "dataset.limit=3"]
    if how == "sweep":
        root = zoo.cwd / "sweep" / "0"
        args = ["-m", *args, "dataset.num_shards=2", "dataset.shard=0,1", f"hydra.sweep.dir={zoo.cwd / 'sweep'}"]
    else:
        root = zoo.cwd / "run"
        args += [f"work_dir={root}"] + (["hydra.job.name=zoo"] if how == "hydra_path" else [])
    root.mkdir(parents=True)
    (root / ".zoo.lock").write_text(f'{{"pid": {pid}, "stage": "eval"}}\n')  # no flock held: its run was killed
    rc, out, err = zoo("run", *args)
    assert rc == 0, out + err
    note = f"{root / '.zoo.lock'}: taking over the lock of pid {pid}, which is no longer running"
    assert f"warning: {note}\n" in err and (out + err).count(note) == 1, out + err
    assert not any("[HYDRA]" in line for line in (out + err).splitlines() if note in line)
    assert note in (root / "eval" / "zoo.log").read_text()
