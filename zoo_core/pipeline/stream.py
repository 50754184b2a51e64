"""The one pipe: source -> batcher -> backend -> decode -> sinks, with the run's guarantees.

Three threads overlap host and device work: a feeder gathers prepared items into the next batch
while the device (the calling thread) runs the current one, and a post thread checks, decodes and
writes finished batches. Queues hold one batch each, so memory depends on ``batch_size`` and the
source's window, never on the dataset size.

Guarantees, for every stage that streams (eval, infer, postprocess, predict, preprocess):

* model outputs are finite: NaN/inf fails the item (or skips it with ``on_error=skip``);
* every listed item ends exactly once, written to every sink or in ``RunStats.skipped``; a listed
  item that ended neither way is an error, never a silent subset;
* a bad item that fails a whole batch (e.g. a missing replayed file) is retried alone when skipping,
  so only the bad item is skipped;
* the first failure stops the feeder, the device loop and the post thread, and is raised.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from zoo_core.api.errors import InputError, PluginError, ZooError
from zoo_core.api.types import Detections, Sample, TensorSpec
from zoo_core.backends.base import Backend, Batch
from zoo_core.config.logging_filters import FILE_ONLY
from zoo_core.pipeline.batching import Batcher
from zoo_core.pipeline.memory import long_lived_frozen, return_big_blocks
from zoo_core.pipeline.scheduling import THREAD_SLICE_NS, set_thread_slice, short_slice
from zoo_core.pipeline.stats import RunStats
from zoo_core.pipeline.workers import Prepared, stop_error
from zoo_core.reports.progress import Progress

log = logging.getLogger("zoo")

#: The interpreter's GIL switch interval while a stream runs (the default is 5 ms). A device call
#: that returns must get the GIL back from the decoding and feeding threads; at 1-10 ms per call a
#: 5 ms wait for it idles the device. 0.2 ms kept a 4.2 ms/call device 1-5 % busier than 0.5 ms at
#: the same host capacity (BENCHMARKS.md).
GIL_SWITCH_S = 0.0002

#: How long a stopping run (an error, Ctrl-C) waits for its feeder and post threads: a thread stuck in a
#: hung plugin hook is left behind (a daemon) rather than waited for forever.
STOP_JOIN_S = 3.0

#: ``decode(outputs, metas) -> one Detections per item`` (a model's postprocess hook).
DecodeFn = Callable[[list[np.ndarray], list[dict]], list[Detections]]


@dataclass
class Result:
    """One finished item, as the sinks receive it."""

    sample: Sample
    meta: dict
    inputs: dict[str, np.ndarray] | None = None
    outputs: list[np.ndarray] | None = None
    detections: Detections | None = None


class Source(Protocol):
    """Where items come from: a dataset's images, a ``.bin`` inputs dir, saved metas."""

    total: int

    def items(self) -> Iterator[Prepared]:
        """Every listed item exactly once, in order (bad ones with ``error`` set)."""
        ...


class Sink(Protocol):
    """Where finished items go: the detection store, ``.bin`` writers, the prediction drawer."""

    def write(self, result: Result) -> None:
        """Persist one item (raise :class:`ZooError` if it cannot)."""
        ...

    def close(self) -> None:
        """Flush what is buffered."""
        ...


def _maybe_finite(a: np.ndarray) -> bool:
    """False when ``a`` may hold NaN or inf, in one pass and no temporary: for float32/64 the dot
    product of ``a`` with itself (one BLAS call, reading ``a`` once), NaN or inf when an element is
    NaN or +-inf; else a sum, likewise. A finite array whose squares or sum overflow (values beyond
    ~1e19 in float32) is a false alarm, which the caller's exact check clears."""
    if a.dtype in (np.float32, np.float64) and a.flags.c_contiguous and a.size:
        flat = a.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            return bool(np.isfinite(np.dot(flat, flat)))
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.sum(a)))


def find_nonfinite(outputs: Sequence[np.ndarray], n: int) -> list[int]:
    """Indices ``< n`` of the batch items whose float outputs hold NaN or inf."""
    floats = [o for o in outputs if o.dtype.kind == "f"]
    if all(_maybe_finite(o[:n]) for o in floats):
        return []
    return [i for i in range(n) if not all(np.isfinite(o[i]).all() for o in floats)]


class Stream:
    """Run ``source`` through ``backend`` (optional), ``decode`` (optional) into ``sinks``.

    Without a backend, prepared items go straight to the sinks (``preprocess``). ``keep_outputs``
    hands each item's raw outputs to the sinks (``.bin`` writers); ``skip_errors`` is
    ``on_error=skip``; ``expect(meta)`` (the model's ``output_spec``) is checked against what the
    backend returns: another number of outputs or another shape is an error naming the model file.
    """

    def __init__(self, source: Source, sinks: Sequence[Sink], *, backend: Backend | None = None,
                 decode: DecodeFn | None = None, batch_size: int = 1, skip_errors: bool = False,
                 keep_outputs: bool = False, progress: Progress | None = None,
                 expect: Callable[[dict], list[TensorSpec] | None] | None = None):
        self.source, self.sinks, self.backend, self.decode = source, list(sinks), backend, decode
        self.expect = expect
        self.batch_size = int(batch_size)
        self.skip = skip_errors
        self.keep_outputs = keep_outputs
        self.progress = progress or Progress(source.total, enabled=False)
        self.stats = RunStats()
        self._lock = threading.Lock()
        self._failure: list[BaseException] = []
        self._stop = threading.Event()
        self._abort = threading.Event()  # the run stops on an error or Ctrl-C: queued batches are dropped
        self._t0 = 0.0

    # -- shared by every path -------------------------------------------------------------
    def _fail_or_skip(self, sample: Sample, message: str, trace: str | None = None) -> None:
        """Stop on ``message`` (its ``trace``, a plugin bug's traceback, as the cause the CLI writes to
        ``error_traceback.txt``) or, with ``on_error=skip``, count the item skipped (the trace to zoo.log)."""
        if not self.skip:
            raise stop_error(InputError(message), trace)
        with self._lock:
            self.stats.skipped.append({"id": sample.id, "path": str(sample.path), "reason": message})
            self.progress.update_to(self.stats.images + len(self.stats.skipped))
        log.warning("skipped %s", message)
        if trace:
            log.warning("traceback of the skipped %s:\n%s", sample.path, trace.rstrip(), extra={FILE_ONLY: True})

    def _deliver(self, results: list[Result]) -> None:
        for r in results:
            for sink in self.sinks:
                sink.write(r)
        with self._lock:
            self.stats.images += len(results)
            self.progress.update_to(self.stats.images + len(self.stats.skipped))

    def _account(self, listed: int) -> None:
        """Every listed item was written or skipped: anything else is an error, never a subset."""
        ended = self.stats.images + len(self.stats.skipped)
        if listed != self.source.total or ended != listed:
            raise ZooError(f"{self.source.total} item(s) were listed but {ended} ended "
                           f"({self.stats.images} written, {len(self.stats.skipped)} skipped): "
                           f"the run is incomplete and its results were not kept")

    def run(self) -> RunStats:
        """Run to the end; raise the first failure. Sinks are closed (flushed) on success."""
        self._t0 = time.perf_counter()
        cpu0 = time.process_time()
        try:
            with long_lived_frozen():
                listed = self._run_direct() if self.backend is None else self._run_pipelined()
            for sink in self.sinks:
                sink.close()
            self._account(listed)
        finally:
            self.stats.wall_s = time.perf_counter() - self._t0
            self.stats.parent_cpu_s = time.process_time() - cpu0
            self.progress.close()
        return self.stats

    # -- no backend: prepared items straight to the sinks --------------------------------
    def _run_direct(self) -> int:
        listed = 0
        for prep in self.source.items():
            listed += 1
            self._note_input(prep)
            if prep.error is not None or prep.inputs is None:
                self._fail_or_skip(prep.sample, prep.error or f"{prep.sample.path}: no inputs", prep.trace)
                continue
            self._deliver([Result(prep.sample, prep.meta or {}, inputs=prep.inputs)])
        return listed

    def _note_input(self, prep: Prepared) -> None:
        if not self.stats.first_input_s:
            self.stats.first_input_s = time.perf_counter() - self._t0
        self.stats.preprocess_cpu_s += prep.host_s

    # -- with a backend: feeder thread -> device (this thread) -> post thread -------------
    def _run_pipelined(self) -> int:
        assert self.backend is not None
        self._batcher = Batcher(self.batch_size, self.backend.fixed_batch)
        plan = getattr(self.source, "plan_batches", None)
        if plan is not None:  # a worker pool keeps room for two batches of its items in shared memory
            plan(self._batcher.batch_size)
        self._batch_q: queue.Queue = queue.Queue(maxsize=1)
        self._post_q: queue.Queue = queue.Queue(maxsize=1)
        self._taken = threading.Event()
        self._listed = 0
        self._done = object()
        return_big_blocks()
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, GIL_SWITCH_S))
        post = threading.Thread(target=self._post_loop, name="zoo-postprocess", daemon=True)
        feed = threading.Thread(target=self._feed_loop, name="zoo-feeder", daemon=True)
        post.start()
        feed.start()
        try:
            with short_slice():
                self._device_loop()
        except BaseException:
            # a failure or Ctrl-C: wake the feeder (it may wait on a hung worker) and let the post thread
            # drop what is queued; a thread still stuck (a hung plugin hook) is left behind, not waited for
            self._stop.set()
            self._abort.set()
            stop = getattr(self.source, "stop", None)
            if stop is not None:
                stop()
            feed.join(STOP_JOIN_S)
            while post.is_alive():
                try:
                    self._post_q.put_nowait(None)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self._post_q.get_nowait()
            post.join(STOP_JOIN_S)
            raise
        finally:
            self._stop.set()
            sys.setswitchinterval(switch)
            self.stats.inputs_in_place = self._batcher.adopted
        feed.join()
        self._post_q.put(None)
        post.join()
        if self._failure:
            raise self._failure[0]
        return self._listed

    def _feed_loop(self) -> None:
        """Collect prepared items into batches while the device runs the previous one."""
        set_thread_slice(THREAD_SLICE_NS)
        try:
            for prep in self.source.items():
                self._listed += 1
                self._note_input(prep)
                if self._stop.is_set() or self._failure:
                    return
                if prep.error is not None:
                    self._fail_or_skip(prep.sample, prep.error, prep.trace)
                    continue
                batch = self._batcher.add(prep)
                if batch is not None and not self._hand_over(batch):
                    return
            for batch in self._batcher.flush():
                if not self._hand_over(batch):
                    return
        except BaseException as exc:
            self._failure.append(exc)
        finally:
            self._hand_over(self._done)

    def _hand_over(self, item: object) -> bool:
        """Give ``item`` to the device loop and wait until it is taken, so at most two batch buffers
        live at once (the one on the device and the one being filled)."""
        self._taken.clear()
        while not self._stop.is_set():
            try:
                self._batch_q.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        while not self._stop.is_set():
            if self._taken.wait(0.1):
                return True
        return False

    def _device_loop(self) -> None:
        while True:
            t_wait = time.perf_counter()
            batch = self._batch_q.get()
            self._taken.set()
            self.stats.wait_for_input_s += time.perf_counter() - t_wait
            if batch is self._done:
                return
            if self._failure:
                raise self._failure[0]
            self._run_device(batch)

    def _run_device(self, batch: Batch) -> None:
        assert self.backend is not None
        t0 = time.perf_counter()
        if not self.stats.batches:
            self.stats.first_device_s = t0 - self._t0
        try:
            outputs = self.backend.infer(batch)
        except InputError:
            if not self.skip:
                raise
            self._run_alone(batch)
            self._batcher.recycle(batch)
            return
        dt = time.perf_counter() - t0
        self.stats.last_device_s = t0 + dt - self._t0
        # the inputs go back for reuse now (shared memory may be refilled at once): an output that is
        # a view of them (an identity backend) is copied first
        outputs = [np.array(o) if isinstance(o, np.ndarray) and any(np.may_share_memory(o, a)
                                                                    for a in batch.inputs.values()) else o
                   for o in outputs]
        self._batcher.recycle(batch)
        self.stats.device_s += dt
        self.stats.device_calls_ms.append(dt * 1000)
        self.stats.batches += 1
        outputs = [np.asarray(o)[: batch.n_valid] for o in outputs]
        self._check_shapes(batch, outputs)
        self._post_q.put((batch, outputs))

    def _check_shapes(self, batch: Batch, outputs: list[np.ndarray]) -> None:
        """One row per real item in every output (a backend's count, said apart from a per-item shape that
        disagrees with the model's ``output_spec``, which says the model file is another model's)."""
        specs = self.expect(batch.metas[0]) if self.expect is not None else None
        for i, o in enumerate(outputs):
            if len(o) != batch.n_valid:
                name = repr(specs[i].name) if specs is not None and i < len(specs) else f"#{i}"
                model_file = self.backend.describe().get("model_file") if self.backend else None
                raise ZooError(f"backend {getattr(self.backend, 'name', '?')} returned {len(o)} rows for a batch of "
                               f"{batch.n_valid} (output {name}); a backend returns one row per item, in order",
                               path=model_file)
        if specs is None:  # no spec, or the model cannot say for this meta (e.g. a seed prep_dataset)
            return
        got = [tuple(o.shape[1:]) for o in outputs]
        want = [tuple(s.shape) for s in specs]
        if got != want:
            raise ZooError(f"{self._model_file_named()}: the model's outputs {got} (per item) disagree with the "
                           f"model's output_spec {want}; is this model file for this model and config?")
        if self.backend is not None and self.backend.exact_output_dtypes:
            # (else eval scores the outputs fine, and infer writes .bin files postprocess reads as output_spec's
            # dtype: "is 1024 bytes; ... as float16 needs 512", output_spec not named)
            for o, spec in zip(outputs, specs):
                try:
                    want_dtype = np.dtype(spec.dtype)
                except TypeError:  # (not a dtype name: nothing to compare with)
                    continue
                if o.dtype != want_dtype:
                    raise ZooError(f"{self._model_file_named()}: the model's output {spec.name!r} is {o.dtype}, the "
                                   f"model's output_spec says {spec.dtype}; the export and the output_spec hook "
                                   f"must agree on it (is this model file for this model and config?)")

    def _model_file_named(self) -> str:
        """The backend's model file, for an error (``describe()`` is not called per batch)."""
        return (self.backend.describe().get("model_file") if self.backend else None) or "the backend"

    def _run_alone(self, batch: Batch) -> None:
        """A bad item failed the whole batch: retry item by item, skip only the bad ones."""
        assert self.backend is not None
        size = self.backend.fixed_batch or 1
        for i in range(batch.n_valid):
            one = Batch(ids=[batch.ids[i]], metas=[batch.metas[i]], samples=[batch.samples[i]], n_valid=1,
                        inputs={k: np.repeat(v[i:i + 1], size, axis=0) for k, v in batch.inputs.items()})
            try:
                outputs = self.backend.infer(one)
            except InputError as exc:
                self._fail_or_skip(one.samples[0], str(exc))
                continue
            self.stats.batches += 1
            outputs = [np.asarray(o)[:1] for o in outputs]
            self._check_shapes(one, outputs)
            self._post_q.put((one, outputs))

    def _post_loop(self) -> None:
        set_thread_slice(THREAD_SLICE_NS)
        while True:
            job = self._post_q.get()
            if job is None:
                return
            if self._failure or self._abort.is_set():
                continue
            try:
                t0 = time.perf_counter()
                self._finish(*job)
                with self._lock:
                    self.stats.postprocess_s += time.perf_counter() - t0
            except BaseException as exc:
                self._failure.append(exc)

    def _finish(self, batch: Batch, outputs: list[np.ndarray]) -> None:
        """Check, decode and write one batch's real items."""
        bad = set(find_nonfinite(outputs, batch.n_valid))
        for i in sorted(bad):
            self._fail_or_skip(batch.samples[i], f"{batch.samples[i].path}: model output contains NaN or inf")
        good = [i for i in range(batch.n_valid) if i not in bad]
        if not good:
            return
        outs = outputs if len(good) == len(outputs[0]) else [o[good] for o in outputs]
        metas = [batch.metas[i] for i in good]
        dets: list[Detections | None] = [None] * len(good)
        if self.decode is not None:
            decoded = self.decode(outs, metas)
            if len(decoded) != len(good):
                raise PluginError(f"postprocess returned {len(decoded)} results for a batch of {len(good)}")
            dets = list(decoded)
        results = [Result(batch.samples[i], batch.metas[i],
                          outputs=[o[j] for o in outs] if self.keep_outputs else None, detections=dets[j])
                   for j, i in enumerate(good)]
        self._deliver(results)

