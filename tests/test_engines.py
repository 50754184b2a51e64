"""Sharded evaluation on the real launch engines: joblib, Ray (a local cluster started for the sweep)
and submitit's local executor. The commands are the ones docs/sweeps.md shows.

Each 3-shard sweep must merge to exactly the unsharded run's metrics, on the COCO sample (CenterNet,
oracle backend) and the bundled WIDER FACE sample (CenterFace). Needs ``zoo-core[ray,submitit]``
(``make venv`` installs them).
"""
from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from zoo_core.runs.detstore import DetectionStore

#: The recipes of docs/sweeps.md, verbatim (test_docs_show_the_tested_recipes); the tests run them on
#: both models (``model=centerface`` replaced by the model's arguments) into a test's sweep dir.
RECIPES = {
    "joblib": "zoo run -m hydra/launcher=joblib hydra.launcher.n_jobs=2 model=centerface stage=eval "
              "dataset.num_shards=3 'dataset.shard=range(0,3)'",
    "ray": "zoo run -m hydra/launcher=ray +hydra.launcher.ray.init.include_dashboard=false model=centerface "
           "stage=eval dataset.num_shards=3 'dataset.shard=range(0,3)'",
    "submitit_local": "zoo run -m hydra/launcher=submitit_local model=centerface stage=eval "
                      "dataset.num_shards=3 'dataset.shard=range(0,3)'",
}
LAUNCHER_CLASS = {"joblib": "JoblibLauncher", "ray": "RayLauncher", "submitit_local": "LocalLauncher"}
MODELS = {
    "centernet_oracle_coco": ("model=centernet", "backend=oracle", "dataset=coco_sample"),
    "centerface_wider": ("model=centerface",),
}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "sweeps.md"


def recipe_args(engine: str, model: str) -> list[str]:
    """The recipe's arguments after ``zoo``, for ``model``."""
    args = shlex.split(RECIPES[engine])[1:]
    i = args.index("model=centerface")
    return args[:i] + list(MODELS[model]) + args[i + 1:]


def docs_commands() -> str:
    """docs/sweeps.md with shell line continuations joined and runs of spaces collapsed."""
    return re.sub(r"[ \t]+", " ", DOCS.read_text().replace("\\\n", " "))


def test_docs_show_the_tested_recipes():
    text = docs_commands()
    for engine, recipe in RECIPES.items():
        assert recipe in text, f"docs/sweeps.md does not show the tested {engine} recipe: {recipe}"


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory, zoo_at):
    """The unsharded eval of each model, run once for all engines."""
    done: dict[str, Path] = {}

    def run(model: str) -> Path:
        if model not in done:
            d = tmp_path_factory.mktemp(f"full_{model}")
            zoo_at(d).ok("run", *MODELS[model], "stage=eval", "work_dir=full")
            done[model] = d / "full"
        return done[model]

    return run


def launcher_target(sweep: Path) -> str:
    return yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["launcher"]["_target_"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(RECIPES))
@pytest.mark.parametrize("model", list(MODELS))
def test_three_shards_merge_to_the_unsharded_metrics(zoo, unsharded, model, engine):
    full_dir = unsharded(model)
    full = json.loads((full_dir / "eval" / "metrics.json").read_text())
    sweep = zoo.cwd / "sweep"
    rc, out, err = zoo(*recipe_args(engine, model), f"hydra.sweep.dir={sweep}")
    assert rc == 0, out + err
    assert launcher_target(sweep).endswith(LAUNCHER_CLASS[engine])
    merged = json.loads((sweep / "merged" / "metrics.json").read_text())
    assert merged["metrics"] == full["metrics"]  # exact
    ids = [set(DetectionStore(sweep / str(i) / "detections").load()) for i in range(3)]
    assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(DetectionStore(full_dir / "detections").load())
    assert merged["images"] == full["images"] == sum(map(len, ids))
    shard_metrics = [json.loads((sweep / str(i) / "eval" / "metrics.json").read_text()) for i in range(3)]
    if model == "centerface_wider":
        assert set(merged["metrics"]) >= {"easy", "medium", "hard"}
        # shards alone score differently: the merge really scored the union
        assert any(abs(m["metrics"]["hard"] - full["metrics"]["hard"]) > 1e-6 for m in shard_metrics)
    else:
        assert [m["images"] for m in shard_metrics] == [8, 8, 8]
        assert full["metrics"]["AR1"] < 1.0  # a missing shard would lower AP/AR; the merge must not
    with open(sweep / "sweep_report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["@dataset.shard"] for r in rows] == ["0", "1", "2", "all"]
    assert rows[-1]["status"] == "ok"
    key = "AP" if "AP" in full["metrics"] else "hard"
    assert float(rows[-1][f"metric:{key}"]) == full["metrics"][key]
    results = [json.loads((sweep / str(i) / "eval" / "result.json").read_text()) for i in range(3)]
    assert all(r["host"] for r in results)
    if engine == "submitit_local":
        assert (sweep / ".submitit").is_dir()
        # all 3 jobs start at once: each gets a third of the cores (before: none, 2 workers + all cores each)
        from zoo_core.config.pinning import available_cores

        threads = max(1, available_cores() // 3)
        for i in range(3):
            pinned = re.search(r"job \d+ pinned: (.*)", (sweep / str(i) / "eval" / "zoo.log").read_text())
            assert pinned, f"job {i} was not pinned"
            assert f"num_workers={min(2, threads - 1)}" in pinned.group(1)
            if model == "centerface_wider":
                assert f"backend.intra_op_threads={threads}" in pinned.group(1)
