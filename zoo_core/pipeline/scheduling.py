"""A short scheduler slice for the parent's pipeline threads (Linux's EEVDF scheduler, kernel >= 6.12).

The device thread sleeps through each device call and must run the moment it wakes, as must the
feeder and postprocess threads that hand items on. With every core busy with preprocess workers,
EEVDF lets a woken thread preempt a running one only when its virtual deadline is earlier, and a
thread's deadline is one slice (1.4 ms by default on 2 cores) past its eligible time: the device
thread often waited out most of a worker's slice before it ran. A thread that asks for a 0.1 ms slice
gets an earlier deadline, so its wake-ups preempt a worker at once. It gets no more CPU than before:
the slice sets how soon a thread runs, not its share. Measured at batch 1 and a 4.9 ms device
(BENCHMARKS.md, round 7): busy 0.93 -> 0.95; the mean gap between device calls 140 -> 70 us.

``sched_setattr`` with ``sched_runtime`` is the kernel's interface for a fair task's slice; older
kernels accept the call and ignore the value. Other platforms, other scheduling policies (a user's
``chrt``) and any refusal leave the thread as it was. The thread's nice value is kept.
"""
from __future__ import annotations

import contextlib
import os
import platform
import struct
import sys
from collections.abc import Iterator

#: The slice requested for the device, feeder and postprocess threads (ns): the kernel's minimum.
THREAD_SLICE_NS = 100_000

#: ``sched_setattr``'s number on the architectures of Ascend hosts (x86_64 and Kunpeng's aarch64).
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
_SCHED_OTHER = 0


def set_thread_slice(slice_ns: int) -> bool:
    """Ask the kernel for a ``slice_ns`` scheduler slice for the calling thread (0: the kernel's
    default). True when the kernel accepted the call; False (and nothing changed) elsewhere."""
    nr = _SCHED_SETATTR.get(platform.machine())
    if not sys.platform.startswith("linux") or nr is None:
        return False
    try:
        import ctypes

        if os.sched_getscheduler(0) != _SCHED_OTHER:
            return False
        nice = os.getpriority(os.PRIO_PROCESS, 0)  # (the calling thread's, on Linux)
        # struct sched_attr, version 0: size, policy, flags, nice, priority, runtime, deadline, period
        attr = ctypes.create_string_buffer(struct.pack("=IIQiIQQQ", 48, _SCHED_OTHER, 0, nice, 0,
                                                       int(slice_ns), 0, 0))
        return int(ctypes.CDLL(None, use_errno=True).syscall(nr, 0, attr, 0)) == 0
    except (OSError, AttributeError, ValueError):
        return False


@contextlib.contextmanager
def short_slice(slice_ns: int = THREAD_SLICE_NS) -> Iterator[None]:
    """Run the block with a short slice for the calling thread, then give it the default back."""
    changed = set_thread_slice(slice_ns)
    try:
        yield
    finally:
        if changed:
            set_thread_slice(0)
