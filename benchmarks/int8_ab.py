"""FP32 vs INT8 latency side by side (docs/quantize.md, BENCHMARKS.md "INT8"): ONNX Runtime sessions of every
model in one process, their runs alternated on the same random input, one intra-op thread each (the machine's 2
cores are shared, so alternating keeps the comparison fair when the load changes). Not part of ``make bench``.

    python -m benchmarks.int8_ab fp32=a.onnx,int8=b.onnx centerface 3x800x800 1/8 10
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> None:
    import onnxruntime as ort

    models = dict(a.split("=", 1) for a in argv[0].split(","))
    name, shape = argv[1], tuple(int(x) for x in argv[2].split("x"))
    batches, reps = [int(b) for b in argv[3].split("/")], int(argv[4])
    threads = int(os.environ.get("AB_THREADS", "1"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = {k: ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for k, p in models.items()}
    inp = next(iter(sess.values())).get_inputs()[0].name
    rng = np.random.default_rng(0)
    for bs in batches:
        x = (rng.random((bs, *shape), dtype=np.float32) * 255).astype(np.float32)
        times: dict[str, list[float]] = {k: [] for k in sess}
        for s in sess.values():  # warm-up
            s.run(None, {inp: x})
        for _ in range(reps):
            for k, s in sess.items():
                t0 = time.perf_counter()
                s.run(None, {inp: x})
                times[k].append((time.perf_counter() - t0) * 1000)
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        for k, t in times.items():
            a = np.array(t)
            print(f"{name} {k} bs{bs} threads{threads}: median {np.median(a):.1f} ms, min {a.min():.1f} ms "
                  f"({reps} runs alternated; {1000 * bs / np.median(a):.2f} img/s at the median) load {load}",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
