"""A process pool whose results are read by the thread that waits for them.

:class:`concurrent.futures.ProcessPoolExecutor` moves every task and every result through two threads
of its own in the parent: a queue feeder that pickles tasks into the pipe, and a manager that wakes on
each result, builds a new selector over the result pipe and the workers' sentinels, unpickles the
result and completes its future, which wakes the waiting thread in turn. On a 2-core host feeding a
device one image at a time that is two more threads contending for the GIL and ~0.4 ms of parent CPU
per image (BENCHMARKS.md, round 6). Here the submitting thread writes the task into the pipe itself,
and the thread that asks for a result polls the result pipe and the workers' sentinels (one ``poll``
object, registered once) and unpickles what arrives: no thread of the pool's own.

The subset of the executor's interface the worker pool uses: :meth:`ProcessPool.submit` returns a
:class:`Job` whose :meth:`Job.result` returns the task's value or raises its exception, and raises
:class:`~concurrent.futures.process.BrokenProcessPool` once a worker has died.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import select
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from zoo_core.blas import single_thread_children

_INIT_FAILED = -1


def _serve(tasks: Any, results: Any, cancelled: Any, initializer: Callable[..., None] | None,
           initargs: tuple) -> None:
    """A worker: run ``initializer``, then ``(index, fn, args)`` tasks until ``None``; each result goes
    back as ``(index, ok, value or exception)``, and once ``cancelled`` is set the tasks still queued are
    dropped unrun. Ctrl-C is the parent's to handle (it stops the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:  # reported to the parent, which stops the pool
        results.put((_INIT_FAILED, False, f"the worker's initializer failed: {type(exc).__name__}: {exc}"))
        return
    while True:
        task = tasks.get()
        if task is None:
            return
        if cancelled.value:
            continue
        index, fn, args = task
        try:
            reply = (index, True, fn(*args))
        except BaseException as exc:  # the task's error is the caller's
            reply = (index, False, exc)
        try:
            results.put(reply)
        except Exception as exc:  # the value or exception does not pickle
            results.put((index, False, RuntimeError(f"a result of {getattr(fn, '__name__', fn)} could not be "
                                                    f"sent back: {type(exc).__name__}: {exc}")))


class Job:
    """One submitted task; :meth:`result` waits for it."""

    __slots__ = ("index", "pool")

    def __init__(self, pool: ProcessPool, index: int):
        self.pool, self.index = pool, index

    def result(self) -> Any:
        """The task's return value; its exception re-raised; BrokenProcessPool if a worker died."""
        return self.pool._result(self.index)


class ProcessPool:
    """``num_workers`` processes of the ``ctx`` start method, each running ``initializer(*initargs)``
    once, all started before the constructor returns."""

    def __init__(self, num_workers: int, ctx: Any = None, initializer: Callable[..., None] | None = None,
                 initargs: tuple = ()):
        ctx = ctx or mp.get_context("spawn")
        self._tasks = ctx.SimpleQueue()
        self._results = ctx.SimpleQueue()
        self._cancelled = ctx.RawValue("b", 0)
        self._procs = [ctx.Process(target=_serve, args=(self._tasks, self._results, self._cancelled, initializer,
                                                        initargs),
                                   name=f"zoo-worker-{i}", daemon=True) for i in range(max(int(num_workers), 1))]
        with single_thread_children():
            for p in self._procs:
                p.start()
        self._reader = self._results._reader
        self._poll = select.poll()
        self._poll.register(self._reader.fileno(), select.POLLIN)
        self._sentinels = {p.sentinel: p for p in self._procs}
        for fd in self._sentinels:
            self._poll.register(fd, select.POLLIN)
        self._submit_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._next = 0
        self._done: dict[int, tuple[bool, Any]] = {}
        self._broken: str | None = None
        self._closed = False

    def pids(self) -> list[int]:
        return sorted(p.pid for p in self._procs if p.pid is not None)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        """Queue ``fn(*args)`` for the next free worker (``fn`` and ``args`` are pickled)."""
        if self._broken:
            raise BrokenProcessPool(self._broken)
        if self._closed:
            raise RuntimeError("submit after shutdown")
        with self._submit_lock:
            index = self._next
            self._next += 1
            self._tasks.put((index, fn, args))
        return Job(self, index)

    def _result(self, index: int) -> Any:
        with self._read_lock:
            while index not in self._done:
                if self._broken:
                    raise BrokenProcessPool(self._broken)
                if self._closed:
                    raise RuntimeError("the pool is shut down: its unfinished tasks were dropped")
                self._wait_and_read()
            ok, value = self._done.pop(index)
        if ok:
            return value
        raise value

    def _wait_and_read(self) -> None:
        """Wait (without the GIL) until a result arrives or a worker exits; take every result waiting
        in the pipe and note a worker that exited."""
        events = self._poll.poll()
        exited = [fd for fd, _ in events if fd in self._sentinels]
        reader = self._reader.fileno()
        while any(fd == reader for fd, _ in events):
            index, ok, value = self._results.get()
            if index == _INIT_FAILED:
                self._broken = str(value)
            else:
                self._done[index] = (ok, value)
            events = self._poll.poll(0)
            exited += [fd for fd, _ in events if fd in self._sentinels and fd not in exited]
        if exited and not self._closed:
            p = self._sentinels[exited[0]]
            p.join(0.1)
            self._broken = self._broken or (f"worker {p.pid} exited with code {p.exitcode}"
                                            if p.exitcode is not None else f"worker {p.pid} exited")

    def shutdown(self, wait: bool = True, cancel_futures: bool = True) -> None:
        """Stop the workers: tasks not yet started are dropped unrun (``cancel_futures``; the workers
        skip them, since the parent cannot take them back out of the pipe without racing an idle worker
        for it), each worker ends after its current task; with ``wait``, until they have exited
        (results still arriving are read and dropped meanwhile, so none blocks on a full pipe). A worker
        that does not end within 10 s is killed."""
        if self._closed:
            return
        self._closed = True
        if cancel_futures:
            self._cancelled.value = 1
        for _ in self._procs:
            with contextlib.suppress(OSError, ValueError):
                self._tasks.put(None)
        if self._broken:  # a dead worker may hold a queue's lock: the others could wait on it forever
            for p in self._procs:
                if p.is_alive():
                    p.kill()
        if not wait:
            return
        deadline = time.monotonic() + 10.0
        for p in self._procs:
            while p.is_alive() and time.monotonic() < deadline:
                with contextlib.suppress(OSError, EOFError, ValueError):
                    while self._reader.poll():
                        self._results.get()
                p.join(0.02)
            if p.is_alive():
                p.kill()
                p.join()
        self._done.clear()
        for q in (self._tasks, self._results):
            with contextlib.suppress(OSError):
                q.close()
