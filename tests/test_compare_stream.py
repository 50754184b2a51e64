"""The compare stream in-process: PairBackend + CompareSink on the pipeline's Stream, with fake backends.

The fake backends compute known functions of the input, so every number the compare reports has an
exact oracle.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zoo_core.api.errors import ConfigError, InputError, ZooError
from zoo_core.api.types import Detections, Sample, TensorSpec
from zoo_core.backends.base import Backend, Batch
from zoo_core.compare.numbers import Tolerance
from zoo_core.compare.pair import CompareSink, PairBackend
from zoo_core.pipeline.stream import Stream
from zoo_core.pipeline.workers import Prepared

SPECS = [TensorSpec("score", (1, 4, 4)), TensorSpec("size", (2, 4, 4))]


class ListSource:
    """Prepared items from a list (image i has every input value equal to i + 1)."""

    def __init__(self, n: int):
        self.total = n
        self.ids = [f"im{i}" for i in range(n)]

    def items(self):
        for i, sid in enumerate(self.ids):
            yield Prepared(Sample(sid, Path(f"/data/{sid}.png")),
                           {"x": np.full((1, 4, 4), i + 1.0, np.float32)}, {"id": sid})


class FakeBackend(Backend):
    """score = x / 10, size = [x, 2x]; ``bump[id]`` is added to the score of that image; ``nan`` poisons one."""

    name = "fake"

    def __init__(self, bump=None, nan=None, fixed=None, label="fake.onnx"):
        super().__init__(label)
        self.bump, self.nan, self.fixed_batch = dict(bump or {}), nan, fixed
        self.seen: list[str] = []

    def infer(self, batch: Batch):
        x = batch.inputs["x"]
        score = x / 10.0
        size = np.concatenate([x, 2 * x], axis=1)
        for j, sid in enumerate(batch.ids[: batch.n_valid]):
            self.seen.append(sid)
            score[j] += self.bump.get(sid, 0.0)
            if sid == self.nan:
                score[j, 0, 0, 0] = np.nan
        return [score.astype(np.float32), size.astype(np.float32)]


def decode(outputs, metas):
    """One detection per item: a box from the size map, the mean score as its score."""
    out = []
    for score, size in zip(*outputs):
        w = float(size[0].mean())
        out.append(Detections(np.array([[0, 0, w, w]], np.float32), [float(score.mean())], [0]))
    return out


def run(ref, cand, n=5, batch_size=2, skip=False, tol=Tolerance()):
    sink = CompareSink(lambda meta: SPECS, tol, decode, plot_points=4)
    pair = PairBackend(ref, cand)
    stats = Stream(ListSource(n), [sink], backend=pair, batch_size=batch_size, keep_outputs=True,
                   skip_errors=skip, expect=lambda meta: SPECS * 2).run()
    return sink, stats, pair


def test_identical_backends_pass_with_zero_difference():
    ref, cand = FakeBackend(), FakeBackend()
    sink, stats, pair = run(ref, cand)
    assert stats.images == 5 and sink.passed
    assert sorted(ref.seen) == sorted(cand.seen) == [f"im{i}" for i in range(5)]  # every image once, both sides
    for name in ("score", "size"):
        o = sink.outputs[name].as_dict()
        assert o["max_abs"] == 0.0 and o["cosine"] == pytest.approx(1.0) and o["images"] == 5
    d = sink.matches.as_dict()
    assert d["match_rate"] == 1.0 and d["matched"] == 5 and d["max_score_change"] == 0.0
    assert pair.calls == 3 and pair.n_outputs == 2
    assert set(sink.samples) == {"score", "size"} and len(sink.samples["score"]) == 5


def test_one_perturbed_image_is_found_with_its_exact_numbers():
    sink, stats, _ = run(FakeBackend(), FakeBackend(bump={"im3": 0.05}))
    o = sink.outputs["score"].as_dict()
    assert not sink.passed and not o["passed"] and sink.outputs["size"].passed
    assert o["worst_image"] == "im3" and o["failed_images"] == 1
    assert o["max_abs"] == pytest.approx(0.05, abs=1e-6)
    assert o["max_rel"] == pytest.approx(0.05 / 0.4, rel=1e-5)  # im3's score is 0.4 everywhere
    assert o["beyond_tolerance"] == pytest.approx(16 / 80)       # one image of five, all 16 values
    assert sink.matches.as_dict()["max_score_change"] == pytest.approx(0.05, abs=1e-6)


def test_a_within_tolerance_difference_passes():
    sink, _, _ = run(FakeBackend(), FakeBackend(bump={"im0": 0.0005}))  # 0.0005 <= 1e-4 + 1e-2 * 0.1
    assert sink.passed and sink.outputs["score"].max_abs == pytest.approx(0.0005, abs=1e-7)


def test_nan_in_the_candidate_names_the_candidate():
    with pytest.raises(InputError, match=r"im2\.png: the candidate \(fake, fake\.onnx\) output contains NaN"):
        run(FakeBackend(), FakeBackend(nan="im2"))


def test_nan_with_skip_skips_only_that_image():
    sink, stats, _ = run(FakeBackend(), FakeBackend(nan="im2"), skip=True)
    assert stats.images == 4 and [s["id"] for s in stats.skipped] == ["im2"]
    assert "candidate" in stats.skipped[0]["reason"]
    assert sink.outputs["score"].images == 4 and sink.passed


def test_fixed_batches_of_both_sides_must_agree():
    with pytest.raises(ConfigError, match="batches of 4 and the candidate batches of 8"):
        PairBackend(FakeBackend(fixed=4), FakeBackend(fixed=8))
    sink, stats, pair = run(FakeBackend(fixed=4), FakeBackend(), n=5, batch_size=4)
    assert pair.fixed_batch == 4 and stats.images == 5 and sink.passed  # padding dropped after inference


def test_a_side_with_other_outputs_is_an_error():
    class OneOutput(FakeBackend):
        def infer(self, batch):
            return super().infer(batch)[:1]

    with pytest.raises(ZooError, match="returns 2 outputs, the candidate"):
        run(FakeBackend(), OneOutput())


def test_the_same_model_on_both_sides_is_refused_and_a_copy_too(tmp_path):
    """A compare whose two sides run the same bytes the same way passes with all differences 0: refused."""
    from zoo_core.stages.compare_stage import refuse_same_sides

    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(b"model bytes")
    other = tmp_path / "int8.onnx"
    other.write_bytes(b"other bytes")
    for cand in (model, copy):
        with pytest.raises(ConfigError) as e:
            refuse_same_sides(FakeBackend(label=str(model)), FakeBackend(label=str(cand)))
        text = str(e.value)
        assert f"the reference and the candidate are the same model (fake on {model}" in text
        assert "hint: set compare.candidate_model=" in text and "compare.allow_same=true" in text
    assert e.value.exit_code == 2
    refuse_same_sides(FakeBackend(label=str(model)), FakeBackend(label=str(other)))  # a converted model: fine
