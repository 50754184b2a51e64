"""Replay backend: serve recorded ais_bench outputs, optionally at an emulated device latency.

``backend.device_latency_ms`` is the fixed time one call takes (e.g. 10 ms for a batch-1 device
call); ``backend.latency_per_item_ms`` adds a per-item part for larger batches. The wait is a
``sleep`` measured against a monotonic deadline, so it holds no CPU and releases the GIL, as a real
device call does. Outputs are read straight into the batch arrays (one copy, no per-item stack)
when every file holds exactly its spec's dtype; otherwise each file goes through ``read_bin``
(float16 dumps, ``.npy``, size errors naming the file).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from zoo_core.api.aisbench import DumpDir
from zoo_core.api.errors import ConfigError
from zoo_core.backends.base import Backend, Batch


class ReplayBackend(Backend):
    name = "replay"

    def __init__(self, ctx):
        super().__init__(ctx)
        d = ctx.cfg.backend.get("dir") or ctx.cfg.get("outputs_dir")
        if not d:
            raise ConfigError("backend=replay needs outputs_dir=<ais_bench output dir> (or backend.dir)")
        self.dir = Path(str(d))
        self.latency = float(ctx.cfg.backend.get("device_latency_ms", 0.0) or 0.0) / 1000.0
        self.per_item = float(ctx.cfg.backend.get("latency_per_item_ms", 0.0) or 0.0) / 1000.0
        self._dump: DumpDir | None = None

    def _dump_for(self, meta) -> DumpDir:
        if self._dump is None:
            n = len(self.ctx.hooks.output_spec(cfg=self.ctx.cfg, meta=meta))
            self._dump = DumpDir(self.dir, n)
        return self._dump

    def infer(self, batch: Batch) -> list[np.ndarray]:
        deadline = time.perf_counter() + self.latency + self.per_item * batch.size
        out = self._read_batch(batch)
        rest = deadline - time.perf_counter()
        if rest > 0:
            time.sleep(rest)
        return out

    def _read_batch(self, batch: Batch) -> list[np.ndarray]:
        n = batch.n_valid
        ids, metas = batch.ids[:n], batch.metas[:n]
        specs = [self.ctx.hooks.output_spec(cfg=self.ctx.cfg, meta=m) for m in metas]
        dump = self._dump_for(metas[0])
        paths = [dump.paths(i) for i in ids]
        same = all(s == specs[0] for s in specs)
        exact = same and all(p.suffix == ".bin" and p.stat().st_size == int(np.prod(sp.shape)) * np.dtype(sp.dtype).itemsize
                             for ps in paths for p, sp in zip(ps, specs[0]))
        if not exact:
            items = [dump.read(i, sp) for i, sp in zip(ids, specs)]
            items += [items[-1]] * (batch.size - len(items))
            return [np.stack([it[k] for it in items]) for k in range(len(items[0]))]
        out = []
        for k, sp in enumerate(specs[0]):
            arr = np.empty((batch.size, *sp.shape), np.dtype(sp.dtype).newbyteorder("<"))
            for j, ps in enumerate(paths):
                with open(ps[k], "rb", buffering=0) as f:
                    f.readinto(memoryview(arr[j]).cast("B"))
            if batch.size > n:
                arr[n:] = arr[n - 1]
            out.append(arr.astype(sp.dtype, copy=False))
        return out

    def describe(self) -> dict:
        return {"backend": self.name, "dir": str(self.dir), "device_latency_ms": self.latency * 1000,
                "latency_per_item_ms": self.per_item * 1000}
