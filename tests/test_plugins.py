"""Plugin discovery (entry points), ZOO_DISABLE_PLUGINS, per-model dispatch and broken plugins."""
from __future__ import annotations

import json
import re
import types

import numpy as np
import pytest

from zoo_core import hookimpl
from zoo_core.api.errors import PluginError
from zoo_core.api.types import Sample
from zoo_core.plugins.manager import ZooPluginManager


def _row(listing: str, name: str) -> str:
    rows = [ln for ln in listing.splitlines() if ln.split()[:1] == [name]]
    assert rows, f"{name!r} not listed in:\n{listing}"
    return rows[0]


def _section(listing: str, title: str) -> str:
    m = re.search(rf"^{title}:\n((?:  .*\n?)*)", listing, re.M)
    return m.group(1) if m else ""


def test_list_shows_fixture_with_distribution_version_and_hooks(zoo):
    out = zoo.ok("list")
    row = _row(_section(out, "models"), "fixture")
    assert "zoo-fixture 0.3.1" in row
    hooks = row.split("hooks:")[1].replace(",", " ").split()
    assert {"dataset", "preprocess", "postprocess", "evaluate", "export", "atc_args", "oracle_outputs"} <= set(hooks)
    assert "fixture_observer" in _section(out, "plugins")
    backends = _section(out, "backends")
    for b in ("onnxruntime", "torch", "acl", "replay", "oracle"):
        assert re.search(rf"^  {b}\s+zoo-core", backends, re.M), backends


def test_disable_plugins_removes_fixture_and_run_says_disabled(zoo):
    rc, out, err = zoo("list", ZOO_DISABLE_PLUGINS="fixture")
    assert rc == 0
    assert "fixture" not in _section(out, "models").split()
    assert "disabled by ZOO_DISABLE_PLUGINS: fixture" in out
    rc, out, err = zoo("run", "model=fixture", "stage=eval", ZOO_DISABLE_PLUGINS="fixture")
    assert rc != 0
    assert "disabled" in err and "ZOO_DISABLE_PLUGINS" in err and "Traceback" not in err


def test_disabled_model_in_process(monkeypatch):
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "fixture, fixture_observer")
    pm = ZooPluginManager()
    assert "fixture" not in pm.models and "fixture_observer" not in pm.extras
    with pytest.raises(PluginError, match="disabled by ZOO_DISABLE_PLUGINS"):
        pm.hooks_for("fixture")


@pytest.fixture(scope="module")
def fixture_cfg():
    from zoo_core.config.validate import compose

    return compose(["model=fixture"])


def test_dispatch_reaches_only_the_selected_model(fixture_cfg, monkeypatch):
    monkeypatch.delenv("ZOO_DISABLE_PLUGINS", raising=False)
    pm = ZooPluginManager()
    assert {"centerface", "centernet", "fixture"} <= set(pm.models)
    called = []
    pm.pm.add_hookcall_monitoring(lambda name, impls, kw: called.append((name, [i.plugin_name for i in impls])),
                                  lambda *a: None)
    image = np.zeros((48, 80, 3), np.uint8)
    image[10:20, 30:40] = 255
    inputs, meta = pm.hooks_for("fixture").preprocess(cfg=fixture_cfg, image=image, sample=Sample("x", "x.png"))
    assert list(inputs) == ["image"] and inputs["image"].shape == (1, 64, 64)
    assert meta["scale_xy"] == [80 / 64, 48 / 64]
    # preprocess, then (once per cfg) input_spec to check the inputs it returned: both the fixture's only
    assert called == [("preprocess", ["fixture"]), ("input_spec", ["fixture"])]
    # the other models' hooks are still reachable through their own dispatch
    from zoo_core.config.validate import compose

    spec = pm.hooks_for("centernet").input_spec(cfg=compose(["model=centernet"]))
    assert spec[0].shape != (1, 64, 64)
    assert called[-1][1] == ["centernet"]


def test_cross_cutting_wrapper_sees_postprocess(fixture_cfg):
    pm = ZooPluginManager()
    seen = []
    spy = types.ModuleType("spy")

    @hookimpl(wrapper=True)
    def postprocess(cfg, outputs, metas):
        result = yield
        seen.append(len(result))
        return result

    spy.postprocess = postprocess
    pm.pm.register(spy, name="spy")
    pm._subset_cache.clear()
    mask = np.zeros((2, 1, 64, 64), np.float32)
    mask[0, 0, 5:15, 5:15] = 1.0
    dets = pm.hooks_for("fixture").postprocess(cfg=fixture_cfg, outputs=[mask],
                                              metas=[{"scale_xy": [1, 1]}, {"scale_xy": [1, 1]}])
    assert [len(d) for d in dets] == [1, 0] and seen == [2]
    np.testing.assert_allclose(dets[0].boxes[0], [5, 5, 15, 15])


def test_an_extras_plugin_answering_a_model_hook_is_broken_and_never_called(fixture_cfg, monkeypatch):
    """Before: a module registered under zoo.plugins with a plain @hookimpl preprocess/postprocess was kept
    by every model's subset caller and answered first: `model=centerface stage=eval` ran the intruder's
    hooks and scored 0.0 with exit 0. Now it is listed as broken at load and the models keep their hooks."""
    from zoo_core.plugins.manager import EXTRA_GROUP

    monkeypatch.delenv("ZOO_DISABLE_PLUGINS", raising=False)
    pm = ZooPluginManager()
    intruder = types.ModuleType("zoo_intruder.plugin")
    calls = []

    @hookimpl
    def preprocess(cfg, image, sample):
        calls.append("preprocess")
        return {"image": np.zeros((1, 1, 1), np.float32)}, {}

    @hookimpl(wrapper=True)
    def postprocess(cfg, outputs, metas):  # a wrapper is allowed
        return (yield)

    @hookimpl
    def zoo_stage_finished(cfg, stage, run_dir, result):  # an observer is allowed
        return None

    intruder.preprocess, intruder.postprocess, intruder.zoo_stage_finished = preprocess, postprocess, zoo_stage_finished
    pm.register_module("intruder", intruder, group=EXTRA_GROUP, dist=("zoo-intruder", "0.1"))
    assert "intruder" not in pm.extras
    (broken,) = [b for b in pm.broken if b.name == "intruder"]
    assert broken.group == EXTRA_GROUP and broken.distribution == "zoo-intruder"
    assert "model hook preprocess without wrapper=True" in broken.error
    assert "model hooks belong in the zoo.models group" in broken.error
    image = np.zeros((48, 80, 3), np.uint8)
    inputs, _ = pm.hooks_for("fixture").preprocess(cfg=fixture_cfg, image=image, sample=Sample("x", "x.png"))
    assert inputs["image"].shape == (1, 64, 64) and calls == []


def test_an_extras_plugin_with_only_wrappers_and_observers_is_kept():
    from zoo_core.plugins.manager import EXTRA_GROUP

    pm = ZooPluginManager(autoload=False)
    spy = types.ModuleType("spy")

    @hookimpl(hookwrapper=True)
    def preprocess(cfg, image, sample):
        yield

    spy.preprocess = preprocess
    pm.register_module("spy", spy, group=EXTRA_GROUP)
    assert "spy" in pm.extras and not pm.broken


@pytest.mark.parametrize("group", ["zoo.model", "zoo_models", "zoo-models", "zoo.plugins"])
def test_an_unknown_model_declared_under_a_near_miss_group_names_the_distribution(monkeypatch, group):
    """Before: a plugin whose pyproject declared [project.entry-points."zoo.model"] got only `unknown model
    'npdet'; installed models: ...`, with nothing pointing at the typo in its group."""
    import zoo_core.config.confpaths as confpaths
    from zoo_core.api.errors import ConfigError
    from zoo_core.config.validate import compose

    real = list(confpaths.all_entry_points())
    assert any(ep.group == "zoo.models" and ep.name == "fixture" for ep in real)
    fake = types.SimpleNamespace(name="npdet", group=group, value="zoo_npdet.plugin",
                                 dist=types.SimpleNamespace(metadata={"Name": "zoo-npdet"}))
    monkeypatch.setattr(confpaths, "all_entry_points", lambda: [*real, fake])
    want = (rf"hint: distribution zoo-npdet declares 'npdet' under the entry-point group '{group}', not "
            r"'zoo.models'.*\[project.entry-points.\"zoo.models\"\]")
    with pytest.raises(PluginError, match=rf"unknown model 'npdet'.*\n.*{want}"):
        ZooPluginManager(autoload=False).hooks_for("npdet")
    with pytest.raises(ConfigError, match=rf"unknown model 'npdet'(.|\n)*{want}"):
        compose(["model=npdet"])
    with pytest.raises(PluginError) as err:  # another name: no hint
        ZooPluginManager(autoload=False).hooks_for("other")
    assert "hint" not in str(err.value)


def test_missing_hook_raises_plugin_error_naming_it(fixture_cfg):
    pm = ZooPluginManager(autoload=False)
    partial = types.ModuleType("partial_model")

    @hookimpl
    def input_spec(cfg):
        return []

    partial.input_spec = input_spec
    pm.register_module("partial", partial)
    hooks = pm.hooks_for("partial")
    assert hooks.implements("input_spec") and not hooks.implements("postprocess")
    with pytest.raises(PluginError, match="'postprocess'"):
        hooks.postprocess(cfg=fixture_cfg, outputs=[], metas=[])
    with pytest.raises(PluginError, match=r"unknown model 'nope'.*partial"):
        pm.hooks_for("nope")


def test_observer_sees_cli_run(zoo, tmp_path, fixture_onnx):
    log = tmp_path / "observer.jsonl"
    zoo.ok("run", "model=fixture", "stage=eval", "batch_size=5", f"model_file={fixture_onnx}",
           ZOO_FIXTURE_OBSERVER_LOG=str(log))
    events = [json.loads(ln) for ln in log.read_text().splitlines()]
    post = [e for e in events if e["hook"] == "postprocess"]
    assert all(e["model"] == "fixture" for e in events)
    assert sum(e["items"] for e in post) == 12
    last = events[-1]
    assert {k: last[k] for k in ("hook", "model", "stage")} == {"hook": "zoo_stage_finished", "model": "fixture",
                                                                 "stage": "eval"}


# -- broken plugins, discovered through real *.dist-info directories on PYTHONPATH ----------------------

@pytest.fixture
def bad_env(zoo, fixtures_dir):
    return zoo.env(PYTHONPATH=str(fixtures_dir / "bad_plugins"))


def test_broken_plugins_are_listed_with_their_errors(zoo, bad_env):
    rc, out, err = zoo("list", env=bad_env)
    assert rc == 0, err
    broken = _section(out, "broken")
    assert re.search(r"badimport .*zoo_bad_import.*RuntimeError: zoo_bad_import: simulated import failure", broken)
    assert re.search(r"badhook .*invalid hook implementation: unknown hook 'postprocesss'", broken)
    assert re.search(r"badapi .*needs zoo hook API '2' \(its ZOO_HOOK_API\), this zoo-c", broken)
    models = _section(out, "models").split()
    assert "fixture" in models and not {"badimport", "badhook", "badapi"} & set(models)


def test_broken_plugin_manager_state(fixtures_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(fixtures_dir / "bad_plugins"))
    import importlib

    importlib.invalidate_caches()
    pm = ZooPluginManager()
    broken = {b.name: b for b in pm.broken}
    assert {"badimport", "badhook", "badapi"} <= set(broken)
    assert broken["badhook"].distribution == "zoo_bad_hook"
    with pytest.raises(PluginError, match="installed but broken"):
        pm.hooks_for("badhook")
    assert "fixture" in pm.models
    # the misspelled plugin was unregistered: no stray implementation remains
    assert pm.pm.get_plugin("badhook") is None


def test_eval_still_works_next_to_broken_plugins(zoo, bad_env, fixture_onnx):
    rc, out, err = zoo("run", "model=fixture", "stage=eval", f"model_file={fixture_onnx}", env=bad_env)
    assert rc == 0, err
    m = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "metrics.json").read_text())
    assert m["metrics"]["AP50"] == 1.0 and m["images"] == 12
    rc, out, err = zoo("run", "model=badhook", "stage=eval", env=bad_env)
    assert rc != 0 and "Traceback" not in err


# -- one plugin manager per process ------------------------------------------------------------------

@pytest.fixture
def count_loads(monkeypatch):
    """Count how often entry points are scanned (= a manager is built), starting from no cached one."""
    from zoo_core import plugins

    loads = []
    real = ZooPluginManager.load_entry_points
    monkeypatch.setattr(ZooPluginManager, "load_entry_points", lambda self: (loads.append(1), real(self))[1])
    monkeypatch.delenv("ZOO_DISABLE_PLUGINS", raising=False)
    plugins.reset_manager()
    yield loads
    plugins.reset_manager()


def test_get_manager_builds_once_for_every_core_caller(count_loads, capsys, tmp_path):
    from zoo_core.cli import run_help
    from zoo_core.cli.listing import print_listing
    from zoo_core.config.validate import no_model_message
    from zoo_core.plugins import get_manager
    from zoo_core.testing.contract import PluginUnderTest

    pm = get_manager()
    assert get_manager() is pm and "fixture" in pm.models
    assert "fixture" in no_model_message() and "fixture" in run_help()
    assert print_listing() == 0 and "fixture" in capsys.readouterr().out
    assert PluginUnderTest("fixture", work_dir=tmp_path).manager is pm
    assert len(count_loads) == 1


def test_get_manager_follows_zoo_disable_plugins(count_loads, monkeypatch):
    from zoo_core.plugins import get_manager

    assert "fixture" in get_manager().models
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "fixture")
    blocked = get_manager()
    assert "fixture" not in blocked.models and get_manager() is blocked
    assert len(count_loads) == 2


def test_a_fresh_manager_is_independent_of_the_shared_one(count_loads):
    from zoo_core.plugins import get_manager

    fresh = ZooPluginManager()
    assert fresh is not get_manager() and len(count_loads) == 2


def test_hook_api_version_rule_is_the_same_for_the_manager_and_the_contract_kit(tmp_path):
    from zoo_core.plugins.manager import accepted_api_versions, api_mismatch
    from zoo_core.testing import contract

    def module(api):
        m = types.ModuleType("zoo_versioned")
        if api is not None:
            m.ZOO_HOOK_API = api

        @hookimpl
        def input_spec(cfg):
            return []

        m.input_spec = input_spec
        return m

    assert accepted_api_versions(module(["1.2", 2])) == ["1.2", "2"]
    assert api_mismatch(module("1.7")) is None and api_mismatch(module(["2", "1"])) is None
    assert api_mismatch(module(None)) is None
    problem = api_mismatch(module(["2", "3"]))
    assert problem == ("plugin needs zoo hook API ['2', '3'] (its ZOO_HOOK_API), this zoo-core provides '1'; install "
                       "a zoo-core release for that API or upgrade the plugin")
    for api, expect in ((None, "should declare ZOO_HOOK_API = '1'"), ("1", None)):
        pm = ZooPluginManager(autoload=False)
        pm.register_module("versioned", module(api))
        plugin = contract.PluginUnderTest("versioned", work_dir=tmp_path, manager=pm)
        if expect is None:
            contract.check_api_version(plugin)
        else:
            with pytest.raises(contract.ContractError, match=expect):
                contract.check_api_version(plugin)
    pm = ZooPluginManager(autoload=False)
    pm.register_module("versioned", module("2"))
    assert pm.broken[0].error == problem.replace("['2', '3']", "'2'")


@pytest.mark.parametrize(("api", "shown"), [(" 1", "' 1'"), ([], "[]"), ("2", "'2'"), (["2", "3"], "['2', '3']")])
def test_a_refused_hook_api_declaration_is_shown_as_written(api, shown):
    """Before: ' 1' gave 'plugin needs zoo hook API  1, this zoo-core provides 1' and [] 'needs zoo hook API , ...'."""
    from zoo_core.plugins.manager import api_mismatch

    m = types.ModuleType("zoo_versioned")
    m.ZOO_HOOK_API = api
    assert api_mismatch(m) == (f"plugin needs zoo hook API {shown} (its ZOO_HOOK_API), this zoo-core provides '1'; "
                               "install a zoo-core release for that API or upgrade the plugin")


def test_a_set_of_hook_api_versions_is_accepted_like_a_list():
    """Before: {"1"} was refused ('needs zoo hook API {'1'}') while ["1"] was accepted."""
    from zoo_core.plugins.manager import accepted_api_versions, api_mismatch

    m = types.ModuleType("zoo_versioned")
    m.ZOO_HOOK_API = {"1", "2"}
    assert accepted_api_versions(m) == ["1", "2"] and api_mismatch(m) is None


def test_a_plugin_loaded_without_zoo_hook_api_is_warned_about(monkeypatch, caplog):
    """Before: a plugin without ZOO_HOOK_API (or set to None) loaded silently; only the contract kit flagged it."""
    import logging

    module = types.ModuleType("zoo_undeclared")

    @hookimpl
    def input_spec(cfg):
        return []

    module.input_spec = input_spec

    class EP:
        name, value, group, dist = "undeclared", "zoo_undeclared", "zoo.models", None

        def load(self):
            return module

    pm = ZooPluginManager(autoload=False)
    with caplog.at_level(logging.WARNING, logger="zoo"):
        pm._load_one(EP(), "zoo.models", pm.models)
    assert "undeclared" in pm.models
    assert caplog.messages == ["plugin zoo_undeclared (model undeclared) declares no ZOO_HOOK_API: loaded as written "
                               "against zoo hook API 1; add ZOO_HOOK_API = '1' to zoo_undeclared"]
