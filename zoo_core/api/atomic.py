"""Atomic file writes: a temp file in the same directory, fsync, then rename.

The temp file is ``.<name>.<pid>.<random>.tmp``, so the temp files of a writer that was killed (its pid
gone) can be swept by the next run (:func:`sweep_stale_temps`). The final file gets the mode a plain
``open(path, "w")`` would give (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    On any failure (a full disk: ``ENOSPC``) the temp file is removed and ``path`` keeps its old
    content; the :class:`OSError` raised names ``path`` (``filename``), so the CLI's one-line error
    says which file could not be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # named after the file being written, not the temp name
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc  # a write on the fd: no name
        raise
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`write_bytes` of ``text`` encoded as UTF-8."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """:func:`write_text` of ``obj`` as JSON (NaN/inf are refused: JSON has no such numbers)."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False) + "\n")


def temp_path(path: str | os.PathLike[str]) -> Path:
    """A temp name next to ``path`` that :func:`sweep_stale_temps` recognises (for tools that write a
    file themselves, e.g. an exporter: write there, then ``os.replace`` onto ``path``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(root: str | os.PathLike[str], max_depth: int = 3) -> list[Path]:
    """Delete the temp files under ``root`` (``max_depth`` levels) whose writer process is gone."""
    removed: list[Path] = []
    root = Path(root)
    if not root.is_dir():
        return removed
    base = len(root.parts)
    for dirpath, dirs, names in os.walk(root):
        if len(Path(dirpath).parts) - base >= max_depth:
            dirs[:] = []
        for name in names:
            m = _TEMP.match(name)
            if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                p = Path(dirpath) / name
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed
