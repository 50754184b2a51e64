"""Console log format: plain messages, with ``warning:`` / ``error:`` in front of those levels."""
from __future__ import annotations

import logging


class ConsoleFormatter(logging.Formatter):
    """``%(message)s`` for info; ``warning: ...`` and ``error: ...`` above it."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        if record.levelno >= logging.WARNING:
            return f"warning: {text}"
        return text
