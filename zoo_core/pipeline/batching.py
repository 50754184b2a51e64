"""Batches: prepared items grouped by input shape, and the one padding rule.

Padding rule (used by the batcher, the replay and acl backends, the contract kit): a batch of ``n``
items sent to a device that needs ``size > n`` repeats the last real item; outputs of the padding are
dropped after inference (``Batch.n_valid``).
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from zoo_core.api.errors import ConfigError
from zoo_core.backends.base import Batch
from zoo_core.pipeline.workers import Prepared


def available_memory() -> int | None:
    """Bytes of memory a new allocation may take: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else the
    physical memory; ``None`` when neither is known."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def batch_memory_error(rows: int, nbytes: int, what: str, available: int | None) -> ConfigError:
    """The error of a batch of ``rows`` items whose ``what`` takes ``nbytes``: it names ``batch_size``."""
    room = f"the {available} bytes ({available / 2**30:.1f} GiB) of memory available" if available is not None \
        else "the memory available"
    return ConfigError(f"batch_size={rows} is too large: one batch of {what} needs {nbytes} bytes "
                       f"({nbytes / 2**30:.1f} GiB), more than {room}", hint="lower batch_size")


def check_batch_memory(rows: int, nbytes: int, what: str) -> None:
    """:class:`ConfigError` naming ``batch_size`` when one batch (``nbytes``) exceeds :func:`available_memory`
    (instead of a ``MemoryError`` traceback, exit 1)."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise batch_memory_error(rows, nbytes, what, available)


def pad(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` (batch first) grown to ``size`` rows by repeating its last row; unchanged if big enough."""
    n = len(array)
    if n >= size:
        return array
    if n == 0:
        raise ValueError("cannot pad an empty batch")
    return np.concatenate([array, np.repeat(array[-1:], size - n, axis=0)])


def stack(items: Sequence[dict[str, np.ndarray]], size: int | None = None) -> dict[str, np.ndarray]:
    """Stack per-item input dicts into one batch, padded to ``size`` by the padding rule."""
    out = {k: np.stack([it[k] for it in items]) for k in items[0]}
    return {k: pad(v, size) for k, v in out.items()} if size else out


def input_key(p: Prepared) -> tuple:
    """Items batch together when their inputs have the same names, shapes and dtypes."""
    if p.key is not None:
        return p.key
    return tuple((k, v.shape, v.dtype.str) for k, v in sorted((p.inputs or {}).items()))


class _Bucket:
    """Items of one input key gathered for the next batch: either copied into private buffers
    (``arrays``) or adopted where they lie, back to back in a shared-memory ring (``ring``)."""

    __slots__ = ("arrays", "base", "dtype", "items", "leases", "name", "ring", "shape", "stride")

    def __init__(self) -> None:
        self.items: list[Prepared] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.leases: list = []
        self.ring: Any = None
        self.name, self.base, self.stride = "", 0, 0
        self.shape: tuple = ()
        self.dtype = ""

    def adopted(self, rows: int) -> np.ndarray:
        """The adopted items as one ``(rows, *shape)`` array over the ring."""
        return np.ndarray((rows, *self.shape), self.dtype, buffer=self.ring.map, offset=self.base)


class Batcher:
    """Groups prepared items by :func:`input_key` into batches of ``batch_size``.

    Items with different keys (variable-size models) go to different buckets; partial buckets are
    flushed at the end, so every item is emitted exactly once. An item whose single input lies in a
    shared-memory ring right after the previous item of its bucket (a worker pool's
    :class:`~zoo_core.pipeline.workers.Lease`) is adopted where it lies: the batch array is a view of
    the ring and nothing is copied; its leases are released by :meth:`recycle`. Otherwise each item's
    arrays are copied into the bucket's batch buffer when added (the item's own arrays may be reused
    at once); buffers handed back with :meth:`recycle` are reused for later batches. ``fixed_batch``
    pads every batch to that size (static-shape models; padded batches are always copies).
    """

    def __init__(self, batch_size: int, fixed_batch: int | None = None):
        self.batch_size = min(batch_size, fixed_batch) if fixed_batch else batch_size
        self.fixed = fixed_batch
        self.buckets: dict[tuple, _Bucket] = {}
        self._spare: dict[tuple, list[np.ndarray]] = {}
        self._leases: dict[int, list] = {}
        self._lock = threading.Lock()
        self.adopted = self.copied = 0  # items handed over in place / copied (for perf records)

    def _rows(self) -> int:
        return max(self.fixed or self.batch_size, self.batch_size)

    def _buffer(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        with self._lock:
            spare = self._spare.get((shape, np.dtype(dtype).str))
            if spare:
                return spare.pop()
        what = f"inputs {tuple(int(d) for d in shape[1:])} {np.dtype(dtype)}"
        nbytes = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize  # Python ints: no wrap-around
        check_batch_memory(int(shape[0]), nbytes, what)
        try:
            return np.empty(shape, dtype)
        except MemoryError:
            raise batch_memory_error(int(shape[0]), nbytes, what, available_memory()) from None

    def add(self, p: Prepared) -> Batch | None:
        """Adopt or copy ``p`` into its bucket; return the bucket as a batch when it is full."""
        key = input_key(p)
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = _Bucket()
            if not self._adopt(b, p):
                self._copy_in(b, p)
        elif b.ring is not None:
            if not self._adopt(b, p):
                self._to_copies(b)
                self._copy_in(b, p)
        else:
            self._copy_in(b, p)
        b.items.append(Prepared(p.sample, None, p.meta, p.error, p.host_s))
        if len(b.items) >= self.batch_size:
            del self.buckets[key]
            return self._make(b)
        return None

    def _adopt(self, b: _Bucket, p: Prepared) -> bool:
        """Take ``p``'s lease if its input lies right after the bucket's adopted items."""
        lease, layout = p.lease, p.slot_layout
        if lease is None or layout is None or len(layout) != 1 or self._rows() != self.batch_size:
            return False
        name, shape, dtype, start = layout[0]
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        n = len(b.items)
        if n == 0:
            if start + self.batch_size * nbytes > lease.ring.size:
                return False  # the batch would run past the ring's end
            b.ring, b.name, b.base, b.stride, b.shape, b.dtype = lease.ring, name, start, nbytes, tuple(shape), dtype
        elif not (lease.ring is b.ring and name == b.name and start == b.base + n * b.stride
                  and nbytes == b.stride and tuple(shape) == b.shape and dtype == b.dtype):
            return False
        lease.take()
        b.leases.append(lease)
        return True

    def _copy_in(self, b: _Bucket, p: Prepared) -> None:
        inputs = p.inputs or {}
        if not b.arrays:
            b.arrays = {k: self._buffer((self._rows(), *v.shape), v.dtype) for k, v in inputs.items()}
        for k, v in inputs.items():
            b.arrays[k][len(b.items)] = v
        self.copied += 1

    def _to_copies(self, b: _Bucket) -> None:
        """Copy the bucket's adopted items into a private buffer and release their leases."""
        n = len(b.items)
        buf = self._buffer((self._rows(), *b.shape), np.dtype(b.dtype))
        if n:
            buf[:n] = b.adopted(n)
        b.arrays = {b.name: buf}
        for lease in b.leases:
            lease.release()
        b.leases, b.ring = [], None
        self.copied += n

    def flush(self) -> Iterator[Batch]:
        """The partial buckets, as batches (padded when ``fixed_batch``)."""
        for key in list(self.buckets):
            yield self._make(self.buckets.pop(key))

    def recycle(self, batch: Batch, keep: int = 1) -> None:
        """Hand ``batch``'s inputs back (call when nothing reads them any more): adopted items'
        leases are released, copy buffers are kept for reuse.

        Thread-safe with respect to :meth:`add` running in another thread.
        """
        with self._lock:
            leases = self._leases.pop(id(batch), None)
        if leases is not None:
            batch.inputs = {}
            for lease in leases:
                lease.release()
            return
        for arr in batch.inputs.values():
            base = arr.base if isinstance(arr.base, np.ndarray) else arr
            with self._lock:
                spare = self._spare.setdefault((base.shape, base.dtype.str), [])
                if len(spare) < keep and not any(a is base for a in spare):
                    spare.append(base)
        batch.inputs = {}

    def _make(self, b: _Bucket) -> Batch:
        items = b.items
        n = len(items)
        size = max(self.fixed or n, n)
        if b.ring is not None and size > n:
            self._to_copies(b)
        ids = [p.sample.id for p in items]
        metas = [p.meta or {} for p in items]
        samples = [p.sample for p in items]
        if b.ring is not None:
            batch = Batch(ids=ids, inputs={b.name: b.adopted(n)}, metas=metas, samples=samples, n_valid=n)
            with self._lock:
                self._leases[id(batch)] = b.leases
            self.adopted += n
            return batch
        inputs = {}
        for k, arr in b.arrays.items():
            if size > n:
                arr[n:size] = arr[n - 1]  # the padding rule, in place
            inputs[k] = arr if arr.shape[0] == size else arr[:size]
        return Batch(ids=ids, inputs=inputs, metas=metas, samples=samples, n_valid=n)
