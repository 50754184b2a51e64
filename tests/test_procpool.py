"""The preprocess workers' process pool (zoo_core.pipeline.procpool): results, errors, dead workers, shutdown.

Tasks are stdlib functions, so the spawned workers can unpickle them without importing the tests.
"""
from __future__ import annotations

import operator
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from zoo_core.pipeline.procpool import ProcessPool


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
    with pytest.raises(RuntimeError, match="a result of allocate_lock could not be sent back"):
        pool.submit(threading.Lock).result()
    assert pool.submit(abs, -7).result() == 7  # the worker lives on


def test_a_killed_worker_breaks_the_pool_and_shutdown_does_not_hang(pool):
    jobs = [pool.submit(time.sleep, 30) for _ in range(4)]
    time.sleep(0.5)
    os.kill(pool.pids()[0], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(BrokenProcessPool, match=r"worker \d+ exited with code -9"):
        for j in jobs:
            j.result()
    with pytest.raises(BrokenProcessPool):
        pool.submit(abs, 1)
    pool.shutdown()
    assert time.monotonic() - t0 < 5
    assert not any(_alive(pid) for pid in pool.pids())


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
