"""The streaming pipeline: decode + preprocess in worker processes -> batcher -> backend -> postprocess.

Queues are bounded everywhere, so memory depends on ``batch_size`` and ``num_workers``, never on
the dataset size. The device runs in the calling thread while postprocessing runs in its own
thread, so host and device work overlap; the preprocess workers run ahead by a bounded window.
Every sample ends exactly once: as detections, or (with ``on_error=skip``) in the skipped list.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .backends.base import Backend, Batch
from .errors import InputError, ZooError
from .imaging import read_image
from .types import Detections, Sample

log = logging.getLogger("zoo")

_WORKER_STATE: dict = {}


@dataclass
class Prepared:
    sample: Sample
    inputs: dict[str, np.ndarray] | None
    meta: dict | None
    error: str | None = None
    host_s: float = 0.0


@dataclass
class RunStats:
    images: int = 0
    batches: int = 0
    preprocess_cpu_s: float = 0.0
    device_s: float = 0.0
    postprocess_s: float = 0.0
    wait_for_input_s: float = 0.0
    wall_s: float = 0.0
    skipped: list[dict] = field(default_factory=list)
    device_calls_ms: list[float] = field(default_factory=list)

    def summary(self, batch_size: int) -> dict:
        n = max(self.images, 1)
        calls = np.asarray(self.device_calls_ms or [0.0])
        return {
            "images": self.images,
            "batches": self.batches,
            "batch_size": batch_size,
            "wall_s": round(self.wall_s, 4),
            "throughput_img_s": round(self.images / self.wall_s, 3) if self.wall_s > 0 else None,
            "host_preprocess_ms_per_img": round(1000 * self.preprocess_cpu_s / n, 3),
            "device_ms_per_img": round(1000 * self.device_s / n, 3),
            "postprocess_ms_per_img": round(1000 * self.postprocess_s / n, 3),
            "device_idle_waiting_for_host_s": round(self.wait_for_input_s, 4),
            "device_call_ms": {"mean": round(float(calls.mean()), 3), "median": round(float(np.median(calls)), 3),
                               "p99": round(float(np.percentile(calls, 99)), 3)},
            "device_utilisation": round(self.device_s / self.wall_s, 4) if self.wall_s > 0 else None,
            "skipped": len(self.skipped),
        }


def prepare_one(hooks, cfg, sample: Sample) -> Prepared:
    """Decode and preprocess one sample; errors become a message, never an exception."""
    t0 = time.process_time()
    try:
        image = read_image(sample.path)
        inputs, meta = hooks.preprocess(cfg=cfg, image=image, sample=sample)
        meta = dict(meta)
        meta.setdefault("id", sample.id)
        meta.setdefault("orig_hw", [int(image.shape[0]), int(image.shape[1])])
        inputs = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
        return Prepared(sample, inputs, meta, None, time.process_time() - t0)
    except ZooError as exc:
        return Prepared(sample, None, None, str(exc), time.process_time() - t0)
    except Exception as exc:  # a plugin bug on one image: report it with the file
        return Prepared(sample, None, None, f"{sample.path}: {type(exc).__name__} in preprocess: {exc}",
                        time.process_time() - t0)


def _worker_init(model: str, cfg, threads: int) -> None:
    """Spawned worker: its own plugin manager and config (nothing inherited from the parent)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except Exception:
        pass
    from .plugins import ZooPluginManager

    _WORKER_STATE.update(hooks=ZooPluginManager().hooks_for(model), cfg=cfg)


def _worker_run(sample: Sample) -> Prepared:
    return prepare_one(_WORKER_STATE["hooks"], _WORKER_STATE["cfg"], sample)


class WorkerPool:
    """Preprocess worker processes, started with ``spawn`` so that no thread or lock of the parent
    (ONNX Runtime's thread pool, the postprocess thread) is inherited half-held by a fork."""

    def __init__(self, hooks, cfg, num_workers: int):
        self.pool = None
        if num_workers > 0:
            ctx = mp.get_context("spawn")
            self.pool = ctx.Pool(num_workers, initializer=_worker_init, initargs=(hooks.model, cfg, 1))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iter_prepared(hooks, cfg, samples: list[Sample], pool: "WorkerPool | None", window: int) -> Iterator[Prepared]:
    """Preprocessed samples in dataset order, at most ``window`` in flight in ``pool``."""
    if pool is None or pool.pool is None:
        for s in samples:
            yield prepare_one(hooks, cfg, s)
        return
    pending: deque = deque()
    it = iter(samples)
    for s in it:
        pending.append(pool.pool.apply_async(_worker_run, (s,)))
        if len(pending) >= window:
            break
    while pending:
        res = pending.popleft().get()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.pool.apply_async(_worker_run, (nxt,)))
        yield res


class Batcher:
    """Groups prepared items by input shape into batches of ``batch_size``.

    Items with different input shapes (variable-size models) go to different buckets; partial
    buckets are flushed at the end, so every item is emitted exactly once.
    """

    def __init__(self, batch_size: int, fixed_batch: int | None = None):
        self.batch_size = batch_size
        self.fixed = fixed_batch
        self.buckets: dict[tuple, list[Prepared]] = {}

    @staticmethod
    def _key(p: Prepared) -> tuple:
        return tuple((k, v.shape, v.dtype.str) for k, v in sorted(p.inputs.items()))

    def add(self, p: Prepared) -> Batch | None:
        key = self._key(p)
        bucket = self.buckets.setdefault(key, [])
        bucket.append(p)
        if len(bucket) >= self.batch_size:
            del self.buckets[key]
            return self._make(bucket)
        return None

    def flush(self) -> Iterator[Batch]:
        for key in list(self.buckets):
            yield self._make(self.buckets.pop(key))

    def _make(self, items: list[Prepared]) -> Batch:
        n = len(items)
        size = max(self.fixed or n, n)
        names = items[0].inputs.keys()
        inputs = {}
        for k in names:
            arr = np.empty((size,) + items[0].inputs[k].shape, items[0].inputs[k].dtype)
            for i, p in enumerate(items):
                arr[i] = p.inputs[k]
            if size > n:
                arr[n:] = arr[n - 1]
            inputs[k] = arr
        return Batch(ids=[p.sample.id for p in items], inputs=inputs, metas=[p.meta for p in items],
                     samples=[p.sample for p in items], n_valid=n)


ResultFn = Callable[[Sample, Detections, list[np.ndarray] | None], None]


def _check_finite(batch: Batch, outputs: list[np.ndarray]) -> list[int]:
    bad = []
    if all(np.isfinite(o[: batch.n_valid]).all() for o in outputs if o.dtype.kind == "f"):
        return bad
    for i in range(batch.n_valid):
        if not all(np.isfinite(o[i]).all() for o in outputs if o.dtype.kind == "f"):
            bad.append(i)
    return bad


def run_stream(ctx, backend: Backend, samples: list[Sample], on_result: ResultFn,
               keep_outputs: bool = False, progress: bool | None = None, pool: WorkerPool | None = None) -> RunStats:
    """Run the whole pipeline over ``samples``; call ``on_result`` once per finished sample.

    Raises :class:`ZooError` on the first bad item when ``on_error=fail`` (after stopping the
    workers); with ``on_error=skip`` bad items are listed in ``RunStats.skipped``.
    """
    cfg = ctx.cfg
    hooks = ctx.hooks
    skip = str(cfg.on_error) in ("skip", "OnError.skip")
    bs = int(cfg.batch_size)
    workers = int(cfg.num_workers)
    stats = RunStats()
    batcher = Batcher(bs, backend.fixed_batch)
    post_q: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []
    lock = threading.Lock()
    show = _progress_enabled(progress)
    total = len(samples)

    def fail_or_skip(sample: Sample, message: str) -> None:
        if not skip:
            raise InputError(message)
        with lock:
            stats.skipped.append({"id": sample.id, "path": str(sample.path), "reason": message})
        log.warning("skipped %s", message)

    def post_worker() -> None:
        while True:
            job = post_q.get()
            if job is None:
                return
            if failure:
                continue
            batch, outputs = job
            try:
                t0 = time.perf_counter()
                bad = set(_check_finite(batch, outputs))
                good = [i for i in range(batch.n_valid) if i not in bad]
                for i in sorted(bad):
                    fail_or_skip(batch.samples[i], f"{batch.samples[i].path}: model output contains NaN or inf")
                if good:
                    outs = [o[good] for o in outputs]
                    dets = hooks.postprocess(cfg=cfg, outputs=outs, metas=[batch.metas[i] for i in good])
                    if len(dets) != len(good):
                        raise ZooError(f"postprocess returned {len(dets)} results for a batch of {len(good)}")
                    for j, i in enumerate(good):
                        on_result(batch.samples[i], dets[j], [o[j] for o in outs] if keep_outputs else None)
                with lock:
                    stats.postprocess_s += time.perf_counter() - t0
                    stats.images += len(good)
                    _draw_progress(show, stats.images + len(stats.skipped), total)
            except BaseException as exc:
                failure.append(exc)

    thread = threading.Thread(target=post_worker, name="zoo-postprocess", daemon=True)
    thread.start()

    def run_device(batch: Batch) -> None:
        if failure:
            raise failure[0]
        t0 = time.perf_counter()
        outputs = backend.infer(batch)
        dt = time.perf_counter() - t0
        stats.device_s += dt
        stats.device_calls_ms.append(dt * 1000)
        stats.batches += 1
        if len(batch) > batch.n_valid:
            outputs = [o[: batch.n_valid] for o in outputs]
        post_q.put((batch, outputs))

    window = max(2 * max(workers, 1) + 2 * bs, 4)
    own_pool = pool is None and workers > 0 and len(samples) > 1
    t_start = time.perf_counter()
    try:
        if own_pool:
            pool = WorkerPool(hooks, cfg, workers)
        t_wait = time.perf_counter()
        for prep in iter_prepared(hooks, cfg, samples, pool, window):
            stats.wait_for_input_s += time.perf_counter() - t_wait
            stats.preprocess_cpu_s += prep.host_s
            if failure:
                raise failure[0]
            if prep.error is not None:
                fail_or_skip(prep.sample, prep.error)
            else:
                batch = batcher.add(prep)
                if batch is not None:
                    run_device(batch)
            t_wait = time.perf_counter()
        for batch in batcher.flush():
            run_device(batch)
    finally:
        if own_pool and pool is not None:
            pool.close()
        post_q.put(None)
        thread.join()
        stats.wall_s = time.perf_counter() - t_start
        if show:
            sys.stderr.write("\n")
    if failure:
        raise failure[0]
    return stats


def _progress_enabled(flag: bool | None) -> bool:
    if flag is not None:
        return bool(flag)
    return sys.stderr.isatty() and not os.environ.get("CI")


def _draw_progress(show: bool, done: int, total: int) -> None:
    if not show or total <= 0:
        return
    width = 30
    filled = int(width * done / total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()
