"""What every zoo plot shares: names read from files drawn as plain text, and a failed plot costing only itself.

Plot titles, tick labels, legends and annotations carry names zoo reads from files it does not control:
COCO category names, ONNX layer and output names, dataset names, sweep values. Matplotlib would parse
``$...$`` in them as mathtext (``$\\frac{$`` raises while the figure is drawn); :func:`plain_text` turns
that off, so a name is drawn exactly as written. :func:`draw_or_warn` keeps any other plot failure from
stopping the numbers (``metrics.json``, ``compare.json``) from being written.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("zoo")

T = TypeVar("T")


def plain_text():
    """A matplotlib rc context in which every text created (and drawn) inside it is plain: no mathtext."""
    import matplotlib

    return matplotlib.rc_context({"text.parse_math": False})


def draw_or_warn(name: str, draw: Callable[[], T]) -> T | None:
    """``draw()``; when it raises, ``None`` and a warning naming the plot (the run goes on without it)."""
    try:
        return draw()
    except Exception as exc:  # a plot is never worth the numbers it illustrates
        log.warning("%s was not drawn (%s: %s); the results are written without it", name, type(exc).__name__, exc)
        return None
