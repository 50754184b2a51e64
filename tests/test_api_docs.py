"""docs/api.md documents everything plugins import, generated from the code and never stale."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import shutil
from pathlib import Path

import pytest

from zoo_core.plugins import apidoc

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "api.md"


def test_api_md_is_up_to_date():
    text = DOC.read_text()
    assert apidoc.splice(text, apidoc.render_reference()) == text, \
        "docs/api.md is stale: run python -m zoo_core.plugins.apidoc docs/api.md"


def test_every_documented_name_has_a_docstring_or_comment():
    assert apidoc.undocumented() == []


def test_every_public_function_appears_with_its_signature():
    text = DOC.read_text()
    for modname in apidoc.MODULES:
        module = importlib.import_module(modname)
        for name in apidoc.public_names(module):
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                assert f"### `{name}{apidoc.signature(obj, module)}`" in text, (modname, name)
            elif inspect.isclass(obj):
                assert f"### class `{name}" in text, (modname, name)
            else:
                assert f"### `{name}`" in text, (modname, name)


def test_the_frictions_of_issue_19_are_answered():
    from zoo_core.api import geometry

    text = DOC.read_text()
    # letterbox's real signature (whatever it is at the time), Detections.empty, Sample.key, the labels dtype
    assert f"### `letterbox{apidoc.signature(geometry.letterbox, geometry)}`" in text
    assert "#### classmethod `Detections.empty() -> Detections`" in text
    section = text.split("### class `Sample(")[1].split("\n### ")[0]
    assert "- `key`: " in section and "(event, stem)" in section and "COCO image id" in section
    detections = text.split("### class `Detections(")[1].split("\n### ")[0]
    assert "- `labels`: " in detections and "int32" in detections
    for modname in ("zoo_core.api.geometry", "zoo_core.api.nms", "zoo_core.api.peaks", "zoo_core.api.atc",
                    "zoo_core.api.imaging", "zoo_core.api.types", "zoo_core.datasets.widerface", "zoo_core.datasets.coco"):
        assert f"## `{modname}`" in text


def test_check_mode_detects_and_fixes_a_stale_copy(tmp_path, capsys):
    copy = tmp_path / "api.md"
    shutil.copy(DOC, copy)
    assert apidoc.main(["--check", str(copy)]) == 0
    copy.write_text(copy.read_text().replace("No detections:", "Outdated text:"))
    assert apidoc.main(["--check", str(copy)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert apidoc.main([str(copy)]) == 0
    assert copy.read_text() == DOC.read_text()


def test_rendering_does_not_depend_on_the_environment(monkeypatch):
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", "5")
    # the limit is read when a run starts (max_image_pixels), not at import: the documented default stays
    assert "### `MAX_PIXELS` = `100000000`" in apidoc.render_module("zoo_core.api.imaging")
    assert not re.search(r"0x[0-9a-f]{6,}", apidoc.render_reference())  # no object addresses


def test_defaults_and_name_tuples_are_shown_as_they_are():
    # `dynamic_hw: bool = False` was shown as `= TYPE_CHECKING` (any module constant that is the same object),
    # and REQUIRED_HOOKS was cut at 'atc_a ...', hiding which hooks the contract kit requires
    from zoo_core.api import atc, config
    from zoo_core.testing import checks

    assert "dynamic_hw: bool = False)" in apidoc.signature(atc.input_shape_arg, atc)
    assert "name: str = MISSING" in apidoc.signature(config.ModelConfig, config)  # a real constant keeps its name
    text = apidoc.render_module("zoo_core.testing.checks")
    assert f"### `REQUIRED_HOOKS` = `{checks.REQUIRED_HOOKS!r}`" in text
    assert f"### `CHECKS` = `{checks.CHECKS!r}`" in text
    assert "TYPE_CHECKING" not in DOC.read_text().split("<!-- apidoc:start")[1]


def test_an_enum_is_rendered_by_its_members_not_the_stdlibs_signature():
    # Before: `class PredCount(value, names=None, *, module=None, ...)` on Python 3.11 but `PredCount(*values)`
    # on 3.12+ (inspect.signature of an Enum changed), so docs/api.md was stale on every Python but one
    from zoo_core.api import config

    text = apidoc.render_name(config, "PredCount", {})
    assert text.startswith("### class `PredCount`\n")
    assert "Members: `strict` = `'strict'`, `lines` = `'lines'`." in text


def test_splice_requires_markers():
    with pytest.raises(ValueError, match="markers"):
        apidoc.splice("no markers here", "x")


def test_plugin_guide_answers_the_dataset_frictions():
    guide = (REPO / "docs" / "plugins.md").read_text()
    assert "## Datasets and metrics: reuse zoo-core's" in guide
    naming = guide.split("## Naming")[1].split("\n## ")[0]
    assert "(`mydet_discs`, `mydet_faces`)" in naming and "prefix yours (`<model>_discs`, `coco`" not in naming
    assert "`dataset.limit`...) are the core's, at the top level" not in guide
    assert "(`dataset.limit=3`, not `limit=3`)" in guide
    assert "zoo_core.testing.checks.check_plugin" in guide and "pip install -e" in guide
    # where a generated sample lives and where its ground truth is
    assert "$ZOO_CACHE_DIR/widerface_sample" in guide and "ground_truth/" in guide


def _imported_zoo_core_modules(source: str, name: str) -> set[str]:
    """The ``zoo_core`` modules a source imports from: ``from zoo_core.api import arena`` is ``zoo_core.api.arena``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "zoo_core"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "zoo_core":
            package = hasattr(importlib.import_module(node.module), "__path__")
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if package and importlib.util.find_spec(sub) is not None else node.module)
    return found


def _plugin_imports() -> dict[str, set[str]]:
    """module -> the shipped or fixture plugin files that import it."""
    files = [p for pkg in sorted(REPO.glob("plugins/*/zoo_*")) for p in sorted(pkg.rglob("*.py"))]
    files += sorted(p for d in sorted(REPO.glob("tests/fixtures/*/")) for p in d.rglob("*.py"))
    out: dict[str, set[str]] = {}
    for path in files:
        rel = str(path.relative_to(REPO))
        for mod in _imported_zoo_core_modules(path.read_text(), rel):
            out.setdefault(mod, set()).add(rel)
    return out


def test_every_module_a_plugin_imports_is_documented():
    # docs/api.md promises every function a plugin may import: a new module a plugin starts using must be
    # added to apidoc.MODULES (and so rendered here), or the page silently stops covering the plugins
    imports = _plugin_imports()
    assert "zoo_core.api.types" in imports and "zoo_core.api.config" in imports  # the scan does find them
    text = DOC.read_text()
    missing = {mod: sorted(files) for mod, files in imports.items()
               if mod not in apidoc.MODULES or f"## `{mod}`" not in text}
    assert missing == {}, f"modules plugins import but docs/api.md does not document: {missing}"


def test_import_scan_resolves_submodules():
    assert _imported_zoo_core_modules("from zoo_core.api import arena\nimport zoo_core.api.nms\n"
                                      "from zoo_core.api.config import MISSING\nfrom zoo_core import hookimpl\n",
                                      "x.py") == {"zoo_core.api.arena", "zoo_core.api.nms", "zoo_core.api.config",
                                                  "zoo_core"}


def _resolves(dotted: str) -> bool:
    """``zoo_core.a.b.name`` names a module or an attribute of the longest importable module prefix."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("doc", ["README.md", "docs/plugins.md", "docs/api.md"])
def test_every_dotted_zoo_core_name_in_the_docs_exists(doc):
    # docs/plugins.md named zoo_core.testing.check_references, an AttributeError for whoever followed it
    names = set(re.findall(r"`(zoo_core(?:\.\w+)+)", (REPO / doc).read_text()))
    assert names and [n for n in sorted(names) if not _resolves(n)] == []


def test_plugin_guide_lists_every_contract_test():
    from zoo_core.testing.contract import PluginContract

    guide = (REPO / "docs" / "plugins.md").read_text()
    table = guide.split("| test | what it proves |")[1].split("\n\n")[0]
    listed = re.findall(r"^\| `(test_\w+)` \|", table, re.M)
    assert len(listed) == len(set(listed))
    assert set(listed) == {n for n in dir(PluginContract) if n.startswith("test_")}


def test_the_docs_do_not_promise_bit_identical_coco_stats_from_the_two_evaluators():
    """Before: README ("AP identical"), resolve_evaluator's docstring and so docs/api.md ("Both give identical
    stats") promised what an audit of 166 prediction sets refuted: any of the 12 stats, AP included, may differ
    between faster-coco-eval and pycocotools in the last bit (at most 5.6e-17)."""
    from zoo_core.datasets.coco.evaluation import resolve_evaluator

    readme = " ".join((REPO / "README.md").read_text().split())
    assert "AP identical" not in readme and "up to the last bit: any of the 12, AP included" in readme
    for text in (" ".join((resolve_evaluator.__doc__ or "").split()), " ".join(DOC.read_text().split())):
        assert "identical stats" not in text
        assert "Both give the same stats up to the last bit (any of the 12, AP included" in text
