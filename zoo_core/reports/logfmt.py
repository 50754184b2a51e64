"""Console log format: plain messages, with ``warning:`` / ``error:`` in front of those levels, control characters
shown as escapes (:func:`zoo_core.printable.printable`)."""
from __future__ import annotations

import logging

from zoo_core.printable import printable


class ConsoleFormatter(logging.Formatter):
    """``%(message)s`` for info; ``warning: ...`` and ``error: ...`` above it. A control character in a record (an
    ESC, a CR from a model's node name or a dataset's category name in a warning) is shown as an escape (``\\x1b``),
    never sent to the terminal; newlines are kept. (The progress bar draws on the stream itself, not through here.)"""

    def format(self, record: logging.LogRecord) -> str:
        text = printable(super().format(record))
        for level, prefix in ((logging.ERROR, "error: "), (logging.WARNING, "warning: ")):
            if record.levelno >= level:
                return text if text.startswith(prefix) else prefix + text  # (a plugin's own prefix is kept once)
        return text
