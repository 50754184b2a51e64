"""Shared helpers for the core's tests: isolated CLI runs and session-wide fixture artefacts.

Every CLI run happens in a pytest tmp dir with ``ZOO_CACHE_DIR`` pointing at one session cache, so
the generated squares dataset is made once and nothing is written into the repository.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
REPO = TESTS.parent

_SCRUB = ("ZOO_DISABLE_PLUGINS", "ZOO_FIXTURE_OBSERVER_LOG", "FAKE_ATC_LOG", "FAKE_ACL_LOG", "FAKE_ACL_DEVICE_COUNT",
          "PYTHONPATH", "ASCEND_RT_VISIBLE_DEVICES", "SLURM_LOCALID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")


@pytest.fixture(scope="session", autouse=True)
def _doubles_run_on_this_python():
    """The contract doubles (``fixtures/fake_ascend/atc``...) start with ``#!/usr/bin/env python3`` and read the model
    with the ``onnx`` package: this interpreter's bin goes first on PATH, as in an activated venv (``make test``
    runs ``.venv-test/bin/python`` without activating it, and another ``python3`` may lack onnx)."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), old])
    yield
    os.environ["PATH"] = old


def base_env(cache_dir: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["ZOO_CACHE_DIR"] = str(cache_dir)
    env["OMP_NUM_THREADS"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_zoo(args, cwd: Path, env: dict, timeout: float = 180) -> tuple[int, str, str]:
    """``python -m zoo_core.cli <args>`` in ``cwd``; returns (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "zoo_core.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo_cache")


class Zoo:
    """Callable CLI runner bound to a cwd and an environment: ``zoo("run", "model=fixture")``."""

    def __init__(self, cwd: Path, cache: Path):
        self.cwd = cwd
        self.cache = cache

    def env(self, **extra) -> dict:
        return base_env(self.cache, **extra)

    def __call__(self, *args, env: dict | None = None, cwd: Path | None = None, **extra_env):
        return run_zoo(args, cwd or self.cwd, env or self.env(**extra_env))

    def ok(self, *args, **kw) -> str:
        rc, out, err = self(*args, **kw)
        assert rc == 0, f"zoo {' '.join(map(str, args))} failed ({rc}):\n{out}\n{err}"
        return out


@pytest.fixture(scope="session")
def fixture_cfg(cache_dir):
    """The fixture model's composed config, its dataset generated in the session cache."""
    os.environ["ZOO_CACHE_DIR"] = str(cache_dir)
    from zoo_core.config.validate import compose

    return compose(["model=fixture"])


@pytest.fixture
def zoo(tmp_path, cache_dir) -> Zoo:
    return Zoo(tmp_path, cache_dir)


@pytest.fixture(scope="session")
def zoo_at(cache_dir):
    """``zoo_at(cwd)``: a CLI runner in ``cwd`` (for module- and session-scoped fixtures)."""
    return lambda cwd: Zoo(Path(cwd), cache_dir)


def metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


@pytest.fixture(scope="session")
def fixture_onnx(tmp_path_factory, cache_dir) -> Path:
    """The fixture model exported once (onnxruntime target); later runs pass it as model_file=."""
    pytest.importorskip("torch", reason="exporting the fixture model needs torch, which is not installed")
    d = tmp_path_factory.mktemp("export")
    Zoo(d, cache_dir).ok("run", "model=fixture", "stage=export", "work_dir=run")
    path = d / "run" / "model" / "fixture_onnxruntime.onnx"
    assert path.is_file()
    return path


@pytest.fixture(scope="session")
def infer_run(tmp_path_factory, cache_dir, fixture_onnx) -> Path:
    """A run dir after preprocess + infer (inputs/, outputs/ in ais_bench layout)."""
    d = tmp_path_factory.mktemp("infer")
    z = Zoo(d, cache_dir)
    for stage in ("preprocess", "infer"):
        z.ok("run", "model=fixture", f"stage={stage}", "work_dir=run", f"model_file={fixture_onnx}")
    return d / "run"


@pytest.fixture(scope="session")
def eval_metrics(tmp_path_factory, cache_dir, fixture_onnx) -> dict:
    """metrics.json of a plain ``stage=eval`` run (batch 1, onnxruntime)."""
    d = tmp_path_factory.mktemp("eval")
    Zoo(d, cache_dir).ok("run", "model=fixture", "stage=eval", "work_dir=run", f"model_file={fixture_onnx}")
    return metrics(d / "run" / "eval")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
