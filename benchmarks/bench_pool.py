"""The preprocess pool's own cost: parent CPU and wall per no-op task, ``ProcessPoolExecutor`` vs
zoo's :class:`~zoo_core.pipeline.procpool.ProcessPool` (2 spawned workers, 6 tasks in flight, the way
the worker pool keeps its window full). ``python -m benchmarks.bench_pool`` or the ``extra`` part."""
from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from zoo_core.pipeline.procpool import ProcessPool


def _per_task(submit: Callable[..., Any], tasks: int, window: int) -> tuple[float, float]:
    """(parent CPU us, wall us) per task of ``abs(-i)`` with ``window`` tasks in flight."""
    for _ in range(50):
        submit(abs, -1).result()
    c0, t0 = time.process_time(), time.perf_counter()
    pending = deque(submit(abs, -i) for i in range(window))
    for i in range(window, tasks + window):
        pending.popleft().result()
        if i < tasks:
            pending.append(submit(abs, -i))
    return (time.process_time() - c0) / tasks * 1e6, (time.perf_counter() - t0) / tasks * 1e6


def run(rounds: int = 3, tasks: int = 3000, window: int = 6) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {"executor": [], "procpool": []}
    for _ in range(rounds):
        ex = ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"))
        try:
            out["executor"].append(_per_task(ex.submit, tasks, window))
        finally:
            ex.shutdown()
        pp = ProcessPool(2)
        try:
            out["procpool"].append(_per_task(pp.submit, tasks, window))
        finally:
            pp.shutdown()
    return out


if __name__ == "__main__":
    for name, runs in run().items():
        print(f"{name:9s} " + "  ".join(f"{cpu:.0f} us CPU / {wall:.0f} us wall" for cpu, wall in runs))
