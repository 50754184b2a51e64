"""Capture what a third-party evaluator prints, and route it to ``zoo.log`` instead of the console.

faster-coco-eval logs its 14-line summary and its progress ("Evaluate annotation type *bbox*", "DONE
(t=0.01s).") through :mod:`logging`; pycocotools prints them on stdout. Inside
:func:`captured_tool_output` both are collected and then re-logged on the ``zoo.tool.<name>`` logger
with :data:`zoo_core.config.logging_filters.FILE_ONLY`, so a Hydra run keeps them in its ``zoo.log``
while the console shows zoo's own summary once. The tool's warnings and errors (level >= WARNING) stay
visible on the console.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence

from zoo_core.config.logging_filters import FILE_ONLY


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def captured_tool_output(tool: str, loggers: Sequence[str] = ()) -> Iterator[None]:
    """Collect ``sys.stdout``, ``sys.stderr`` and the records of ``loggers`` while the block runs.

    Afterwards (also when the block raises) each captured line is logged at INFO on
    ``zoo.tool.<tool>`` marked file-only; captured records of level WARNING and above are re-logged at
    their level without the mark (they reach the console).
    """
    out = logging.getLogger(f"zoo.tool.{tool}")
    collect = _Collect()
    saved = []
    for name in loggers:
        lg = logging.getLogger(name)
        saved.append((lg, lg.propagate))
        lg.addHandler(collect)
        lg.propagate = False
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            yield
    finally:
        for lg, propagate in saved:
            lg.removeHandler(collect)
            lg.propagate = propagate
        for text in (stdout.getvalue(), stderr.getvalue()):
            for line in text.splitlines():
                if line.strip():
                    out.info("%s", line.rstrip(), extra={FILE_ONLY: True})
        for rec in collect.records:
            msg = rec.getMessage()
            if rec.levelno >= logging.WARNING:
                out.log(rec.levelno, "%s: %s", tool, msg)
            else:
                for line in msg.splitlines():
                    out.info("%s", line.rstrip(), extra={FILE_ONLY: True})
