"""A batch_size whose batch cannot fit in memory is a ConfigError naming batch_size (was a MemoryError, exit 1),
and stage=perf draws its random input without a float64 copy of the batch, the values unchanged."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from zoo_core.api.errors import ConfigError
from zoo_core.api.types import Sample, TensorSpec
from zoo_core.pipeline import batching
from zoo_core.pipeline.batching import Batcher
from zoo_core.pipeline.workers import Prepared
from zoo_core.stages import perf_stage

HUGE = 100_000_000  # batches of 3x480x640 float32: 368 TB


def _item(i: int = 0) -> Prepared:
    return Prepared(Sample(f"s{i}", Path(f"s{i}")), {"x": np.zeros((3, 480, 640), np.float32)}, {})


@pytest.mark.parametrize("known", [True, False])
def test_a_batch_larger_than_the_memory_is_a_config_error_naming_batch_size(monkeypatch, known):
    """Before: ``MemoryError: Unable to allocate 343. GiB ...`` (unexpected error, exit 1) from stage=eval."""
    if not known:  # no /proc/meminfo: the allocation's own MemoryError becomes the same error
        monkeypatch.setattr(batching, "available_memory", lambda: None)
    with pytest.raises(ConfigError) as info:
        Batcher(HUGE).add(_item())
    need = HUGE * 3 * 480 * 640 * 4
    assert str(info.value).startswith(f"batch_size={HUGE} is too large: one batch of inputs (3, 480, 640) float32 "
                                      f"needs {need} bytes ({need / 2**30:.1f} GiB), more than the ")
    assert info.value.hint == "lower batch_size" and info.value.exit_code == 2


def test_batches_that_fit_are_unchanged():
    b = Batcher(2)
    assert b.add(_item(0)) is None
    batch = b.add(_item(1))
    assert batch.ids == ["s0", "s1"] and batch.inputs["x"].shape == (2, 3, 480, 640)


def _ctx(*specs: TensorSpec):
    return SimpleNamespace(cfg=None, hooks=SimpleNamespace(input_spec=lambda cfg: list(specs)))


def test_perf_random_input_keeps_its_values_without_a_float64_batch(monkeypatch):
    """The values are those of ``rng.standard_normal(shape).astype(dtype)`` (what perf always fed), drawn a chunk
    at a time; a uint8 input after it continues the same generator."""
    monkeypatch.setattr(perf_stage, "DRAW_CHUNK", 1000)  # several chunks, the last one partial
    specs = (TensorSpec("img", (3, 40, 50), "float32"), TensorSpec("half", (7,), "float16"),
             TensorSpec("raw", (5, 6), "uint8"))
    batch = perf_stage.random_batch(_ctx(*specs), 4, seed=3)
    rng = np.random.default_rng(3)
    expected = {"img": rng.standard_normal((4, 3, 40, 50)).astype(np.float32),
                "half": rng.standard_normal((4, 7)).astype(np.float16),
                "raw": rng.integers(0, 256, (4, 5, 6), dtype=np.uint8)}
    for name, want in expected.items():
        assert batch.inputs[name].dtype == want.dtype
        np.testing.assert_array_equal(batch.inputs[name], want)
    assert batch.ids == [f"perf_{i}" for i in range(4)]


def test_perf_refuses_a_batch_larger_than_the_memory_before_drawing_it():
    """Before: ``MemoryError: Unable to allocate 1.40 TiB ... float64`` (unexpected error, exit 1)."""
    with pytest.raises(ConfigError) as info:
        perf_stage.random_batch(_ctx(TensorSpec("input.1", (3, 800, 800))), HUGE)
    assert str(info.value).startswith(f"batch_size={HUGE} is too large: one batch of random inputs input.1 "
                                      f"(3, 800, 800) float32 needs {HUGE * 3 * 800 * 800 * 4} bytes")
