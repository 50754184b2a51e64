"""docs/plugins.md documents every hook spec, generated from hookspecs.py and never stale."""
from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest

from zoo_core import HOOK_API_VERSION
from zoo_core.api import hookspecs
from zoo_core.plugins import hookdoc

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plugins.md"


def test_plugins_md_hook_reference_is_up_to_date():
    text = DOC.read_text()
    assert hookdoc.splice(text, hookdoc.render_reference()) == text, \
        "docs/plugins.md is stale: run python -m zoo_core.plugins.hookdoc docs/plugins.md"


def test_every_hook_spec_has_a_section_with_its_signature_and_fields():
    text = DOC.read_text()
    for name in hookdoc.spec_names():
        func = getattr(hookspecs, name)
        assert f"### `{name}{inspect.signature(func)}`" in text
        for param in inspect.signature(func).parameters:
            if f":param {param}:" in (inspect.getdoc(func) or ""):
                assert f"- `{param}`:" in hookdoc.render_hook(name)
    assert f"Hook API version **{HOOK_API_VERSION}**" in text


def test_plugins_md_covers_entry_points_config_naming_and_versioning():
    text = DOC.read_text()
    for needle in ("zoo.models", "zoo.backends", "zoo.plugins", "conf/model/", "package-data", "zoo-<model>",
                   "ZOO_HOOK_API", "zoo new-plugin", "PluginContract"):
        assert needle in text, needle


def test_check_mode_detects_and_fixes_a_stale_copy(tmp_path, capsys):
    copy = tmp_path / "plugins.md"
    shutil.copy(DOC, copy)
    assert hookdoc.main(["--check", str(copy)]) == 0
    copy.write_text(copy.read_text().replace("Turn one decoded image into model input.", "Outdated text."))
    assert hookdoc.main(["--check", str(copy)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert hookdoc.main([str(copy)]) == 0
    assert copy.read_text() == DOC.read_text()


def test_splice_requires_markers():
    with pytest.raises(ValueError, match="markers"):
        hookdoc.splice("no markers here", "x")


def test_readme_links_the_plugin_guide():
    readme = REPO / "README.md"
    if not readme.is_file():
        pytest.skip("README.md not written yet")
    assert "docs/plugins.md" in readme.read_text(), "README.md should link docs/plugins.md (section 'Adding a model')"
