"""``perf``: pure inference timing on random input at ``batch_size``, ais_bench-style summary.

``throughput = 1000 * batch_size / mean latency (ms)``, as ais_bench reports it.
"""
from __future__ import annotations

import time

import numpy as np

from zoo_core.backends.base import Batch
from zoo_core.runs.context import RunContext
from zoo_core.runs.records import write_perf
from zoo_core.stages.open_backend import open_backend


def latency_stats(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
            "median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "count": int(a.size)}


def random_batch(ctx: RunContext, batch_size: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in ctx.hooks.input_spec(cfg=ctx.cfg):
        shape = (batch_size, *spec.shape)
        if np.dtype(spec.dtype).kind == "u":
            inputs[spec.name] = rng.integers(0, 256, shape, dtype=spec.dtype)
        else:
            inputs[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    ids = [f"perf_{i}" for i in range(batch_size)]
    return Batch(ids=ids, inputs=inputs, metas=[{"id": i} for i in ids])


def run(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    bs = int(cfg.batch_size)
    loop = int(cfg.stage.get("loop", 20))
    if loop < 1:
        from zoo_core.api.errors import ConfigError

        raise ConfigError(f"stage.loop={loop} is invalid: it must be >= 1")
    warmup = int(cfg.stage.get("warmup", 2))
    backend = open_backend(ctx)
    try:
        bs = int(backend.fixed_batch or bs)
        batch = random_batch(ctx, bs)
        for _ in range(warmup):
            backend.infer(batch)
        ms = []
        for _ in range(loop):
            t0 = time.perf_counter()
            backend.infer(batch)
            ms.append((time.perf_counter() - t0) * 1000)
        describe = backend.describe()
    finally:
        backend.close()
    stats = latency_stats(ms)
    perf = {
        **describe, "batch_size": bs, "loop": loop, "warmup": warmup,
        "latency_ms": stats,
        "throughput": 1000.0 * bs / stats["mean"],
    }
    if ctx.weights_used is not None:  # "random" when no weights= was given (said on stderr too)
        perf["weights"] = ctx.weights_used.label
    write_perf(ctx, perf)
    return {"stage": "perf", **perf, "backend": describe, "perf_file": str(ctx.record("perf.json"))}
