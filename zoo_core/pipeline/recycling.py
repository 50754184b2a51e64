"""Arrays reused once nothing else refers to them (a backend's output buffers).

A multi-MB array allocated per batch is a fresh ``mmap`` in the pipeline's process (see
:func:`zoo_core.pipeline.memory.return_big_blocks`): its pages fault in one by one, about a
millisecond per 2.4 MB of outputs on the machines measured in ``BENCHMARKS.md``. :class:`ArrayPool`
hands out the same few arrays again instead. An array is free when its reference count is back to
what the pool alone holds: every live view of it (a batch item's slice, a decoder's intermediate)
refers to it through ``.base``, so no array is reused while any part of it is still read.
"""
from __future__ import annotations

import sys
import threading

import numpy as np


def _refs(arrays: list[np.ndarray], i: int) -> int:
    return sys.getrefcount(arrays[i])


#: The reference count of an array that only a pool's list holds, as :func:`_refs` sees it (measured,
#: not assumed: how ``getrefcount`` counts differs between CPython versions).
_IDLE = _refs([np.empty(0)], 0)


class ArrayPool:
    """At most ``keep`` arrays per (shape, dtype), each reused when it is referenced only here."""

    def __init__(self, keep: int = 6):
        self.keep = int(keep)
        self._arrays: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self.reused = 0

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype`` that nobody else holds."""
        dt = np.dtype(dtype)
        key = (tuple(int(s) for s in shape), dt.str)
        with self._lock:
            arrays = self._arrays.setdefault(key, [])
            for i in range(len(arrays)):
                if _refs(arrays, i) <= _IDLE:
                    self.reused += 1
                    return arrays[i]
            arr = np.empty(key[0], dt)
            if len(arrays) < self.keep:
                arrays.append(arr)
            return arr
