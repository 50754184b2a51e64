"""Generated sections of Markdown files: splice a block between two marker lines, or check it is current.

Used by :mod:`zoo_core.plugins.hookdoc` (the hook reference in docs/plugins.md) and
:mod:`zoo_core.plugins.apidoc` (docs/api.md).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def splice(text: str, block: str, start: str, end: str, tool: str) -> str:
    """``text`` with the part between the ``start`` and ``end`` marker lines replaced by ``block``."""
    if start not in text or end not in text:
        raise ValueError(f"{tool} markers not found; add the START and END lines of zoo_core.plugins.{tool}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block.rstrip()}\n{end}{tail}"


def sync(argv: list[str], default: str, render: Callable[[], str], splice_block: Callable[[str, str], str],
         tool: str) -> int:
    """``python -m zoo_core.plugins.<tool> [--check] [FILE ...]``: rewrite the generated section of each
    file (default ``default``), or with ``--check`` exit 1 naming the files that are out of date."""
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"] or [default]
    block = render()
    stale = []
    for path in map(Path, paths):
        old = path.read_text(encoding="utf-8")
        new = splice_block(old, block)
        if new == old:
            continue
        if check:
            stale.append(str(path))
        else:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python -m zoo_core.plugins.{tool} {' '.join(stale)}",
              file=sys.stderr)
        return 1
    return 0
