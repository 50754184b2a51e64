"""Decode + preprocess in spawned worker processes, handing arrays back through shared memory.

The pool is started with ``spawn``, so no thread or lock of the parent (ONNX Runtime's thread pool,
the pipeline's own threads) is inherited half-held by a fork. Each worker runs its own plugin
manager and watches its parent: when the parent is gone (even killed by SIGKILL) the worker exits.
(``PR_SET_PDEATHSIG`` is not used: Linux ties it to the *thread* that created the process, and the
pool creates its workers from whichever thread submits first.)

Arrays travel through a :class:`SlotRing`, a file in ``/dev/shm`` whose space is reserved up front
with ``posix_fallocate``. Each submitted item reserves bytes of the ring (a :class:`Lease`), sized
by the largest item seen so far, in submission order, so consecutive items of one shape lie back to
back: the batcher can hand a run of them to the device as one array, without copying them
(:meth:`Lease.take`). A lease nobody takes is freed when the next item is requested. When the space
cannot be reserved (Docker's 64 MB ``/dev/shm``), the ring is full, or an item does not fit its
reservation, the arrays travel pickled through the pool's pipe instead: slower, never a SIGBUS.
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
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zoo_core.api.arena import close_slot, open_slot
from zoo_core.api.errors import ConfigError, PluginHookError, ZooError
from zoo_core.api.imaging import read_image
from zoo_core.api.types import Sample
from zoo_core.pipeline.memory import keep_heap_pages
from zoo_core.pipeline.procpool import Job, ProcessPool, WorkerCrashed, exit_text

log = logging.getLogger("zoo")

#: Bytes reserved for an item before any item's size is known; the largest item that uses the ring.
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
    lease: Lease | None = field(default=None, repr=False)
    #: the formatted traceback when ``error`` is a bug (a plugin's ``preprocess``), not bad input
    trace: str | None = field(default=None, repr=False)


class HookTraceback(Exception):
    """A traceback formatted where the failure happened (a worker process, or a ``preprocess`` call whose
    error became a message): the ``__cause__`` of the error that stops the run, so the CLI writes it to
    ``error_traceback.txt`` (as ``concurrent.futures`` carries a worker's traceback)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text
        #: the formatted exception is a plugin's bug (a PluginHookError), not zoo's
        self.plugin = text.rstrip().rpartition("\n")[2].startswith("zoo_core.api.errors.PluginHookError")

    def __str__(self) -> str:
        return self.text


def stop_error(error: ZooError, trace: str | None) -> ZooError:
    """``error`` with ``trace`` (a :attr:`Prepared.trace`) as its ``__cause__``, to ``raise`` when the run
    stops on a prepared item's error."""
    if trace:
        error.__cause__ = HookTraceback(trace)
    return error


def prepare_one(hooks: Any, cfg: Any, sample: Sample) -> Prepared:
    """Decode and preprocess one sample; errors become a message (a bug's traceback kept in ``trace``),
    never an exception."""
    t0 = time.process_time()
    try:
        image = read_image(sample.path)
        inputs, meta = hooks.preprocess(cfg=cfg, image=image, sample=sample)
        meta = dict(meta)
        meta.setdefault("id", sample.id)
        meta.setdefault("orig_hw", [int(image.shape[0]), int(image.shape[1])])
        inputs = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
        return Prepared(sample, inputs, meta, None, time.process_time() - t0)
    except PluginHookError as exc:  # the plugin's bug on one image: its traceback travels with the message
        return Prepared(sample, None, None, str(exc), time.process_time() - t0,
                        trace="".join(traceback.format_exception(exc)))
    except ZooError as exc:
        return Prepared(sample, None, None, str(exc), time.process_time() - t0)
    except Exception as exc:  # a bug on one image: report it with the file
        return Prepared(sample, None, None, f"{sample.path}: {type(exc).__name__} in preprocess: {exc}",
                        time.process_time() - t0, trace="".join(traceback.format_exception(exc)))


def shm_dir() -> str | None:
    """Where slot files live: ``ZOO_SHM_DIR`` or ``/dev/shm``; ``None`` when not writable."""
    d = os.environ.get("ZOO_SHM_DIR") or "/dev/shm"
    return d if os.path.isdir(d) and os.access(d, os.W_OK) else None


class SlotRing:
    """``num_slots`` slots of :data:`SLOT_BYTES` in one shared file, its space reserved for real.

    Raises :class:`OSError` when the space cannot be reserved (the caller falls back to pickling).
    """

    def __init__(self, num_slots: int, slot_bytes: int = SLOT_BYTES, populate: bool = False):
        d = shm_dir()
        if d is None:
            raise OSError("no writable shared-memory directory")
        remove_orphan_slot_files(d)
        self.num_slots, self.slot_bytes = num_slots, slot_bytes
        self.size = num_slots * slot_bytes
        fd, self.path = tempfile.mkstemp(prefix=f"zoo-slots-{os.getpid()}-", dir=d)
        try:
            os.posix_fallocate(fd, 0, self.size)  # ENOSPC now rather than SIGBUS on first touch
            # the reserved pages exist from now on; ``populate`` maps them all at once (the RSS then
            # shows them from the start, not as they are first touched, and no item pays their faults)
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
            self.map = mmap.mmap(fd, self.size, flags=flags)
        except BaseException:  # (no room, or a Ctrl-C / SIGTERM meanwhile: the file goes either way)
            os.close(fd)
            self.unlink()
            raise
        os.close(fd)
        self._allocs: deque[list] = deque()  # [offset, size, freed], oldest first
        self._by_offset: dict[int, list] = {}
        self.first_offset = 0  # where the first reservation goes (a batch phase kept across rings)

    def alloc(self, nbytes: int) -> int | None:
        """Reserve ``nbytes`` after the newest reservation (wrapping to the start when the end is
        taken); ``None`` when they do not fit now. Not thread-safe: the pool holds its lock."""
        nbytes = -(-int(nbytes) // _ALIGN) * _ALIGN
        if nbytes > self.size or nbytes <= 0:
            return None
        if not self._allocs:
            off = self.first_offset if self.first_offset + nbytes <= self.size else 0
        else:
            tail, last = self._allocs[0][0], self._allocs[-1]
            head = last[0] + last[1]
            if last[0] >= tail:  # the live reservations do not wrap
                if head + nbytes <= self.size:
                    off = head
                elif nbytes <= tail:
                    off = 0
                else:
                    return None
            elif head + nbytes <= tail:
                off = head
            else:
                return None
        rec = [off, nbytes, False]
        self._allocs.append(rec)
        self._by_offset[off] = rec
        return off

    def free(self, offset: int) -> None:
        """Free the reservation at ``offset``; space is reused once every older one is freed too."""
        rec = self._by_offset.pop(offset, None)
        if rec is None:
            return
        rec[2] = True
        while self._allocs and self._allocs[0][2]:
            self._allocs.popleft()

    @property
    def busy(self) -> bool:
        return bool(self._allocs)

    def unlink(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def close(self) -> None:
        self.unlink()
        with contextlib.suppress(BufferError, ValueError):  # a caller still holds a view; it goes with it
            self.map.close()


class Lease:
    """``size`` bytes at ``offset`` of ``ring`` holding one prepared item's arrays.

    The pool frees them when the consumer asks for the next item, unless the consumer calls
    :meth:`take`; it must then call :meth:`release` once nothing reads the arrays any more.
    """

    __slots__ = ("_free", "offset", "ring", "size", "taken")

    def __init__(self, ring: SlotRing, offset: int, size: int, free: Any):
        self.ring, self.offset, self.size, self.taken, self._free = ring, offset, size, False, free

    def take(self) -> None:
        self.taken = True

    def release(self) -> None:
        """Give the bytes back (idempotent, thread-safe)."""
        free, self._free = self._free, None
        if free is not None:
            free(self)


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


def worker_nice(cfg: Any) -> int:
    """``worker_nice`` of the run config (default 10): what a preprocess worker adds to its nice value.

    The workers are throughput work; the parent's device and postprocess threads are latency work.
    When every core is busy, a lower priority for the workers lets a parent thread woken by a returning
    device call run at once instead of after a worker's time slice (nor is a thread holding the GIL the
    device thread waits for preempted by a worker). On 2 cores the emulated device call overran its end
    by 0.32-0.44 ms on average at 0 and by 0.11-0.18 ms at 10 (BENCHMARKS.md, round 5). On a machine
    shared with other jobs the workers yield to those too: 0 turns it off. ConfigError when negative.
    """
    value = cfg.get("worker_nice", 10) if hasattr(cfg, "get") else 10
    try:
        nice = int(10 if value is None else value)
    except (TypeError, ValueError):
        raise ConfigError(f"worker_nice={value!r} must be an integer >= 0") from None
    if nice < 0:
        raise ConfigError(f"worker_nice={nice}: a preprocess worker cannot run above zoo's own priority "
                          f"(0 = the same, higher = lower priority)")
    return nice


def _worker_init(model: str, cfg: Any, parent: int, threads: int, nice: int = 0) -> None:
    """Spawned worker: its own plugin manager and config (nothing inherited from the parent); ``nice``
    (validated by the parent: :func:`worker_nice`) is added to its nice value."""
    _watch_parent(parent)
    if nice:
        with contextlib.suppress(OSError):  # a process already at the lowest priority stays there
            os.nice(nice)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except Exception:
        pass
    keep_heap_pages()
    from zoo_core.plugins import get_manager

    _WORKER_STATE.update(hooks=get_manager().hooks_for(model), cfg=cfg, maps={}, cpu_mark=time.process_time())


def _worker_map(path: str, size: int) -> mmap.mmap:
    """This worker's mapping of the ring file ``path`` (the parent may move to a bigger ring: the
    older mappings are dropped then)."""
    maps: dict[str, mmap.mmap] = _WORKER_STATE["maps"]
    m = maps.get(path)
    if m is None:
        for old in maps.values():
            with contextlib.suppress(BufferError, ValueError):
                old.close()
        maps.clear()
        with open(path, "r+b") as f:
            m = maps[path] = mmap.mmap(f.fileno(), size)
    return m


def _worker_run(sample: Sample, dest: tuple[str, int, int, int] | None = None) -> Prepared:
    """Prepare ``sample``; with ``dest`` = (ring file, its size, offset, bytes reserved) its arrays
    are written there and only their layout travels back (pickled whole when they do not fit)."""
    if dest is not None:  # the model input may be born in its reservation (zoo_core.api.arena)
        open_slot(_worker_map(dest[0], dest[1]), dest[2], dest[3])
    try:
        prep = prepare_one(_WORKER_STATE["hooks"], _WORKER_STATE["cfg"], sample)
    finally:
        close_slot()
    if dest is not None and prep.inputs is not None:
        _to_ring(prep, dest)
    # the worker's whole CPU since its previous item: preprocess, the copy into shared memory, and
    # the pool's own work (unpickling this task, pickling the previous result)
    now = time.process_time()
    prep.host_s = now - _WORKER_STATE.get("cpu_mark", now - prep.host_s)
    _WORKER_STATE["cpu_mark"] = now
    return prep


def _to_ring(prep: Prepared, dest: tuple[str, int, int, int]) -> None:
    assert prep.inputs is not None
    path, size, base, room = dest
    layout, off = [], 0
    for name, arr in prep.inputs.items():
        off = -(-off // _ALIGN) * _ALIGN
        layout.append((name, tuple(arr.shape), arr.dtype.str, base + off))
        off += arr.nbytes
    if off > room or any(a.dtype.hasobject for a in prep.inputs.values()):
        return
    slots = _worker_map(path, size)
    lo = np.frombuffer(slots, np.uint8, count=1).ctypes.data
    arrays = list(prep.inputs.values())
    for i, ((_, _, _, start), arr) in enumerate(zip(layout, arrays, strict=True)):
        addr = arr.__array_interface__["data"][0]
        if lo <= addr < lo + size and addr != lo + start:  # in the ring but elsewhere: keep it safe
            arrays[i] = arr.copy()
    for (_, shape, dtype, start), arr in zip(layout, arrays, strict=True):
        if arr.__array_interface__["data"][0] != lo + start:  # not already where it belongs
            np.ndarray(shape, dtype, buffer=slots, offset=start)[...] = arr
    prep.inputs, prep.slot_layout = None, layout


def _collect(lease: Lease | None, job: Job, sample: Sample, pending: Sequence[tuple[Any, Job, Sample]]) -> Prepared:
    """The prepared ``sample`` of ``job``; an image its worker crashed on is that image's error (skipped with
    ``on_error=skip``); a worker that died otherwise stops the run naming the image it held."""
    try:
        return job.result()
    except WorkerCrashed as exc:
        return Prepared(sample, None, None, f"{sample.path}: the preprocess worker crashed on it "
                                            f"({exit_text(exc.exitcode)})")
    except BaseException as exc:
        if lease is not None:
            lease.release()
        if isinstance(exc, BrokenProcessPool):
            raise ZooError(_died_message(exc, [(job, sample), *((j, s) for _, j, s in pending)])) from None
        raise


def _log_stall(held: list[tuple[int, int]], waited: float, pending: Sequence[tuple[Any, Job, Sample]]) -> None:
    """Say which images the run has been waiting for (a hung or very slow preprocess)."""
    by_index = {job.index: sample for _, job, sample in pending}
    for pid, index in held:
        if index in by_index:
            log.warning("waiting %.0f s for %s (preprocess worker pid %d)", waited, by_index[index].path, pid)


def _died_message(exc: BrokenProcessPool, jobs: Sequence[tuple[Job, Sample]]) -> str:
    """The error of a pool whose worker died: the image it was preparing, if known; the memory hint only
    when it was killed by SIGKILL (the kernel's out-of-memory killer)."""
    task, code = getattr(exc, "task", None), getattr(exc, "exitcode", None)
    held = next((s for j, s in jobs if j.index == task), None) if task is not None else None
    text = f"a preprocess worker process died ({exc}"
    text += f" while preparing {held.path})" if held is not None else ")"
    if code is None or code == -9:
        text += "; if it was killed for memory, lower num_workers or batch_size"
    return text


class WorkerPool:
    """``num_workers`` spawned preprocess processes, all started when the pool is built.

    ``num_workers=0`` prepares items in the calling thread (no processes).
    """

    def __init__(self, hooks: Any, cfg: Any, num_workers: int, num_slots: int | None = None):
        self.hooks, self.cfg = hooks, cfg
        self.num_workers = max(int(num_workers), 0)
        self.nice = worker_nice(cfg)
        self.pool: ProcessPool | None = None
        self.ring: SlotRing | None = None
        self.batch_hint = 1
        self._retired: list[SlotRing] = []
        self._lock = threading.Lock()
        if self.num_workers == 0:
            return
        n = max(int(num_slots if num_slots is not None else 2 * self.num_workers + 2), 1)
        try:
            try:
                self.ring = SlotRing(n)
            except OSError as exc:
                log.info("shared memory unavailable (%s): preprocessed arrays travel through a pipe", exc)
            # every worker starts now, so its start-up overlaps whatever the caller does next (listing the
            # dataset, loading the model)
            self.pool = ProcessPool(self.num_workers, mp.get_context("spawn"), initializer=_worker_init,
                                    initargs=(hooks.model, cfg, os.getpid(), 1, self.nice))
        except BaseException:  # a Ctrl-C or SIGTERM while the workers start: no `with` will close this pool
            self.close()  # (before: the ring's file, ~100 MB of /dev/shm, outlived the interrupted run)
            raise

    @property
    def num_slots(self) -> int:
        return self.ring.num_slots if self.ring else 0

    def pids(self) -> list[int]:
        return self.pool.pids() if self.pool is not None else []

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
        except KeyboardInterrupt:  # Ctrl-C in the thread waiting here: close() kills the workers at once
            self.stop()
            raise

    def stop(self) -> None:
        """Wake the thread waiting in :meth:`prepared` (it raises) and drop the queued items: the run is
        being stopped (Ctrl-C); :meth:`close` then kills the workers at once. Safe from any thread."""
        pool = self.pool
        if pool is not None:
            pool.stop()

    def plan(self, batch_size: int) -> None:
        """The consumer batches ``batch_size`` items: room for two such batches is kept in the ring
        (one on the device, one being filled) once the item size is known."""
        self.batch_hint = max(int(batch_size), 1)

    def _reserve(self, nbytes: int) -> Lease | None:
        with self._lock:
            ring = self.ring
            off = ring.alloc(nbytes) if ring is not None else None
        return None if off is None or ring is None else Lease(ring, off, nbytes, self._free)

    def _free(self, lease: Lease) -> None:
        with self._lock:
            lease.ring.free(lease.offset)
            if lease.ring is not self.ring and not lease.ring.busy and lease.ring in self._retired:
                self._retired.remove(lease.ring)
                lease.ring.close()

    def _grow(self, item_bytes: int, window: int, submitted: int = 0) -> None:
        """Move to a ring that holds two batches plus the window of ``item_bytes`` items, if the
        current one is smaller or (batches of more than one item) does not hold a whole number of
        batches, and the space can be reserved (else keep it: items that find no room travel
        pickled). A whole number of batches makes the ring wrap between two batches, so a batch of
        back-to-back items never straddles its end and the batcher can adopt it in place; the new
        ring's first item goes where item number ``submitted`` (the items reserved so far lie in the
        old ring) falls in that phase."""
        slot = -(-item_bytes // _ALIGN) * _ALIGN
        batch_bytes = self.batch_hint * slot
        need = -(-(2 * self.batch_hint + window + 2) * slot // batch_bytes) * batch_bytes
        whole = self.batch_hint == 1 or (self.ring is not None and self.ring.size % batch_bytes == 0)
        if self.ring is None or (need <= self.ring.size and whole):
            return  # (a batch of one item never straddles the ring's end: any ring that holds them will do)
        try:
            bigger = SlotRing(1, need, populate=True)
            bigger.first_offset = (submitted * slot) % need
        except OSError as exc:
            log.info("no room for a %d MB shared-memory ring (%s): batches are copied", need >> 20, exc)
            return
        with self._lock:
            old, self.ring = self.ring, bigger
            if old.busy:
                self._retired.append(old)
            else:
                old.close()

    def _pooled(self, samples: Sequence[Sample], window: int) -> Iterator[Prepared]:
        assert self.pool is not None
        if self.ring is not None:
            window = min(window, self.ring.num_slots)
        pending: deque[tuple[Lease | None, Job, Sample]] = deque()
        self.pool.on_stall = lambda held, waited: _log_stall(held, waited, pending)
        it = iter(samples)
        item_bytes = 0  # the largest item seen so far (0: none yet)
        submitted = 0

        def submit(s: Sample) -> None:
            nonlocal submitted
            assert self.pool is not None
            submitted += 1
            lease = self._reserve(item_bytes or SLOT_BYTES)
            dest = (lease.ring.path, lease.ring.size, lease.offset, lease.size) if lease else None
            pending.append((lease, self.pool.submit(_worker_run, s, dest), s))

        for s in it:
            submit(s)
            if len(pending) >= window:
                break
        while pending:
            lease, job, sample = pending.popleft()
            res = _collect(lease, job, sample, pending)
            if res.slot_layout is not None and lease is not None:
                res.inputs = {name: np.ndarray(shape, dtype, buffer=lease.ring.map, offset=start)
                              for name, shape, dtype, start in res.slot_layout}
                res.lease = lease
                used = max(start + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                           for _, shape, dtype, start in res.slot_layout) - lease.offset
                if used > item_bytes:
                    item_bytes = used
                    self._grow(item_bytes, window, submitted)
            else:
                if lease is not None:
                    lease.release()
                if res.inputs and res.error is None:
                    used = sum(int(a.nbytes) for a in res.inputs.values()) + _ALIGN * len(res.inputs)
                    if item_bytes < used <= SLOT_BYTES:
                        item_bytes = used
                        self._grow(item_bytes, window, submitted)
            yield res
            if res.lease is not None and not res.lease.taken:
                res.inputs = None
                res.lease.release()
            nxt = next(it, None)
            if nxt is not None:
                submit(nxt)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        with self._lock:
            rings = [r for r in (self.ring, *self._retired) if r is not None]
            self.ring, self._retired = None, []
        for r in rings:
            r.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
