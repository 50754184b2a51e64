"""Plugins use only the public plugin API: ``zoo_core`` (hookimpl, HOOK_API_VERSION) and ``zoo_core.api.*``.

Their tests may also use ``zoo_core.testing``. Checked on the sources of both bundled plugins, the
test fixture plugin and the ``zoo new-plugin`` templates (rendered), so the core can reorganise
everything else without breaking a plugin.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from zoo_core.api.aisbench import input_file
from zoo_core.cli.scaffold import names_for, render, template_root

REPO = Path(__file__).resolve().parents[1]
PACKAGE_API = ("zoo_core", "zoo_core.api", "zoo_core.datasets")  # the plugin API and the dataset API
TEST_API = (*PACKAGE_API, "zoo_core.testing")


def _allowed(module: str, api: tuple[str, ...]) -> bool:
    if module == "zoo_core":
        return True
    return any(module == a or module.startswith(a + ".") for a in api if a != "zoo_core")


def import_violations(source: str, name: str, api: tuple[str, ...], allow_pluggy: bool) -> list[str]:
    """``file:line: import`` for every zoo_core module outside ``api`` (and ``pluggy`` unless allowed)."""
    bad = []
    for node in ast.walk(ast.parse(source, name)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "zoo_core":  # `from zoo_core import plugins` reaches past the API too
                modules = [f"zoo_core.{a.name}" if a.name not in ("hookimpl", "HOOK_API_VERSION", "__version__")
                           else "zoo_core" for a in node.names]
        for mod in modules:
            top = mod.split(".")[0]
            if (top == "zoo_core" and not _allowed(mod, api)) or (top == "pluggy" and not allow_pluggy):
                bad.append(f"{name}:{node.lineno}: {mod}")
    return bad


def plugin_sources() -> list[tuple[str, str, bool]]:
    """``(name, source, is_test)`` of every Python file of the plugins, the fixture plugin and the templates."""
    out = []
    for pkg in [*sorted(REPO.glob("plugins/*/zoo_*")), REPO / "tests/fixtures/zoo-fixture/zoo_fixture"]:
        out += [(str(p.relative_to(REPO)), p.read_text(), False) for p in sorted(pkg.rglob("*.py"))]
    for tests in sorted(REPO.glob("plugins/*/tests")):
        out += [(str(p.relative_to(REPO)), p.read_text(), True) for p in sorted(tests.glob("*.py"))]
    values = names_for("demo")
    for p in sorted(template_root().rglob("*.py.tmpl")):
        rel = p.relative_to(template_root())
        out.append((f"templates/{rel}", render(p.read_text(), values), rel.parts[0] == "tests"))
    return out


def test_the_scan_sees_every_plugin():
    names = [n for n, _, _ in plugin_sources()]
    for expected in ("plugins/centernet/zoo_centernet/plugin.py", "plugins/centerface/zoo_centerface/plugin.py",
                     "tests/fixtures/zoo-fixture/zoo_fixture/plugin.py", "templates/__package__/plugin.py.tmpl",
                     "plugins/centernet/tests/test_contract.py"):
        assert expected in names


def test_plugins_import_only_the_public_api():
    bad = []
    for name, source, is_test in plugin_sources():
        bad += import_violations(source, name, TEST_API if is_test else PACKAGE_API, allow_pluggy=is_test)
    assert not bad, "plugins reach past zoo_core / zoo_core.api:\n" + "\n".join(bad)


def test_plugins_register_hooks_with_zoo_core_hookimpl():
    for name, source, is_test in plugin_sources():
        if not is_test and "@hookimpl" in source:
            assert "from zoo_core import hookimpl" in source, f"{name} should use zoo_core.hookimpl"


@pytest.mark.parametrize("source, api, bad", [
    ("from zoo_core.pipeline.runner import prepare_one\n", PACKAGE_API, ["x.py:1: zoo_core.pipeline.runner"]),
    ("import zoo_core.runs.context\n", PACKAGE_API, ["x.py:1: zoo_core.runs.context"]),
    ("from zoo_core import plugins, hookimpl\n", PACKAGE_API, ["x.py:1: zoo_core.plugins"]),
    ("import pluggy\n", PACKAGE_API, ["x.py:1: pluggy"]),
    ("from zoo_core.testing import golden_dir\n", PACKAGE_API, ["x.py:1: zoo_core.testing"]),
    ("from zoo_core.testing import golden_dir\nfrom zoo_core.api.types import Sample\n", TEST_API, []),
    ("from zoo_core import hookimpl, HOOK_API_VERSION\nimport zoo_core.api.geometry\n", PACKAGE_API, []),
    ("from zoo_core.apix import y\n", PACKAGE_API, ["x.py:1: zoo_core.apix"]),
])
def test_the_scan_flags_what_it_should(source, api, bad):
    assert import_violations(source, "x.py", api, allow_pluggy=False) == bad


def test_input_file_layout(tmp_path):
    assert input_file(tmp_path, "image", "000001", multi=False) == tmp_path / "000001.bin"
    assert input_file(tmp_path, "image", "000001", multi=True) == tmp_path / "image" / "000001.bin"
    assert input_file(str(tmp_path), "input.1", "a_b", multi=True) == tmp_path / "input.1" / "a_b.bin"


def test_per_config_runs_once_per_config_object_and_afresh_for_a_new_one():
    from omegaconf import OmegaConf

    from zoo_core.api.config import per_config

    calls = []

    @per_config
    def threshold(cfg):
        calls.append(cfg)
        return float(cfg.model.threshold)

    a = OmegaConf.create({"model": {"threshold": 0.5}})
    assert threshold(a) == 0.5 and threshold(a) == 0.5 and len(calls) == 1
    b = OmegaConf.merge(a, {"model": {"threshold": 0.3}})
    assert threshold(b) == 0.3 and len(calls) == 2
    assert threshold(a) == 0.5 and len(calls) == 2
