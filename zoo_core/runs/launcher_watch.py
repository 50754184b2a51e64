"""A sweep job run in a worker process of its launcher stops when the launching ``zoo run -m`` is gone.

joblib's launcher runs each job in a loky worker, a child of the launching process. Killed with ``kill -9``, the
launcher leaves its workers running (reparented to PID 1): a job runs on to its end holding its run dir's lock (a
``resume=true`` re-run is refused, "in use by another zoo run (pid <the worker>)"), and the idle workers wait
minutes for loky's idle timeout, holding the terminal's output. (The preprocess workers watch their parent the same
way: :func:`zoo_core.pipeline.workers._watch_parent`.)

``zoo run -m`` names itself in :data:`LAUNCHER_ENV`; a job running in a child of that process (not in the launcher
itself, as with the basic launcher) runs under :func:`watched_job`. Once the launcher is gone, the job is
interrupted like a Ctrl-C, with a ``KeyboardInterrupt`` saying why (the run's usual clean-up: the stage's lock
released, ``run.json`` ``failed`` with that reason, the job's own workers stopped), and the worker exits once the
job has unwound, or after :data:`GRACE_S` if it does not; an idle worker exits at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

#: The environment variable ``zoo run -m`` sets to its pid for the processes its launcher starts.
LAUNCHER_ENV = "ZOO_SWEEP_LAUNCHER_PID"
#: How long a job may take to unwind once interrupted before its worker exits anyway (seconds).
GRACE_S = 30.0


class LauncherWatch:
    """The watch of one worker process over ``launcher``, its parent. :meth:`run` (its thread) polls the parent
    every ``interval`` seconds; once it is another (the launcher died: the worker was reparented), a job in
    progress (:attr:`in_job`) is interrupted with ``interrupt()``, and ``exit_(1)`` ends the process when the job
    has unwound (``in_job`` false again) or ``grace`` seconds later."""

    def __init__(self, launcher: int, interval: float = 0.2, grace: float = GRACE_S):
        self.launcher, self.interval, self.grace = launcher, interval, grace
        self.in_job = False
        self.gone = False

    def reason(self) -> str:
        return (f"the sweep's launching process (zoo run -m, pid {self.launcher}) is gone: this job stopped with it "
                f"(re-run it into the sweep, with resume=true, to finish it)")

    def run(self, getppid: Callable[[], int] = os.getppid, interrupt: Callable[[], None] | None = None,
            exit_: Callable[[int], object] = os._exit) -> None:
        while getppid() == self.launcher:
            time.sleep(self.interval)
        self.gone = True
        if self.in_job:
            (interrupt or _interrupt_main)()
            deadline = time.monotonic() + self.grace
            while self.in_job and time.monotonic() < deadline:
                time.sleep(0.02)
        exit_(1)


def _interrupt_main() -> None:
    """SIGINT to the main thread: a blocking call there returns (EINTR) and the job's handler raises."""
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


_watch: LauncherWatch | None = None


def launcher_pid() -> int | None:
    """The launching ``zoo run -m``'s pid, when this process is its child running a job for it (else None)."""
    raw = os.environ.get(LAUNCHER_ENV, "")
    if not raw.isdigit():
        return None
    pid = int(raw)
    return pid if pid != os.getpid() and os.getppid() == pid else None


@contextlib.contextmanager
def watched_job() -> Iterator[None]:
    """Run a sweep job's body under the watch of its process (started at its first job) over the launching
    process; a no-op in the launcher itself, in a single run and outside the main thread."""
    global _watch
    launcher = launcher_pid()
    if launcher is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    if _watch is None or _watch.launcher != launcher:
        _watch = LauncherWatch(launcher)
        threading.Thread(target=_watch.run, name="zoo-launcher-watch", daemon=True).start()
    watch = _watch

    def on_sigint(signum, frame):
        raise KeyboardInterrupt(watch.reason()) if watch.gone else KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    watch.in_job = True
    try:
        if watch.gone:  # (gone before the job began: nothing of it is started)
            raise KeyboardInterrupt(watch.reason())
        yield
    finally:
        watch.in_job = False
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
