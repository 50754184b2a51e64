"""Ctrl-C, SIGTERM and SIGHUP remembered until the run acts on them.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread is. Raised inside an extension
module's initialisation (numpy's Cython ``numpy.random`` modules, imported by scipy while the evaluation starts),
it can be swallowed there, and the run went on to write ``run.json`` ``ok`` and exit 0 as if the key had never
been pressed. :func:`install` (called by ``zoo``'s entry point) makes these signals raise as before *and* set a
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


def _signals() -> list[signal.Signals]:
    """SIGINT, SIGTERM, and SIGHUP unless it is ignored (``nohup zoo run ...``: the run outlives its terminal)."""
    sigs = [signal.SIGINT, signal.SIGTERM]
    hup = getattr(signal, "SIGHUP", None)
    if hup is not None and signal.getsignal(hup) is not signal.SIG_IGN:
        sigs.append(hup)
    return sigs


def install() -> Handlers:
    """SIGINT, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` (SIGTERM, from ``kill`` or Slurm, and SIGHUP, the
    terminal or ssh session closed, unwind like Ctrl-C, so workers and temp files are cleaned up and ``run.json``
    says ``failed``; before, SIGHUP killed the run outright, its record saying ``running`` forever) and are
    remembered; nothing is pending yet. An ignored SIGHUP (``nohup``) stays ignored. Returns the handlers it
    replaced, for :func:`restore`."""
    global _pending
    _pending = False
    return {sig: signal.signal(sig, _on_signal) for sig in _signals()}


def restore(handlers: Handlers) -> None:
    """Put back the handlers :func:`install` replaced (a caller of ``zoo``'s ``main()`` keeps its own)."""
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def pending() -> bool:
    """Whether a Ctrl-C, SIGTERM or SIGHUP came since :func:`install`."""
    return _pending


def raise_if_pending() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C, SIGTERM or SIGHUP came, even one that code in between swallowed."""
    if _pending:
        raise KeyboardInterrupt
