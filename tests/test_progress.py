"""The tqdm-style progress line: exact text against a fake clock and a fake terminal."""
from __future__ import annotations

import io

import pytest

from zoo_core.reports.progress import Progress, format_duration, format_rate, progress_enabled


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool = True, encoding: str = "utf-8"):
        super().__init__()
        self._tty = tty
        self._encoding = encoding
        self.flushes = 0

    def isatty(self) -> bool:
        return self._tty

    @property
    def encoding(self):
        return self._encoding

    def flush(self) -> None:
        self.flushes += 1

    def frames(self) -> list[str]:
        """What the terminal showed after each redraw (trailing padding removed)."""
        return [f.rstrip(" \n") for f in self.getvalue().split("\r")[1:]]


@pytest.fixture
def clock():
    return FakeClock()


def test_rate_eta_and_bar_follow_the_items(clock, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    term = FakeTerminal()
    bar = Progress(100, label="eval", stream=term, clock=clock, width=60)
    assert bar.enabled  # the bar keeps the room of the widest statistics: 60 - 1 - 6 - 4 - 1 - 37 = 11 cells
    clock.t = 1.0
    bar.update(10)  # 10 items in 1 s
    clock.t = 2.0
    bar.update(20)  # 20 in the next second: smoothed 0.3 * 20 + 0.7 * 10 = 13 img/s
    clock.t = 2.05
    bar.update(1)   # within min_interval: not redrawn
    clock.t = 2.2
    bar.update(1)   # 2 items in 0.2 s: (0.3*2 + 0.7*13) / (0.3*0.2 + 0.7*1) = 12.76 img/s, 68 left: 5.3 s
    clock.t = 10.0
    bar.update(68)  # the last item is always drawn
    bar.close()     # the closing line has the overall rate: 100 items in 10 s
    assert term.frames() == [
        "eval:  10%|█          | 10/100 [00:01<00:09, 10.0 img/s]",  # 11 cells: 0.1 * 11 = 1 cell
        "eval:  30%|███▎       | 30/100 [00:02<00:05, 13.0 img/s]",  # 3.3 cells: 3 and 2/8
        "eval:  32%|███▌       | 32/100 [00:02<00:05, 12.8 img/s]",  # 3.52 cells: 3 and 4/8
        "eval: 100%|███████████| 100/100 [00:10, 9.5 img/s]",  # (0.3*68 + 0.7*9.7) / (0.3*7.8 + 0.7*0.76)
        "eval: 100%|███████████| 100/100 [00:10, 10.0 img/s]",
    ]
    assert all(len(f) <= 59 for f in term.frames())
    assert term.getvalue().endswith("\n") and term.getvalue().count("\n") == 1
    assert bar.rate == pytest.approx((0.3 * 68 + 0.7 * 9.7) / (0.3 * 7.8 + 0.7 * 0.76))


def test_a_shorter_line_blanks_the_rest_of_the_longer_one(clock):
    term = FakeTerminal()
    bar = Progress(None, enabled=True, label="predict", stream=term, clock=clock, width=80, smoothing=0)
    clock.t = 1.0
    bar.update(250)
    clock.t = 1.5
    bar.update(1)
    chunks = term.getvalue().split("\r")[1:]
    assert chunks[0] == "predict: 250 img [00:01, 250.0 img/s]"
    assert chunks[1].rstrip() == "predict: 251 img [00:02, 167.3 img/s]"  # overall average with smoothing=0
    assert len(chunks[1]) >= len(chunks[0])


def test_off_when_not_a_terminal_or_under_ci(clock, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    piped = FakeTerminal(tty=False)
    bar = Progress(10, stream=piped, clock=clock)
    clock.t = 5
    bar.update(10)
    bar.close()
    assert not bar.enabled and piped.getvalue() == "" and piped.flushes == 0
    monkeypatch.setenv("CI", "true")
    term = FakeTerminal()
    assert not Progress(10, stream=term, clock=clock).enabled
    assert not progress_enabled(term) and progress_enabled(term, True) and not progress_enabled(term, False)
    monkeypatch.delenv("CI")
    assert progress_enabled(term)


def test_ascii_stream_slow_items_and_long_runs(clock):
    term = FakeTerminal(encoding="ascii")
    bar = Progress(4, enabled=True, stream=term, clock=clock, width=50)
    clock.t = 2.0
    bar.update(1)  # 0.5 img/s is shown as seconds per image; 3 left -> 6 s
    assert term.frames()[-1] == " 25%|##         | 1/4 [00:02<00:06, 2.0 s/img]"  # 11 cells * 0.25
    assert format_duration(3725) == "1:02:05" and format_duration(59.6) == "01:00"
    assert format_rate(None, "img") == "? img/s" and format_rate(3.0, "batch") == "3.0 batch/s"


@pytest.mark.parametrize("width, expected", [
    (44, "eval:   0% 3/1000 [00:01<05:32, 3.0 img/s]"),  # no room for a 4-cell bar: dropped
    (40, "  0% 3/1000 [00:01<05:32, 3.0 img/s]"),        # then the label
    (30, "  0% 3/1000 [00:01<05:32, 3.0"),                # then cut at width - 1
])
def test_narrow_terminal_drops_the_bar_then_the_label(clock, width, expected):
    term = FakeTerminal()
    bar = Progress(1000, enabled=True, label="eval", stream=term, clock=clock, width=width)
    clock.t = 1
    bar.update(3)  # 997 left at 3 img/s: 332 s
    assert term.frames() == [expected]


def test_close_twice_and_counts_past_the_total(clock):
    term = FakeTerminal()
    bar = Progress(2, enabled=True, stream=term, clock=clock, width=60)
    clock.t = 1
    bar.update(3)  # e.g. skipped items counted too: clamped at 100 %
    bar.close()
    bar.close()
    bar.update_to(4)  # after close: counted, not drawn
    assert term.frames()[-1].startswith("100%|") and "3/2 [00:01, 3.0 img/s]" in term.frames()[-1]
    assert term.getvalue().count("\n") == 1 and len(term.frames()) == 2 and bar.n == 4


def test_nothing_drawn_before_anything_is_done(clock):
    term = FakeTerminal()
    with Progress(5, enabled=True, stream=term, clock=clock, width=60) as bar:
        clock.t = 0.2
        bar.update(0)  # drawn, but no rate yet
        bar.update(1)  # same instant: within min_interval, not drawn
    assert term.frames() == ["  0%|                     | 0/5 [00:00<?, ? img/s]",
                             " 20%|████▏                | 1/5 [00:00, 5.0 img/s]"]  # closing: 1 in 0.2 s
