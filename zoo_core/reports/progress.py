"""A one-line, tqdm-style progress display with rate and ETA, shown on a terminal only.

    with Progress(total=len(samples), label="eval") as bar:
        for ...:
            bar.update(1)

draws ``eval:  42%|████▏     | 42/100 [00:10<00:14, 4.1 img/s]`` on stderr, redrawn in place at most every
``min_interval`` seconds, and ends the line on :meth:`Progress.close`. It is off unless the stream is a
TTY, and off under CI (``CI`` set), so logs and pipes never get carriage returns. The rate is
tqdm's: exponential moving averages of the items and of the time between redraws (``smoothing``),
so the ETA follows the current speed rather than the start-up; the closing line shows the overall rate.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

#: Partial-cell glyphs of the bar, from 1/8 to 8/8 (ASCII streams get "#").
_BLOCKS = " ▏▎▍▌▋▊▉█"


def progress_enabled(stream: TextIO, flag: bool | None = None) -> bool:
    """``flag`` if given, else: ``stream`` is a terminal and ``CI`` is not set."""
    if flag is not None:
        return bool(flag)
    if os.environ.get("CI"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def format_duration(seconds: float) -> str:
    """``mm:ss`` below an hour, ``h:mm:ss`` above (as tqdm)."""
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_rate(rate: float | None, unit: str) -> str:
    """``12.3 img/s``, or ``4.2 s/img`` below one item per second; ``? img/s`` when unknown."""
    if rate is None or rate <= 0:
        return f"? {unit}/s"
    if rate < 1:
        return f"{1 / rate:.1f} s/{unit}"
    return f"{rate:.1f} {unit}/s"


class Progress:
    """Progress of ``total`` items (``None``: unknown total, no bar or ETA).

    :param enabled: ``None``: on when ``stream`` is a TTY and ``CI`` is unset (see :func:`progress_enabled`).
    :param stream: where to draw (default ``sys.stderr``).
    :param clock: seconds, monotonic (tests pass a fake one).
    :param width: line width; ``None``: the terminal's.
    :param min_interval: seconds between redraws (the last item is always drawn).
    :param smoothing: weight of the newest interval in the rate's moving averages (0: overall average).
    """

    def __init__(self, total: int | None, enabled: bool | None = None, label: str = "", *,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 width: int | None = None, min_interval: float = 0.1, smoothing: float = 0.3, unit: str = "img"):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = progress_enabled(self.stream, enabled)
        self.total = int(total) if total else None
        self.label = label
        self.unit = unit
        self.clock = clock
        self.width = width
        self.min_interval = min_interval
        self.smoothing = smoothing
        self.n = 0
        self.start = clock()
        self._last_t = self.start
        self._last_n = 0
        self._ema_dn: float | None = None
        self._ema_dt: float | None = None
        self._drawn_len = 0
        self._closed = False
        self._ascii = "utf" not in (getattr(self.stream, "encoding", None) or "").lower()

    # -- public ------------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done; redraw if ``min_interval`` has passed or the total is reached."""
        self.n += n
        if not self.enabled or self._closed:
            return
        now = self.clock()
        finished = self.total is not None and self.n >= self.total
        if now - self._last_t < self.min_interval and not finished:
            return
        self._account(now)
        self._draw(self.line(now))

    def update_to(self, done: int) -> None:
        """Set the count of items done to ``done`` (for callers that track an absolute count)."""
        self.update(done - self.n)

    def close(self) -> None:
        """Draw the final line (overall rate, elapsed time) and end it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        now = self.clock()
        self._draw(self.line(now, final=True))
        self.stream.write("\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rate(self) -> float | None:
        """Smoothed items per second (``None`` before the first timed interval)."""
        if not self._ema_dt or self._ema_dn is None:
            return None
        return self._ema_dn / self._ema_dt

    def line(self, now: float, final: bool = False) -> str:
        """The text of the display at time ``now`` (without the carriage return)."""
        elapsed = now - self.start
        rate = (self.n / elapsed if elapsed > 0 and self.n else None) if final else self.rate
        speed = format_rate(rate, self.unit)
        head = f"{self.label}: " if self.label else ""
        if self.total is None:
            return f"{head}{self.n} {self.unit} [{format_duration(elapsed)}, {speed}]"
        frac = min(1.0, self.n / self.total)
        if final or self.n >= self.total:
            times = format_duration(elapsed)
        else:
            eta = "?" if rate is None else format_duration((self.total - self.n) / rate)
            times = f"{format_duration(elapsed)}<{eta}"
        counts = f"{self.n}/{self.total}"
        tail = f"| {counts} [{times}, {speed}]"
        pct = f"{int(frac * 100):3d}%"
        width = self.width or shutil.get_terminal_size((80, 24)).columns
        # room for the widest statistics of this total, so the bar keeps its width as the numbers change
        widest = f"| {self.total}/{self.total} [59:59<59:59, 9999.9 {self.unit}/s]"
        bar_width = max(0, min(40, width - 1 - len(head) - len(pct) - 1 - max(len(tail), len(widest))))
        if bar_width < 4:  # too narrow for a bar: drop it, then the label, then cut
            for text in (f"{head}{pct} {counts} [{times}, {speed}]", f"{pct} {counts} [{times}, {speed}]"):
                if len(text) <= width - 1:
                    return text
            return text[: max(0, width - 1)]
        return f"{head}{pct}|{self._bar(frac, bar_width)}{tail}"

    # -- internals -----------------------------------------------------------------------------
    def _account(self, now: float) -> None:
        dn, dt = self.n - self._last_n, now - self._last_t
        if dt > 0 and dn > 0:
            a = self.smoothing
            self._ema_dn = dn if self._ema_dn is None or a >= 1 else a * dn + (1 - a) * self._ema_dn
            self._ema_dt = dt if self._ema_dt is None or a >= 1 else a * dt + (1 - a) * self._ema_dt
            if a <= 0:  # overall average
                self._ema_dn, self._ema_dt = float(self.n), now - self.start
        self._last_n, self._last_t = self.n, now

    def _bar(self, frac: float, width: int) -> str:
        if self._ascii:
            full = int(frac * width)
            return "#" * full + " " * (width - full)
        eighths = int(frac * width * 8)
        full, part = divmod(eighths, 8)
        bar = "█" * full + (_BLOCKS[part] if part and full < width else "")
        return bar + " " * (width - len(bar))

    def _draw(self, text: str) -> None:
        pad = " " * max(0, self._drawn_len - len(text))
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self._drawn_len = len(text)
