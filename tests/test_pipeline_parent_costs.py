"""The parent process's per-item costs: reused output buffers, the GIL switch interval, eval without scoring."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from tests.test_pipeline import ListSource, _ctx, decode
from zoo_core.api.aisbench import write_bin
from zoo_core.api.types import TensorSpec
from zoo_core.backends.base import Backend, Batch, ModelIO
from zoo_core.backends.replay_backend import ReplayBackend
from zoo_core.pipeline import stream as stream_mod
from zoo_core.pipeline.recycling import ArrayPool
from zoo_core.pipeline.sinks import MemorySink
from zoo_core.pipeline.stream import Stream


def test_a_pool_array_comes_back_only_when_nothing_refers_to_it():
    pool = ArrayPool(keep=2)
    a = pool.empty((4, 5), np.float32)
    a_id = id(a)
    view = a[1:]
    del a
    b = pool.empty((4, 5), np.float32)
    assert id(b) != a_id, "a live view keeps its base out of the pool"
    del view
    c = pool.empty((4, 5), np.float32)
    assert id(c) == a_id and pool.reused == 1
    assert pool.empty((4, 5), np.float64).dtype == np.float64
    d = pool.empty((4, 5), np.float32)  # a, b held; keep=2: a fresh array, not kept
    assert id(d) not in (id(b), id(c))
    del c, d
    assert id(pool.empty((4, 5), np.float32)) == a_id


def test_replayed_outputs_held_by_the_run_are_never_overwritten(tmp_path):
    spec = [TensorSpec("out", (64, 64))]
    for i in range(6):
        write_bin(tmp_path / f"img{i}_0.bin", np.full((64, 64), i, np.float32))
    backend = ReplayBackend(None, {"dir": tmp_path}, ModelIO(output_specs=lambda m: spec))
    held = []
    for i in range(6):
        (out,) = backend.infer(Batch(ids=[f"img{i}"], inputs={}, metas=[{}]))
        if i % 2 == 0:
            held.append((i, out[0]))  # a view, as the post thread holds one
        del out
    for i, view in held:
        assert (view == i).all()
    assert backend._buffers.reused >= 2, "the dropped outputs' buffers were reused"


class _SwitchProbe(Backend):
    name = "probe"

    def __init__(self):
        super().__init__(None, {}, ModelIO(output_specs=lambda m: [TensorSpec("out", (3,))]))
        self.seen: list[float] = []

    def infer(self, batch: Batch) -> list[np.ndarray]:
        self.seen.append(sys.getswitchinterval())
        return [batch.inputs["x"].copy()]


def test_a_stream_shortens_the_gil_switch_interval_and_restores_it():
    before = sys.getswitchinterval()
    probe = _SwitchProbe()
    Stream(ListSource(5), [MemorySink()], backend=probe, decode=decode, batch_size=2).run()
    assert probe.seen and max(probe.seen) <= stream_mod.GIL_SWITCH_S < before
    assert sys.getswitchinterval() == before


def test_eval_without_scoring_keeps_detections_that_evaluate_scores_later(fixture_cfg, tmp_path):
    from zoo_core.runs.run_stage import run_stage

    scored = run_stage(_ctx(fixture_cfg, tmp_path / "a"))
    res = run_stage(_ctx(fixture_cfg, tmp_path / "b", **{"stage.score": False}))
    assert res["scored"] is False and res["images"] == scored["images"] == 12
    rec = tmp_path / "b" / "eval"
    assert not (rec / "metrics.json").exists()
    assert json.loads((rec / "eval.json").read_text())["images"] == 12
    assert json.loads((rec / "perf.json").read_text())["images"] == 12
    later = run_stage(_ctx(fixture_cfg, tmp_path / "c", stage="evaluate",
                           detections=str(tmp_path / "b" / "detections")))
    assert later["metrics"] == pytest.approx(scored["metrics"])


def test_eval_refuses_a_gate_it_could_not_apply(fixture_cfg, tmp_path):
    from zoo_core.api.errors import ConfigError
    from zoo_core.runs.run_stage import run_stage

    with pytest.raises(ConfigError, match="gate=true .* stage.score=false"):
        run_stage(_ctx(fixture_cfg, tmp_path, gate=True, **{"stage.score": False}))
    assert not (tmp_path / "detections").exists() or not any((tmp_path / "detections").glob("chunk-*"))


@pytest.mark.parametrize("nice", [0, 7])
def test_preprocess_workers_run_at_worker_nice_below_the_parent(fixture_cfg, nice):
    """``worker_nice``: each worker process adds it to its nice value (the parent's threads, which the
    device waits for, win a busy core); the items are the same either way."""
    from omegaconf import OmegaConf, open_dict

    from zoo_core.pipeline.workers import WorkerPool
    from zoo_core.plugins.manager import ZooPluginManager

    cfg = OmegaConf.create(OmegaConf.to_container(fixture_cfg))
    with open_dict(cfg):
        cfg.worker_nice = nice
    hooks = ZooPluginManager().hooks_for("fixture")
    samples = list(hooks.dataset(cfg=cfg).samples())[:4]
    with WorkerPool(hooks, cfg, 2) as pool:
        got = [p.sample.id for p in pool.prepared(samples, window=4)]
        pids = pool.pids()
        assert len(pids) == 2
        parent = os.getpriority(os.PRIO_PROCESS, 0)
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [min(parent + nice, 19)] * 2
    assert got == [s.id for s in samples]


def test_a_negative_worker_nice_is_refused_before_any_worker_starts(fixture_cfg):
    from omegaconf import OmegaConf, open_dict

    from zoo_core.api.errors import ConfigError
    from zoo_core.pipeline.workers import WorkerPool
    from zoo_core.plugins.manager import ZooPluginManager

    cfg = OmegaConf.create(OmegaConf.to_container(fixture_cfg))
    with open_dict(cfg):
        cfg.worker_nice = -3
    with pytest.raises(ConfigError, match="worker_nice=-3"):
        WorkerPool(ZooPluginManager().hooks_for("fixture"), cfg, 2)


@pytest.mark.parametrize(("limit", "workers"), [(None, 2), (1, 0)])
def test_eval_starts_its_workers_before_listing_the_dataset(fixture_cfg, tmp_path, monkeypatch, limit, workers):
    """The workers' interpreters come up while the dataset is listed and the backend opens (not after):
    the pool exists before ``ctx.samples`` is first read; ``dataset.limit=1`` starts none."""
    import zoo_core.stages.eval_stage as eval_stage

    seen = []

    class Stop(Exception):
        pass

    def pool(hooks, cfg, n):
        seen.append(("pool", n, "samples" in ctx.__dict__))
        raise Stop

    monkeypatch.setattr(eval_stage, "WorkerPool", pool)
    ctx = _ctx(fixture_cfg, tmp_path, **({"num_workers": 2} | ({"dataset.limit": limit} if limit else {})))
    with pytest.raises(Stop):
        eval_stage.run(ctx)
    assert seen == [("pool", workers, False)]
