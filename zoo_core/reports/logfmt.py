"""Console log format: plain messages, with ``warning:`` / ``error:`` in front of those levels."""
from __future__ import annotations

import logging


class ConsoleFormatter(logging.Formatter):
    """``%(message)s`` for info; ``warning: ...`` and ``error: ...`` above it."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for level, prefix in ((logging.ERROR, "error: "), (logging.WARNING, "warning: ")):
            if record.levelno >= level:
                return text if text.startswith(prefix) else prefix + text  # (a plugin's own prefix is kept once)
        return text
