"""Batches: prepared items grouped by input shape, and the one padding rule.

Padding rule (used by the batcher, the replay and acl backends, the contract kit): a batch of ``n``
items sent to a device that needs ``size > n`` repeats the last real item; outputs of the padding are
dropped after inference (``Batch.n_valid``).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np

from zoo_core.backends.base import Batch
from zoo_core.pipeline.workers import Prepared


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


class Batcher:
    """Groups prepared items by :func:`input_key` into batches of ``batch_size``.

    Items with different keys (variable-size models) go to different buckets; partial buckets are
    flushed at the end, so every item is emitted exactly once. Each item's arrays are copied into the
    bucket's batch buffer when added (the item's own arrays may be reused at once); buffers handed
    back with :meth:`recycle` are reused for later batches. ``fixed_batch`` pads every batch to that
    size (static-shape models).
    """

    def __init__(self, batch_size: int, fixed_batch: int | None = None):
        self.batch_size = min(batch_size, fixed_batch) if fixed_batch else batch_size
        self.fixed = fixed_batch
        self.buckets: dict[tuple, tuple[list[Prepared], dict[str, np.ndarray]]] = {}
        self._spare: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def _buffer(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        with self._lock:
            spare = self._spare.get((shape, np.dtype(dtype).str))
            if spare:
                return spare.pop()
        return np.empty(shape, dtype)

    def add(self, p: Prepared) -> Batch | None:
        """Copy ``p`` into its bucket; return the bucket as a batch when it is full."""
        key = input_key(p)
        inputs = p.inputs or {}
        entry = self.buckets.get(key)
        if entry is None:
            size = max(self.fixed or self.batch_size, self.batch_size)
            entry = ([], {k: self._buffer((size, *v.shape), v.dtype) for k, v in inputs.items()})
            self.buckets[key] = entry
        items, arrays = entry
        for k, v in inputs.items():
            arrays[k][len(items)] = v
        items.append(Prepared(p.sample, None, p.meta, p.error, p.host_s))
        if len(items) >= self.batch_size:
            del self.buckets[key]
            return self._make(items, arrays)
        return None

    def flush(self) -> Iterator[Batch]:
        """The partial buckets, as batches (padded when ``fixed_batch``)."""
        for key in list(self.buckets):
            yield self._make(*self.buckets.pop(key))

    def recycle(self, batch: Batch, keep: int = 1) -> None:
        """Hand ``batch``'s input buffers back for reuse (call when nothing reads them any more).

        Thread-safe with respect to :meth:`add` running in another thread.
        """
        for arr in batch.inputs.values():
            base = arr.base if isinstance(arr.base, np.ndarray) else arr
            with self._lock:
                spare = self._spare.setdefault((base.shape, base.dtype.str), [])
                if len(spare) < keep and not any(a is base for a in spare):
                    spare.append(base)
        batch.inputs = {}

    def _make(self, items: list[Prepared], arrays: dict[str, np.ndarray]) -> Batch:
        n = len(items)
        size = max(self.fixed or n, n)
        inputs = {}
        for k, arr in arrays.items():
            if size > n:
                arr[n:size] = arr[n - 1]  # the padding rule, in place
            inputs[k] = arr if arr.shape[0] == size else arr[:size]
        return Batch(ids=[p.sample.id for p in items], inputs=inputs, metas=[p.meta or {} for p in items],
                     samples=[p.sample for p in items], n_valid=n)
