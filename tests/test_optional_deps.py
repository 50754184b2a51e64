"""torch is an extra: the main job runs without it, and every feature that needs it names the extra to install."""
from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from zoo_core.api.errors import ZooError
from zoo_core.api.optional import MissingDependencyError, require, require_torch

REPO = Path(__file__).resolve().parents[1]

#: Put first on PYTHONPATH, this makes `import torch` fail as if torch were not installed (workers too).
BLOCK_TORCH = '''
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
'''


@pytest.fixture
def no_torch(zoo, tmp_path):
    """The CLI environment of a venv without torch."""
    site = tmp_path / "no_torch_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    return zoo.env(PYTHONPATH=str(site))


def test_require_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` -> ModuleNotFoundError(name="torch")
    with pytest.raises(MissingDependencyError) as err:
        require_torch("the torch backend")
    assert str(err.value) == "the torch backend needs torch, which is not installed: pip install 'zoo-core[torch]'"
    assert isinstance(err.value, ZooError) and err.value.exit_code == 2
    with pytest.raises(MissingDependencyError, match=r"pip install 'zoo-centerface\[torch\]'$"):
        require_torch("exporting centerface", dist="zoo-centerface")


def test_require_returns_the_module_and_keeps_other_import_errors(tmp_path, monkeypatch):
    import json as json_module

    assert require("json", "x", "zoo-core", "y") is json_module
    # an installed package missing one of its own parts is not reported as "not installed"
    pkg = tmp_path / "halfpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import halfpkg.gone\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="halfpkg.gone"):
        require("halfpkg", "x", "zoo-core", "y")


def test_torch_is_an_extra_of_core_and_plugins():
    for path, dist in [("pyproject.toml", "zoo-core"), ("plugins/centerface/pyproject.toml", "zoo-centerface"),
                       ("plugins/centernet/pyproject.toml", "zoo-centernet")]:
        project = tomllib.loads((REPO / path).read_text())["project"]
        assert project["name"] == dist
        assert not [d for d in project["dependencies"] if d.replace(" ", "").startswith("torch")], path
        assert any(d.startswith("torch") for d in project["optional-dependencies"]["torch"]), path
        assert project["license"] == "MIT", path


def test_main_job_runs_without_torch(zoo, no_torch):
    """`make demo` installs no torch: the starclouds eval on onnxruntime never imports it."""
    out = zoo.ok("run", "model=centerface", "stage=eval", "dataset.limit=3", env=no_torch)
    assert "easy" in out
    run = json.loads((zoo.cwd / "outputs" / "centerface" / "eval" / "run.json").read_text())
    assert "torch" not in json.dumps(run.get("versions", {}))


@pytest.mark.parametrize("args, extra", [
    (["model=fixture", "stage=eval", "backend=torch"], "zoo-core[torch]"),
    (["model=fixture", "stage=export"], "zoo-fixture[torch]"),
    (["model=centerface", "model.variant=ascend", "stage=export", "export.target=ascend", "weights=random"],
     "zoo-centerface[torch]"),
    (["model=centernet", "stage=export", "weights=random"], "zoo-centernet[torch]"),
])
def test_features_that_need_torch_say_which_extra(zoo, no_torch, args, extra):
    rc, out, err = zoo("run", *args, env=no_torch)
    assert rc == 2, (out, err)
    # the weights chosen are said first (issue 12: "no weights= given: ... default weights", "weights=random")
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("no weights= given", "warning: weights=random"))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "needs torch, which is not installed" in lines[0]
    assert lines[0].endswith(f"pip install '{extra}'"), lines[0]
    assert "Traceback" not in err
