"""Shared-memory hand-off: ring reservations, batches adopted in place, and the copy fallbacks.

The worker pool writes each item into bytes of a ring reserved in submission order; the batcher hands
runs of back-to-back items to the device as one view (no copy) and releases them after the device
call. Every test checks what the device saw against the items as prepared without any pool.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from zoo_core.api.errors import InputError
from zoo_core.api.types import Sample, TensorSpec
from zoo_core.backends.base import Backend, Batch, ModelIO
from zoo_core.pipeline.batching import Batcher
from zoo_core.pipeline.sinks import MemorySink
from zoo_core.pipeline.sources import ImageSource
from zoo_core.pipeline.stream import Stream
from zoo_core.pipeline.workers import Lease, Prepared, SlotRing, WorkerPool, prepare_one


def test_ring_reserves_in_order_wraps_and_reuses_space_only_behind_the_oldest():
    ring = SlotRing(1, 1024)
    try:
        a, b, c = ring.alloc(256), ring.alloc(256), ring.alloc(256)
        assert (a, b, c) == (0, 256, 512)
        assert ring.alloc(512) is None  # 256 left at the end, the start is taken
        ring.free(b)  # out of order: not reusable while a (older) is held
        assert ring.alloc(300) is None
        ring.free(a)  # a and b are gone: the start is free, the end has 256
        assert ring.alloc(300) == 0  # wraps (320 bytes with the alignment)
        assert ring.alloc(200) is None  # wrapped: only 320..512 is free, 192 < 256 (aligned)
        assert ring.alloc(100) == 320
    finally:
        ring.close()


def test_ring_wrap_and_full():
    ring = SlotRing(1, 1024)
    try:
        assert [ring.alloc(256) for _ in range(4)] == [0, 256, 512, 768]
        assert ring.alloc(64) is None and ring.busy
        for off in (0, 256, 512, 768):
            ring.free(off)
        assert not ring.busy and ring.alloc(1024) == 0
        assert ring.alloc(1) is None
        assert ring.alloc(2048) is None
    finally:
        ring.close()


class RecordBackend(Backend):
    """Returns each item's input sum per channel; keeps a copy of every input it saw, by id."""

    name = "record"

    def __init__(self, broken=(), fixed_batch=None):
        super().__init__(None, {}, ModelIO(output_specs=lambda meta: [TensorSpec("sum", (1,))]))
        self.seen: dict[str, np.ndarray] = {}
        self.calls: list[list[str]] = []
        self.views = 0
        self.broken, self.fixed_batch = set(broken), fixed_batch

    def infer(self, batch: Batch) -> list[np.ndarray]:
        self.calls.append(list(batch.ids))
        if self.broken & set(batch.ids[: batch.n_valid]):
            raise InputError("broken item")
        x = next(iter(batch.inputs.values()))
        self.views += isinstance(x.base, np.ndarray) is False and not x.flags.owndata
        for i, sid in enumerate(batch.ids[: batch.n_valid]):
            self.seen[sid] = np.array(x[i])
        return [x.reshape(len(x), -1).sum(axis=1, dtype=np.float64).astype(np.float32)[:, None]]


def _expected(hooks, cfg, samples):
    return {s.id: next(iter(prepare_one(hooks, cfg, s).inputs.values())) for s in samples}


@pytest.mark.parametrize("batch", [1, 4])
def test_a_pooled_stream_hands_items_over_in_place_and_the_device_sees_exactly_the_prepared_arrays(
        fixture_cfg, batch):
    from zoo_core.plugins.manager import ZooPluginManager

    hooks = ZooPluginManager().hooks_for("fixture")
    samples = list(hooks.dataset(cfg=fixture_cfg).samples())
    want = _expected(hooks, fixture_cfg, samples)
    backend = RecordBackend()
    with WorkerPool(hooks, fixture_cfg, 2) as pool:
        assert pool.ring is not None
        stream = Stream(ImageSource(samples, pool), [MemorySink()], backend=backend, batch_size=batch)
        stats = stream.run()
        assert not pool.ring.busy, "every reservation is released after the run"
    assert stats.images == len(samples)
    assert sorted(backend.seen) == sorted(want)
    for sid, arr in want.items():
        np.testing.assert_array_equal(backend.seen[sid], arr)
    # at batch 1 items are handed over in place; in larger batches, once the item size is known
    # (the first window was reserved at the largest size) runs of back-to-back items are. A worker that
    # finds the ring full sends its item through the pipe instead (then it is copied): on a loaded machine
    # that happens now and then, so the count is a lower bound, the arrays above are exact.
    counts = (stream._batcher.adopted, stream._batcher.copied)
    assert sum(counts) == len(samples), counts
    assert counts[0] >= (len(samples) // 2 if batch == 1 else 4), counts


def test_a_bad_item_retried_alone_releases_the_shared_memory_of_its_batch(fixture_cfg):
    from zoo_core.plugins.manager import ZooPluginManager

    hooks = ZooPluginManager().hooks_for("fixture")
    samples = list(hooks.dataset(cfg=fixture_cfg).samples())
    want = _expected(hooks, fixture_cfg, samples)
    bad = samples[9].id
    backend = RecordBackend(broken={bad})
    with WorkerPool(hooks, fixture_cfg, 2) as pool:
        stream = Stream(ImageSource(samples, pool), [MemorySink()], backend=backend, batch_size=4,
                        skip_errors=True)
        stats = stream.run()
        assert pool.ring is not None and not pool.ring.busy
    assert [s["id"] for s in stats.skipped] == [bad]
    assert stats.images == len(samples) - 1
    for sid, arr in want.items():
        if sid != bad:
            np.testing.assert_array_equal(backend.seen[sid], arr)


class _FakePool:
    def __init__(self, ring):
        self.ring = ring
        self.freed: list[int] = []

    def lease(self, p_id: str, arr: np.ndarray, offset: int) -> Prepared:
        np.ndarray(arr.shape, arr.dtype, buffer=self.ring.map, offset=offset)[...] = arr
        layout = [("x", arr.shape, arr.dtype.str, offset)]
        view = np.ndarray(arr.shape, arr.dtype, buffer=self.ring.map, offset=offset)
        return Prepared(Sample(p_id, Path(p_id)), {"x": view}, {}, slot_layout=layout,
                        lease=Lease(self.ring, offset, arr.nbytes, lambda lease: self.freed.append(lease.offset)))


def add(b: Batcher, p: Prepared) -> Batch | None:
    """What the pool does: a lease the batcher did not take is released when the next item is asked for."""
    out = b.add(p)
    if p.lease is not None and not p.lease.taken:
        p.lease.release()
    return out


def test_batcher_adopts_back_to_back_items_and_copies_after_a_gap_or_for_padding():
    ring = SlotRing(1, 1 << 16)
    try:
        pool = _FakePool(ring)
        items = [np.full((4, 4), i, np.float32) for i in range(7)]  # 64 bytes each
        offs = [0, 64, 128, 192, 320, 384, 448]  # a gap after the 4th item (an item that failed there)
        b = Batcher(3)
        batches = [add(b, pool.lease(f"s{i}", a, o)) for i, (a, o) in enumerate(zip(items, offs, strict=True))]
        full = [x for x in batches if x is not None]
        full += list(b.flush())
        assert [x.ids for x in full] == [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6"]]
        first = full[0].inputs["x"]
        assert not first.flags.owndata and first.base is not None and not isinstance(first.base, np.ndarray)
        for batch in full:
            for i, sid in enumerate(batch.ids):
                np.testing.assert_array_equal(batch.inputs["x"][i], items[int(sid[1:])])
        assert (b.adopted, b.copied) == (4, 3)  # s0-s2 and s6 in place; s3 copied at the gap, s4, s5 copied
        for batch in full:
            b.recycle(batch)
        assert sorted(pool.freed) == offs  # every lease released exactly once (adopted ones on recycle)

        # a padded static batch never writes its padding into the ring: it is copied
        pool.freed.clear()
        fixed = Batcher(4, fixed_batch=4)
        for i in range(2):
            assert add(fixed, pool.lease(f"p{i}", items[i], 1024 + 64 * i)) is None
        (padded,) = list(fixed.flush())
        assert padded.inputs["x"].flags.owndata or isinstance(padded.inputs["x"].base, np.ndarray)
        assert len(padded.inputs["x"]) == 4
        np.testing.assert_array_equal(padded.inputs["x"][3], items[1])
        np.testing.assert_array_equal(np.ndarray((4, 4), np.float32, buffer=ring.map, offset=1024 + 128),
                                      np.zeros((4, 4), np.float32))
        assert sorted(pool.freed) == [1024, 1088]  # released as soon as they were copied
    finally:
        ring.close()


def test_a_normalised_input_is_born_in_its_reservation_and_not_copied_again():
    import zoo_core.pipeline.workers as workers
    from zoo_core.api import arena
    from zoo_core.api.geometry import normalize_to_chw

    ring = SlotRing(1, 1 << 20)
    workers._WORKER_STATE["maps"] = {}
    try:
        img = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        want = normalize_to_chw(img, np.zeros(3, np.float32), np.ones(3, np.float32))  # no slot open: np.empty
        mapping = workers._worker_map(ring.path, ring.size)
        base = np.frombuffer(mapping, np.uint8, count=1).ctypes.data
        arena.open_slot(mapping, 4096, want.nbytes)
        try:
            got = normalize_to_chw(img, np.zeros(3, np.float32), np.ones(3, np.float32))
            second = arena.empty((4,), np.float32)  # once per item: the next array is an ordinary one
        finally:
            arena.close_slot()
        assert got.__array_interface__["data"][0] == base + 4096
        assert second.__array_interface__["data"][0] not in range(base, base + ring.size)
        np.testing.assert_array_equal(got, want)
        # the pipe's copy step leaves it in place; an input lying elsewhere in the ring is moved safely
        other = np.ndarray((3, 40, 50), np.float32, buffer=mapping, offset=4096 + want.nbytes + 64)
        other[...] = want + 1
        prep = Prepared(Sample("a", Path("a")), {"x": got, "y": other}, {})
        workers._to_ring(prep, (ring.path, ring.size, 4096, 2 * want.nbytes + 64))
        (_, _, _, sx), (_, _, _, sy) = prep.slot_layout
        np.testing.assert_array_equal(np.ndarray((3, 40, 50), np.float32, buffer=ring.map, offset=sx), want)
        np.testing.assert_array_equal(np.ndarray((3, 40, 50), np.float32, buffer=ring.map, offset=sy), want + 1)
        del got, other, second
    finally:
        for m in workers._WORKER_STATE.pop("maps").values():
            try:
                m.close()
            except BufferError:
                pass
        ring.close()


def test_a_grown_ring_holds_whole_batches_in_the_batch_phase_of_the_items(fixture_cfg):
    """After the item size is known the ring holds a whole number of batches, and the first item
    reserved in it lands where its number falls in a batch: every later batch of back-to-back items
    starts at a batch boundary and never straddles the ring's end (so it is adopted, not copied; an
    800x800 uint8 item of 1,920,000 bytes was copied in every batch of 16 before)."""
    from zoo_core.plugins.manager import ZooPluginManager

    hooks = ZooPluginManager().hooks_for("fixture")
    item = 1_920_000
    with WorkerPool(hooks, fixture_cfg, 1) as pool:
        if pool.ring is None:
            pytest.skip("no shared memory here")
        pool.plan(16)
        first = pool.ring
        pool._grow(item, window=4, submitted=6)  # items 0-5 were reserved in the first ring
        ring = pool.ring
        if ring is first:
            pytest.skip("no room in /dev/shm for the grown ring here (the pool keeps the first one)")
        assert ring.size % (16 * item) == 0 and ring.size >= (2 * 16 + 4 + 2) * item
        offsets = [ring.alloc(item) for _ in range(10 + 3 * 16)]
        assert offsets[0] == 6 * item
        starts = offsets[10::16]  # items 16, 32, 48: the first item of each later batch
        assert all(s is not None and s % (16 * item) == 0 for s in starts), starts


def test_a_ctrl_c_while_the_workers_start_leaves_no_shared_memory_file(tmp_path, monkeypatch):
    """Before: Ctrl-C or SIGTERM while the preprocess pool started its workers raised out of
    WorkerPool.__init__, so `with WorkerPool(...)` never closed it: the ring's file (~100 MB of /dev/shm,
    posix_fallocate'd) outlived the cleanly interrupted run (exit 130)."""
    from types import SimpleNamespace

    import zoo_core.pipeline.workers as workers

    monkeypatch.setenv("ZOO_SHM_DIR", str(tmp_path))
    made = []

    def interrupted(*args, **kwargs):
        made.extend(p.name for p in tmp_path.iterdir())  # the ring exists by now
        raise KeyboardInterrupt

    monkeypatch.setattr(workers, "ProcessPool", interrupted)
    with pytest.raises(KeyboardInterrupt):
        WorkerPool(SimpleNamespace(model="fake"), {}, 1, num_slots=1)
    assert made and made[0].startswith(f"zoo-slots-{os.getpid()}-")
    assert list(tmp_path.iterdir()) == []
