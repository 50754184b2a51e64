"""One writer per run root: ``<root>/.zoo.lock``, an exclusive ``flock`` holding the writer's pid.

The kernel drops a ``flock`` when its process dies, so a lock left by a killed run is simply taken
over (the file still names the dead pid; it is overwritten and the take-over is logged). The lock
file descriptor is not inherited by spawned workers.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from zoo_core.api.errors import ZooError

log = logging.getLogger("zoo")

LOCK_NAME = ".zoo.lock"


def _holder(text: str) -> dict:
    try:
        rec = json.loads(text)
        return rec if isinstance(rec, dict) else {}
    except ValueError:
        return {}


class RunLock:
    """``with RunLock(root, stage):`` — fails at once, naming the holder, when another run holds ``root``."""

    def __init__(self, root: str | os.PathLike, stage: str = ""):
        self.root = Path(root)
        self.stage = stage
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ZooError("the run directory is a file, not a directory", path=self.root,
                           hint="pass work_dir=<a directory>")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
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

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
