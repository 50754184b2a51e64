"""One BLAS thread per zoo process, unless the user chose otherwise.

numpy's OpenBLAS starts a thread per extra core when numpy is imported, and each one spins for ~0.1 s
(2^28 cycles) before it sleeps, again after every threaded call: on a 2-core host that is ~0.13 s of
CPU taken from the start of every process, the parent's and each preprocess worker's (``perf record``
of a run, BENCHMARKS.md round 7). zoo's numpy work is element-wise or small (decode, evaluation, the
finite check), so it gains nothing from BLAS threads; torch and onnxruntime keep their own pools. The
variable only takes effect in a process that has not imported numpy yet.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

VARIABLE = "OPENBLAS_NUM_THREADS"


def single_thread_by_default() -> None:
    """Set ``OPENBLAS_NUM_THREADS=1`` for this process and its children, unless it is set."""
    os.environ.setdefault(VARIABLE, "1")


@contextlib.contextmanager
def single_thread_children() -> Iterator[None]:
    """Processes started inside this block get ``OPENBLAS_NUM_THREADS=1`` unless it is set; this
    process's own environment is as before afterwards."""
    if VARIABLE in os.environ:
        yield
        return
    os.environ[VARIABLE] = "1"
    try:
        yield
    finally:
        os.environ.pop(VARIABLE, None)
