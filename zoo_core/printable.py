"""Text zoo shows a human (a terminal line, a markdown report) that may hold bytes from a file it does not trust.

A model's node names, a checkpoint's keys, a job's ``error.json``, a dataset's category names reach zoo's
messages as they are. Control characters in them are commands to a terminal: ``ESC ]0;...BEL`` sets the window
title, ``ESC [2K`` and ``CR`` erase the line (and let the text print a forged ``error:`` line over zoo's own),
``ESC [8m`` hides what follows; Unicode's bidirectional controls (``U+202E`` RIGHT-TO-LEFT OVERRIDE and its kin)
make a terminal or an editor show the text in another order than it is (``evil\u202egpj.onnx`` reads as
``evilxnno.jpg``), and its line and paragraph separators break a line where zoo wrote none.
:func:`printable` shows them as escapes (``\\x1b``, ``\\r``, ``\\u202e``) instead, where the
text leaves zoo for a human: the CLI's ``error:`` lines, the console log formatter
(:class:`zoo_core.reports.logfmt.ConsoleFormatter`), the cells of the sweep report's markdown, a checkpoint's key
listing. What zoo writes to JSON files is data and is kept as it is.
"""
from __future__ import annotations

#: C0 controls but TAB and LF, DEL, C1 controls: each shown as an escape (``\x1b``; CR as ``\r``).
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)}
_ESCAPES[0x0D] = "\\r"
#: bidirectional formatting (ALM, LRM, RLM, LRE..RLO, LRI..PDI) and the line / paragraph separators
_ESCAPES.update({c: f"\\u{c:04x}" for c in (0x061C, 0x200E, 0x200F, *range(0x2028, 0x202F), *range(0x2066, 0x206A))})
_KEEP_NEWLINES = str.maketrans(_ESCAPES)
_NO_NEWLINES = str.maketrans({**_ESCAPES, 0x0A: "\\n"})


def printable(text: object, *, newlines: bool = True) -> str:
    """``str(text)`` with its control characters (C0 but TAB and newline, DEL, C1; ESC among them) and Unicode's
    bidirectional controls and line / paragraph separators shown as escapes, so that printing it cannot move the
    cursor, erase a line, set the window title, hide text or show it in another order.

    :param newlines: keep newlines (a message zoo built with a ``\\n  hint:`` line); ``False`` for a piece of
        untrusted text inside a one-line message (a key, a name), whose newline is then shown as ``\\n`` and cannot
        start a line of its own.
    """
    return str(text).translate(_KEEP_NEWLINES if newlines else _NO_NEWLINES)
