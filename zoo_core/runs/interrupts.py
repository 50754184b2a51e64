"""Ctrl-C and SIGTERM remembered until the run acts on them.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread is. Raised inside an extension
module's initialisation (numpy's Cython ``numpy.random`` modules, imported by scipy while the evaluation starts),
it can be swallowed there, and the run went on to write ``run.json`` ``ok`` and exit 0 as if the key had never
been pressed. :func:`install` (called by ``zoo``'s entry point) makes both signals raise as before *and* set a
flag; :func:`raise_if_pending` raises the interrupt again at the points where a run commits to going on (before
the stage starts, before its record says ``ok``), so a swallowed Ctrl-C still ends the run as interrupted.
"""
from __future__ import annotations

import signal
from types import FrameType
from typing import Any

_pending = False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


Handlers = dict[int, Any]


def install() -> Handlers:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` (SIGTERM, from ``kill`` or Slurm, unwinds like Ctrl-C, so
    workers and temp files are cleaned up) and are remembered; nothing is pending yet. Returns the handlers it
    replaced, for :func:`restore`."""
    global _pending
    _pending = False
    return {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore(handlers: Handlers) -> None:
    """Put back the handlers :func:`install` replaced (a caller of ``zoo``'s ``main()`` keeps its own)."""
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def pending() -> bool:
    """Whether a Ctrl-C or SIGTERM came since :func:`install`."""
    return _pending


def raise_if_pending() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C or SIGTERM came, even one that code in between swallowed."""
    if _pending:
        raise KeyboardInterrupt
