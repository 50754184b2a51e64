"""The pipeline threads' short scheduler slice (zoo_core.pipeline.scheduling), in-process.

The kernel reports a thread's slice in /proc/thread-self/sched (``se.slice``, kernels >= 6.12 with
scheduler statistics); where it does not, the tests that read it are skipped and only the call's
contract (nice and policy kept, never an exception) is checked.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.test_pipeline import EchoBackend, ListSource, decode
from zoo_core.pipeline.scheduling import THREAD_SLICE_NS, set_thread_slice, short_slice
from zoo_core.pipeline.sinks import MemorySink
from zoo_core.pipeline.stream import Stream


def thread_slice() -> int | None:
    """This thread's slice (ns) as the kernel reports it, or None where it does not."""
    try:
        text = Path("/proc/thread-self/sched").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    return None


needs_slice = pytest.mark.skipif(thread_slice() is None, reason="the kernel does not report se.slice")


def in_thread(fn):
    """Run ``fn`` in a fresh thread (its nice and policy changes die with it); return its result."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


@needs_slice
def test_a_thread_gets_the_short_slice_and_the_default_back():
    def run():
        default = thread_slice()
        assert set_thread_slice(THREAD_SLICE_NS)
        short = thread_slice()
        with short_slice(200_000):
            inner = thread_slice()
        return default, short, inner, thread_slice()

    default, short, inner, after = in_thread(run)
    assert short == THREAD_SLICE_NS and inner == 200_000
    assert after == default and default > THREAD_SLICE_NS


def test_the_threads_nice_value_and_a_users_policy_are_kept():
    def nice_kept():
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + 3)  # (this thread only)
        before = os.getpriority(os.PRIO_PROCESS, 0)
        set_thread_slice(THREAD_SLICE_NS)
        return before, os.getpriority(os.PRIO_PROCESS, 0)

    before, after = in_thread(nice_kept)
    assert after == before

    def batch_policy():
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        slice_before = thread_slice()
        changed = set_thread_slice(THREAD_SLICE_NS)
        return changed, os.sched_getscheduler(0), slice_before, thread_slice()

    changed, policy, slice_before, slice_after = in_thread(batch_policy)
    assert changed is False and policy == os.SCHED_BATCH and slice_after == slice_before


@needs_slice
def test_the_device_feeder_and_postprocess_threads_run_with_the_short_slice():
    seen: dict[str, set] = {"device": set(), "feeder": set(), "post": set()}

    class Recording(EchoBackend):
        def infer(self, batch):
            seen["device"].add(thread_slice())
            return super().infer(batch)

    class RecordingSource(ListSource):
        def items(self):
            for item in super().items():
                seen["feeder"].add(thread_slice())
                yield item

    def recording_decode(outs, metas):
        seen["post"].add(thread_slice())
        return decode(outs, metas)

    def run():
        default = thread_slice()
        sink = MemorySink()
        Stream(RecordingSource(9), [sink], backend=Recording(), decode=recording_decode, batch_size=2).run()
        assert sorted(sink.detections) == [f"img{i:03d}" for i in range(9)]
        return default, thread_slice()

    default, after = in_thread(run)
    assert seen == {"device": {THREAD_SLICE_NS}, "feeder": {THREAD_SLICE_NS}, "post": {THREAD_SLICE_NS}}
    assert after == default  # the calling thread (the device loop's) has its slice back
