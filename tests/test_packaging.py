"""The zoo-core wheel works outside the repo: conf/ and the Hydra search-path plugin ship inside it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_without_the_checkout(tmp_path_factory):
    t0 = time.perf_counter()
    wheels = tmp_path_factory.mktemp("wheels")
    build = tmp_path_factory.mktemp("build")
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # build from copies so no build/ or *.egg-info lands in the repo
    core_src = build / "zoo-core"
    core_src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("zoo_core", "hydra_plugins", "conf"):
        shutil.copytree(REPO / part, core_src / part, ignore=skip)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, core_src / part)
    fixture_src = build / "zoo-fixture"
    shutil.copytree(REPO / "tests" / "fixtures" / "zoo-fixture", fixture_src,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for src in (core_src, fixture_src):
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
              "-w", wheels, src], cwd=build, env=env)
    core = next(wheels.glob("zoo_core-*.whl"))
    names = zipfile.ZipFile(core).namelist()
    assert "zoo_core/conf/config.yaml" in names
    assert "zoo_core/conf/stage/eval.yaml" in names and "zoo_core/conf/backend/onnxruntime.yaml" in names
    assert {f"zoo_core/conf/dataset/{d}.yaml" for d in ("widerface", "widerface_sample", "coco", "coco_sample")} <= set(names)
    assert "hydra_plugins/zoo_searchpath/zoo_searchpath.py" in names
    assert not any(n.startswith("tests/") for n in names)
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "zoo_core").rglob("*.py")
               if "templates" not in p.parts}
    assert modules <= set(names), sorted(modules - set(names))

    venv_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(venv_dir)
    py = venv_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", py]
    _run([*pip, "install", "-q", "--no-deps", *wheels.glob("*.whl")], env=env)
    # what `zoo list` / `zoo info` need at run time, and nothing more (no torch, no onnxruntime)
    _run([*pip, "install", "-q", "pluggy", "hydra-core", "numpy"], env=env)
    site = next((venv_dir / "lib").glob("python3*/site-packages"))
    work = tmp_path_factory.mktemp("cwd")
    venv_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZOO_DISABLE_PLUGINS")}
    venv_env["ZOO_CACHE_DIR"] = str(work / "cache")
    zoo = venv_dir / "bin" / "zoo"
    out = _run([zoo, "list"], cwd=work, env=venv_env)
    assert "zoo-fixture 0.3.1" in out and "centernet" not in out
    out = _run([zoo, "info", "model=fixture"], cwd=work, env=venv_env)
    assert "stage:\n  name: eval" in out and "mask_threshold: 0.5" in out
    check = _run([py, "-c", "import zoo_core.config.confpaths as c, sys; print(c.core_conf_dir()); "
                  "print('torch' in sys.modules)"], cwd=work, env=venv_env)
    conf_dir, torch_loaded = check.split()
    assert Path(conf_dir).is_relative_to(site) and torch_loaded == "False"
    print(f"\n[benchmark] wheel build + venv install + CLI checks: {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
def test_make_wheel_builds_the_three_distributions_without_warnings(tmp_path):
    """`make wheel`'s build: zoo-core, zoo-centernet, zoo-centerface, SPDX licence, torch only as an extra."""
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "tests", ".venv*")
    for part in ("zoo_core", "hydra_plugins", "conf", "plugins"):
        shutil.copytree(REPO / part, src / part, ignore=skip)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, src / part)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # (its own build_py warning)
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(tmp_path / "dist"), ".", "plugins/centernet", "plugins/centerface"],
                          cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    noise = [ln for ln in (proc.stdout + proc.stderr).splitlines()
             if "warning" in ln.lower() and "Location 'file://" not in ln]  # (this machine's pip index config)
    assert noise == [], "\n".join(noise)
    wheels = sorted(p.name for p in (tmp_path / "dist").glob("*.whl"))
    assert [w.split("-")[0] for w in wheels] == ["zoo_centerface", "zoo_centernet", "zoo_core"]
    for wheel in (tmp_path / "dist").glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        assert "License-Expression: MIT" in meta, wheel.name
        torch_reqs = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist: torch")]
        assert torch_reqs and all('extra == "torch"' in ln or 'extra == "export"' in ln for ln in torch_reqs), torch_reqs


def test_the_test_extra_installs_the_build_backend_the_no_isolation_builds_need():
    """The wheel tests build with --no-build-isolation, so the test venv must hold [build-system]'s requirements:
    before, setuptools came only with Python 3.11's venvs (3.12+ venvs have none) and the tests failed there."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    test_extra = meta["project"]["optional-dependencies"]["test"]
    for req in meta["build-system"]["requires"]:
        assert req in test_extra, (req, test_extra)


@pytest.mark.parametrize("torch", ["none", ""])
def test_make_test_venv_without_torch_installs_no_torch(tmp_path, torch):
    """`make test-venv TORCH=none` (Python 3.12/3.13 here): no torch and no torch extras, which would pull the CUDA
    build from PyPI. Before, TORCH= ran `pip install -q` with nothing and the extras installed torch anyway."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-n", "-B", "test-venv", f"TEST_VENV={tmp_path / 'v'}", f"TORCH={torch}"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    pips = [ln for ln in proc.stdout.splitlines() if "pip install" in ln]
    assert len(pips) == 2 and "-e '.[eval,joblib,ray,submitit,test]'" in pips[0], pips
    assert "torch" not in proc.stdout, proc.stdout
    default = subprocess.run(["make", "-n", "-B", "test-venv", f"TEST_VENV={tmp_path / 'v'}"],
                             cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    assert "pip install -q torch==" in default and "plugins/centerface[torch]" in default
