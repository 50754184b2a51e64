"""Meta-test: every hook spec is documented, and each bundled plugin's tests call every hook it implements.

How "called" is established (re-running both plugins' whole test suites under a tracer would double
the suite's run time, so the proof has two cheap halves):

1. Runtime: the test kit's contract checks (:mod:`zoo_core.testing.contract`) are run against the
   ``fixture`` plugin, which implements every model hook, with pluggy's hook-call monitoring on;
   this measures which hooks a ``PluginContract`` subclass invokes.
2. Static: each bundled plugin's ``tests/*.py`` are parsed; a hook counts as called by them if a test
   calls it by name (``plugin.preprocess(...)``, ``hooks.export(...)``, a function imported from the
   plugin module, ``call("evaluate", ...)``), or if a test class subclasses ``PluginContract`` for
   that model and the kit invokes the hook (half 1).
"""
from __future__ import annotations

import ast
import inspect
import tomllib
from pathlib import Path

import pytest

from zoo_core.api import hookspecs
from zoo_core.plugins.hookdoc import spec_names
from zoo_core.plugins.manager import ZooPluginManager
from zoo_core.testing import contract

REPO = Path(__file__).resolve().parents[1]


def bundled_plugins() -> dict[str, Path]:
    """``{model name: plugin directory}`` from ``plugins/*/pyproject.toml`` entry points."""
    out = {}
    for pyproject in sorted(REPO.glob("plugins/*/pyproject.toml")):
        eps = tomllib.loads(pyproject.read_text())["project"].get("entry-points", {}).get("zoo.models", {})
        out.update({name: pyproject.parent for name in eps})
    return out


def test_every_hook_spec_is_documented():
    for name in spec_names():
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert doc.strip(), f"hook spec {name!r} has no docstring"
        assert ":returns:" in doc or ":param" in doc, f"hook spec {name!r} documents no :param:/:returns:"
    assert set(hookspecs.MODEL_HOOKS) <= set(spec_names())


@pytest.fixture(scope="module")
def hooks_the_kit_calls(tmp_path_factory) -> set[str]:
    """Model hooks invoked by all contract checks on the ``fixture`` plugin (pluggy call monitoring)."""
    pytest.importorskip("torch", reason="the contract checks export the fixture model through torch")
    # a fresh manager: the call monitoring below must not stay on the process's shared one
    plugin = contract.PluginUnderTest("fixture", work_dir=tmp_path_factory.mktemp("kit"), manager=ZooPluginManager())
    if "fixture" not in plugin.manager.models:
        pytest.skip("the zoo-fixture test plugin is not installed (make test installs it)")
    assert set(plugin.manager.models["fixture"].hooks) >= set(hookspecs.MODEL_HOOKS)
    seen: set[str] = set()
    plugin.manager.pm.add_hookcall_monitoring(lambda hook, impls, kwargs: seen.add(hook), lambda *a: None)
    mp = pytest.MonkeyPatch()
    mp.setenv("ZOO_CACHE_DIR", str(tmp_path_factory.mktemp("kit_cache")))
    try:
        for check in contract.CHECKS:
            if check == "evaluate":
                contract.check_evaluate(plugin, contract.check_export(plugin))
            else:
                getattr(contract, f"check_{check}")(plugin)
    finally:
        mp.undo()
    return seen


def test_the_contract_kit_calls_every_model_hook(hooks_the_kit_calls):
    assert hooks_the_kit_calls >= set(hookspecs.MODEL_HOOKS), \
        f"PluginContract never calls {sorted(set(hookspecs.MODEL_HOOKS) - hooks_the_kit_calls)}"


def _hooks_named_in_tests(test_dir: Path, model: str, plugin_module: str) -> tuple[set[str], bool]:
    """Hooks called by name in ``test_dir/*.py``, and whether a PluginContract subclass tests ``model``."""
    called: set[str] = set()
    contract_class = False
    hooks = set(hookspecs.MODEL_HOOKS)
    for path in sorted(test_dir.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        imported: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == plugin_module:
                imported.update({a.asname or a.name: a.name for a in node.names if a.name in hooks})
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Attribute) and f.attr in hooks:
                    called.add(f.attr)
                elif isinstance(f, ast.Name) and f.id in imported:
                    called.add(imported[f.id])
                for arg in node.args[:2]:
                    if isinstance(arg, ast.Constant) and arg.value in hooks:
                        called.add(arg.value)
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", None)) == "PluginContract" for b in node.bases):
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == "model" for t in stmt.targets)
                            and isinstance(stmt.value, ast.Constant) and stmt.value.value == model):
                        contract_class = True
    return called, contract_class


@pytest.mark.parametrize("model", sorted(bundled_plugins()))
def test_each_bundled_plugin_tests_call_every_hook_it_implements(model, hooks_the_kit_calls):
    manager = ZooPluginManager()
    assert model in manager.models, f"bundled plugin {model!r} is not installed or is broken"
    info = manager.models[model]
    implemented = {h for h in info.hooks if h in hookspecs.MODEL_HOOKS}
    named, has_contract = _hooks_named_in_tests(bundled_plugins()[model] / "tests", model, info.module.__name__)
    assert has_contract, f"plugins/{model}/tests has no PluginContract subclass with model = {model!r}"
    missing = implemented - named - (hooks_the_kit_calls if has_contract else set())
    assert not missing, f"no test of plugin {model!r} calls {sorted(missing)}"


def test_static_scan_sees_calls_and_contract_classes(tmp_path):
    (tmp_path / "test_a.py").write_text(
        "from zoo_x.plugin import preprocess as pre, evaluate\n"
        "def test_a(hooks, p):\n    pre(1, 2, 3)\n    hooks.export(cfg=1)\n    p.call('atc_args')\n")
    assert _hooks_named_in_tests(tmp_path, "x", "zoo_x.plugin") == ({"preprocess", "export", "atc_args"}, False)
    (tmp_path / "test_b.py").write_text("from zoo_core.testing.contract import PluginContract\n"
                                        "class TestC(PluginContract):\n    model = 'x'\n")
    assert _hooks_named_in_tests(tmp_path, "x", "zoo_x.plugin")[1]
    assert not _hooks_named_in_tests(tmp_path, "y", "zoo_y.plugin")[1]
