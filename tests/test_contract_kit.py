"""The contract kit itself: runs without pytest, and checks atc_args on the ONNX ATC converts."""
from __future__ import annotations

import subprocess
import sys

import pytest

from zoo_core.testing import checks


@pytest.fixture
def fixture_plugin(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    p = checks.PluginUnderTest("fixture", work_dir=tmp_path / "kit")
    if "fixture" not in p.manager.models:
        pytest.skip("the zoo-fixture test plugin is not installed (make test installs it)")
    return p


class _RecordExports:
    """The plugin's hooks, recording the target of every ``export`` call."""

    def __init__(self, hooks):
        self._hooks = hooks
        self.targets = []

    def __getattr__(self, name):
        call = getattr(self._hooks, name)
        if name != "export":
            return call

        def export(**kw):
            self.targets.append(kw["target"])
            return call(**kw)
        return export


def test_atc_args_gets_the_ascend_export(fixture_plugin):
    spy = fixture_plugin.__dict__["hooks"] = _RecordExports(fixture_plugin.hooks)
    args = checks.check_atc_args(fixture_plugin)
    assert spy.targets == ["ascend"]
    onnx = fixture_plugin.export("ascend").path
    assert onnx.name == "fixture_ascend.onnx" and f"--model={onnx}" in args
    assert spy.targets == ["ascend"]  # cached: exported once


def test_atc_overrides_apply_to_the_export_too(fixture_plugin):
    res = fixture_plugin.export("ascend", ("model.mask_threshold=0.25",))
    assert res.path.name == "fixture_ascend_0.onnx" and res.path.is_file()
    assert fixture_plugin.config(("model.mask_threshold=0.25",)).model.mask_threshold == 0.25
    assert fixture_plugin.config() is fixture_plugin.cfg


def test_checks_run_without_pytest():
    code = ("import sys; sys.modules['pytest'] = None; "  # importing pytest now fails
            "import zoo_core.testing.checks as c; print(c.CHECKS[0], 'pytest' in sys.modules and sys.modules['pytest'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["registration", "None"]
