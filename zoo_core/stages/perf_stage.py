"""``perf``: pure inference timing on random input at ``batch_size``, ais_bench-style summary.

``latency_ms``: each call timed on the host around the backend's ``infer`` (for the acl backend that
includes the host-to-device and device-to-host copies). When the backend reports the device's own
compute time (:meth:`~zoo_core.backends.base.Backend.device_times_ms`: ais_bench's ``NPU_compute_time``),
``throughput = 1000 * batch_size / mean NPU compute time (ms)``, as ais_bench reports it, with
``npu_compute_ms`` and ``host_throughput`` beside it; otherwise ``throughput = 1000 * batch_size / mean
latency``.
"""
from __future__ import annotations

import math
import time

import numpy as np

from zoo_core.backends.base import Batch
from zoo_core.pipeline.batching import check_batch_memory
from zoo_core.runs.context import RunContext
from zoo_core.runs.records import write_perf
from zoo_core.stages.open_backend import open_backend


def latency_stats(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
            "median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "count": int(a.size)}


#: Values drawn at a time for a float input (float64 before the cast: 8 MB at most besides the input itself).
DRAW_CHUNK = 1 << 20


def random_batch(ctx: RunContext, batch_size: int, seed: int = 0) -> Batch:
    """Seeded random inputs at ``batch_size``: uint8 inputs uniform in 0..255, others standard normal.

    The normal values are drawn in float64 (the values of ``rng.standard_normal(shape).astype(dtype)``, as
    zoo always drew them) but :data:`DRAW_CHUNK` at a time into the input's own dtype, so no float64 copy
    of the batch is made; a batch larger than the memory available is a :class:`ConfigError` naming
    ``batch_size`` before anything is allocated.
    """
    rng = np.random.default_rng(seed)
    specs = list(ctx.hooks.input_spec(cfg=ctx.cfg))
    shapes = [(batch_size, *(int(d) for d in spec.shape)) for spec in specs]
    nbytes = sum(math.prod(shape) * np.dtype(spec.dtype).itemsize for spec, shape in zip(specs, shapes))
    check_batch_memory(batch_size, nbytes, "random inputs " + ", ".join(
        f"{spec.name} {shape[1:]} {np.dtype(spec.dtype)}" for spec, shape in zip(specs, shapes)))
    inputs = {}
    for spec, shape in zip(specs, shapes):
        if np.dtype(spec.dtype).kind == "u":
            inputs[spec.name] = rng.integers(0, 256, shape, dtype=spec.dtype)
        else:
            out = np.empty(shape, spec.dtype)
            flat = out.reshape(-1)
            for start in range(0, flat.size, DRAW_CHUNK):
                flat[start:start + DRAW_CHUNK] = rng.standard_normal(min(DRAW_CHUNK, flat.size - start))
            inputs[spec.name] = out
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
    if str(cfg.backend.name) == "oracle":
        from zoo_core.api.errors import ConfigError

        raise ConfigError("stage=perf times a model's inference on random input; backend=oracle runs no model (it "
                          "encodes each image's ground truth)", hint="time a model: backend=onnxruntime, torch or acl")
    backend = open_backend(ctx)
    try:
        bs = int(backend.fixed_batch or bs)
        batch = random_batch(ctx, bs)
        for _ in range(warmup):
            backend.infer(batch)
        before = len(backend.device_times_ms() or [])
        ms = []
        for _ in range(loop):
            t0 = time.perf_counter()
            backend.infer(batch)
            ms.append((time.perf_counter() - t0) * 1000)
        device = (backend.device_times_ms() or [])[before:]
        describe = backend.describe()
    finally:
        backend.close()
    stats = latency_stats(ms)
    perf = {
        **describe, "batch_size": bs, "loop": loop, "warmup": warmup,
        "latency_ms": stats,
        "throughput": 1000.0 * bs / stats["mean"],
    }
    if len(device) == loop:  # the device's own timings of the timed calls: ais_bench's figure
        npu = latency_stats(device)
        perf.update(npu_compute_ms=npu, throughput=1000.0 * bs / npu["mean"], host_throughput=perf["throughput"],
                    throughput_basis="NPU compute time (the device's exec_time_list), as ais_bench")
    else:
        perf["throughput_basis"] = "host latency around each call"
    if ctx.weights_used is not None:  # "random" when no weights= was given (said on stderr too)
        perf["weights"] = ctx.weights_used.label
    write_perf(ctx, perf)
    return {"stage": "perf", **perf, "backend": describe, "perf_file": str(ctx.record("perf.json"))}
