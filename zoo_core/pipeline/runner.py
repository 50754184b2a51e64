"""The streaming pipeline: decode + preprocess in worker processes -> batcher -> backend -> postprocess.

Queues are bounded everywhere, so memory depends on ``batch_size`` and ``num_workers``, never on
the dataset size. The device runs in the calling thread; a feeder thread gathers preprocessed items into the
next batch meanwhile, and postprocessing runs in its own thread, so host and device work overlap;
the preprocess workers run ahead by a bounded window.
Workers hand their arrays back through a ring of shared-memory slots (one per item in flight)
instead of pickling them through a pipe; the batcher copies each item into a reused batch buffer.
Every sample ends exactly once: as detections, or (with ``on_error=skip``) in the skipped list.
"""
from __future__ import annotations

import logging
import mmap
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from zoo_core.backends.base import Backend, Batch
from zoo_core.api.errors import InputError, ZooError
from zoo_core.api.imaging import read_image
from zoo_core.api.types import Detections, Sample

log = logging.getLogger("zoo")

_WORKER_STATE: dict = {}


@dataclass
class Prepared:
    sample: Sample
    inputs: dict[str, np.ndarray] | None
    meta: dict | None
    error: str | None = None
    host_s: float = 0.0
    slot_layout: list | None = None


@dataclass
class RunStats:
    images: int = 0
    batches: int = 0
    preprocess_cpu_s: float = 0.0
    device_s: float = 0.0
    postprocess_s: float = 0.0
    wait_for_input_s: float = 0.0
    first_input_s: float = 0.0
    first_device_s: float = 0.0
    last_device_s: float = 0.0
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
            "first_input_s": round(self.first_input_s, 4),
            "steady_throughput_img_s": (round(self.images / (self.last_device_s - self.first_device_s), 3)
                                        if self.last_device_s > self.first_device_s else None),
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


SLOT_BYTES = 16 << 20


def _mallopt(param: int, value: int) -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(param, value)
    except (OSError, AttributeError):  # not glibc
        pass


def _return_big_blocks() -> None:
    """glibc only, in the pipeline's process: arrays of 1 MiB and more always get their own
    ``mmap`` and go back to the system when freed. (By default glibc raises that threshold after
    the first free, and the three pipeline threads then fragment their heaps, so the peak RSS
    creeps up with the number of batches.)"""
    _mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; a fixed value also disables the dynamic raise


def _keep_heap_pages() -> None:
    """glibc only, in a worker process: serve multi-MB arrays from a heap that is never trimmed.

    Every image allocates the same few large arrays; by default each is a fresh ``mmap`` whose
    pages fault in one by one (about a millisecond per 8 MB). The worker's footprint stays bounded
    by its largest image.
    """
    _mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
    _mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
_ALIGN = 64


def _worker_init(model: str, cfg, threads: int, slots_path: str | None = None, slots_size: int = 0) -> None:
    """Spawned worker: its own plugin manager and config (nothing inherited from the parent)."""
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except Exception:
        pass
    _keep_heap_pages()
    from zoo_core.plugins.manager import ZooPluginManager

    _WORKER_STATE.update(hooks=ZooPluginManager().hooks_for(model), cfg=cfg, slots=None)
    if slots_path:
        with open(slots_path, "r+b") as f:
            _WORKER_STATE["slots"] = mmap.mmap(f.fileno(), slots_size)


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies (even by SIGKILL), so no worker outlives its run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_run(sample: Sample, slot: int | None = None) -> Prepared:
    prep = prepare_one(_WORKER_STATE["hooks"], _WORKER_STATE["cfg"], sample)
    slots = _WORKER_STATE.get("slots")
    if slot is None or slots is None or prep.inputs is None:
        return prep
    t0 = time.process_time()
    layout, off = [], 0
    for name, arr in prep.inputs.items():
        off = -(-off // _ALIGN) * _ALIGN
        layout.append((name, arr.shape, arr.dtype.str, slot * SLOT_BYTES + off))
        off += arr.nbytes
    if off > SLOT_BYTES or any(a.dtype.hasobject for a in prep.inputs.values()):
        return prep
    for (_, shape, dtype, start), arr in zip(layout, prep.inputs.values()):
        np.ndarray(shape, dtype, buffer=slots, offset=start)[...] = arr
    prep.inputs, prep.slot_layout = None, layout
    prep.host_s += time.process_time() - t0
    return prep


class WorkerPool:
    """Preprocess worker processes, started with ``spawn`` so that no thread or lock of the parent
    (ONNX Runtime's thread pool, the postprocess thread) is inherited half-held by a fork.

    The pool owns ``num_slots`` shared-memory slots of :data:`SLOT_BYTES` (a file in ``/dev/shm``
    mapped by every process; pages are only allocated when written). Items that do not fit travel
    pickled as before.
    """

    def __init__(self, hooks, cfg, num_workers: int, num_slots: int | None = None):
        self.pool = None
        self.slots: mmap.mmap | None = None
        self.num_slots = 0
        self._slots_path: str | None = None
        if num_workers > 0:
            if num_slots is None:
                num_slots = 2 * num_workers + 2
            self.num_slots = max(int(num_slots), 1)
            size = self.num_slots * SLOT_BYTES
            try:
                _remove_orphan_slot_files()
                fd, self._slots_path = tempfile.mkstemp(prefix=f"zoo-slots-{os.getpid()}-", dir=_shm_dir())
                with os.fdopen(fd, "r+b") as f:
                    f.truncate(size)
                    self.slots = mmap.mmap(f.fileno(), size)
            except OSError:
                self._unlink()
                self.slots, self.num_slots = None, 0
            self.pool = ProcessPoolExecutor(
                num_workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                initargs=(hooks.model, cfg, 1, self._slots_path if self.slots else None, self.num_slots * SLOT_BYTES))

    def _unlink(self) -> None:
        if self._slots_path:
            try:
                os.unlink(self._slots_path)
            except OSError:
                pass
            self._slots_path = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self._unlink()
        if self.slots is not None:
            try:
                self.slots.close()
            except BufferError:  # a caller still holds a view; the mapping goes with it
                pass
            self.slots = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _remove_orphan_slot_files() -> None:
    """Delete slot files left by runs that were SIGKILLed (their owner pid is gone)."""
    d = _shm_dir()
    if d is None:
        return
    for name in os.listdir(d):
        parts = name.split("-")
        if len(parts) >= 4 and parts[0] == "zoo" and parts[1] == "slots" and parts[2].isdigit():
            try:
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                try:
                    os.unlink(os.path.join(d, name))
                except OSError:
                    pass
            except PermissionError:
                pass


def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def iter_prepared(hooks, cfg, samples: list[Sample], pool: "WorkerPool | None", window: int) -> Iterator[Prepared]:
    """Preprocessed samples in dataset order, at most ``window`` in flight in ``pool``.

    With a pool, the arrays of a yielded item may live in a shared-memory slot: they are valid
    until the next item is requested (copy them, as :class:`Batcher` does, to keep them).
    """
    if pool is None or pool.pool is None:
        for s in samples:
            yield prepare_one(hooks, cfg, s)
        return
    try:
        yield from _iter_pool(pool, samples, window)
    except BrokenProcessPool as exc:
        raise ZooError(f"a preprocess worker process died ({exc}); if it was killed for memory, "
                       f"lower num_workers or batch_size") from None


def _iter_pool(pool: "WorkerPool", samples: list[Sample], window: int) -> Iterator[Prepared]:
    use_slots = pool.slots is not None
    if use_slots:
        window = min(window, pool.num_slots)
    free = list(range(pool.num_slots - 1, -1, -1)) if use_slots else []
    pending: deque = deque()
    it = iter(samples)

    def submit(s: Sample) -> None:
        slot = free.pop() if use_slots else None
        pending.append((slot, pool.pool.submit(_worker_run, s, slot)))

    for s in it:
        submit(s)
        if len(pending) >= window:
            break
    while pending:
        slot, job = pending.popleft()
        res = job.result()
        if res.slot_layout is not None:
            res.inputs = {name: np.ndarray(shape, dtype, buffer=pool.slots, offset=start)
                          for name, shape, dtype, start in res.slot_layout}
        yield res
        res.inputs = None
        if slot is not None:
            free.append(slot)
        nxt = next(it, None)
        if nxt is not None:
            submit(nxt)


class Batcher:
    """Groups prepared items by input shape into batches of ``batch_size``.

    Items with different input shapes (variable-size models) go to different buckets; partial
    buckets are flushed at the end, so every item is emitted exactly once. Each item's arrays are
    copied into the bucket's batch buffer when added (so the item's own arrays may be reused at
    once); buffers handed back with :meth:`recycle` are reused for later batches.
    """

    def __init__(self, batch_size: int, fixed_batch: int | None = None):
        self.batch_size = batch_size
        self.fixed = fixed_batch
        self.buckets: dict[tuple, tuple[list[Prepared], dict[str, np.ndarray]]] = {}
        self._spare: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(p: Prepared) -> tuple:
        return tuple((k, v.shape, v.dtype.str) for k, v in sorted(p.inputs.items()))

    def _buffer(self, shape: tuple, dtype) -> np.ndarray:
        with self._lock:
            spare = self._spare.get((shape, np.dtype(dtype).str))
            if spare:
                return spare.pop()
        return np.empty(shape, dtype)

    def add(self, p: Prepared) -> Batch | None:
        key = self._key(p)
        entry = self.buckets.get(key)
        if entry is None:
            size = max(self.fixed or self.batch_size, self.batch_size)
            entry = ([], {k: self._buffer((size,) + v.shape, v.dtype) for k, v in p.inputs.items()})
            self.buckets[key] = entry
        items, arrays = entry
        for k, v in p.inputs.items():
            arrays[k][len(items)] = v
        items.append(Prepared(p.sample, None, p.meta, p.error, p.host_s))
        if len(items) >= self.batch_size:
            del self.buckets[key]
            return self._make(items, arrays)
        return None

    def flush(self) -> Iterator[Batch]:
        for key in list(self.buckets):
            yield self._make(*self.buckets.pop(key))

    def recycle(self, batch: Batch, keep: int = 1) -> None:
        """Hand ``batch``'s input buffers back for reuse (call when nothing reads them any more).

        Thread-safe with respect to :meth:`add` running in another thread.
        """
        for arr in batch.inputs.values():
            if arr.base is not None:
                arr = arr.base
            with self._lock:
                spare = self._spare.setdefault((arr.shape, arr.dtype.str), [])
                if len(spare) < keep and not any(a is arr for a in spare):
                    spare.append(arr)
        batch.inputs = {}

    def _make(self, items: list[Prepared], arrays: dict[str, np.ndarray]) -> Batch:
        n = len(items)
        size = max(self.fixed or n, n)
        inputs = {}
        for k, arr in arrays.items():
            if size > n:
                arr[n:size] = arr[n - 1]
            inputs[k] = arr if arr.shape[0] == size else arr[:size]
        return Batch(ids=[p.sample.id for p in items], inputs=inputs, metas=[p.meta for p in items],
                     samples=[p.sample for p in items], n_valid=n)


ResultFn = Callable[[Sample, Detections, list[np.ndarray] | None], None]


def _check_finite(batch: Batch, outputs: list[np.ndarray]) -> list[int]:
    bad = []
    # a sum is NaN/inf when any element is (no temporary array); a finite-but-overflowing sum
    # falls through to the exact per-item check
    if all(np.isfinite(np.sum(o[: batch.n_valid])) for o in outputs if o.dtype.kind == "f"):
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
    skip = ctx.skip_errors
    bs = int(cfg.batch_size)
    workers = int(cfg.num_workers)
    stats = RunStats()
    batcher = Batcher(min(bs, backend.fixed_batch) if backend.fixed_batch else bs, backend.fixed_batch)
    post_q: queue.Queue = queue.Queue(maxsize=1)
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
                    outs = outputs if len(good) == len(outputs[0]) else [o[good] for o in outputs]
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
        if not stats.batches:
            stats.first_device_s = t0 - t_start
        try:
            outputs = backend.infer(batch)
        except InputError:
            if not skip:
                raise
            run_items_alone(batch)
            return
        dt = time.perf_counter() - t0
        stats.last_device_s = t0 + dt - t_start
        if not any(np.may_share_memory(o, a) for o in outputs if isinstance(o, np.ndarray)
                   for a in batch.inputs.values()):
            batcher.recycle(batch)
        stats.device_s += dt
        stats.device_calls_ms.append(dt * 1000)
        stats.batches += 1
        if batch.size > batch.n_valid:
            outputs = [o[: batch.n_valid] for o in outputs]
        post_q.put((batch, outputs))

    def run_items_alone(batch: Batch) -> None:
        """A bad item (e.g. a missing replayed output file) failed the batch: retry item by item, skip the bad."""
        for i in range(batch.n_valid):
            size = backend.fixed_batch or 1
            one = Batch(ids=[batch.ids[i]], metas=[batch.metas[i]], samples=[batch.samples[i]], n_valid=1,
                        inputs={k: np.repeat(v[i:i + 1], size, axis=0) for k, v in batch.inputs.items()})
            try:
                outputs = backend.infer(one)
            except InputError as exc:
                fail_or_skip(one.samples[0], str(exc))
                continue
            stats.batches += 1
            post_q.put((one, [o[:1] for o in outputs]))

    window = max(2 * max(workers, 1) + 2, 4)
    own_pool = pool is None and workers > 0 and len(samples) > 1
    batch_q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    taken = threading.Event()

    def put_batch(item) -> bool:
        """Hand ``item`` to the device loop and wait until it takes it, so at most two batch
        buffers live at once (the one on the device and the one being filled)."""
        taken.clear()
        while not stop.is_set():
            try:
                batch_q.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        while not stop.is_set():
            if taken.wait(0.1):
                return True
        return False

    def feeder() -> None:
        """Collect preprocessed items into batches while the device runs the previous one."""
        try:
            for prep in iter_prepared(hooks, cfg, samples, pool, window):
                if not stats.first_input_s:
                    stats.first_input_s = time.perf_counter() - t_start
                stats.preprocess_cpu_s += prep.host_s
                if stop.is_set() or failure:
                    return
                if prep.error is not None:
                    fail_or_skip(prep.sample, prep.error)
                else:
                    batch = batcher.add(prep)
                    if batch is not None and not put_batch(batch):
                        return
            for batch in batcher.flush():
                if not put_batch(batch):
                    return
        except BaseException as exc:
            failure.append(exc)
        finally:
            put_batch(done)

    _return_big_blocks()
    t_start = time.perf_counter()
    feed = None
    try:
        if own_pool:
            pool = WorkerPool(hooks, cfg, workers)
        feed = threading.Thread(target=feeder, name="zoo-feeder", daemon=True)
        feed.start()
        while True:
            t_wait = time.perf_counter()
            batch = batch_q.get()
            taken.set()
            stats.wait_for_input_s += time.perf_counter() - t_wait
            if batch is done:
                break
            run_device(batch)
        if failure:
            raise failure[0]
    finally:
        stop.set()
        if feed is not None:
            feed.join()
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
