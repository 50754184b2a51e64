"""Deterministic sharding (dataset.num_shards / dataset.shard) and the sweep's shard merge.

The real models' sharded evals on every engine are in test_engines.py; merge failures in test_shard_merge.py.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from zoo_core.api.errors import ConfigError
from zoo_core.api.types import Sample
from zoo_core.runs.context import select_samples
from zoo_core.runs.detstore import DetectionStore

JOBLIB2 = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")


def samples(n: int) -> list[Sample]:
    return [Sample(id=f"img_{i:04d}", path=Path(f"{i}.jpg"), key=i) for i in range(n)]


def dcfg(**kw):
    return OmegaConf.create({"num_shards": 1, "shard": 0, "limit": None, **kw})


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 60), shards=st.integers(1, 7), seed=st.integers(0, 1000))
def test_shards_are_disjoint_cover_balanced_and_order_independent(n, shards, seed):
    items = samples(n)
    parts = [[s.id for s in select_samples(items, dcfg(num_shards=shards, shard=i))] for i in range(shards)]
    flat = [i for p in parts for i in p]
    assert sorted(flat) == sorted(s.id for s in items) and len(set(flat)) == len(flat)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    shuffled = items[:]
    random.Random(seed).shuffle(shuffled)
    again = [{s.id for s in select_samples(shuffled, dcfg(num_shards=shards, shard=i))} for i in range(shards)]
    assert again == [set(p) for p in parts]


def test_limit_applies_before_sharding():
    items = samples(10)
    got = [s.id for i in range(3) for s in select_samples(items, dcfg(limit=5, num_shards=3, shard=i))]
    assert sorted(got) == [f"img_{i:04d}" for i in range(5)]


@pytest.mark.parametrize("kw", [{"num_shards": 3, "shard": 3}, {"num_shards": 0}, {"num_shards": 2, "shard": -1}])
def test_bad_shard_settings_are_config_errors(kw):
    with pytest.raises(ConfigError, match="num_shards"):
        select_samples(samples(4), dcfg(**kw))


def sharded_vs_unsharded(zoo, tmp_path, *args: str) -> tuple[dict, dict, Path]:
    rc, out, err = zoo("run", *args, "stage=eval", "work_dir=full")
    assert rc == 0, out + err
    full = json.loads((tmp_path / "full" / "eval" / "metrics.json").read_text())
    sweep = tmp_path / "sweep"
    rc, out, err = zoo("run", "-m", *args, "stage=eval", "dataset.num_shards=3", "dataset.shard=range(0,3)",
                       f"hydra.sweep.dir={sweep}", *JOBLIB2)
    assert rc == 0, out + err
    merged = json.loads((sweep / "merged" / "metrics.json").read_text())
    ids = [set(DetectionStore(sweep / str(i) / "detections").load()) for i in range(3)]
    assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(DetectionStore(tmp_path / "full" / "detections").load())
    assert merged["images"] == full["images"] == sum(map(len, ids))
    return full, merged, sweep


@pytest.mark.needs_torch
@pytest.mark.slow
def test_fixture_sharded_eval_with_worker_pools_in_joblib_jobs(zoo, tmp_path):
    full, merged, sweep = sharded_vs_unsharded(zoo, tmp_path, "model=fixture", "pin.cores=4")
    assert merged["metrics"] == full["metrics"]
    assert "num_workers=1" in (sweep / "0" / "eval" / "zoo.log").read_text()  # spawn pools inside loky workers


def test_incomplete_shard_sweep_is_not_merged_and_fails(zoo, tmp_path):
    sweep = tmp_path / "sweep"
    rc, out, err = zoo("run", "-m", "model=fixture", "stage=eval", "dataset.num_shards=3", "dataset.shard=0,2",
                       f"hydra.sweep.dir={sweep}")
    assert rc == 1, out + err
    assert not (sweep / "merged" / "metrics.json").exists()
    assert "shard 1 of 3 is missing (no job ran dataset.shard=1)" in (sweep / "sweep_report.md").read_text()
