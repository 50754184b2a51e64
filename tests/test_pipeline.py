"""The pipeline's guarantees, in-process with fake sources, backends and sinks (no CLI, no model)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from zoo_core.api.aisbench import DumpDir, read_bin, safe_stem, write_bin
from zoo_core.api.errors import InputError, PluginError, ZooError
from zoo_core.api.types import Detections, Sample, TensorSpec
from zoo_core.backends.base import Backend, Batch, ModelIO
from zoo_core.backends.replay_backend import ReplayBackend
from zoo_core.pipeline.batching import Batcher, pad
from zoo_core.pipeline.sinks import MemorySink, OutputBinSink
from zoo_core.pipeline.sources import BinInputSource, list_bin_inputs
from zoo_core.pipeline.stream import Stream
from zoo_core.pipeline.workers import Prepared
from zoo_core.runs.lock import RunLock
from zoo_core.runs.resume import Ledger, crc32

SPEC = [TensorSpec("out", (3,))]


class ListSource:
    """Items with one input ``x`` (shape (3,)) whose value is the item's index."""

    def __init__(self, n: int, bad: tuple[int, ...] = (), lie_total: int | None = None):
        self.n, self.bad = n, bad
        self.total = lie_total if lie_total is not None else n

    def items(self):
        for i in range(self.n):
            s = Sample(f"img{i:03d}", Path(f"/data/img{i:03d}.png"))
            if i in self.bad:
                yield Prepared(s, None, None, f"{s.path}: not decodable")
            else:
                yield Prepared(s, {"x": np.full(3, i, np.float32)}, {"id": s.id, "i": i})


class EchoBackend(Backend):
    """Returns the inputs as the output; NaN for ids in ``nan``; InputError for batches holding ``broken``."""

    name = "echo"

    def __init__(self, nan=(), broken=(), fixed_batch=None):
        super().__init__(None, {}, ModelIO(output_specs=lambda meta: SPEC))
        self.nan, self.broken, self.fixed_batch = set(nan), set(broken), fixed_batch
        self.calls: list[list[str]] = []

    def infer(self, batch: Batch) -> list[np.ndarray]:
        self.calls.append(list(batch.ids))
        if self.broken & set(batch.ids[: batch.n_valid]):
            raise InputError(f"missing output for {sorted(self.broken & set(batch.ids))[0]}")
        out = batch.inputs["x"].copy()
        for j, i in enumerate(batch.ids):
            if i in self.nan:
                out[j, 1] = np.nan
        return [out]


def decode(outs, metas):
    return [Detections(np.array([[o[0], 0, o[0] + 1, 1]]), [0.9], [0]) for o in outs[0]]


def test_every_item_once_in_order_with_partial_last_batch():
    sink = MemorySink()
    stats = Stream(ListSource(11), [sink], backend=EchoBackend(), decode=decode, batch_size=4).run()
    assert stats.images == 11 and stats.batches == 3 and not stats.skipped
    assert sorted(sink.detections) == [f"img{i:03d}" for i in range(11)]
    assert [float(sink.detections[f"img{i:03d}"].boxes[0, 0]) for i in range(11)] == list(range(11))


def test_static_batch_is_padded_with_the_last_item_and_padding_dropped():
    backend = EchoBackend(fixed_batch=4)
    sink = MemorySink()
    Stream(ListSource(6), [sink], backend=backend, decode=decode, batch_size=4, keep_outputs=True).run()
    assert len(sink.outputs) == 6
    np.testing.assert_array_equal(sink.outputs["img005"][0], [5, 5, 5])
    assert pad(np.arange(2)[:, None], 4)[:, 0].tolist() == [0, 1, 1, 1]


@pytest.mark.parametrize("skip", [False, True])
def test_nonfinite_outputs_fail_or_are_skipped(skip):
    sink = MemorySink()
    stream = Stream(ListSource(6), [sink], backend=EchoBackend(nan={"img002"}), decode=decode, batch_size=3,
                    skip_errors=skip)
    if not skip:
        with pytest.raises(InputError, match=r"img002.png: model output contains NaN or inf"):
            stream.run()
        return
    stats = stream.run()
    assert [s["id"] for s in stats.skipped] == ["img002"]
    assert sorted(sink.detections) == [f"img{i:03d}" for i in (0, 1, 3, 4, 5)]


def test_find_nonfinite_names_exactly_the_items_with_nan_or_inf():
    """Against the element-wise oracle: NaN, +inf and -inf anywhere (SIMD tails included), finite
    values whose sum overflows (not flagged), padding rows past ``n`` ignored, float16/64, strided."""
    from zoo_core.pipeline.stream import find_nonfinite

    rng = np.random.default_rng(4)
    for trial in range(300):
        b, n = int(rng.integers(1, 5)), 0
        n = int(rng.integers(1, b + 1))
        dtype = (np.float32, np.float64, np.float16)[trial % 3]
        outs = [rng.normal(0, 1, (b, int(rng.integers(1, 70)), 3)).astype(dtype) for _ in range(2)]
        if trial % 7 == 0:
            outs[0][:] = np.finfo(dtype).max  # a sum overflows, nothing is non-finite
        for _ in range(int(rng.integers(0, 3))):
            o = outs[int(rng.integers(2))]
            o.reshape(b, -1)[rng.integers(b), rng.integers(o[0].size)] = rng.choice([np.nan, np.inf, -np.inf])
        if trial % 5 == 0:
            outs[1] = outs[1][:, :, ::2]  # not contiguous
        want = [i for i in range(n) if not all(np.isfinite(o[i]).all() for o in outs)]
        assert find_nonfinite(outs, n) == want
    assert find_nonfinite([np.zeros((2, 0), np.float32)], 2) == []
    for size in (1000, 65537, 300001):  # BLAS's blocked kernels, not only its tails
        for bad in (np.nan, np.inf, -np.inf):
            for where in (0, size // 2, size - 1):
                big = [rng.normal(0, 1, (2, size)).astype(np.float32), rng.normal(0, 1, (2, size))]
                big[where % 2][1, where] = bad
                assert find_nonfinite(big, 2) == [1]
                assert find_nonfinite(big, 1) == []


def test_nonfinite_raw_outputs_are_checked_without_decode_too():
    with pytest.raises(InputError, match="NaN or inf"):
        Stream(ListSource(2), [MemorySink()], backend=EchoBackend(nan={"img001"}), keep_outputs=True).run()


def test_bad_item_in_a_batch_is_retried_alone_and_only_it_is_skipped():
    backend = EchoBackend(broken={"img004"})
    sink = MemorySink()
    stats = Stream(ListSource(8), [sink], backend=backend, decode=decode, batch_size=4, skip_errors=True).run()
    assert [s["id"] for s in stats.skipped] == ["img004"]
    assert len(sink.detections) == 7 and "img004" not in sink.detections


def test_bad_input_fails_by_default_and_is_listed_with_skip():
    with pytest.raises(InputError, match=r"img001.png: not decodable"):
        Stream(ListSource(3, bad=(1,)), [MemorySink()], backend=EchoBackend(), decode=decode).run()
    stats = Stream(ListSource(3, bad=(1,)), [MemorySink()], backend=EchoBackend(), decode=decode,
                   skip_errors=True).run()
    assert stats.images == 2 and stats.skipped[0]["id"] == "img001"


def test_a_listed_item_that_never_ends_is_an_error_not_a_subset():
    with pytest.raises(ZooError, match=r"5 item.*listed but 4 ended"):
        Stream(ListSource(4, lie_total=5), [MemorySink()], backend=EchoBackend(), decode=decode).run()


def test_postprocess_returning_the_wrong_count_is_a_plugin_error():
    with pytest.raises(PluginError, match="returned 1 results for a batch of 2"):
        Stream(ListSource(2), [MemorySink()], backend=EchoBackend(), batch_size=2,
               decode=lambda outs, metas: decode(outs, metas)[:1]).run()


class FewerRowsBackend(EchoBackend):
    """Drops the last row of the batch holding ``short``."""

    name = "fewer"

    def __init__(self, short: str):
        super().__init__()
        self.short = short

    def infer(self, batch: Batch) -> list[np.ndarray]:
        outs = super().infer(batch)
        return [o[:-1] for o in outs] if self.short in batch.ids else outs


@pytest.mark.parametrize("expect", [True, False])
def test_a_backend_returning_fewer_rows_than_the_batch_is_named_as_such(expect):
    """Before: `the model's outputs [(3,)] (per item) disagree with the model's output_spec [(3,)]`, the row count
    folded into a shape message that showed two identical shapes (and without a spec to check, an IndexError)."""
    stream = Stream(ListSource(8), [MemorySink()], backend=FewerRowsBackend("img005"), decode=decode, batch_size=4,
                    expect=(lambda meta: SPEC) if expect else None)
    with pytest.raises(ZooError) as err:
        stream.run()
    assert str(err.value) == ("backend fewer returned 3 rows for a batch of 4 (output "
                              + ("'out'" if expect else "#0") + "); a backend returns one row per item, in order")
    assert "output_spec" not in str(err.value)


class TypedBackend(EchoBackend):
    """A backend whose outputs keep the model file's element types (float32), as onnxruntime's do."""

    name = "typed"
    exact_output_dtypes = True


@pytest.mark.parametrize(("backend", "dtype", "fails"), [(TypedBackend, "float16", True),
                                                         (TypedBackend, "float32", False),
                                                         (EchoBackend, "float16", False)])
def test_outputs_whose_dtype_disagrees_with_the_output_spec_are_named_as_such(backend, dtype, fails):
    """Before: an ONNX giving float32 for an output_spec saying float16 ran eval fine (exit 0), and a later
    stage=infer/postprocess failed with `outputs/r00_0.bin: is 1024 bytes; tensor heatmap (1, 16, 16) as float16
    needs 512`, output_spec not named."""
    stream = Stream(ListSource(4), [MemorySink()], backend=backend(), decode=decode, batch_size=2,
                    expect=lambda meta: [TensorSpec("out", (3,), dtype)])
    if not fails:
        assert stream.run().images == 4
        return
    with pytest.raises(ZooError) as err:
        stream.run()
    assert str(err.value) == ("the backend: the model's output 'out' is float32, the model's output_spec says float16; "
                              "the export and the output_spec hook must agree on it (is this model file for this "
                              "model and config?)")


def test_a_failing_sink_stops_the_run_and_is_raised():
    class Full(MemorySink):
        def write(self, result):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        Stream(ListSource(20), [Full()], backend=EchoBackend(), decode=decode, batch_size=2).run()


def test_batcher_groups_by_shape_and_flushes_everything():
    b = Batcher(2)
    out = []
    for i, n in enumerate([3, 4, 3, 4, 3]):
        batch = b.add(Prepared(Sample(f"s{i}", Path(f"s{i}")), {"x": np.zeros(n, np.float32)}, {}))
        if batch:
            out.append(batch.ids)
    out += [batch.ids for batch in b.flush()]
    assert out == [["s0", "s2"], ["s1", "s3"], ["s4"]]



def test_a_static_batch_is_padded_with_its_last_real_item_in_a_recycled_buffer():
    """fixed_batch=4 over 6 items, the first batch's buffer handed back (as the Stream does): the last batch is
    built in that buffer, so rows 2-3 still hold items 2-3 of the first batch unless padding overwrites them.
    The documented rule (``pad``): repeat the last real item."""
    def item(i, v):
        return Prepared(Sample(f"img{i}", Path(f"img{i}.png")), {"x": np.full((3,), v, np.float32)}, {})

    b = Batcher(4, fixed_batch=4)
    first = [x for x in (b.add(item(i, 10 + i)) for i in range(4)) if x is not None]
    assert len(first) == 1 and first[0].inputs["x"][:, 0].tolist() == [10, 11, 12, 13]
    buf = first[0].inputs["x"]
    b.recycle(first[0])
    assert b.add(item(4, 20)) is None and b.add(item(5, 21)) is None
    (last,) = list(b.flush())
    assert last.n_valid == 2 and last.ids == ["img4", "img5"]
    assert np.shares_memory(last.inputs["x"], buf)  # the recycled buffer: stale rows are there to overwrite
    np.testing.assert_array_equal(last.inputs["x"], pad(np.array([[20] * 3, [21] * 3], np.float32), 4))

# -- files: ids, dumps, dtypes ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["../../x", "a/b", "", "..", "x\ny", "\x00", "a" * 300, 7])
def test_unsafe_ids_are_refused_naming_the_file(bad):
    with pytest.raises(InputError, match=r"meta.jsonl:3"):
        safe_stem(bad, "meta.jsonl:3")


def test_a_stem_seen_twice_in_a_dump_names_both_files(tmp_path):
    for run in ("run1", "run2"):
        write_bin(tmp_path / run / "img_0.bin", np.zeros(3, np.float32))
    with pytest.raises(InputError, match=r"img_0.bin appears twice: .*run[12]/img_0.bin and .*run[12]/img_0.bin"):
        DumpDir(tmp_path, 1)


def test_a_sample_listed_twice_is_refused_even_as_the_very_same_object():
    """Before: only two distinct Sample objects with one id were refused; a dataset whose samples() listed the
    very same object twice had that image scored twice, exit 0 (61 images instead of 60, AP50 0.05905 vs 0.05956)."""
    from zoo_core.pipeline.sources import check_unique

    a, b = Sample("sq003", Path("/d/sq003.png")), Sample("sq004", Path("/d/sq004.png"))
    for dup in (a, Sample("sq003", Path("/d/sq003.png"))):  # the same object, an equal one
        with pytest.raises(InputError, match=r"^/d/sq003.png: the id 'sq003' is listed twice, both times for "
                                             r"/d/sq003.png\n  hint: each image must be listed once"):
            check_unique([a, b, dup])
    with pytest.raises(InputError, match=r"two items share the id 'sq003': /d/sq003.png and /e/sq003.jpg"):
        check_unique([a, b, Sample("sq003", Path("/e/sq003.jpg"))])
    check_unique([a, b])


def test_an_ais_bench_dump_names_a_dotted_stem_by_its_part_before_the_first_dot(tmp_path):
    """REFERENCE 5.1: ais_bench writes ``{basename.split('.')[0]}_{i}``; before, image 'cam.v2_0' found no outputs."""
    run = tmp_path / "2024_05_01-10_00_00"
    run.mkdir()
    write_bin(run / "cam_0.bin", np.arange(3, dtype=np.float32))
    write_bin(run / "plain_0.bin", np.ones(3, np.float32))
    write_bin(run / "a.b_0.bin", np.zeros(3, np.float32))  # zoo's own outputs keep the whole stem
    dump = DumpDir(tmp_path, 1)
    assert "cam.v2_0" in dump and dump.paths("cam.v2_0") == [run / "cam_0.bin"]
    assert dump.paths("a.b") == [run / "a.b_0.bin"] and dump.paths("plain") == [run / "plain_0.bin"]
    with pytest.raises(ZooError, match=r"'cam.v2_0' and 'cam.v3' both map to the outputs cam_<i>.bin") as info:
        dump.paths("cam.v3")
    assert not isinstance(info.value, InputError)  # never skipped by on_error=skip: cam.v2_0 was read already


@pytest.mark.parametrize("order", [("cam", "cam.v2"), ("cam.v2", "cam")])
def test_an_image_whose_stem_is_another_ones_cut_cannot_share_its_dump_files_in_either_order(tmp_path, order):
    """Before: 'cam' found cam_0.bin by its exact stem without claiming it, so 'cam.v2' (which ais_bench also wrote
    as cam_0.bin, one over the other) read the same file: both images scored with one image's outputs, exit 0
    (AP 0.9381 instead of 1.0 on the audit's COCO set)."""
    write_bin(tmp_path / "cam_0.bin", np.arange(3, dtype=np.float32))
    write_bin(tmp_path / "other_0.bin", np.ones(3, np.float32))
    dump = DumpDir(tmp_path, 1)
    first, second = order
    assert dump.paths(first) == [tmp_path / "cam_0.bin"] and dump.paths("other") == [tmp_path / "other_0.bin"]
    assert dump.paths(first) == [tmp_path / "cam_0.bin"]  # the same image again is no conflict
    with pytest.raises(ZooError) as info:
        dump.paths(second)
    assert str(info.value).splitlines()[0] == (
        f"{tmp_path}: images {first!r} and {second!r} both map to the outputs cam_<i>.bin (ais_bench cuts file names "
        "at the first '.'), so this dump cannot tell them apart")
    assert info.value.exit_code == 2 and not isinstance(info.value, InputError)


def test_a_dump_with_each_images_whole_stem_still_matches_every_image(tmp_path):
    """zoo's own outputs keep the whole stem: 'cam' and 'cam.v2' each read their own files, in any order."""
    write_bin(tmp_path / "cam_0.bin", np.zeros(3, np.float32))
    write_bin(tmp_path / "cam.v2_0.bin", np.ones(3, np.float32))
    for order in (("cam", "cam.v2"), ("cam.v2", "cam")):
        dump = DumpDir(tmp_path, 1)
        assert [dump.paths(s) for s in order] == [[tmp_path / f"{s}_0.bin"] for s in order]


def test_a_replayed_dump_shared_by_two_images_stops_the_stream_even_when_skipping(tmp_path):
    """With on_error=skip the second image was skipped while the first had been scored with outputs that may be
    the second one's: the stream stops instead."""
    write_bin(tmp_path / "cam_0.bin", np.arange(3, dtype=np.float32))

    class Two:
        total = 2

        def items(self):
            for sid in ("cam", "cam.v2"):
                yield Prepared(Sample(sid, Path(f"/data/{sid}.jpg")), {}, {"id": sid})

    backend = ReplayBackend(None, {"dir": tmp_path}, ModelIO(output_specs=lambda m: SPEC))
    with pytest.raises(ZooError, match="images 'cam' and 'cam.v2' both map to the outputs cam_<i>.bin"):
        Stream(Two(), [MemorySink()], backend=backend, decode=decode, batch_size=1, skip_errors=True).run()


def test_half_size_float32_is_an_error_unless_dump_dtype_says_float16(tmp_path):
    p = tmp_path / "a_0.bin"
    write_bin(p, np.array([1.5, 2.5, -3.0], np.float16))
    spec = TensorSpec("out", (3,), "float32")
    with pytest.raises(InputError, match=r"is 6 bytes.*needs 12") as err:
        read_bin(p, spec)
    assert "dump_dtype=float16" in str(err.value)
    np.testing.assert_array_equal(read_bin(p, spec, "float16"), [1.5, 2.5, -3.0])


def test_garbage_and_lying_npy_files_are_input_errors(tmp_path):
    spec = TensorSpec("out", (3,))
    (tmp_path / "g_0.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"g_0.npy: not a valid .npy"):
        read_bin(tmp_path / "g_0.npy", spec)
    header = np.lib.format.header_data_from_array_1_0(np.zeros(3, np.float32))
    header["shape"] = (1 << 40,)
    with open(tmp_path / "h_0.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
    with pytest.raises(InputError, match="announces"):
        read_bin(tmp_path / "h_0.npy", spec)
    np.save(tmp_path / "o_0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="Python objects"):
        read_bin(tmp_path / "o_0.npy", spec)


def test_npy_outputs_must_hold_real_numbers_in_the_spec_shape(tmp_path):
    """Before: only the element count was checked, so an HWC array was reshaped into CHW (scrambled
    maps scored as if right) and bool, complex or string arrays were cast."""
    spec = TensorSpec("hm", (1, 4, 6))
    chw = np.arange(24, dtype=np.float32).reshape(1, 4, 6)
    for name, arr in (("same", chw), ("batch", chw[None]), ("f16", chw.astype(np.float16)),
                      ("int", chw.astype(np.int32)), ("flat_ones", chw.reshape(4, 6))):
        np.save(tmp_path / f"{name}_0.npy", arr)
        np.testing.assert_array_equal(read_bin(tmp_path / f"{name}_0.npy", spec), chw)
    for name, arr, text in (("hwc", chw.transpose(1, 2, 0), r"has shape \(4, 6, 1\); tensor hm is \(1, 4, 6\)"),
                            ("swapped", chw.reshape(1, 6, 4), r"has shape \(1, 6, 4\)"),
                            ("flat", chw.reshape(-1), r"has shape \(24,\)"),
                            ("bool", chw > 3, "holds bool values"),
                            ("complex", chw.astype(np.complex64), "holds complex64 values"),
                            ("text", chw.astype("U8"), "holds <U8 values")):
        np.save(tmp_path / f"{name}_0.npy", arr)
        with pytest.raises(InputError, match=rf"{name}_0.npy: {text}"):
            read_bin(tmp_path / f"{name}_0.npy", spec)


def test_a_npy_header_of_the_wrong_shape_or_dtype_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    """Before: a sparse .npy whose header announced 600M float32 values was np.load-ed whole (2.4 GB RSS, 30 s)
    and only then compared with the tensor's shape."""
    n = 600_000_000
    with open(tmp_path / "big_0.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
        f.truncate(f.tell() + n * 4)  # sparse: nothing on disk
    with open(tmp_path / "cplx_0.npy", "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": "<c16", "fortran_order": False, "shape": (1, 4, 6)})
        f.truncate(f.tell() + 24 * 16)
    loads = []
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a) or np.zeros((1, 152, 200), np.float32))
    spec = TensorSpec("537", (1, 152, 200))
    with pytest.raises(InputError) as info:
        read_bin(tmp_path / "big_0.npy", spec)
    assert str(info.value) == (f"{tmp_path / 'big_0.npy'}: has shape ({n},); tensor 537 is (1, 152, 200) (a leading "
                               "batch axis of 1 may be added; the axes are not reordered)")
    with pytest.raises(InputError, match=r"cplx_0.npy: holds complex128 values; tensor hm needs real numbers"):
        read_bin(tmp_path / "cplx_0.npy", TensorSpec("hm", (1, 4, 6)))
    assert loads == []


def test_replay_backend_reads_a_dump_with_file_dtype_and_pads(tmp_path):
    for i in range(3):
        write_bin(tmp_path / f"img{i}_0.bin", np.full(3, i, np.float16))
    backend = ReplayBackend(None, {"dir": tmp_path, "dump_dtype": "float16"}, ModelIO(output_specs=lambda m: SPEC))
    batch = Batch(ids=["img1", "img2"], inputs={}, metas=[{}, {}])
    (out,) = backend.infer(batch)
    assert out.dtype == np.float32 and out[:, 0].tolist() == [1, 2]


def test_replay_backend_reads_exact_files_in_place_and_names_a_wrong_sized_one(tmp_path):
    for i in range(3):
        write_bin(tmp_path / f"img{i}_0.bin", np.arange(3, dtype=np.float32) + i)
    backend = ReplayBackend(None, {"dir": tmp_path}, ModelIO(output_specs=lambda m: SPEC))
    padded = Batch(ids=["img2", "img0", "img0"], inputs={"x": np.zeros((3, 1))}, metas=[{}, {}, {}], n_valid=2)
    (out,) = backend.infer(padded)
    assert out.tolist() == [[2, 3, 4], [0, 1, 2], [0, 1, 2]]  # the padding repeats the last row
    (tmp_path / "img1_0.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    with pytest.raises(InputError, match=r"img1_0.bin"):
        backend.infer(Batch(ids=["img0", "img1"], inputs={}, metas=[{}, {}]))


def _error_within(seconds: float, fn, fifo: Path) -> Exception | None:
    """What ``fn()`` raises, run in a thread; fails the test if it blocks on ``fifo`` (then unblocked)."""
    done: list[Exception | None] = []

    def call() -> None:
        try:
            fn()
            done.append(None)
        except Exception as exc:
            done.append(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    while t.is_alive():  # unblock every open() of the FIFO so the test process can end
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(0.1)
    assert done and done[0] is not None, f"blocked on the FIFO {fifo} (or raised nothing)"
    return done[0]


def test_a_dump_output_that_is_a_fifo_is_refused_unopened(tmp_path):
    """A FIFO named like an output blocked the replay backend's open() forever (postprocess hung)."""
    write_bin(tmp_path / "img0_0.bin", np.zeros(3, np.float32))
    os.mkfifo(tmp_path / "img1_0.bin")
    backend = ReplayBackend(None, {"dir": tmp_path}, ModelIO(output_specs=lambda m: SPEC))
    exc = _error_within(10, lambda: backend.infer(Batch(ids=["img0", "img1"], inputs={}, metas=[{}, {}])),
                        tmp_path / "img1_0.bin")
    assert isinstance(exc, InputError)
    assert str(exc) == f"{tmp_path / 'img1_0.bin'}: output file is a FIFO (named pipe), not a regular file"


@pytest.mark.parametrize("name", ["x.bin", "x.npy"])
def test_a_bin_input_or_npy_that_is_a_fifo_is_refused_unopened(tmp_path, name):
    os.mkfifo(tmp_path / name)
    # a 0-byte FIFO even "matches" a 0-size tensor
    exc = _error_within(10, lambda: read_bin(tmp_path / name, TensorSpec("x", (0,))), tmp_path / name)
    assert isinstance(exc, InputError) and f"{name}: file is a FIFO (named pipe)" in str(exc)


def test_read_bin_names_the_true_size_of_a_shape_beyond_int64(tmp_path):
    write_bin(tmp_path / "x.bin", np.zeros(4, np.float32))
    with pytest.raises(InputError, match=f"needs {2**64 * 4}$"):  # np.prod wrapped around to "needs 0"
        read_bin(tmp_path / "x.bin", TensorSpec("x", (2**32, 2**32, 1)))


def test_meta_jsonl_errors_name_the_file_and_line(tmp_path):
    good = '{"id": "a", "meta": {}, "inputs": {"x": {"shape": [3], "dtype": "float32"}}}\n'
    specs = [TensorSpec("x", (3,))]
    cases = {
        "torn middle": (good + '{"id": "b", "me\n' + good.replace('"a"', '"c"'), "line 2 is not valid JSON"),
        "array line": (good + "[1, 2]\n", "line 2 is not a JSON object"),
        "no id": (good + '{"meta": {}, "inputs": {}}\n', 'line 2 has no "id"'),
        "duplicate": (good + good, "appears twice"),
        "escape": (good.replace('"a"', '"../../x"'), "unsafe id"),
        "torn tail": (good + '{"id": "b"', "incomplete line"),
        "crc32 text": (good.replace('"float32"}', '"float32", "crc32": "abc"}'),
                       r"""line 1 \('a'\): input 'x' has a "crc32" that is not an integer: 'abc'"""),
        "negative shape": (good.replace("[3]", "[-1, -64, 64]"), r"input 'x' needs a shape \(a list of sizes >= 0\)"),
        "infinite shape": (good.replace("[3]", "[1e999]"), "needs a shape"),
        "float shape": (good.replace("[3]", "[1.5]"), "needs a shape"),
        "shape text": (good.replace("[3]", '"abc"'), "needs a shape"),
        "input a list": (good.replace('{"shape": [3], "dtype": "float32"}', "[3]"), "needs a shape"),
    }
    for text, msg in cases.values():
        (tmp_path / "meta.jsonl").write_text(text)
        with pytest.raises(InputError, match=msg):
            list_bin_inputs(tmp_path, specs)


def test_a_plugins_own_meta_keys_named_like_scales_pass_the_core_check():
    """The core checks only ``s`` (the letterbox scale): a third-party plugin's ``scale_mode`` / ``scale_offset`` /
    ``scale_idx`` are its own (a rule refusing every ``scale_<name>`` that is not positive failed such plugins on
    every image); CenterFace checks its ``scale_h`` / ``scale_w`` in its decode."""
    from zoo_core.pipeline.sources import meta_problem

    assert meta_problem({"scale_mode": "bilinear", "scale_offset": [0.0, -1.5], "scale_idx": 0,
                         "scale_factors": {"x": 1.0}, "s": 512.0}) is None


@pytest.mark.parametrize("meta, text", [
    ('{"s": NaN, "c": [1.0, 2.0]}', "meta['s'] is nan"),
    ('{"s": Infinity}', "meta['s'] is inf"),
    ('{"c": [1.0, -Infinity]}', "meta['c'][1] is -inf"),
    ('{"scale_xy": [NaN, 1.0]}', "meta['scale_xy'][0] is nan"),
    ('{"deep": {"x": [0, NaN]}}', "meta['deep']['x'][1] is nan"),
    # before: a 401-digit "s" / "c" crashed the model's postprocess hook (OverflowError blamed on the plugin)
    ('{"s": 1' + "0" * 400 + '}', "meta['s'] is 100000...(401 digits), beyond the float range"),
    ('{"c": [-1' + "0" * 400 + ', 2.0]}', "meta['c'][0] is -100000...(401 digits), beyond the float range"),
    ('{"orig_hw": [1' + "0" * 400 + ', 640]}', "meta['orig_hw'][0] is 100000...(401 digits), beyond the float"),
    ('{"s": 0.0}', "meta['s'] 0.0 is not a positive letterbox scale"),
    ('{"s": [512.0, -512.0]}', "meta['s'] [512.0, -512.0] is not a positive letterbox scale"),
    ('{"s": "640"}', "meta['s'] '640' is not a positive letterbox scale"),
    ('{"orig_hw": [0, 640]}', "meta['orig_hw'] [0, 640] is not a list of positive integers"),
    ('{"input_shape": [3, 512.5, 512]}', "is not a list of positive integers"),
])
def test_meta_jsonl_values_that_would_map_outputs_to_nan_or_nonsense_are_refused(tmp_path, meta, text):
    """Before: a tampered "s": NaN scored AP 0.51 instead of 1.0 with NaN boxes (and stage.score=false wrote a
    detections.json holding NaN), exit 0."""
    good = '{"id": "a", "meta": {"s": 640.0, "c": [320.0, 240.0], "orig_hw": [480, 640]}, ' \
           '"inputs": {"x": {"shape": [3], "dtype": "float32"}}}\n'
    bad = '{"id": "b", "meta": ' + meta + ', "inputs": {"x": {"shape": [3], "dtype": "float32"}}}\n'
    (tmp_path / "meta.jsonl").write_text(good + bad)
    with pytest.raises(InputError) as info:
        list_bin_inputs(tmp_path, [TensorSpec("x", (3,))])
    assert str(info.value).startswith(f"{tmp_path / 'meta.jsonl'}: line 2 ('b'): ")
    assert text in str(info.value) and info.value.exit_code == 2
    (tmp_path / "meta.jsonl").write_text(good)
    assert [it.meta["s"] for it in list_bin_inputs(tmp_path, [TensorSpec("x", (3,))])] == [640.0]


def test_bin_inputs_that_disagree_with_their_record_are_input_errors(tmp_path):
    (tmp_path / "meta.jsonl").write_text(
        '{"id": "a", "meta": {}, "inputs": {"x": {"shape": [4], "dtype": "float32"}}}\n')
    write_bin(tmp_path / "a.bin", np.zeros(3, np.float32))
    items = list_bin_inputs(tmp_path, [TensorSpec("x", (4,))])
    with pytest.raises(InputError, match=r"a.bin: is 12 bytes"):
        Stream(BinInputSource(items), [MemorySink()], backend=EchoBackend()).run()


# -- resume verification ----------------------------------------------------------------------------

def test_ledger_trusts_only_files_with_their_recorded_size_and_crc(tmp_path):
    sink = OutputBinSink(tmp_path)
    Stream(ListSource(3), [sink], backend=EchoBackend(), keep_outputs=True).run()
    assert Ledger(tmp_path / "index.jsonl").verified() == {"img000", "img001", "img002"}
    (tmp_path / "img001_0.bin").unlink()
    p = tmp_path / "img002_0.bin"
    p.write_bytes(p.read_bytes()[:-4] + b"\x00\x00\x80\x7f")  # same size, other bytes
    assert Ledger(tmp_path / "index.jsonl").verified() == {"img000"}


@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
def test_a_ledger_planted_as_a_link_is_replaced_and_its_target_never_written(tmp_path, plant):
    """``infer resume=true`` over an ``outputs/index.jsonl`` that links elsewhere: the target keeps its bytes."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"ghp_SECRET")  # no newline: a "torn tail" the old code cut off the target
    out = tmp_path / "outputs"
    out.mkdir()
    ledger = Ledger(out / "index.jsonl")
    (ledger.path.symlink_to if plant == "symlink" else ledger.path.hardlink_to)(victim)
    assert ledger.verified() == set()
    sink = OutputBinSink(out, ledger)
    Stream(ListSource(2), [sink], backend=EchoBackend(), keep_outputs=True).run()
    assert victim.read_bytes() == b"ghp_SECRET"
    assert not ledger.path.is_symlink() and ledger.path.stat().st_nlink == 1
    assert Ledger(out / "index.jsonl").verified() == {"img000", "img001"}


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_appending_to_a_run_list_refuses_a_link_or_a_fifo_untouched(tmp_path, plant):
    from zoo_core.runs.resume import open_for_append

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"line\ntorn")
    p = tmp_path / "meta.jsonl"
    if plant == "symlink":
        p.symlink_to(victim)
    elif plant == "hardlink":
        p.hardlink_to(victim)
    else:
        os.mkfifo(p)
    reason = {"symlink": "is a symbolic link", "hardlink": "has 2 hard links", "fifo": "is not a regular file"}[plant]
    with pytest.raises(ZooError, match=f"meta.jsonl: {reason}"):
        open_for_append(p)
    assert victim.read_bytes() == b"line\ntorn"


@pytest.mark.parametrize("files", [[[1]], "abc", [["a_0.bin", "12", 0]], [[None, 1, 2]], 5])
def test_a_ledger_line_with_malformed_files_is_redone_not_a_crash(tmp_path, caplog, files):
    sink = OutputBinSink(tmp_path)
    Stream(ListSource(2), [sink], backend=EchoBackend(), keep_outputs=True).run()
    with (tmp_path / "index.jsonl").open("a") as f:
        f.write(json.dumps({"id": "img001", "files": files}) + "\n")
    lines = (tmp_path / "index.jsonl").read_text().splitlines()
    (tmp_path / "index.jsonl").write_text("\n".join([lines[2], lines[0]]) + "\n")  # only img001's bad line
    assert Ledger(tmp_path / "index.jsonl").verified() == {"img000"}
    assert 'line 1: "files" is not a list of [path, bytes, crc32]' in caplog.text


@pytest.mark.parametrize("inputs", [["x"], {"x": 5}, "abc"])
def test_a_meta_jsonl_line_of_the_wrong_shape_is_redone_by_preprocess_resume(tmp_path, caplog, inputs):
    from zoo_core.stages.preprocess_stage import verified_records

    write_bin(tmp_path / "a.bin", np.zeros(3, np.float32))
    good = {"id": "a", "meta": {}, "inputs": {"x": {"shape": [3], "dtype": "float32", "bytes": 12,
                                                    "crc32": crc32(np.zeros(3, np.float32).tobytes())}}}
    (tmp_path / "meta.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"id": "b", "inputs": inputs}) + "\n")
    assert [r["id"] for r in verified_records(tmp_path)] == ["a"]
    assert "meta.jsonl: line 2 is not a record as zoo writes it" in caplog.text


# -- the run lock -----------------------------------------------------------------------------------

def test_a_locked_root_refuses_a_second_run_naming_the_holder(tmp_path):
    with RunLock(tmp_path, "eval"), pytest.raises(ZooError, match=rf"in use by another zoo run \(pid {os.getpid()}"):
        RunLock(tmp_path, "eval").acquire()
    with RunLock(tmp_path, "perf"):  # released: free again
        pass


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    proc = subprocess.Popen(["python3", "-c", "import time; time.sleep(60)"])
    (tmp_path / ".zoo.lock").write_text(f'{{"pid": {proc.pid}, "stage": "eval"}}\n')  # no flock held
    proc.kill()
    proc.wait()
    with caplog.at_level("INFO", logger="zoo"), RunLock(tmp_path, "eval") as lock:
        assert f'"pid": {os.getpid()}' in lock.path.read_text()
    assert f"taking over the lock of pid {proc.pid}" in caplog.text


def test_a_lock_held_by_another_process_is_refused(tmp_path):
    code = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
            f"from zoo_core.runs.lock import RunLock; l = RunLock({str(tmp_path)!r}, 'eval'); l.acquire(); "
            f"print('locked', flush=True); time.sleep(30)")
    proc = subprocess.Popen([os.sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ZooError, match=rf"pid {proc.pid}, stage=eval"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.1)
    with RunLock(tmp_path):  # the kernel dropped the dead holder's lock
        pass


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    root = tmp_path / "run"
    root.mkdir()
    (root / ".zoo.lock").symlink_to(victim)
    with pytest.raises(ZooError, match="lock file is a symbolic link"):
        RunLock(root, "eval").acquire()
    assert victim.read_text() == "precious"
    (root / ".zoo.lock").unlink()
    (root / ".zoo.lock").mkdir()
    with pytest.raises(ZooError, match="lock file is a directory"):
        RunLock(root, "eval").acquire()
    (root / ".zoo.lock").rmdir()
    (root / ".zoo.lock").hardlink_to(victim)  # O_NOFOLLOW does not see a hard link
    with pytest.raises(ZooError, match=r"\.zoo\.lock: the run's lock file has 2 hard links"):
        RunLock(root, "eval").acquire()
    assert victim.read_text() == "precious"
    (root / ".zoo.lock").unlink()
    (root / ".zoo.lock").write_text("[" * 5000)  # a holder record too deep to parse is no record
    with RunLock(root, "eval"):
        pass


def test_a_lock_held_for_a_stage_is_entered_only_by_that_stage_in_that_thread(tmp_path):
    from zoo_core.runs.lock import held_for_stage

    with held_for_stage(tmp_path, "eval"):
        with RunLock(tmp_path, "eval", reenter=True):  # the stage runner inside `zoo run`
            pass
        with pytest.raises(ZooError, match="in use by another zoo run"):
            RunLock(tmp_path, "eval").acquire()
        errors = []

        def other_thread():
            try:
                RunLock(tmp_path, "eval", reenter=True).acquire()
            except ZooError as exc:
                errors.append(exc)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert len(errors) == 1
    with RunLock(tmp_path, "eval", reenter=True):  # released: a plain acquire again
        pass


def test_clearing_refuses_a_directory_that_is_a_link(tmp_path):
    from zoo_core.runs.layout import clear_dir

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "important.txt").write_text("keep")
    root = tmp_path / "run"
    root.mkdir()
    (root / "eval").symlink_to(elsewhere)
    with pytest.raises(ZooError, match="is a symbolic link"):
        clear_dir(root / "eval")
    assert (elsewhere / "important.txt").read_text() == "keep"
    (root / "outputs").mkdir()
    (root / "outputs" / "link").symlink_to(elsewhere)
    clear_dir(root / "outputs")  # a link inside is removed, not followed
    assert not (root / "outputs" / "link").exists() and (elsewhere / "important.txt").exists()


@pytest.mark.parametrize("plant", ["zoo.log hardlink", ".hydra/config.yaml symlink", ".hydra/hydra.yaml hardlink"])
def test_files_hydra_rewrites_in_a_record_dir_are_refused_when_linked(tmp_path, plant):
    """Before: Hydra's ``mode: w`` truncated a hard-linked ``zoo.log``'s other file, and wrote the config through a
    symbolic link planted as ``.hydra/config.yaml``."""
    from zoo_core.cli.app import refuse_links

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    record = tmp_path / "run" / "eval"
    (record / ".hydra").mkdir(parents=True)
    name, kind = plant.split()
    link = record / name
    link.symlink_to(victim) if kind == "symlink" else link.hardlink_to(victim)
    reason = "is a symbolic link" if kind == "symlink" else "has 2 hard links"
    with pytest.raises(ZooError, match=f"{name}: {reason}"):
        refuse_links(record)
    assert victim.read_text() == "precious"
    link.unlink()
    (record / "zoo.log").write_text("an earlier run's log")  # plain files are fine
    refuse_links(record)


def test_workers_outlive_the_thread_that_created_them(fixture_cfg):
    """Linux's PR_SET_PDEATHSIG fires when the *thread* that forked a worker ends; the pool must not
    depend on it (a run once hung for 16 minutes that way)."""
    from zoo_core.pipeline.workers import WorkerPool
    from zoo_core.plugins.manager import ZooPluginManager

    hooks = ZooPluginManager().hooks_for("fixture")
    made: list = []
    t = threading.Thread(target=lambda: made.append(WorkerPool(hooks, fixture_cfg, 2)))
    t.start()
    t.join()
    pool = made[0]
    try:
        time.sleep(1.0)
        pids = pool.pids()
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, 0)  # still alive
        samples = list(hooks.dataset(cfg=fixture_cfg).samples())[:6]
        got = [p.sample.id for p in pool.prepared(samples, window=4)]
        assert got == [s.id for s in samples]
    finally:
        pool.close()


def test_workers_exit_when_their_parent_is_killed(tmp_path, cache_dir):
    code = ("import os, sys, time\n"
            "from zoo_core.config.validate import compose\n"
            "from zoo_core.pipeline.workers import WorkerPool\n"
            "from zoo_core.plugins.manager import ZooPluginManager\n"
            "cfg = compose(['model=fixture'])\n"
            "pool = WorkerPool(ZooPluginManager().hooks_for('fixture'), cfg, 2)\n"
            "time.sleep(0.5)\n"
            "print(' '.join(map(str, pool.pids())), flush=True)\n"
            "time.sleep(60)\n")
    env = {**os.environ, "ZOO_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen([os.sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 5
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.1)
        alive = [p for p in pids if _alive(p)]
    assert not alive, f"workers {alive} outlived their killed parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def small_shm(tmp_path, monkeypatch):
    """A 64 MB tmpfs as the shared-memory dir (Docker's default /dev/shm size)."""
    d = tmp_path / "shm"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    monkeypatch.setenv("ZOO_SHM_DIR", str(d))
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_a_small_dev_shm_falls_back_to_the_pipe_instead_of_sigbus(small_shm, fixture_cfg):
    from zoo_core.pipeline.workers import SlotRing, WorkerPool
    from zoo_core.plugins.manager import ZooPluginManager

    with pytest.raises(OSError):
        SlotRing(6)  # 96 MB cannot be reserved in 64 MB: refused now, not a SIGBUS later
    assert not list(small_shm.iterdir())
    hooks = ZooPluginManager().hooks_for("fixture")
    with WorkerPool(hooks, fixture_cfg, 2) as pool:
        assert pool.ring is None
        samples = list(hooks.dataset(cfg=fixture_cfg).samples())
        got = list(pool.prepared(samples, window=4))
    assert [p.sample.id for p in got] == [s.id for s in samples] and all(p.error is None for p in got)
    ring = SlotRing(2)  # 32 MB fits: reserved for real, not a sparse file
    try:
        assert os.stat(ring.path).st_blocks * 512 >= ring.size
    finally:
        ring.close()


# -- stages in-process (RunContext + run_stage, the fixture model, oracle / onnxruntime backends) ---------

def _ctx(fixture_cfg, root, stage="eval", **over):
    from omegaconf import OmegaConf, open_dict

    from zoo_core.plugins.manager import ZooPluginManager
    from zoo_core.runs.context import RunContext

    cfg = fixture_cfg.copy()
    with open_dict(cfg):
        cfg.stage.name = stage
        cfg.backend.name = over.pop("backend", "oracle")
        cfg.num_workers = 0
        for k, v in over.items():
            OmegaConf.update(cfg, k, v, merge=False)
    return RunContext(cfg, ZooPluginManager(), root)


def test_backends_are_built_from_a_file_and_a_dict(fixture_onnx):
    from zoo_core.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(fixture_onnx, {"intra_op_threads": 1})
    x = np.zeros((2, 1, 64, 64), np.float32)
    x[1, 0, 10:20, 10:20] = 1.0
    (mask,) = backend.infer(Batch(ids=["a", "b"], inputs={"image": x}, metas=[{}, {}]))
    assert mask.shape == (2, 1, 64, 64) and mask[0].max() < 0.01 and mask[1, 0, 15, 15] > 0.99
    assert backend.describe()["model_file"] == str(fixture_onnx)


def test_a_stage_clears_what_an_earlier_run_left_unless_resuming(fixture_cfg, tmp_path):
    from zoo_core.runs.run_stage import run_stage

    run_stage(_ctx(fixture_cfg, tmp_path, save_outputs=True))
    assert len(list((tmp_path / "outputs").glob("*_0.bin"))) == 12
    (tmp_path / "eval" / "leftover.txt").write_text("old")
    res = run_stage(_ctx(fixture_cfg, tmp_path, save_outputs=True, **{"dataset.limit": 5}))
    assert res["images"] == 5 and len(list((tmp_path / "outputs").glob("*_0.bin"))) == 5
    assert not (tmp_path / "eval" / "leftover.txt").exists()
    res = run_stage(_ctx(fixture_cfg, tmp_path, save_outputs=True, resume=True, **{"dataset.limit": 5}))
    assert res["images"] == 5 and json.loads((tmp_path / "eval" / "perf.json").read_text())["resumed_images"] == 5


def test_an_eval_whose_dataset_lists_one_sample_object_twice_fails_without_metrics(fixture_cfg, tmp_path):
    """Before: the twice-listed image was scored twice and eval exited 0 with metrics over 13 of 12 images."""
    from zoo_core.runs.run_stage import run_stage

    ctx = _ctx(fixture_cfg, tmp_path)
    samples = list(ctx.dataset.samples())
    ctx.__dict__["samples"] = [*samples[:7], samples[3], *samples[7:]]
    with pytest.raises(InputError, match=rf"the id '{samples[3].id}' is listed twice, both times for "
                                         rf"{re.escape(str(samples[3].path))}"):
        run_stage(ctx)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def _spoil_preprocess(monkeypatch, ctx, bad_id: str, spoil) -> None:
    """The fixture plugin's preprocess, with ``spoil(inputs, meta)`` applied to image ``bad_id``'s return."""
    real = ctx.hooks._call

    def call(hook, *args, **kwargs):
        out = real(hook, *args, **kwargs)
        if hook == "preprocess" and kwargs["sample"].id == bad_id:
            out = spoil(*out)
        return out

    monkeypatch.setattr(ctx.hooks, "_call", call)


_NAN_META = (lambda inputs, meta: (inputs, {**meta, "scale_xy": [float("nan"), 1.0]}),
             r"must return a meta that infer and postprocess can read back from inputs/meta.jsonl \(finite numbers, "
             r"positive sizes\), got meta\['scale_xy'\]\[0\] is nan")
_F64_INPUT = (lambda inputs, meta: ({"image": inputs["image"].astype(np.float64)}, meta),
              r"must return inputs matching the model's input_spec \(names, dtypes, ranks; no batch dimension\), "
              r"got input 'image' float64 \(1, 64, 64\); input_spec says float32 \(1, 64, 64\)")


@pytest.mark.parametrize(("spoil", "text"), [_NAN_META, _F64_INPUT], ids=["nan_meta", "float64_input"])
@pytest.mark.parametrize("skip", [False, True])
def test_a_preprocess_return_infer_could_not_use_is_refused_at_preprocess_naming_the_image(
        fixture_cfg, tmp_path, monkeypatch, spoil, text, skip):
    """Before: a NaN in the meta was written to meta.jsonl as `"scale_xy": [NaN, 1.0]` (not JSON) and infer blamed
    the file ("this file was changed"); a float64 input was written as a float64 .bin and eval / infer stopped with
    an onnxruntime error naming the model file (with on_error=skip too). Both exited 0 at stage=preprocess."""
    from zoo_core.runs.run_stage import run_stage

    ctx = _ctx(fixture_cfg, tmp_path, "preprocess", on_error="skip" if skip else "fail", allow_skips=True)
    bad = ctx.samples[4]
    _spoil_preprocess(monkeypatch, ctx, bad.id, spoil)
    want = rf"plugin zoo-fixture \(model fixture\): hook 'preprocess' \(image {bad.path}\) {text}$"
    if not skip:
        with pytest.raises(ZooError, match=want):
            run_stage(ctx)
        return
    res = run_stage(ctx)
    assert [s["id"] for s in res["skipped"]] == [bad.id]
    assert re.search(want, res["skipped"][0]["reason"])
    lines = (tmp_path / "inputs" / "meta.jsonl").read_text().splitlines()
    recs = [json.loads(line, parse_constant=lambda c: pytest.fail(f"meta.jsonl holds {c}")) for line in lines]
    assert len(recs) == len(ctx.samples) - 1 and bad.id not in {r["id"] for r in recs}
    assert not list((tmp_path / "inputs").glob(f"{bad.id}*"))
    assert {r["inputs"]["image"]["dtype"] for r in recs} == {"float32"}


def test_save_outputs_is_part_of_the_resume_fingerprint(fixture_cfg, tmp_path):
    from zoo_core.runs.run_stage import run_stage

    run_stage(_ctx(fixture_cfg, tmp_path))
    with pytest.raises(ZooError, match="cannot resume: save_outputs changed"):
        run_stage(_ctx(fixture_cfg, tmp_path, save_outputs=True, resume=True))
    assert json.loads((tmp_path / "eval" / "run.json").read_text())["status"] == "failed"


def _enospc_on_run_json(monkeypatch, statuses):
    """run.json's atomic write fails with ENOSPC for a record of one of ``statuses`` (a full disk), in-process."""
    import errno

    import zoo_core.runs.records as records

    real = records.write_json

    def write_json(path, obj, *args, **kwargs):
        if Path(path).name == "run.json" and obj.get("status") in statuses:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, obj, *args, **kwargs)

    monkeypatch.setattr(records, "write_json", write_json)


def test_a_run_whose_ok_record_cannot_be_written_is_recorded_as_failed(fixture_cfg, tmp_path, monkeypatch):
    """Before: ENOSPC while run.json "ok" was written exited 2 with a complete metrics.json beside a run.json
    still saying "running" (the "ok" write was outside the failure handling)."""
    from zoo_core.runs.run_stage import run_stage

    _enospc_on_run_json(monkeypatch, {"ok"})
    with pytest.raises(OSError, match="No space left on device"):
        run_stage(_ctx(fixture_cfg, tmp_path))
    rec = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert rec["status"] == "failed" and "No space left on device" in rec["error"]
    assert str(tmp_path / "eval" / "run.json") in rec["error"] and rec["config"]["model"]["name"] == "fixture"


@pytest.mark.parametrize("fails", ["stage", "ok record"])
def test_a_failure_record_on_a_full_disk_is_written_over_the_running_one(fixture_cfg, tmp_path, monkeypatch, fails):
    """Before: with no room for any run.json but "running", the failure handler removed run.json, then could not
    write the failed record: no run.json at all (and, for the "ok" write, metrics.json beside "running"). Now the
    partial records go and a minimal failed record is written in place over the "running" one."""
    import errno

    import zoo_core.stages as stages
    from zoo_core.runs.run_stage import run_stage

    if fails == "stage":
        real_get = stages.get_stage

        def stage(ctx):
            real_get("eval")(ctx)  # metrics.json written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(ctx.record("report.json")))

        monkeypatch.setattr(stages, "get_stage", lambda name: stage)
    _enospc_on_run_json(monkeypatch, {"ok", "failed"})
    with pytest.raises(OSError, match="No space left on device"):
        run_stage(_ctx(fixture_cfg, tmp_path))
    rec = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert rec["status"] == "failed" and rec["partial_records_removed"] is True and rec["stage"] == "eval"
    assert "No space left on device" in rec["error"] and "minimal_record" in rec
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["run.json"]  # metrics.json removed


def test_infer_refuses_an_inputs_state_json_it_cannot_read_instead_of_reading_the_inputs_as_a_dump(fixture_cfg,
                                                                                                      tmp_path):
    """Before: inputs/state.json saying ``complete: false`` with one stray ``,`` did not parse, was read as no state
    at all, and infer ran on the partial set with exit 0 (the valid file: exit 2). Now it is an error naming it."""
    from zoo_core.runs.run_stage import run_stage

    run_stage(_ctx(fixture_cfg, tmp_path, "preprocess"))
    state = tmp_path / "inputs" / "state.json"
    text = json.dumps({**json.loads(state.read_text()), "complete": False})
    state.write_text(text[:-1] + ",}")
    with pytest.raises(ZooError) as info:
        run_stage(_ctx(fixture_cfg, tmp_path, "infer"))
    assert str(info.value).startswith(f"{state}: unreadable state file: not JSON (")
    assert info.value.exit_code == 2 and "stage that writes inputs/ again" in info.value.hint
    assert not (tmp_path / "outputs" / "state.json").exists()


def test_infer_refuses_the_inputs_of_an_unfinished_preprocess_unless_allow_skips(fixture_cfg, tmp_path, caplog):
    """Before: stage=infer read whatever .bin an interrupted preprocess (inputs/state.json complete: false) had
    written, said nothing and marked its outputs complete. Now it refuses naming inputs/state.json; with
    allow_skips=true it infers them, saying so in run.json and outputs/state.json, and postprocess's refusal of
    the images never preprocessed points at the preprocess run."""
    from zoo_core.runs.run_stage import run_stage

    run_stage(_ctx(fixture_cfg, tmp_path, "preprocess"))
    inputs = tmp_path / "inputs"
    lines = (inputs / "meta.jsonl").read_text().splitlines(keepends=True)
    (inputs / "meta.jsonl").write_text("".join(lines[:5]))  # killed after 5 of its 12 images
    state = json.loads((inputs / "state.json").read_text())
    (inputs / "state.json").write_text(json.dumps({**state, "complete": False}))

    with pytest.raises(ZooError) as info:
        run_stage(_ctx(fixture_cfg, tmp_path, "infer"))
    assert str(info.value).startswith(f"{inputs / 'state.json'}: the preprocess run that wrote these inputs did not "
                                      "finish (complete: false): 5 input(s) were written")
    assert "stage=preprocess resume=true" in info.value.hint and "allow_skips=true" in info.value.hint
    assert not (tmp_path / "outputs" / "state.json").exists()
    assert json.loads((tmp_path / "infer" / "run.json").read_text())["status"] == "failed"

    with caplog.at_level("WARNING", logger="zoo"):
        res = run_stage(_ctx(fixture_cfg, tmp_path, "infer", allow_skips=True))
    assert res["images"] == 5 and res["partial_inputs"] is True
    assert "allow_skips=true: inferring those only" in caplog.text
    assert json.loads((tmp_path / "infer" / "run.json").read_text())["partial_inputs"]["inputs"] == 5
    out_state = json.loads((tmp_path / "outputs" / "state.json").read_text())
    assert out_state["complete"] is True and out_state["inputs_complete"] is False

    with pytest.raises(ZooError, match="7 of the 12 image") as info:
        run_stage(_ctx(fixture_cfg, tmp_path, "postprocess"))
    assert info.value.hint.startswith("the preprocess run that wrote the inputs did not finish")


def test_run_stage_refuses_a_locked_root(fixture_cfg, tmp_path):
    from zoo_core.runs.run_stage import run_stage

    with RunLock(tmp_path, "eval"), pytest.raises(ZooError, match="in use by another zoo run"):
        run_stage(_ctx(fixture_cfg, tmp_path))
    assert not (tmp_path / "eval").exists()


def test_stale_temp_files_of_dead_writers_are_swept(fixture_cfg, tmp_path):
    from zoo_core.runs.run_stage import run_stage

    proc = subprocess.Popen(["python3", "-c", "pass"])
    proc.wait()
    (tmp_path / "model").mkdir(parents=True)
    stale = tmp_path / "model" / f".big.onnx.{proc.pid}.abcd1234.tmp"
    stale.write_bytes(b"x" * 100)
    mine = tmp_path / f".live.json.{os.getpid()}.abcd.tmp"
    mine.write_bytes(b"x")
    run_stage(_ctx(fixture_cfg, tmp_path))
    assert not stale.exists() and mine.exists()


def test_atomic_writes_honour_the_umask(tmp_path):
    from zoo_core.api.atomic import write_text

    old = os.umask(0o022)
    try:
        assert oct(os.stat(write_text(tmp_path / "a.json", "{}")).st_mode & 0o777) == oct(0o644)
        os.umask(0o002)
        assert oct(os.stat(write_text(tmp_path / "b.json", "{}")).st_mode & 0o777) == oct(0o664)
    finally:
        os.umask(old)


def test_objects_older_than_the_stream_are_out_of_the_collectors_reach_while_it_runs():
    import gc

    from zoo_core.pipeline.memory import long_lived_frozen

    class Probe(EchoBackend):
        def infer(self, batch):
            frozen.append(gc.get_freeze_count())
            return super().infer(batch)

    old = [{"keep": [i]} for i in range(5000)]  # alive before the stream: a full pass would walk them
    frozen: list[int] = []
    assert gc.get_freeze_count() == 0
    Stream(ListSource(5), [MemorySink()], backend=Probe(), decode=decode, batch_size=2).run()
    assert len(frozen) == 3 and min(frozen) >= len(old)
    assert gc.get_freeze_count() == 0  # put back afterwards
    with long_lived_frozen():
        with long_lived_frozen():
            pass
        assert gc.get_freeze_count() >= len(old)  # an inner stream's end leaves the outer one's freeze
    assert gc.get_freeze_count() == 0


# -- the detections store -------------------------------------------------------------------------

def test_detection_chunks_that_do_not_hold_what_zoo_writes_are_refused(tmp_path):
    """Before: a negative count shifted every later image's boxes (AP 1.0 -> 0.45, exit 0), counts
    adding up to more than the boxes cut images short, and shape errors surfaced as tracebacks."""
    from zoo_core.api.types import Detections
    from zoo_core.runs.detstore import DetectionStore

    store = DetectionStore(tmp_path / "d")
    (tmp_path / "d").mkdir()
    rng = np.random.default_rng(3)
    dets = {f"im{i}": Detections(rng.random((n, 4)).astype(np.float32), rng.random(n).astype(np.float32),
                                 np.arange(n, dtype=np.int32), {"lm": rng.random((n, 10)).astype(np.float32)})
            for i, n in enumerate((3, 0, 2))}
    for sid, d in dets.items():
        store.add(sid, d)
    store.flush()
    back = store.load()
    assert list(back) == list(dets)
    for sid, d in dets.items():
        np.testing.assert_array_equal(back[sid].boxes, d.boxes)
        np.testing.assert_array_equal(back[sid].extras["lm"], d.extras["lm"])
    chunk = tmp_path / "d" / "chunk-000000.npz"
    with np.load(chunk) as z:
        good = {k: z[k] for k in z.files}
    for change, text in ((dict(counts=np.array([-3, 0, 8])), "a negative count"),
                         (dict(counts=np.array([3, 1, 2])), "add up to 6 boxes but the chunk holds 5"),
                         # before: the sums wrapped around to 5, and boxes went to the wrong images (AP 1.0 -> 0.46)
                         (dict(counts=np.array([2**64 - 1, 3, 3], np.uint64)),
                          f"add up to {2**64 + 5} boxes but the chunk holds 5"),
                         (dict(counts=np.array([2**63 - 1, 2**63 - 1, 7], np.int64)),
                          f"add up to {2**64 + 5} boxes but the chunk holds 5"),
                         (dict(ids=good["ids"][:2]), "2 ids but counts"),
                         (dict(boxes=good["boxes"][:, :3]), r"boxes must be float \(N, 4\)"),
                         (dict(scores=good["scores"][:4]), r"scores must be float \(5,\)"),
                         (dict(labels=good["labels"].astype(np.float32)), "labels must be integer"),
                         (dict(extra__lm=good["extra__lm"][:3]), "extra 'lm' must be float with 5 rows")):
        np.savez(chunk, **{**good, **change})
        with pytest.raises(ZooError, match=text) as err:
            store.load()
        assert str(chunk) in str(err.value)


def _one_chunk(tmp_path: Path) -> tuple[Path, dict]:
    from zoo_core.runs.detstore import DetectionStore

    store = DetectionStore(tmp_path / "d")
    (tmp_path / "d").mkdir()
    store.add("im0", Detections(np.array([[1, 2, 3, 4]], np.float32), np.array([0.9]), np.array([0])))
    store.add("im1", Detections(np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32), np.array([0.8, 0.7]),
                                np.array([79, 1])))
    store.flush()
    chunk = tmp_path / "d" / "chunk-000000.npz"
    with np.load(chunk) as z:
        return chunk, {k: z[k] for k in z.files}


@pytest.mark.parametrize("case, text", [
    ("nan_box", "detections of image 'im1': box 1 [5, nan, 7, 8] holds a NaN or an infinity"),
    ("inf_box", "detections of image 'im1': box 0 [1, 2, inf, 4] holds a NaN or an infinity"),
    ("nan_score", "detections of image 'im1': the score of box 0 is nan"),
    ("inf_score", "detections of image 'im0': the score of box 0 is -inf"),
    ("label_5000", "detections of image 'im1': the label of box 1 is 5000, not one of the model's classes 0..79"),
    ("label_80", "detections of image 'im1': the label of box 0 is 80, not one of the model's classes 0..79"),
    ("label_neg", "detections of image 'im0': the label of box 0 is -1, not one of the model's classes 0..79"),
])
def test_a_chunk_with_nan_boxes_or_scores_or_labels_outside_the_classes_is_refused_naming_it(tmp_path, case, text):
    """Before: NaN / inf boxes were scored (AP 0.33 / 0.46, exit 0), NaN scores failed faster-coco-eval with a
    ValueError (exit 1) and were scored 1.0 by pycocotools, labels out of range were a raw ValueError."""
    from zoo_core.runs.detstore import DetectionStore

    chunk, z = _one_chunk(tmp_path)
    assert set(DetectionStore(tmp_path / "d", num_classes=80).load()) == {"im0", "im1"}
    boxes, scores, labels = z["boxes"].copy(), z["scores"].copy(), z["labels"].copy()
    if case == "nan_box":
        boxes[2, 1] = np.nan
    elif case == "inf_box":
        boxes[1, 2] = np.inf
    elif case == "nan_score":
        scores[1] = np.nan
    elif case == "inf_score":
        scores[0] = -np.inf
    elif case == "label_5000":
        labels[2] = 5000
    elif case == "label_80":
        labels[1] = 80
    else:
        labels[0] = -1
    np.savez(chunk, **{**z, "boxes": boxes, "scores": scores, "labels": labels})
    with pytest.raises(ZooError) as info:
        DetectionStore(tmp_path / "d", num_classes=80).load()
    assert str(info.value).startswith(f"{chunk}: {text}") and info.value.hint


def test_without_a_class_count_a_chunk_needs_labels_of_zero_or_more_only(tmp_path):
    from zoo_core.runs.detstore import DetectionStore

    chunk, z = _one_chunk(tmp_path)
    np.savez(chunk, **{**z, "labels": np.array([0, 5000, 3], np.int32)})
    assert DetectionStore(tmp_path / "d").load()["im1"].labels.tolist() == [5000, 3]
    np.savez(chunk, **{**z, "labels": np.array([0, -2, 3], np.int32)})
    with pytest.raises(ZooError, match=r"'im1': the label of box 0 is -2, not a class index >= 0"):
        DetectionStore(tmp_path / "d").load()


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_chunk_that_is_a_fifo_or_a_device_is_refused_unopened(tmp_path, kind):
    """Before: np.load on a FIFO named chunk-000001.npz blocked stage=evaluate / resume=true forever."""
    from zoo_core.runs.detstore import DetectionStore

    _one_chunk(tmp_path)
    bad = tmp_path / "d" / "chunk-000001.npz"
    if kind == "fifo":
        os.mkfifo(bad)
    else:
        bad.symlink_to("/dev/zero")
    exc = _error_within(10, DetectionStore(tmp_path / "d").load, bad)
    shown = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    assert isinstance(exc, ZooError) and str(exc) == f"{bad}: detections chunk is {shown}, not a regular file"


def test_a_chunk_with_a_deflated_member_is_refused_before_anything_is_inflated(tmp_path):
    """Before: a small chunk with a deflated 64 MiB member was inflated (3 GB from a 2.9 MB chunk took 2.98 GB and
    17 s) before "not a detections chunk". zoo stores chunk members uncompressed (np.savez)."""
    import tracemalloc
    import zipfile

    from zoo_core.runs.detstore import DetectionStore

    chunk, _ = _one_chunk(tmp_path)
    with zipfile.ZipFile(chunk, "a", zipfile.ZIP_DEFLATED) as zf, zf.open("extra__pad.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (16 << 20,)})
        for _ in range(64):
            f.write(bytes(1 << 20))
    assert chunk.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ZooError) as err:
            DetectionStore(tmp_path / "d").load()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value) == (f"{chunk}: not a detections chunk as zoo writes it: its member 'extra__pad.npy' is "
                              "compressed (zip method 8), and zoo stores chunk members uncompressed; nothing was "
                              "decompressed")
    assert peak < 8 << 20, peak


def test_a_chunk_whose_members_declare_more_than_the_file_holds_is_refused(tmp_path):
    import struct

    from zoo_core.runs.detstore import DetectionStore

    chunk, _ = _one_chunk(tmp_path)
    b = bytearray(chunk.read_bytes())
    at = b.index(b"PK\x01\x02")  # the first central directory entry: its compressed and uncompressed sizes
    b[at + 20:at + 28] = struct.pack("<II", 3 << 30, 3 << 30)
    chunk.write_bytes(bytes(b))
    with pytest.raises(ZooError, match=rf"not a detections chunk as zoo writes it: its members declare \d+ bytes, "
                                       rf"more than the file's {len(b)}"):
        DetectionStore(tmp_path / "d").load()


@pytest.mark.parametrize("reader", ["outputs_state", "model_record"])
def test_json_files_that_are_fifos_are_not_opened(tmp_path, reader):
    """A FIFO in place of a dump's ``state.json`` (``outputs_dir=``, read by postprocess) or the ``.json`` record
    beside a model file blocked their read forever. Now neither is opened: the model record counts as no (trusted)
    record (it is rebuilt); the state file is an error naming it (read as absent, it switched the checks it feeds
    off)."""
    from zoo_core.runs.layout import artifact_state
    from zoo_core.runs.model_files import read_record

    fifo = tmp_path / ("state.json" if reader == "outputs_state" else "m.json")
    os.mkfifo(fifo)
    out: list = []

    def read() -> None:
        try:
            out.append(artifact_state(tmp_path) if reader == "outputs_state" else read_record(fifo))
        except ZooError as exc:
            out.append(str(exc).split("\n")[0])

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    blocked = t.is_alive()
    while t.is_alive():  # the old code: unblock its open() so the test can end
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(0.1)
    assert not blocked
    assert out == ([f"{fifo}: state file is a FIFO (named pipe), not a regular file"] if reader == "outputs_state"
                   else [{}])


def test_class_count_is_the_coco_category_mapping_and_unknown_otherwise():
    from omegaconf import OmegaConf

    from zoo_core.runs.detstore import class_count

    assert class_count(OmegaConf.create({"dataset": {"kind": "coco"}, "model": {"category_ids": None}})) == 80
    assert class_count(OmegaConf.create({"dataset": {"kind": "coco"}, "model": {"category_ids": [1, 3]}})) == 2
    assert class_count(OmegaConf.create({"dataset": {"kind": "widerface"}, "model": {}})) is None
    assert class_count(OmegaConf.create({"dataset": {"name": "squares"}, "model": {}})) is None


@pytest.mark.parametrize("boxes, scores, labels, text", [
    ([[1, 2, np.nan, 4]], [0.9], [0], "box 0 [1, 2, nan, 4] holds a NaN or an infinity"),
    ([[1, 2, 3, 4]], [np.inf], [0], "the score of box 0 is inf"),
    ([[1, 2, 3, 4]], [0.9], [3], "the label of box 0 is 3, not one of the model's classes 0..1"),
])
def test_the_detection_sink_refuses_detections_it_cannot_store_naming_the_image(tmp_path, boxes, scores, labels,
                                                                                  text):
    from zoo_core.pipeline.sinks import DetectionSink
    from zoo_core.pipeline.stream import Result
    from zoo_core.runs.detstore import DetectionStore

    store = DetectionStore(tmp_path / "d", num_classes=2)
    sink = DetectionSink(store)
    sample = Sample("img7", Path("/data/img7.jpg"))
    with pytest.raises(ZooError) as info:
        sink.write(Result(sample, {}, detections=Detections(np.array(boxes, np.float32), scores, labels)))
    assert str(info.value).startswith("/data/img7.jpg: postprocess gave detections zoo cannot store or score "
                                      f"(image 'img7'): {text}")
    sink.close()
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").glob("chunk-*.npz"))


def test_a_failure_record_that_finds_the_disk_full_makes_room_first(fixture_cfg, tmp_path, monkeypatch):
    """Before: on a full disk run.json kept saying "running" beside the stage's partial files."""
    import errno

    import zoo_core.runs.run_stage as rs
    import zoo_core.stages as stages

    def stage(ctx):
        (ctx.record_dir / "predictions").mkdir()
        (ctx.record_dir / "predictions" / "a.txt").write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(ctx.record_dir / "predictions" / "b.txt"))

    real = rs.write_run_record
    calls = []

    def write(ctx, extra=None):
        calls.append((extra or {}).get("status"))
        if calls.count("failed") == 1 and (extra or {}).get("status") == "failed":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(ctx, extra)

    monkeypatch.setattr(stages, "get_stage", lambda name: stage)
    monkeypatch.setattr(rs, "write_run_record", write)
    with pytest.raises(OSError, match="No space left"):
        rs.run_stage(_ctx(fixture_cfg, tmp_path))
    rec = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert rec["status"] == "failed" and rec["partial_records_removed"] and "No space left" in rec["error"]
    assert not (tmp_path / "eval" / "predictions").exists() and calls == ["running", "failed", "failed"]


class HungSource(ListSource):
    """Yields ``n`` items, then waits on a hung worker until :meth:`stop` (or the test's watchdog)."""

    def __init__(self, n: int):
        super().__init__(n, lie_total=n + 1)
        self.woken = threading.Event()

    def stop(self):
        self.woken.set()

    def items(self):
        yield from super().items()
        self.woken.wait()
        raise RuntimeError("the pool is shut down")


def _interrupt_after(seconds: float, release: threading.Event) -> None:
    """SIGINT to this process (the main thread raises KeyboardInterrupt) after ``seconds``; ``release``
    after 10 s, so code that does not end on Ctrl-C fails the test instead of hanging it."""
    threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT)).start()
    watchdog = threading.Timer(10, release.set)
    watchdog.daemon = True
    watchdog.start()


def test_ctrl_c_ends_a_stream_whose_source_waits_on_a_hung_worker():
    """Before, the device loop's KeyboardInterrupt waited in feed.join() for a feeder blocked on the hung
    worker forever: now the stream wakes its source (``stop``) and the interrupt comes out at once."""
    src = HungSource(3)
    _interrupt_after(0.5, src.woken)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        Stream(src, [MemorySink()], backend=EchoBackend(), decode=decode, batch_size=2).run()
    assert time.monotonic() - t0 < 5
    assert src.woken.is_set()


def test_ctrl_c_ends_a_stream_whose_postprocess_hangs():
    """Before, the interrupted device loop waited forever to hand the post thread (stuck in a hung
    postprocess hook, its queue full) its end mark: now it leaves that thread behind within seconds."""
    hung = threading.Event()

    def hang(outs, metas):
        hung.wait()
        return decode(outs, metas)

    _interrupt_after(0.5, hung)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        Stream(ListSource(20), [MemorySink()], backend=EchoBackend(), decode=hang, batch_size=1).run()
    assert time.monotonic() - t0 < 6
    hung.set()


class _FakeJob:
    def __init__(self, index, outcome):
        self.index, self.outcome = index, outcome

    def result(self):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class _FakeProcessPool:
    """Stands in for a WorkerPool's ProcessPool: ``outcome(index, sample)`` is what each job gives."""

    def __init__(self, outcome):
        self.outcome, self.n = outcome, 0

    def submit(self, fn, sample, dest):
        self.n += 1
        return _FakeJob(self.n - 1, self.outcome(self.n - 1, sample))


def _worker_pool(outcome):
    from types import SimpleNamespace

    from zoo_core.pipeline.workers import WorkerPool

    wp = WorkerPool(SimpleNamespace(model="fake"), {}, 0)
    wp.pool = _FakeProcessPool(outcome)
    return wp


def _samples(n):
    return [Sample(f"img{i}", Path(f"/data/img{i}.png")) for i in range(n)]


def test_an_image_its_worker_crashed_on_is_that_images_error_and_the_rest_go_on():
    """Before, a worker's SIGSEGV on one image stopped the run naming no image (and on_error=skip could not
    skip it): now that image fails alone, its error saying how its worker ended."""
    from zoo_core.pipeline.procpool import WorkerCrashed

    def outcome(i, s):
        if i == 2:
            return WorkerCrashed(1234, -11)
        return Prepared(s, {"x": np.zeros(3, np.float32)}, {"id": s.id})

    got = list(_worker_pool(outcome).prepared(_samples(5), 3))
    assert [p.sample.id for p in got] == [f"img{i}" for i in range(5)]
    assert [p.error for p in got] == [None, None, "/data/img2.png: the preprocess worker crashed on it "
                                                  "(signal 11 (SIGSEGV))", None, None]
    src = ListSource(0)
    src.items = lambda: iter(got)
    src.total = 5
    stats = Stream(src, [MemorySink()], backend=EchoBackend(), decode=decode, skip_errors=True).run()
    assert stats.images == 4 and [s["id"] for s in stats.skipped] == ["img2"]


@pytest.mark.parametrize("code,hint", [(-9, True), (-15, False)])
def test_a_dead_worker_names_the_image_it_held_and_hints_at_memory_only_for_sigkill(code, hint):
    from concurrent.futures.process import BrokenProcessPool

    def outcome(i, s):
        if i == 0:
            return Prepared(s, {"x": np.zeros(3, np.float32)}, {"id": s.id})
        exc = BrokenProcessPool(f"worker 99 exited with code {code}")
        exc.task, exc.exitcode = 3, code
        return exc

    with pytest.raises(ZooError) as err:
        list(_worker_pool(outcome).prepared(_samples(6), 4))
    assert str(err.value).startswith(f"a preprocess worker process died (worker 99 exited with code {code} "
                                     f"while preparing /data/img3.png)")
    assert ("lower num_workers" in str(err.value)) == hint


def test_a_stalled_image_is_named_with_its_worker_in_the_log(caplog):
    from zoo_core.pipeline.workers import _log_stall

    pending = [(None, _FakeJob(i, None), s) for i, s in enumerate(_samples(3))]
    with caplog.at_level("WARNING", logger="zoo"):
        _log_stall([(4321, 1)], 60.2, pending)
    assert "waiting 60 s for /data/img1.png (preprocess worker pid 4321)" in caplog.text
