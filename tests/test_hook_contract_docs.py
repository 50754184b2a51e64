"""docs/plugins.md documents every hook spec, generated from hookspecs.py and never stale."""
from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from zoo_core import HOOK_API_VERSION
from zoo_core.api import hookspecs
from zoo_core.api.types import EvalResult, Sample
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
        assert f"### `{hookdoc.signature(name)}`" in text
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


@pytest.mark.needs_torch
def test_every_hook_spec_is_fully_annotated_with_real_types():
    """Each parameter and the return carry a type, and every type resolves (no typo hides in a string)."""
    ns = hookdoc.annotation_namespace()
    for name in hookdoc.spec_names():
        func = getattr(hookspecs, name)
        sig = inspect.signature(func)
        unannotated = [p for p, v in sig.parameters.items() if v.annotation is inspect.Parameter.empty]
        assert not unannotated, f"hook spec {name!r}: parameters without a type: {unannotated}"
        assert sig.return_annotation is not inspect.Signature.empty, f"hook spec {name!r} has no return type"
        hints = typing.get_type_hints(func, globalns=ns)
        assert set(hints) == {*sig.parameters, "return"}
    hints = typing.get_type_hints(hookspecs.preprocess, globalns=ns)
    assert hints["sample"] is Sample and hints["return"] == tuple[dict[str, np.ndarray], dict[str, typing.Any]]
    assert typing.get_type_hints(hookspecs.evaluate, globalns=ns)["return"] is EvalResult


def test_reference_shows_the_types_and_where_they_come_from():
    text = DOC.read_text()
    assert "### `preprocess(cfg: DictConfig, image: np.ndarray, sample: Sample) -> tuple[Inputs, Meta]`" in text
    assert "`np` = `numpy`" in text and "`zoo_core.api.types.Sample`" in text and "`omegaconf.DictConfig`" in text


def test_importing_hookspecs_imports_no_numpy_omegaconf_or_torch():
    code = ("import sys, zoo_core.api.hookspecs; "
            "print(sorted(m for m in ('numpy', 'omegaconf', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
