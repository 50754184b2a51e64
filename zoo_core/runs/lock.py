"""One writer per run root: ``<root>/.zoo.lock``, an exclusive ``flock`` holding the writer's pid.

The kernel drops a ``flock`` when its process dies, so a lock left by a killed run is simply taken
over (the file still names the dead pid; it is overwritten and the take-over is logged as a warning; a
lock taken for a stage by :func:`held_for_stage` says it once the stage's logging is set up:
:func:`report_takeovers`). The lock
file descriptor is not inherited by spawned workers. The lock file is opened without following a
symbolic link and must be a regular file with no other hard link: a link planted there cannot make zoo
write elsewhere.
``zoo run`` takes the lock with :func:`held_for_stage` before Hydra writes the stage's ``.hydra/``
and ``zoo.log`` (a run that is refused must not touch the holder's records); the stage runner inside
it, ``RunLock(..., reenter=True)``, then enters that lock instead of failing on it. A sweep job's lock
is taken by :class:`RunLogHandler`, the file handler of zoo's job logging
(``conf/hydra/job_logging/zoo.yaml``): Hydra's ``run_job`` opens the job's log before it writes
``.hydra/``, and calls nothing of zoo's earlier.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from zoo_core.api.errors import ZooError

log = logging.getLogger("zoo")

LOCK_NAME = ".zoo.lock"
#: A sweep dir's own lock, held by the launching process for the whole sweep (a job's run root may be the
#: sweep dir itself, and takes :data:`LOCK_NAME` there).
SWEEP_LOCK_NAME = ".zoo-sweep.lock"

_held: set[tuple[str, int]] = set()  # (lock path, thread) of the locks taken by held_for_stage
_held_lock = threading.Lock()
_pending: list[str] = []  # take-over notes of held_for_stage locks, said by report_takeovers


IN_USE = "this run directory is in use by another zoo run"


class RunDirInUse(ZooError):
    """Another run holds the run root's lock (``who``: its pid, stage and host)."""

    def __init__(self, root: Path, who: str, hint: str = "wait for it to finish, or pass another work_dir="):
        self.root = root
        self.who = who
        super().__init__(f"{IN_USE} ({who})", path=root, hint=hint)

    @classmethod
    def from_text(cls, text: str) -> RunDirInUse | None:
        """The refusal named in a traceback's text (a job's error that came back from another process as
        text), or None."""
        import re

        m = re.search(rf"{cls.__name__}: (.+?): {IN_USE} \(([^)\n]*)\)", text)
        return cls(Path(m.group(1)), m.group(2)) if m else None


def _holder(text: str) -> dict:
    try:
        rec = json.loads(text)
        return rec if isinstance(rec, dict) else {}
    except (ValueError, RecursionError):
        return {}


def _open_lock_file(path: Path) -> int:
    """The lock file, opened read-write without following a link; a regular file or a ZooError."""
    hint = "remove it (zoo makes the lock file itself)"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if path.is_symlink():
            raise ZooError("the run's lock file is a symbolic link, which zoo does not follow", path=path,
                           hint=hint) from None
        if path.is_dir():
            raise ZooError("the run's lock file is a directory", path=path, hint=hint) from None
        raise ZooError(f"cannot open the run's lock file: {exc.strerror or exc}", path=path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ZooError("the run's lock file is not a regular file", path=path, hint=hint)
    if st.st_nlink > 1:  # a hard link: O_NOFOLLOW does not see it, and zoo truncates the lock file
        os.close(fd)
        raise ZooError(f"the run's lock file has {st.st_nlink} hard links: zoo does not truncate a file it shares "
                       f"with another path", path=path, hint=hint)
    return fd


class JobRefused(ZooError):
    """zoo's job-log handler (:class:`RunLogHandler`) refused a sweep job before Hydra wrote anything into its
    record dir: a planted link there (:func:`~zoo_core.runs.layout.refuse_links`) or an unusable lock file.
    Like :class:`RunDirInUse`, it stops the sweep (``zoo run`` says it in one line, exit 2)."""

    def __init__(self, text: str):
        super().__init__(text)

    @classmethod
    def from_text(cls, text: str) -> JobRefused | None:
        """The refusal named in a traceback's text (a job's error that came back from another process as
        text), or None."""
        import re

        m = re.search(rf"\b{cls.__name__}: (.+(?:\n  hint: .+)?)", text)
        return cls(m.group(1)) if m else None


class SweepRefused(BaseException):
    """Stops a sweep from Hydra's ``on_multirun_start`` callback, which Hydra would otherwise report as a
    warning and go on (it catches ``Exception``): ``zoo run`` raises ``error`` (a :class:`RunDirInUse`, or the
    ZooError of a planted ``multirun.yaml`` link)."""

    def __init__(self, error: ZooError):
        super().__init__(str(error))
        self.error = error


class RunLock:
    """``with RunLock(root, stage):`` — fails at once, naming the holder, when another run holds ``root``."""

    def __init__(self, root: str | os.PathLike, stage: str = "", reenter: bool = False, name: str = LOCK_NAME,
                 defer_note: bool = False):
        self.root = Path(root)
        self.stage = stage
        self.reenter = reenter
        self.defer_note = defer_note  # a take-over is said by report_takeovers, not at once
        self.path = self.root / name
        self._fd: int | None = None
        self._entered = False

    def acquire(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ZooError("the run directory is a file, not a directory", path=self.root,
                           hint="pass work_dir=<a directory>")
        self.root.mkdir(parents=True, exist_ok=True)
        if self.reenter:
            with _held_lock:
                self._entered = self._key() in _held
            if self._entered:
                return
        fd = _open_lock_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            who = f"pid {holder.get('pid', '?')}"
            if holder.get("stage"):
                who += f", stage={holder['stage']}"
            if holder.get("host"):
                who += f", host {holder['host']}"
            raise RunDirInUse(self.root, who) from None
        old = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if old.get("pid") and old.get("pid") != os.getpid():
            note = f"{self.path}: taking over the lock of pid {old['pid']}, which is no longer running"
            if self.defer_note:
                with _held_lock:
                    _pending.append(note)
            else:
                log.warning("%s", note)
        rec = json.dumps({"pid": os.getpid(), "stage": self.stage, "host": socket.gethostname(),
                          "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, rec + b"\n", 0)
        self._fd = fd

    def _key(self) -> tuple[str, int]:
        return os.path.realpath(self.path), threading.get_ident()

    def release(self) -> None:
        self._entered = False
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def held_for_stage(root: str | os.PathLike, stage: str = "", reenter: bool = False) -> Iterator[RunLock]:
    """Hold ``root``'s lock for a stage this thread runs inside the block: ``RunLock(root, reenter=True)``
    there enters it (any other acquire still fails, as for a lock held by another run). ``reenter``: when
    this thread holds it already, enter that hold.

    The lock is often taken before the stage's logging is set up (``zoo run`` takes it before Hydra starts; a
    sweep job's :class:`RunLogHandler` while Hydra configures the job's logging): taking over the lock of a
    killed run is said as a warning by :func:`report_takeovers` once it is (the stage's task calls it), or
    when the block ends without it."""
    with RunLock(root, stage, reenter=reenter, defer_note=True) as lock:
        if lock._entered:
            yield lock
            return
        key = lock._key()
        with _held_lock:
            _held.add(key)
        try:
            yield lock
        finally:
            with _held_lock:
                _held.discard(key)
            report_takeovers()


def report_takeovers() -> None:
    """Log the take-over notes of the locks :func:`held_for_stage` took (a warning each, ``warning: ...`` on
    zoo's console and in the stage's ``zoo.log``), once."""
    with _held_lock:
        notes = _pending[:]
        del _pending[:]
    for note in notes:
        log.warning("%s", note)


class RunLogHandler(logging.FileHandler):
    """The file handler of zoo's job logging (``conf/hydra/job_logging/zoo.yaml``): it holds the lock of
    the job's run root (the parent of Hydra's output dir, the stage's record dir) from before it opens
    the log until :meth:`release_lock` (the end of the job: ``SweepReport.on_job_end``) or its close.

    Hydra's ``run_job`` opens the log (``mode: w`` truncates it) before it writes ``.hydra/``, and calls
    no callback earlier; so a sweep job refused here (:class:`RunDirInUse`, raised through
    ``logging.config``) has written nothing into the holder's records. Holding the lock, it refuses a record
    dir, ``.hydra/`` file or ``zoo.log`` that is a link (:func:`~zoo_core.runs.layout.refuse_links`) before
    it opens the log, as ``zoo run`` does for a single run: a sweep job refused so (:class:`JobRefused`, the
    sweep stops) has written nothing through the link. ``zoo run`` takes the lock of a single run itself,
    before Hydra starts: this handler then enters that hold."""

    def __init__(self, filename, mode: str = "a", encoding: str | None = None, delay: bool = False,
                 errors: str | None = None):
        from zoo_core.runs.layout import refuse_links

        self._hold = contextlib.ExitStack()
        record_dir = _hydra_output_dir()  # (None outside a Hydra job: a plain file handler)
        try:
            if record_dir is not None:
                self._hold.enter_context(held_for_stage(record_dir.parent, record_dir.name, reenter=True))
                refuse_links(record_dir)
            super().__init__(filename, mode, encoding, delay, errors)
        except BaseException as exc:
            self._hold.close()
            if isinstance(exc, ZooError) and not isinstance(exc, (RunDirInUse, JobRefused)):
                raise JobRefused(str(exc)) from None
            raise

    def release_lock(self) -> None:
        self._hold.close()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_lock()


def _hydra_output_dir() -> Path | None:
    """Hydra's output dir of the job being set up (set before it configures the job's logging)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(str(HydraConfig.get().runtime.output_dir)) if HydraConfig.initialized() else None
    except Exception:
        return None


def release_job_locks() -> None:
    """At a job's end: release the locks held by the :class:`RunLogHandler` of the root logger."""
    for h in logging.getLogger().handlers:
        if isinstance(h, RunLogHandler):
            h.release_lock()
