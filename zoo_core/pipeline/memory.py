"""Memory management for the pipeline's processes: glibc malloc tuning (no-ops elsewhere) and the
cyclic garbage collector kept off the objects that outlive a stream."""
from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_FROZEN = {"depth": 0}
_FROZEN_LOCK = threading.Lock()


def _mallopt(param: int, value: int) -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(param, value)
    except (OSError, AttributeError):  # not glibc
        pass


def return_big_blocks() -> None:
    """In the pipeline's process: arrays of 1 MiB and more always get their own ``mmap`` and go
    back to the system when freed. (By default glibc raises that threshold after the first free, and
    the pipeline threads then fragment their heaps, so the peak RSS creeps up with the batches.)

    Freed heap pages below 32 MiB stay with the process (``M_TRIM_THRESHOLD``), so the smaller arrays
    every image allocates do not fault their pages in again each time: with glibc's 128 KiB default,
    a 600 KB array allocated and freed 200 times faulted 23,000 pages, and a serial Star-Clouds run
    went 15 % slower (BENCHMARKS.md, round 15). Fixing the threshold also ends the dynamic raise, which
    made the speed depend on whether a large chunk happened to be freed first (reading a WIDER ``.mat``
    did)."""
    _mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; a fixed value also disables the dynamic raise
    _mallopt(-1, 32 << 20)  # M_TRIM_THRESHOLD


def keep_heap_pages() -> None:
    """In a worker process: serve multi-MB arrays from a heap that is never trimmed.

    Every image allocates the same few large arrays; by default each is a fresh ``mmap`` whose pages
    fault in one by one (about a millisecond per 8 MB). The worker's footprint stays bounded by its
    largest image.
    """
    _mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
    _mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD


@contextlib.contextmanager
def long_lived_frozen() -> Iterator[None]:
    """While a stream runs, the objects that were alive when it started (the composed config, the
    plugins, the dataset's samples: ~65,000 in an eval) are out of the cyclic collector's reach
    (``gc.freeze``), so its passes look only at what the stream allocates: a full pass over them took
    ~13 ms here, holding the GIL the device thread needs when its call returns. (No collection first:
    it would cost that pass up front; garbage frozen with them waits for the end.) Put back when the
    outermost stream ends."""
    with _FROZEN_LOCK:
        _FROZEN["depth"] += 1
        if _FROZEN["depth"] == 1:
            gc.freeze()
    try:
        yield
    finally:
        with _FROZEN_LOCK:
            _FROZEN["depth"] -= 1
            if _FROZEN["depth"] == 0:
                gc.unfreeze()
