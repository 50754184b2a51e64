"""`make lint` is configured as promised: ruff rules, mypy over the whole code, no blanket escapes."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_ruff_rule_set_and_complexity_cap():
    ruff = PYPROJECT["tool"]["ruff"]
    assert {"E", "F", "I", "B", "UP", "C90"} <= set(ruff["lint"]["select"])
    assert 0 < ruff["lint"]["mccabe"]["max-complexity"] <= 15
    assert "exclude" not in ruff and "extend-exclude" not in ruff


def test_mypy_checks_the_core_and_both_plugins_without_blanket_ignores():
    mypy = PYPROJECT["tool"]["mypy"]
    assert set(mypy["files"]) >= {"zoo_core", "plugins/centernet/zoo_centernet", "plugins/centerface/zoo_centerface"}
    assert not mypy.get("ignore_errors") and mypy.get("check_untyped_defs")
    for override in mypy.get("overrides", []):
        assert not override.get("ignore_errors"), override
        modules = override["module"] if isinstance(override["module"], list) else [override["module"]]
        if override.get("ignore_missing_imports"):  # only third-party libraries without stubs
            assert not [m for m in modules if m.startswith("zoo")], override
    api = [o for o in mypy["overrides"] if "zoo_core.api.*" in o["module"]]
    assert api and api[0].get("disallow_untyped_defs"), "the plugin API must stay fully typed"


def test_make_lint_runs_both_and_the_tools_are_installed_by_the_test_extra():
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and "ruff check" in recipe.group(1) and "mypy" in recipe.group(1)
    extra = " ".join(PYPROJECT["project"]["optional-dependencies"]["test"])
    assert "ruff" in extra and "mypy" in extra


def test_type_ignores_name_their_error_code():
    bare = []
    for path in [*REPO.glob("zoo_core/**/*.py"), *REPO.glob("plugins/*/zoo_*/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"#\s*type:\s*ignore(?!\[)", line):
                bare.append(f"{path.relative_to(REPO)}:{n}")
    assert not bare, f"`# type: ignore` without an error code: {bare}"
