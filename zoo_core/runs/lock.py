"""One writer per run root: ``<root>/.zoo.lock``, an exclusive ``flock`` holding the writer's pid.

The kernel drops a ``flock`` when its process dies, so a lock left by a killed run is simply taken
over (the file still names the dead pid; it is overwritten and the take-over is logged). The lock
file descriptor is not inherited by spawned workers. The lock file is opened without following a
symbolic link and must be a regular file with no other hard link: a link planted there cannot make zoo
write elsewhere.
``zoo run`` takes the lock with :func:`held_for_stage` before Hydra writes the stage's ``.hydra/``
and ``zoo.log`` (a run that is refused must not touch the holder's records); the stage runner inside
it, ``RunLock(..., reenter=True)``, then enters that lock instead of failing on it.
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

_held: set[tuple[str, int]] = set()  # (lock path, thread) of the locks taken by held_for_stage
_held_lock = threading.Lock()


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


class RunLock:
    """``with RunLock(root, stage):`` — fails at once, naming the holder, when another run holds ``root``."""

    def __init__(self, root: str | os.PathLike, stage: str = "", reenter: bool = False):
        self.root = Path(root)
        self.stage = stage
        self.reenter = reenter
        self.path = self.root / LOCK_NAME
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
            raise ZooError(f"this run directory is in use by another zoo run ({who})", path=self.root,
                           hint="wait for it to finish, or pass another work_dir=") from None
        old = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if old.get("pid") and old.get("pid") != os.getpid():
            log.info("%s: taking over the lock of pid %s, which is no longer running", self.path, old["pid"])
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
def held_for_stage(root: str | os.PathLike, stage: str = "") -> Iterator[RunLock]:
    """Hold ``root``'s lock for a stage this thread runs inside the block: ``RunLock(root, reenter=True)``
    there enters it (any other acquire still fails, as for a lock held by another run)."""
    with RunLock(root, stage) as lock:
        key = lock._key()
        with _held_lock:
            _held.add(key)
        try:
            yield lock
        finally:
            with _held_lock:
                _held.discard(key)
