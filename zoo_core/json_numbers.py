"""Numbers in JSON files zoo reads but does not trust (annotation and results files, ``meta.jsonl``).

Python's ``json`` reads an integer of any length as an exact ``int``, which breaks the code using it as a number
in two ways: beyond the float range (~309 digits) ``float()`` and ``math.isfinite`` raise ``OverflowError``, and
beyond CPython's int-string limit (4300 digits by default, ``sys.get_int_max_str_digits``) ``json`` itself
raises a ``ValueError`` that names neither the line nor the value. The readers check values with
:func:`finite_number` and say why a read failed with :func:`long_integer`, in a one-line error naming the file.
"""
from __future__ import annotations

import re
import sys
from typing import Any

#: The largest finite float; an integer beyond it has no float value.
FLOAT_MAX = sys.float_info.max


def finite_number(v: Any) -> bool:
    """``v`` is a JSON number (an ``int`` or ``float``, not a ``bool``) with a finite float value: not NaN, not an
    infinity, not an integer beyond the float range (Python compares an ``int`` with a ``float`` exactly, never
    converting it, so this never overflows)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return -FLOAT_MAX <= v <= FLOAT_MAX


def shown(v: Any, limit: int = 80, _depth: int = 0) -> str:
    """``repr(v)`` for an error message: an integer beyond the float range as its first digits and its length
    (``100000...(401 digits)``), also inside a list; a list nested deeper than 2 as ``[...]``; anything longer
    than ``limit`` characters cut."""
    if isinstance(v, int) and not isinstance(v, bool) and not finite_number(v):
        try:
            digits = str(v)
            text = f"{digits[:7 if v < 0 else 6]}...({len(digits.lstrip('-'))} digits)"
        except ValueError:  # beyond CPython's int-string limit (not from a JSON file: its read refuses that)
            text = f"an integer of about {int(v.bit_length() * 0.30103)} digits"
    elif isinstance(v, list):
        items = [shown(x, limit, _depth + 1) for x in v[:limit]] if _depth < 2 else ["..."] if v else []
        text = "[" + ", ".join(items) + (", ..." if len(v) > limit else "") + "]"
    else:
        try:
            text = repr(v)
        except RecursionError:  # a dict nested too deeply
            text = "{...}"
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def long_integer(exc: ValueError, text: bytes | str) -> tuple[int, int] | None:
    """``(line, digits)`` of the integer of ``text`` too long for CPython to read, when that is why ``json.loads``
    raised ``exc`` (its int-string limit); ``None`` for any other reason."""
    limit = sys.get_int_max_str_digits()
    if not limit or "integer string conversion" not in str(exc):
        return None
    data = text.encode("utf-8", "replace") if isinstance(text, str) else bytes(text)
    m = re.search(rb"(?<![\d.eE+-])-?(\d{%d,})(?![\d.eE])" % (limit + 1), data)
    if m is None:
        return None
    return data.count(b"\n", 0, m.start()) + 1, len(m.group(1))
