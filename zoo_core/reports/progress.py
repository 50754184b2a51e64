"""A progress line on stderr, on a TTY only (never in CI or when piped)."""
from __future__ import annotations

import os
import sys
from typing import TextIO


def progress_enabled(flag: bool | None) -> bool:
    """``progress=`` from the config: ``None`` means "when stderr is a terminal and not in CI"."""
    if flag is not None:
        return bool(flag)
    return sys.stderr.isatty() and not os.environ.get("CI")


class Progress:
    """``[#####.....] done/total``, redrawn in place; silent when not ``enabled``."""

    def __init__(self, total: int, enabled: bool, label: str = "", stream: TextIO | None = None):
        self.total, self.enabled, self.label = total, enabled and total > 0, label
        self.stream = stream or sys.stderr
        self._drawn = False

    def set(self, done: int) -> None:
        """Show ``done`` of ``total`` items finished."""
        if not self.enabled:
            return
        width = 30
        filled = int(width * min(done, self.total) / self.total)
        self.stream.write(f"\r{self.label}[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
