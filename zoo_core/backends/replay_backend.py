"""Replay backend: serve recorded ais_bench outputs, optionally at an emulated device latency.

``options``: ``dir`` (the dump), ``device_latency_ms`` (the fixed time one call takes),
``latency_per_item_ms`` (a per-item part for larger batches), ``dump_dtype`` (the element type of the
files when it is not the model's, e.g. ``float16``). The wait is a ``sleep`` against a monotonic
deadline, so it holds no CPU and releases the GIL, as a real device call does. Outputs are read
straight into the batch arrays (one copy; the arrays are reused once the run no longer holds them,
see :mod:`zoo_core.pipeline.recycling`) when every file holds exactly its spec's dtype; otherwise
each file goes through ``read_bin`` (size errors name the file).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.aisbench import DumpDir, list_dump
from zoo_core.api.errors import ConfigError
from zoo_core.backends.base import Backend, Batch, ModelIO
from zoo_core.pipeline.batching import pad
from zoo_core.pipeline.recycling import ArrayPool

_TIMER_SLACK = threading.local()


def _precise_sleeps() -> None:
    """Once per thread, on Linux: a 1 ns timer slack (default 50 us), so the emulated device call ends at
    its deadline instead of up to 50 us later (1 % of a 4 ms call)."""
    if getattr(_TIMER_SLACK, "set", False):
        return
    _TIMER_SLACK.set = True
    try:
        import ctypes

        ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


class ReplayBackend(Backend):
    name = "replay"

    def __init__(self, model_file: str | Path | None = None, options: Mapping[str, Any] | None = None,
                 io: ModelIO | None = None):
        super().__init__(model_file, options, io)
        d = self.options.get("dir")
        if not d:
            raise ConfigError("backend=replay needs outputs_dir=<ais_bench output dir> (or backend.dir)")
        if self.io.output_specs is None:
            raise ConfigError("backend=replay needs the model's output_spec hook")
        self.dir = Path(str(d))
        self.latency = float(self.options.get("device_latency_ms", 0.0) or 0.0) / 1000.0
        self.per_item = float(self.options.get("latency_per_item_ms", 0.0) or 0.0) / 1000.0
        self.file_dtype = self.options.get("dump_dtype") or None
        self._dump: DumpDir | None = None
        self._listing: dict[str, dict[int, Path]] | None = None
        self._buffers = ArrayPool()

    def dump_files(self) -> list[Path]:
        """Every output file of the dump, as :class:`DumpDir` lists them (listed once: the files read later are
        those of this listing), sorted; what a resume fingerprint is taken of
        (:func:`zoo_core.runs.resume.dump_fingerprint`)."""
        if self._listing is None:
            self._listing = list_dump(self.dir)
        return sorted(p for slot in self._listing.values() for p in slot.values())

    def dump(self, meta: dict) -> DumpDir:
        if self._dump is None:
            assert self.io.output_specs is not None
            self._dump = DumpDir(self.dir, len(self.io.output_specs(meta)), files=self._listing)
        return self._dump

    def infer(self, batch: Batch) -> list[np.ndarray]:
        deadline = time.perf_counter() + self.latency + self.per_item * batch.size
        if deadline > time.perf_counter():
            _precise_sleeps()
        out = self._read_batch(batch)
        rest = deadline - time.perf_counter()
        if rest > 0:
            time.sleep(rest)
        return out

    def _read_batch(self, batch: Batch) -> list[np.ndarray]:
        assert self.io.output_specs is not None
        n = batch.n_valid
        ids, metas = batch.ids[:n], batch.metas[:n]
        specs = [self.io.output_specs(m) for m in metas]
        dump = self.dump(metas[0])
        paths = [dump.paths(i) for i in ids]
        if self.file_dtype is None and all(s == specs[0] for s in specs):
            out = self._read_exact(paths, specs[0], batch.size)
            if out is not None:
                return out
        items = [dump.read(i, sp, self.file_dtype) for i, sp in zip(ids, specs, strict=True)]
        return [pad(np.stack([it[k] for it in items]), batch.size) for k in range(len(items[0]))]

    def _read_exact(self, paths: list[list[Path]], specs: list[Any], size: int) -> list[np.ndarray] | None:
        """Each file straight into its row of a pooled batch array, when every file is a ``.bin`` of
        exactly its spec's size (checked on the open file); ``None`` otherwise (the caller then reads
        through ``read_bin``, whose errors name the file)."""
        if any(p.suffix != ".bin" for ps in paths for p in ps):
            return None
        n = len(paths)
        out = [self._buffers.empty((size, *sp.shape), np.dtype(sp.dtype).newbyteorder("<")) for sp in specs]
        for j, ps in enumerate(paths):
            for arr, p in zip(out, ps, strict=True):
                row = memoryview(arr[j]).cast("B")
                with open(p, "rb", buffering=0) as f:
                    if os.fstat(f.fileno()).st_size != row.nbytes or f.readinto(row) != row.nbytes:
                        return None
        if size > n:  # padding rows repeat the last real item
            for arr in out:
                arr[n:] = arr[n - 1]
        return [arr.astype(sp.dtype, copy=False) for arr, sp in zip(out, specs, strict=True)]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "dir": str(self.dir), "device_latency_ms": self.latency * 1000,
                "latency_per_item_ms": self.per_item * 1000, "dump_dtype": self.file_dtype}
