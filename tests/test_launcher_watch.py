"""A sweep job in a worker of its launcher (joblib's loky workers) stops when the launching ``zoo run -m`` is gone.

Before: ``kill -9`` of a joblib sweep left its loky workers running for minutes (reparented to PID 1), a job holding
its run dir's lock (an immediate ``resume=true`` re-run was refused, "in use by another zoo run (pid <worker>)") and
the idle ones the terminal's output. The watch's logic is tested in-process with a fake parent; one test kills a
real (stand-in) launcher.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from zoo_core.runs.launcher_watch import LAUNCHER_ENV, LauncherWatch


def _parents(*pids: int):
    """A fake ``os.getppid``: ``pids`` in turn, then 1 (reparented to init) for ever."""
    it = iter(pids)
    return lambda: next(it, 1)


def test_a_job_in_progress_is_interrupted_and_the_worker_exits_once_it_has_unwound():
    watch = LauncherWatch(4242, interval=0.001, grace=5.0)
    watch.in_job = True
    events: list[str] = []

    def interrupt():
        events.append("interrupt")
        assert watch.gone and "pid 4242" in watch.reason()

        def unwind():  # the job's clean-up (lock, run.json) takes a moment
            time.sleep(0.1)
            events.append("unwound")
            watch.in_job = False

        threading.Thread(target=unwind).start()

    watch.run(getppid=_parents(4242, 4242, 4242), interrupt=interrupt, exit_=lambda code: events.append(f"exit {code}"))
    assert events == ["interrupt", "unwound", "exit 1"]


def test_an_idle_worker_exits_at_once_and_a_live_launcher_is_left_alone():
    events: list[str] = []
    LauncherWatch(4242, interval=0.001).run(getppid=_parents(4242), interrupt=lambda: events.append("interrupt"),
                                            exit_=lambda code: events.append(f"exit {code}"))
    assert events == ["exit 1"]
    alive = LauncherWatch(4242, interval=0.001)
    t = threading.Thread(target=alive.run, kwargs={"getppid": lambda: 4242, "exit_": events.append}, daemon=True)
    t.start()
    t.join(0.2)
    assert t.is_alive() and events == ["exit 1"] and not alive.gone


def test_a_job_that_does_not_unwind_is_ended_after_the_grace_period():
    watch = LauncherWatch(4242, interval=0.001, grace=0.2)
    watch.in_job = True
    ended: list[float] = []
    t0 = time.monotonic()
    watch.run(getppid=_parents(), interrupt=lambda: None, exit_=lambda code: ended.append(time.monotonic() - t0))
    assert len(ended) == 1 and 0.2 <= ended[0] < 2


JOB = """
import sys, time
from pathlib import Path
from zoo_core.runs.launcher_watch import watched_job
from zoo_core.runs.lock import RunLock

root = Path(sys.argv[1])
with watched_job():
    with RunLock(root, "eval"):
        (root / "ready").write_text("1")
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt as exc:
            (root / "why").write_text(str(exc))
            raise
"""

LAUNCHER = """
import os, subprocess, sys, time
env = {**os.environ, sys.argv[1]: str(os.getpid())}
job = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[3]], env=env)
print(job.pid, flush=True)
time.sleep(600)
"""


def test_a_job_whose_launcher_is_killed_stops_releasing_its_lock_and_saying_why(tmp_path):
    from zoo_core.runs.lock import RunLock

    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, LAUNCHER_ENV, JOB, str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)
    try:
        job = int(launcher.stdout.readline())
        _wait_while_alive(launcher, lambda: (tmp_path / "ready").exists(), 60)
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 10
    while _running(job):
        assert time.monotonic() < deadline, "the job outlived its launcher"
        time.sleep(0.05)
    assert (tmp_path / "why").read_text().startswith(f"the sweep's launching process (zoo run -m, pid {launcher.pid}) "
                                                     f"is gone: this job stopped with it")
    with RunLock(tmp_path, "eval"):  # free again
        pass


def _wait_while_alive(proc: subprocess.Popen, done, seconds: float) -> None:
    """Until ``done()``, failing if ``proc`` exits first or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_basic_launcher_and_a_single_run_are_not_watched(monkeypatch):
    from zoo_core.runs.launcher_watch import launcher_pid

    monkeypatch.setenv(LAUNCHER_ENV, str(os.getpid()))  # the job runs in the launcher itself
    assert launcher_pid() is None
    monkeypatch.setenv(LAUNCHER_ENV, str(os.getppid() + 1 if os.getppid() > 1 else 99999))
    assert launcher_pid() is None  # not this process's parent
    monkeypatch.delenv(LAUNCHER_ENV)
    assert launcher_pid() is None
    monkeypatch.setenv(LAUNCHER_ENV, str(os.getppid()))
    assert launcher_pid() == os.getppid()


@pytest.mark.needs_torch
@pytest.mark.slow
def test_kill_9_of_a_joblib_sweep_stops_its_jobs_and_a_resume_rerun_gets_the_lock(zoo):
    """The user's case end to end: the loky workers exit within seconds (nothing of the sweep's session is left),
    each job's run.json says why it stopped, and the re-run is not refused as "in use by another zoo run"."""
    sweep = zoo.cwd / "sweep"
    args = ["model=fixture", "stage=eval", "batch_size=1,2", "num_workers=0", "model.preprocess_delay_ms=300",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    launcher = subprocess.Popen([sys.executable, "-m", "zoo_core.cli", "run", "-m", *args], cwd=zoo.cwd,
                                env=zoo.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    records = [sweep / job / "eval" / "run.json" for job in ("0", "1")]
    try:
        _wait_while_alive(launcher, lambda: all(r.exists() for r in records), 120)
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 20
    try:
        while left := [pid for pid in _session(launcher.pid) if _running(pid)]:
            assert time.monotonic() < deadline, f"still running after the launcher was killed: {left}"
            time.sleep(0.1)
    finally:  # (this test's own processes only: the sweep's session)
        for pid in _session(launcher.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for r in records:
        record = json.loads(r.read_text())
        assert record["status"] == "failed" and "launching process (zoo run -m, pid" in record["error"], record
    rc, out, err = zoo("run", "-m", *args[:3], "num_workers=0", "dataset.limit=2", f"hydra.sweep.dir={sweep}",
                       "resume=true")
    assert rc == 0 and "in use by another zoo run" not in err, err


def _session(sid: int) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and int((p / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                pids.append(int(p.name))
        except (OSError, ValueError, IndexError):
            pass
    return pids
