"""Where a preprocess hook's output array can be born: straight in the pipe's shared memory.

A model's ``preprocess`` returns fresh arrays; a worker process then copies them into the item's
shared-memory reservation, from which the device reads. :func:`empty` lets the array that becomes the
model input be allocated *in* that reservation, so the copy is skipped: in a preprocess worker the
first call that fits takes the reservation (once per item), everywhere else (tests, ``num_workers=0``)
it is ``np.empty``. Use it for the array a ``preprocess`` hook returns as an input, never for a
temporary: :func:`zoo_core.api.geometry.normalize_to_chw` does.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

_local = threading.local()


def empty(shape: Sequence[int] | int, dtype: Any = np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array, placed in the current item's shared-memory reservation
    when one is open and has room (the first such call per item), else ``np.empty``."""
    shape_t = (int(shape),) if isinstance(shape, int | np.integer) else tuple(int(d) for d in shape)
    dt = np.dtype(dtype)
    slot = getattr(_local, "slot", None)
    if slot is not None and not dt.hasobject:
        buf, offset, room = slot
        nbytes = int(np.prod(shape_t, dtype=np.int64)) * dt.itemsize
        if nbytes <= room:
            _local.slot = None
            return np.ndarray(shape_t, dt, buffer=buf, offset=offset)
    return np.empty(shape_t, dt)


def open_slot(buf: Any, offset: int, room: int) -> None:
    """(The pipeline's worker) the next :func:`empty` that fits goes to ``buf[offset:offset + room]``."""
    _local.slot = (buf, int(offset), int(room))


def close_slot() -> None:
    """(The pipeline's worker) no reservation is open any more."""
    _local.slot = None
