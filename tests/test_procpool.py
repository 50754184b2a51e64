"""The preprocess workers' process pool (zoo_core.pipeline.procpool): results, errors, dead workers, shutdown.

Tasks are stdlib functions, so the spawned workers can unpickle them without importing the tests.
"""
from __future__ import annotations

import ctypes
import operator
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from zoo_core.pipeline.procpool import ProcessPool, WorkerCrashed


@pytest.fixture
def pool():
    p = ProcessPool(2)
    yield p
    p.shutdown()


def test_results_come_back_to_their_jobs_and_errors_are_raised_there(pool):
    jobs = [pool.submit(operator.mul, i, 3) for i in range(20)]
    bad = pool.submit(operator.truediv, 1, 0)
    late = pool.submit(pow, 2, 10)
    assert late.result() == 1024  # out of submission order: the earlier results wait in the pool
    assert [j.result() for j in reversed(jobs)] == [3 * i for i in reversed(range(20))]
    with pytest.raises(ZeroDivisionError):
        bad.result()
    assert len(set(pool.pids())) == 2 and pool.submit(os.getpid).result() in pool.pids()


def test_the_pool_runs_no_thread_of_its_own(pool):
    before = threading.active_count()
    assert [pool.submit(abs, -i).result() for i in range(50)] == list(range(50))
    assert threading.active_count() == before


def test_a_result_that_cannot_be_pickled_is_an_error_naming_the_task(pool):
    # threading.RLock: a stdlib function named RLock on every Python (threading.Lock is named allocate_lock
    # up to 3.12 and lock from 3.13), so the worker imports no test module to unpickle the task
    with pytest.raises(RuntimeError, match="a result of RLock could not be sent back"):
        pool.submit(threading.RLock).result()
    assert pool.submit(abs, -7).result() == 7  # the worker lives on


def test_a_killed_worker_breaks_the_pool_and_shutdown_does_not_hang(pool):
    jobs = [pool.submit(time.sleep, 30) for _ in range(4)]
    _wait_until_busy(pool, 0)  # (a fixed 0.5 s was not always enough on a loaded machine)
    os.kill(pool.pids()[0], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(BrokenProcessPool, match=r"worker \d+ exited with code -9") as broken:
        for j in jobs:
            j.result()
    assert broken.value.task in (jobs[0].index, jobs[1].index)  # the task the killed worker held
    with pytest.raises(BrokenProcessPool):
        pool.submit(abs, 1)
    pool.shutdown()
    assert time.monotonic() - t0 < 5
    assert not any(_alive(pid) for pid in pool.pids())


def _wait_until_busy(pool: ProcessPool, *slots: int, timeout: float = 60.0) -> None:
    """Until one of the workers ``slots`` holds a task (it has started and taken one)."""
    deadline = time.monotonic() + timeout
    while all(pool._busy[s] < 0 for s in slots) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(pool._busy[s] >= 0 for s in slots), "no worker took a task"


def test_a_worker_ended_by_sigterm_or_sigint_is_an_interrupt_not_a_dead_worker(pool):
    """Before: `a preprocess worker process died (worker N exited with code -2)`, exit 2, for a Ctrl-C (or a
    kill to the process group) that reached a worker before it ignored SIGINT; the run was interrupted."""
    job = pool.submit(time.sleep, 30)
    _wait_until_busy(pool, 0, 1)
    os.kill(pool.pids()[0], signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        job.result()
    with pytest.raises(KeyboardInterrupt):
        pool.submit(abs, 1)


def test_a_ctrl_c_while_the_workers_start_reaches_none_of_them(capfd):
    """Before: a worker still starting (its interpreter, its imports) had Python's SIGINT handler: a Ctrl-C then
    printed a KeyboardInterrupt traceback per worker, or killed one (exit -2). Now workers start with SIGINT
    blocked and drop it once they ignore it."""
    p = ProcessPool(2)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:  # the workers' whole start-up
            for pid in p.pids():
                os.kill(pid, signal.SIGINT)
            time.sleep(0.005)
        assert sorted(p.submit(abs, -i).result() for i in range(4)) == [0, 1, 2, 3]
        deadline = time.monotonic() + 60  # (one worker may have run all four while the other still started)
        while True:
            blocked = [_status(pid, "SigBlk") & (1 << (signal.SIGINT - 1)) for pid in p.pids()]
            ignored = [_status(pid, "SigIgn") & (1 << (signal.SIGINT - 1)) for pid in p.pids()]
            if (blocked == [0, 0] and all(ignored)) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert blocked == [0, 0] and all(ignored)
        assert sorted(p.submit(abs, -i).result() for i in range(4)) == [0, 1, 2, 3]  # both alive
    finally:
        p.shutdown()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith(f"{field}:"))


def test_a_failing_initializer_breaks_the_pool_with_its_error():
    p = ProcessPool(1, initializer=operator.truediv, initargs=(1, 0))
    try:
        with pytest.raises(BrokenProcessPool, match="initializer failed: ZeroDivisionError"):
            p.submit(abs, 1).result()
    finally:
        p.shutdown()


def test_shutdown_drops_queued_tasks_and_workers_ignore_ctrl_c():
    p = ProcessPool(1)
    try:
        assert p.submit(abs, -1).result() == 1  # the worker is up (its start-up is the parent's to stop)
        first = p.submit(time.sleep, 0.3)
        for _ in range(20):
            last = p.submit(time.sleep, 0.3)
        time.sleep(0.1)
        os.kill(p.pids()[0], signal.SIGINT)  # the parent decides what Ctrl-C stops
        assert first.result() is None
        t0 = time.monotonic()
    finally:
        p.shutdown()
    assert time.monotonic() - t0 < 2.0  # 20 queued sleeps would take 6 s
    with pytest.raises(RuntimeError, match="shut down"):
        last.result()
    assert not any(_alive(pid) for pid in p.pids())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_shutdown_never_reads_the_task_pipe_back(monkeypatch):
    """An idle worker waits on the task pipe holding its read lock: a parent that drained queued tasks
    could see one in the pipe, lose it to that worker, and then wait on an empty pipe forever. The
    workers drop queued tasks themselves."""
    p = ProcessPool(1)
    try:
        assert p.submit(abs, -1).result() == 1
        p.submit(time.sleep, 0.3)
        for _ in range(10):
            p.submit(time.sleep, 0.3)

        def no_get():
            raise AssertionError("the parent read a task back")

        monkeypatch.setattr(p._tasks, "get", no_get)
        t0 = time.monotonic()
    finally:
        p.shutdown()
    assert time.monotonic() - t0 < 2.0


def test_workers_start_with_one_blas_thread_unless_the_user_chose(monkeypatch):
    """OpenBLAS spins a thread per extra core for ~0.1 s at import: the workers get
    OPENBLAS_NUM_THREADS=1, this process's environment is left as it was, a user's value wins."""
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    p = ProcessPool(2)
    try:
        assert p.submit(os.getenv, "OPENBLAS_NUM_THREADS").result() == "1"
    finally:
        p.shutdown()
    assert "OPENBLAS_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    p = ProcessPool(1)
    try:
        assert p.submit(os.getenv, "OPENBLAS_NUM_THREADS").result() == "3"
    finally:
        p.shutdown()


def test_a_worker_killed_in_the_middle_of_a_result_breaks_the_pool_naming_its_task():
    """The worker blocks writing a 50 MB result the parent does not read yet, and is SIGKILLed there: the
    parent reading the cut message must see the worker's death (it waited forever for the rest)."""
    p = ProcessPool(1)
    try:
        assert p.submit(abs, -1).result() == 1
        job = p.submit(bytes, 50_000_000)
        time.sleep(0.5)  # pickled and blocked in write(2): the pipe holds 64 KB
        os.kill(p.pids()[0], signal.SIGKILL)
        got: list[BaseException] = []

        def wait():
            try:
                job.result()
            except BaseException as exc:
                got.append(exc)

        t = threading.Thread(target=wait, daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), "the parent hangs on the cut result"
        assert isinstance(got[0], BrokenProcessPool) and "exited with code -9" in str(got[0])
        assert got[0].task == job.index and got[0].exitcode == -9
    finally:
        p.shutdown()


def test_a_worker_that_crashes_on_a_task_fails_that_task_alone_and_is_replaced(monkeypatch):
    """SIGSEGV (ctypes reading address 0), SIGABRT, exit code 7: the task the worker held fails with
    WorkerCrashed saying how; a new worker takes its place and every other task completes. The new
    worker starts with the sys.path the first ones got (not a directory OpenCV's loader put first on
    it for the time of its import in another thread)."""
    p = ProcessPool(2)
    try:
        first = p.pids()
        monkeypatch.setattr(sys, "path", ["/nonexistent/cv2", *sys.path])
        jobs = [p.submit(abs, -i) for i in range(6)]
        segv = p.submit(ctypes.string_at, 0)
        more = [p.submit(abs, -i) for i in range(6, 12)]
        code7 = p.submit(os._exit, 7)
        abort = p.submit(os.abort)
        last = [p.submit(abs, -i) for i in range(12, 20)]
        t0 = time.monotonic()
        assert [j.result() for j in jobs + more + last] == list(range(20))
        for job, how in ((segv, "signal 11 (SIGSEGV)"), (code7, "exit code 7"), (abort, "signal 6 (SIGABRT)")):
            with pytest.raises(WorkerCrashed, match=re.escape(how)):
                job.result()
        assert p.submit(abs, -5).result() == 5
        assert len(p.pids()) == 2 and set(p.pids()) != set(first)
        paths = [p.submit(eval, "__import__('sys').path").result() for _ in range(8)]
        assert not any("/nonexistent/cv2" in path for path in paths)
        assert time.monotonic() - t0 < 10
    finally:
        p.shutdown()
    assert not any(_alive(pid) for pid in p.pids())


def test_stop_wakes_a_thread_waiting_on_a_hung_worker_and_shutdown_kills_it_at_once():
    p = ProcessPool(1)
    try:
        assert p.submit(abs, -1).result() == 1
        job = p.submit(time.sleep, 60)
        threading.Timer(0.3, p.stop).start()
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="shut down"):
            job.result()
        assert time.monotonic() - t0 < 3
    finally:
        p.shutdown()
    assert time.monotonic() - t0 < 3  # not the 10 s grace of a normal shutdown
    assert not any(_alive(pid) for pid in p.pids())


def test_a_task_that_stalls_is_reported_with_its_worker_while_the_pool_waits():
    p = ProcessPool(1, stall_s=0.2)
    try:
        seen: list = []
        p.on_stall = lambda held, waited: seen.append((held, round(waited, 1)))
        job = p.submit(time.sleep, 0.7)
        assert job.result() is None
        assert seen and all(held == [(p.pids()[0], job.index)] for held, _ in seen)
        assert seen[0][1] >= 0.2 and len(seen) <= 4  # 0.4 when the worker took the task after the first 0.2 s
    finally:
        p.shutdown()


def test_a_ctrl_c_while_the_workers_start_stops_those_already_started(monkeypatch, capfd):
    """Before: the Ctrl-C held back while a worker started was raised once the block ended, before the pool had
    recorded that worker, and the constructor's caller got no pool to shut down: the orphaned worker, its queue's
    semaphore gone with the pool, printed a traceback (FileNotFoundError in SemLock._rebuild). Now the interrupt
    still comes out of the constructor, and every worker started is killed at once, quietly."""
    import multiprocessing.context

    started = []
    start = multiprocessing.context.SpawnProcess.start

    def start_then_ctrl_c(self):
        start(self)
        started.append(self)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # (blocked here: pending until the block ends)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        ProcessPool(2)
    assert len(started) == 1
    started[0].join(5)
    assert started[0].exitcode == -signal.SIGKILL
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


class _Exited(Exception):
    pass


def test_a_worker_whose_parent_is_gone_exits_quietly_when_it_sends_a_result(monkeypatch):
    """Before: the result pipe's BrokenPipeError (the parent killed by SIGKILL, the out-of-memory killer) was taken
    for a result that does not pickle; the error sent on the same dead pipe raised out of the worker, which printed
    `Process zoo-worker-0:` and two chained tracebacks on the terminal. Now it exits at once, printing nothing."""
    import multiprocessing

    from zoo_core.pipeline import procpool

    reader, writer = multiprocessing.Pipe(duplex=False)
    reader.close()  # the parent's end: gone with it

    class Tasks:
        def __init__(self):
            self.queue = [(0, abs, (-3,)), None]

        def get(self):
            return self.queue.pop(0)

    def exit_(code):
        raise _Exited(code)

    monkeypatch.setattr(procpool.os, "_exit", exit_)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(_Exited):
            procpool._serve(0, Tasks(), writer, [-1], type("V", (), {"value": 0})(), None, ())
    finally:
        signal.signal(signal.SIGINT, handler)  # (_serve ignores SIGINT, as a worker does)
        writer.close()


def test_a_worker_ended_by_sighup_is_an_interrupt_not_a_dead_worker(pool):
    """The terminal closed: SIGHUP to the process group ends the workers (its default action) as the run unwinds on
    its own; before, that was `a preprocess worker process died (worker N exited with code -1)`, exit 2."""
    job = pool.submit(time.sleep, 30)
    _wait_until_busy(pool, 0, 1)
    os.kill(pool.pids()[0], signal.SIGHUP)
    with pytest.raises(KeyboardInterrupt):
        job.result()


def test_the_resource_tracker_a_pool_starts_outlives_a_closed_terminal():
    """Before: multiprocessing's resource tracker (the task queue's semaphores), started by the pool, ignored SIGINT
    and SIGTERM but died of the SIGHUP of a closed terminal; the run unwinding then printed `resource_tracker: process
    died unexpectedly` and a KeyError traceback per semaphore. Now it starts with SIGHUP blocked. (A fresh process:
    this one's tracker may have been started by an earlier test.)"""
    import subprocess

    code = ("from multiprocessing import resource_tracker\n"
            "from zoo_core.pipeline.procpool import ProcessPool\n"
            "p = ProcessPool(1)\n"
            "pid = resource_tracker._resource_tracker._pid\n"
            "print(next(int(l.split()[1], 16) for l in open(f'/proc/{pid}/status') if l.startswith('SigBlk:')))\n"
            "p.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert int(out.split()[-1]) & (1 << (signal.SIGHUP - 1))
