"""A process pool whose results are read by the thread that waits for them.

:class:`concurrent.futures.ProcessPoolExecutor` moves every task and every result through two threads
of its own in the parent: a queue feeder that pickles tasks into the pipe, and a manager that wakes on
each result, builds a new selector over the result pipe and the workers' sentinels, unpickles the
result and completes its future, which wakes the waiting thread in turn. On a 2-core host feeding a
device one image at a time that is two more threads contending for the GIL and ~0.4 ms of parent CPU
per image (BENCHMARKS.md, round 6). Here the submitting thread writes the task into the pipe itself,
and the thread that asks for a result polls the workers' result pipes and sentinels (one ``poll``
object, registered once) and unpickles what arrives: no thread of the pool's own.

Each worker writes its results into a pipe of its own, whose write end only that worker holds: a worker
killed in the middle of a result cuts that pipe (end of file for the parent, never a wait for the rest
of a message that will not come, nor a lock or a pipe shared with the other workers left half used).
Each worker notes the task it runs in a shared array (one store per task): a worker that crashes on a
task (a signal such as SIGSEGV, or a non-zero exit) fails that task alone with :class:`WorkerCrashed`
and is replaced; a worker that dies otherwise (SIGKILL: the kernel's out-of-memory killer) breaks the
pool, naming the task it held. :meth:`ProcessPool.stop` wakes a thread waiting for a result (Ctrl-C).

The subset of the executor's interface the worker pool uses: :meth:`ProcessPool.submit` returns a
:class:`Job` whose :meth:`Job.result` returns the task's value or raises its exception, and raises
:class:`~concurrent.futures.process.BrokenProcessPool` once a worker has died.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.reduction import ForkingPickler
from typing import Any

from zoo_core.blas import single_thread_children

_INIT_FAILED = -1
#: Signals that mean the task crashed its worker (a native bug on one input), not that someone killed it.
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT})
#: How long :meth:`ProcessPool.shutdown` lets the workers of a stopped pool end their task before killing them.
STOP_GRACE_S = 0.5


def exit_text(code: int | None) -> str:
    """``signal 11 (SIGSEGV)`` / ``exit code 7``: how a worker process ended."""
    if code is None:
        return "an unknown exit status"
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


_PREP_LOCK = threading.Lock()


@contextlib.contextmanager
def _spawned_with_path(path: list[str]) -> Iterator[None]:
    """Processes spawned meanwhile get ``path`` as their ``sys.path``, not the parent's current one. A
    replacement worker may start while another thread imports OpenCV, whose loader puts its own directory
    first on ``sys.path`` during the import: a worker spawned then finds ``cv2/typing`` for ``typing`` and
    dies starting. It gets the path the first workers got instead."""
    from multiprocessing import spawn

    with _PREP_LOCK:
        original = spawn.get_preparation_data

        def prepared(name: str) -> dict:
            data = original(name)
            data["sys_path"] = list(path)
            return data

        spawn.get_preparation_data = prepared
        try:
            yield
        finally:
            spawn.get_preparation_data = original


class WorkerCrashed(Exception):
    """The worker running this task crashed on it (it was replaced; the other tasks go on)."""

    def __init__(self, pid: int | None, exitcode: int | None):
        super().__init__(f"worker {pid} crashed on it ({exit_text(exitcode)})")
        self.pid, self.exitcode = pid, exitcode


def _serve(slot: int, tasks: Any, results: Any, busy: Any, cancelled: Any,
           initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """A worker: run ``initializer``, then ``(index, fn, args)`` tasks until ``None``; each result goes
    back through this worker's own pipe ``results`` as ``(index, ok, value or exception)``, the task's
    index in ``busy[slot]`` while it runs; once ``cancelled`` is set the tasks still queued are dropped
    unrun. Ctrl-C is the parent's to handle (it stops the pool): SIGINT is ignored here, and a Ctrl-C that came
    while the worker started (it starts with SIGINT blocked: :func:`_interrupts_blocked`) is dropped; a SIGTERM
    or SIGHUP that came meanwhile ends it now, as it would have then. Once the parent is gone (its end of the
    pipe closed: SIGKILL, the out-of-memory killer) the worker exits at once, printing nothing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _START_BLOCKED)
    try:
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:  # reported to the parent, which stops the pool
        _send(results, (_INIT_FAILED, False, f"the worker's initializer failed: {type(exc).__name__}: {exc}"))
        return
    while True:
        task = tasks.get()
        if task is None:
            return
        if cancelled.value:
            continue
        index, fn, args = task
        busy[slot] = index
        try:
            reply = (index, True, fn(*args))
        except BaseException as exc:  # the task's error is the caller's
            reply = (index, False, exc)
        try:
            _send(results, reply)
        except Exception as exc:  # the value or exception does not pickle
            _send(results, (index, False, RuntimeError(f"a result of {getattr(fn, '__name__', fn)} could not be "
                                                       f"sent back: {type(exc).__name__}: {exc}")))
        busy[slot] = -1


def _send(results: Any, reply: tuple) -> None:
    """Send ``reply`` to the parent (an error if it does not pickle); if the parent is gone (its end of the pipe
    closed) exit this worker at once, printing nothing. Before, the dead pipe's BrokenPipeError was taken for a
    result that does not pickle, an error sent on the same pipe, and its traceback (``Process zoo-worker-0:``)
    printed on the terminal of a run killed by SIGKILL."""
    data = ForkingPickler.dumps(reply)  # (what Connection.send does: pickling errors apart from the pipe's)
    try:
        results.send_bytes(data)
    except (OSError, EOFError):  # BrokenPipeError (EPIPE), ConnectionResetError...: nobody reads this pipe any more
        os._exit(0)


#: Blocked while a worker starts (the parent's thread, and the worker until :func:`_serve` runs).
_START_BLOCKED = {signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])}


@contextlib.contextmanager
def _interrupts_blocked():
    """SIGINT, SIGTERM and SIGHUP blocked in the calling thread for the block: a process it starts (``spawn``: fork
    and exec) inherits the mask, so a Ctrl-C while the worker's interpreter starts and imports stays pending until
    :func:`_serve` ignores it, instead of printing a ``KeyboardInterrupt`` traceback in each worker or killing it
    (exit -2). This process gets its own signals when the block ends (nothing is lost, unlike with ``SIG_IGN``), once
    the worker it started is recorded, so that the interrupt it raises can stop that worker too."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _START_BLOCKED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (it tracks the task queue's semaphores) with SIGHUP blocked, if it
    is not running yet. It ignores SIGINT and SIGTERM itself, but not SIGHUP: killed by the SIGHUP of a closed
    terminal, it was relaunched as the run unwound and printed ``resource_tracker: process died unexpectedly`` and a
    ``KeyError`` traceback per semaphore. It keeps the blocked mask it starts with (it unblocks SIGINT and SIGTERM
    only); here the SIGHUP is delivered when the block ends."""
    from multiprocessing import resource_tracker

    with contextlib.suppress(Exception), _interrupts_blocked():
        resource_tracker.ensure_running()


#: A worker that ended by one of these signals was stopped with the run (Ctrl-C, ``kill`` to the process group, or
#: the terminal closed: SIGHUP).
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))


class Job:
    """One submitted task; :meth:`result` waits for it."""

    __slots__ = ("index", "pool")

    def __init__(self, pool: ProcessPool, index: int):
        self.pool, self.index = pool, index

    def result(self) -> Any:
        """The task's return value; its exception re-raised; :class:`WorkerCrashed` if its worker crashed
        on it; BrokenProcessPool if a worker died otherwise (its ``task`` attribute: the index of the task
        that worker held, or None); KeyboardInterrupt if a worker was ended by SIGINT, SIGTERM or SIGHUP."""
        return self.pool._result(self.index)


class ProcessPool:
    """``num_workers`` processes of the ``ctx`` start method, each running ``initializer(*initargs)``
    once, all started before the constructor returns."""

    def __init__(self, num_workers: int, ctx: Any = None, initializer: Callable[..., None] | None = None,
                 initargs: tuple = (), stall_s: float = 60.0):
        self._ctx = ctx or mp.get_context("spawn")
        self._initializer, self._initargs = initializer, initargs
        _start_resource_tracker()
        n = max(int(num_workers), 1)
        self._tasks = self._ctx.SimpleQueue()
        self._cancelled = self._ctx.RawValue("b", 0)
        self._busy = self._ctx.RawArray("q", [-1] * n)
        self._poll = select.poll()
        self._wake_r, self._wake_w = os.pipe()
        self._poll.register(self._wake_r, select.POLLIN)
        self._procs: list[Any] = [None] * n
        self._readers: dict[int, tuple[int, Any]] = {}  # result pipe fd -> (slot, connection)
        self._sentinels: dict[int, int] = {}  # sentinel fd -> slot
        self._submit_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._next = 0
        self._pending: set[int] = set()  # submitted, result not read yet
        self._done: dict[int, tuple[bool, Any]] = {}
        self._broken: str | None = None
        self._broken_task: int | None = None
        self._broken_code: int | None = None
        self._closed = False
        self._stopped = False
        #: set when a worker was ended by SIGINT, SIGTERM or SIGHUP: :meth:`Job.result` and :meth:`submit` raise
        #: KeyboardInterrupt (the signal went to the process group: this process's interrupt too)
        self.interrupted = False
        self._sys_path = list(sys.path)
        #: ``on_stall([(worker pid, task index), ...], seconds)``: called when no result came for ``stall_s``
        #: seconds (and every ``stall_s`` after), with the tasks the workers hold
        self.on_stall: Callable[[list[tuple[int, int]], float], None] | None = None
        self._stall_ms = max(int(stall_s * 1000), 1)
        try:
            with single_thread_children():
                for slot in range(n):
                    self._start(slot)
        except BaseException:  # a Ctrl-C or SIGTERM while they start: the caller gets no pool to shut down
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Kill the workers started so far and close the pipes (the constructor is failing)."""
        self._closed = True
        for p in self._procs:
            if p is not None:
                with contextlib.suppress(Exception):
                    p.kill()
                    p.join()
        self._close_pipes()

    def _close_pipes(self) -> None:
        """Close the workers' result pipes, the task queue and the wake-up pipe."""
        for _, conn in self._readers.values():
            conn.close()
        self._readers.clear()
        with contextlib.suppress(OSError):
            self._tasks.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _start(self, slot: int) -> None:
        reader, writer = self._ctx.Pipe(duplex=False)
        p = self._ctx.Process(target=_serve, args=(slot, self._tasks, writer, self._busy, self._cancelled,
                                                   self._initializer, self._initargs),
                              name=f"zoo-worker-{slot}", daemon=True)
        try:
            with _interrupts_blocked():
                p.start()
                self._procs[slot] = p  # (before an interrupt held back meanwhile is raised: it stops this one too)
                self._readers[reader.fileno()] = (slot, reader)
        finally:
            writer.close()  # the worker's end: its death (even mid-message) is end of file here
        self._poll.register(reader.fileno(), select.POLLIN)
        self._sentinels[p.sentinel] = slot
        self._poll.register(p.sentinel, select.POLLIN)

    def pids(self) -> list[int]:
        return sorted(p.pid for p in self._procs if p is not None and p.pid is not None)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        """Queue ``fn(*args)`` for the next free worker (``fn`` and ``args`` are pickled)."""
        if self.interrupted:
            raise KeyboardInterrupt
        if self._broken:
            raise self._broken_error()
        if self._closed:
            raise RuntimeError("submit after shutdown")
        with self._submit_lock:
            index = self._next
            self._next += 1
            self._pending.add(index)
            self._tasks.put((index, fn, args))
        return Job(self, index)

    def _broken_error(self) -> BrokenProcessPool:
        exc = BrokenProcessPool(self._broken)
        exc.task, exc.exitcode = self._broken_task, self._broken_code  # type: ignore[attr-defined]
        return exc

    def _result(self, index: int) -> Any:
        with self._read_lock:
            while index not in self._done:
                if self.interrupted:  # the signal went to the whole process group: this process's interrupt too
                    raise KeyboardInterrupt
                if self._broken:
                    raise self._broken_error()
                if self._closed or self._stopped:
                    raise RuntimeError("the pool is shut down: its unfinished tasks were dropped")
                self._wait_and_read()
            ok, value = self._done.pop(index)
        if ok:
            return value
        raise value

    def _wait_and_read(self) -> None:
        """Wait (without the GIL) until a result arrives, a worker exits or the pool is stopped; take
        every result waiting in the pipes, then handle a worker that exited."""
        events = self._poll.poll(self._stall_ms)
        t0 = time.monotonic()
        while not events:  # (the timeout costs nothing per item: the same poll call)
            self._stalled(time.monotonic() - t0 + self._stall_ms / 1000)
            events = self._poll.poll(self._stall_ms)
        exited: list[int] = []
        while events:
            more = False
            for fd, _ in events:
                got = self._readers.get(fd)
                if got is not None:
                    more = self._read_one(fd, got[1]) or more
                elif fd in self._sentinels:
                    if self._sentinels[fd] not in exited:
                        exited.append(self._sentinels[fd])
                elif fd == self._wake_r:
                    self._stopped = True
            events = self._poll.poll(0) if more else []
        for slot in exited:
            self._exited(slot)

    def _stalled(self, waited: float) -> None:
        if self.on_stall is None:
            return
        held = [(p.pid, int(self._busy[slot])) for slot, p in enumerate(self._procs)
                if p is not None and int(self._busy[slot]) in self._pending]
        if held:
            self.on_stall(held, waited)

    def _read_one(self, fd: int, conn: Any) -> bool:
        """Read one result from a worker's pipe; False (and the pipe forgotten) at its end."""
        try:
            index, ok, value = conn.recv()
        except (EOFError, OSError):  # the worker is gone (perhaps in the middle of a message)
            self._forget_reader(fd)
            return False
        if index == _INIT_FAILED:
            self._broken = self._broken or str(value)
        else:
            self._pending.discard(index)
            self._done[index] = (ok, value)
        return True

    def _forget_reader(self, fd: int) -> None:
        _, conn = self._readers.pop(fd)
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(fd)
        conn.close()

    def _exited(self, slot: int) -> None:
        """Worker ``slot`` exited: its last results are read; a task it crashed on fails alone (and a new
        worker takes the slot); any other death breaks the pool."""
        p = self._procs[slot]
        for fd, (s, conn) in list(self._readers.items()):
            if s == slot:
                while fd in self._readers and conn.poll():
                    self._read_one(fd, conn)
                if fd in self._readers:
                    self._forget_reader(fd)
        self._sentinels.pop(p.sentinel, None)
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(p.sentinel)
        if self._closed:
            return
        p.join(0.1)
        code = p.exitcode
        busy = int(self._busy[slot])
        self._busy[slot] = -1
        task = busy if busy in self._pending else None  # (None: it died between tasks, or after sending)
        crashed = code is not None and (code > 0 or -code in CRASH_SIGNALS)
        if crashed and task is not None and not self._broken and not self._stopped:
            self._pending.discard(task)
            self._done[task] = (False, WorkerCrashed(p.pid, code))
            with single_thread_children(), _spawned_with_path(self._sys_path):
                self._start(slot)
            return
        if code is not None and -code in _INTERRUPTS:
            self.interrupted = True
        if not self._broken:
            self._broken = (f"worker {p.pid} exited with code {code}" if code is not None
                            else f"worker {p.pid} exited")
            self._broken_task, self._broken_code = task, code

    def stop(self) -> None:
        """Wake the thread waiting for a result (its :meth:`Job.result` raises RuntimeError) and drop the
        queued tasks; safe from any thread (Ctrl-C). :meth:`shutdown` then kills the workers at once."""
        self._stopped = True
        self._cancelled.value = 1
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def shutdown(self, wait: bool = True, cancel_futures: bool = True) -> None:
        """Stop the workers: tasks not yet started are dropped unrun (``cancel_futures``; the workers
        skip them, since the parent cannot take them back out of the pipe without racing an idle worker
        for it), each worker ends after its current task; with ``wait``, until they have exited
        (results still arriving are read and dropped meanwhile, so none blocks on a full pipe). A worker
        that does not end within 10 s (:data:`STOP_GRACE_S` after :meth:`stop`) is killed."""
        if self._closed:
            return
        self._closed = True
        if cancel_futures:
            self._cancelled.value = 1
        procs = [p for p in self._procs if p is not None]
        for _ in procs:
            with contextlib.suppress(OSError, ValueError):
                self._tasks.put(None)
        if self._broken:  # a dead worker may hold a queue's lock: the others could wait on it forever
            for p in procs:
                if p.is_alive():
                    p.kill()
        if not wait:
            return
        deadline = time.monotonic() + (STOP_GRACE_S if self._stopped else 10.0)
        for p in procs:
            while p.is_alive() and time.monotonic() < deadline:
                for _, conn in list(self._readers.values()):
                    with contextlib.suppress(OSError, EOFError, ValueError):
                        while conn.poll():
                            conn.recv()
                p.join(0.02)
            if p.is_alive():
                p.kill()
                p.join()
        self._done.clear()
        self._close_pipes()
