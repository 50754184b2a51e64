"""Decode + preprocess in spawned worker processes, handing arrays back through shared memory.

The pool is started with ``spawn``, so no thread or lock of the parent (ONNX Runtime's thread pool,
the pipeline's own threads) is inherited half-held by a fork. Each worker runs its own plugin
manager and watches its parent: when the parent is gone (even killed by SIGKILL) the worker exits.
(``PR_SET_PDEATHSIG`` is not used: Linux ties it to the *thread* that created the process, and the
pool creates its workers from whichever thread submits first.)

Arrays travel through a :class:`SlotRing`, a file in ``/dev/shm`` whose space is reserved up front
with ``posix_fallocate``. When the space cannot be reserved (Docker's 64 MB ``/dev/shm``), or an
item does not fit its slot, the arrays travel pickled through the pool's pipe instead: slower, never
a SIGBUS.
"""
from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing as mp
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zoo_core.api.errors import ZooError
from zoo_core.api.imaging import read_image
from zoo_core.api.types import Sample
from zoo_core.pipeline.memory import keep_heap_pages

log = logging.getLogger("zoo")

#: Bytes of one shared-memory slot (one item in flight). Larger items travel pickled.
SLOT_BYTES = 16 << 20
_ALIGN = 64
_WORKER_STATE: dict[str, Any] = {}


@dataclass
class Prepared:
    """One item on its way through the pipe: a sample, its model inputs and its preprocess meta.

    ``error`` is set (and ``inputs`` is ``None``) when the item could not be prepared; ``key`` groups
    items into batches (by default the input shapes and dtypes).
    """

    sample: Sample
    inputs: dict[str, np.ndarray] | None
    meta: dict | None
    error: str | None = None
    host_s: float = 0.0
    slot_layout: list[tuple[str, tuple[int, ...], str, int]] | None = None
    key: tuple | None = field(default=None)


def prepare_one(hooks: Any, cfg: Any, sample: Sample) -> Prepared:
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


def shm_dir() -> str | None:
    """Where slot files live: ``ZOO_SHM_DIR`` or ``/dev/shm``; ``None`` when not writable."""
    d = os.environ.get("ZOO_SHM_DIR") or "/dev/shm"
    return d if os.path.isdir(d) and os.access(d, os.W_OK) else None


class SlotRing:
    """``num_slots`` slots of :data:`SLOT_BYTES` in one shared file, its space reserved for real.

    Raises :class:`OSError` when the space cannot be reserved (the caller falls back to pickling).
    """

    def __init__(self, num_slots: int, slot_bytes: int = SLOT_BYTES):
        d = shm_dir()
        if d is None:
            raise OSError("no writable shared-memory directory")
        remove_orphan_slot_files(d)
        self.num_slots, self.slot_bytes = num_slots, slot_bytes
        self.size = num_slots * slot_bytes
        fd, self.path = tempfile.mkstemp(prefix=f"zoo-slots-{os.getpid()}-", dir=d)
        try:
            os.posix_fallocate(fd, 0, self.size)  # ENOSPC now rather than SIGBUS on first touch
            self.map = mmap.mmap(fd, self.size)
        except OSError:
            os.close(fd)
            self.unlink()
            raise
        os.close(fd)

    def unlink(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def close(self) -> None:
        self.unlink()
        with contextlib.suppress(BufferError, ValueError):  # a caller still holds a view; it goes with it
            self.map.close()


def remove_orphan_slot_files(d: str) -> None:
    """Delete slot files left by runs that were SIGKILLed (their owner pid is gone)."""
    for name in os.listdir(d):
        parts = name.split("-")
        if len(parts) >= 4 and parts[0] == "zoo" and parts[1] == "slots" and parts[2].isdigit():
            try:
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(d, name))
            except PermissionError:
                pass


def _watch_parent(parent: int, interval: float = 0.5) -> None:
    """Exit this worker as soon as the process that started it is gone."""
    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(interval)

    threading.Thread(target=watch, name="zoo-parent-watch", daemon=True).start()


def _worker_init(model: str, cfg: Any, parent: int, threads: int, slots_path: str | None, slots_size: int) -> None:
    """Spawned worker: its own plugin manager and config (nothing inherited from the parent)."""
    _watch_parent(parent)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except Exception:
        pass
    keep_heap_pages()
    from zoo_core.plugins import get_manager

    _WORKER_STATE.update(hooks=get_manager().hooks_for(model), cfg=cfg, slots=None)
    if slots_path:
        with open(slots_path, "r+b") as f:
            _WORKER_STATE["slots"] = mmap.mmap(f.fileno(), slots_size)


def _worker_ping() -> int:
    return os.getpid()


def _worker_run(sample: Sample, slot: int | None = None) -> Prepared:
    prep = prepare_one(_WORKER_STATE["hooks"], _WORKER_STATE["cfg"], sample)
    slots = _WORKER_STATE.get("slots")
    if slot is None or slots is None or prep.inputs is None:
        return prep
    t0 = time.process_time()
    layout, off = [], 0
    for name, arr in prep.inputs.items():
        off = -(-off // _ALIGN) * _ALIGN
        layout.append((name, tuple(arr.shape), arr.dtype.str, slot * SLOT_BYTES + off))
        off += arr.nbytes
    if off > SLOT_BYTES or any(a.dtype.hasobject for a in prep.inputs.values()):
        return prep
    for (_, shape, dtype, start), arr in zip(layout, prep.inputs.values(), strict=True):
        np.ndarray(shape, dtype, buffer=slots, offset=start)[...] = arr
    prep.inputs, prep.slot_layout = None, layout
    prep.host_s += time.process_time() - t0
    return prep


class WorkerPool:
    """``num_workers`` spawned preprocess processes, all started when the pool is built.

    ``num_workers=0`` prepares items in the calling thread (no processes).
    """

    def __init__(self, hooks: Any, cfg: Any, num_workers: int, num_slots: int | None = None):
        self.hooks, self.cfg = hooks, cfg
        self.num_workers = max(int(num_workers), 0)
        self.pool: ProcessPoolExecutor | None = None
        self.ring: SlotRing | None = None
        if self.num_workers == 0:
            return
        n = max(int(num_slots if num_slots is not None else 2 * self.num_workers + 2), 1)
        try:
            self.ring = SlotRing(n)
        except OSError as exc:
            log.info("shared memory unavailable (%s): preprocessed arrays travel through a pipe", exc)
        self.pool = ProcessPoolExecutor(
            self.num_workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
            initargs=(hooks.model, cfg, os.getpid(), 1, self.ring.path if self.ring else None,
                      self.ring.size if self.ring else 0))
        # Spawn every worker now, from this thread (submit starts processes synchronously), so their
        # start-up overlaps whatever the caller does next (loading the model).
        for _ in range(self.num_workers):
            self.pool.submit(_worker_ping)

    @property
    def num_slots(self) -> int:
        return self.ring.num_slots if self.ring else 0

    def pids(self) -> list[int]:
        procs = getattr(self.pool, "_processes", None) or {}
        return sorted(int(p.pid) for p in procs.values() if p.pid is not None)

    def prepared(self, samples: Sequence[Sample], window: int) -> Iterator[Prepared]:
        """Preprocessed samples in order, at most ``window`` in flight.

        The arrays of a yielded item may live in a shared-memory slot: they are valid until the next
        item is requested (copy them, as the batcher does, to keep them).
        """
        if self.pool is None:
            for s in samples:
                yield prepare_one(self.hooks, self.cfg, s)
            return
        try:
            yield from self._pooled(samples, window)
        except BrokenProcessPool as exc:
            raise ZooError(f"a preprocess worker process died ({exc}); if it was killed for memory, "
                           f"lower num_workers or batch_size") from None

    def _pooled(self, samples: Sequence[Sample], window: int) -> Iterator[Prepared]:
        assert self.pool is not None
        ring = self.ring
        if ring is not None:
            window = min(window, ring.num_slots)
        free = list(range(ring.num_slots - 1, -1, -1)) if ring else []
        pending: deque[tuple[int | None, Future]] = deque()
        it = iter(samples)

        def submit(s: Sample) -> None:
            assert self.pool is not None
            slot = free.pop() if ring else None
            pending.append((slot, self.pool.submit(_worker_run, s, slot)))

        for s in it:
            submit(s)
            if len(pending) >= window:
                break
        while pending:
            slot, job = pending.popleft()
            res = job.result()
            if res.slot_layout is not None and ring is not None:
                res.inputs = {name: np.ndarray(shape, dtype, buffer=ring.map, offset=start)
                              for name, shape, dtype, start in res.slot_layout}
            yield res
            res.inputs = None
            if slot is not None:
                free.append(slot)
            nxt = next(it, None)
            if nxt is not None:
                submit(nxt)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
