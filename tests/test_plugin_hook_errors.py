"""What escapes a plugin hook: a ZooError unchanged, anything else (SystemExit too) as one line naming the plugin.

In-process against fake plugin modules registered with ``register_module``; one CLI test proves that
a hook calling ``sys.exit(0)`` no longer makes ``zoo`` exit 0.
"""
from __future__ import annotations

import errno
import inspect
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from zoo_core import hookimpl
from zoo_core.api import hookspecs
from zoo_core.api.errors import PluginError, PluginHookError, ZooError
from zoo_core.api.types import Detections, Sample
from zoo_core.plugins.manager import ModelHooks, ZooPluginManager

DELIBERATE = ZooError("labels.txt is missing", path="/data/labels.txt", hint="download it")


def _helper_that_fails(x: float) -> float:
    raise ValueError(f"cannot decode {x}\nsecond line of the message")


def _fake_model() -> types.ModuleType:
    mod = types.ModuleType("zoo_fake_plugin")

    @hookimpl
    def postprocess(cfg, outputs, metas):
        sys.exit(0)

    @hookimpl
    def preprocess(cfg, image, sample):
        return _helper_that_fails(1.5)

    @hookimpl
    def evaluate(cfg, detections, dataset, samples, out_dir):
        raise DELIBERATE

    @hookimpl
    def input_spec(cfg):
        return None

    @hookimpl
    def output_spec(cfg, meta):
        raise SystemExit("fatal: giving up")

    @hookimpl
    def dataset(cfg):
        raise KeyboardInterrupt

    for f in (postprocess, preprocess, evaluate, input_spec, output_spec, dataset):
        setattr(mod, f.__name__, f)
    return mod


@pytest.fixture
def manager() -> ZooPluginManager:
    pm = ZooPluginManager(autoload=False)
    pm.register_module("fake", _fake_model(), dist=("zoo-fake", "1.0"))
    return pm


def test_sys_exit_in_a_hook_becomes_one_line_naming_distribution_hook_and_reason(manager):
    with pytest.raises(PluginHookError) as info:
        manager.hooks_for("fake").postprocess(cfg={}, outputs=[np.zeros((1, 1))], metas=[{}])
    assert str(info.value) == ("plugin zoo-fake (model fake), hook postprocess: SystemExit: the hook called "
                               "sys.exit(0); a plugin must raise, not exit")
    assert isinstance(info.value, PluginError) and info.value.exit_code == 1
    assert isinstance(info.value.__cause__, SystemExit) and info.value.__cause__.code == 0


def test_exception_from_a_helper_names_the_hook_and_image_on_one_line(manager):
    with pytest.raises(PluginHookError) as info:
        manager.hooks_for("fake").preprocess(cfg={}, image=np.zeros((4, 4, 3), np.uint8),
                                             sample=Sample("a", Path("/imgs/a.png")))
    assert str(info.value) == ("plugin zoo-fake (model fake), hook preprocess (image /imgs/a.png): "
                               "ValueError: cannot decode 1.5")
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, ValueError) and "second line" in str(info.value.__cause__)


def test_system_exit_with_a_message(manager):
    with pytest.raises(PluginHookError, match=r"hook output_spec: SystemExit: the hook called "
                                              r"sys.exit\('fatal: giving up'\)"):
        manager.hooks_for("fake").output_spec(cfg={}, meta={})


def test_zoo_error_passes_unchanged(manager):
    with pytest.raises(ZooError) as info:
        manager.hooks_for("fake").evaluate(cfg={}, detections={}, dataset=None, samples=[], out_dir=Path("."))
    assert info.value is DELIBERATE and not isinstance(info.value, PluginHookError)


def test_keyboard_interrupt_passes_unchanged(manager):
    with pytest.raises(KeyboardInterrupt):
        manager.hooks_for("fake").dataset(cfg={})


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_a_full_or_read_only_disk_in_a_hook_is_a_storage_error_naming_the_file(err):
    """Before: a full disk or a read-only model_dir while CenterFace's export wrote its ONNX was `error: plugin
    zoo-centerface (model centerface), hook export: OSError: [Errno 28] ... (a bug in the plugin; traceback
    ...)`, exit 1; the storage's error is one line naming the file, exit 2 (docs/errors.md)."""
    mod = types.ModuleType("zoo_writer")

    @hookimpl
    def export(cfg, weights, output, target):
        raise OSError(err, os.strerror(err), str(output))

    @hookimpl
    def postprocess(cfg, outputs, metas):
        raise OSError(err, os.strerror(err))  # a write() finding the disk full names no file

    mod.export, mod.postprocess = export, postprocess
    pm = ZooPluginManager(autoload=False)
    pm.register_module("writer", mod, dist=("zoo-writer", "1.0"))
    with pytest.raises(ZooError) as info:
        pm.hooks_for("writer").export(cfg={}, weights=None, output=Path("/models/w.onnx"), target="onnxruntime")
    assert not isinstance(info.value, PluginError) and info.value.exit_code == 2
    assert str(info.value) == f"/models/w.onnx: {os.strerror(err)}"
    with pytest.raises(ZooError) as info:
        pm.hooks_for("writer").postprocess(cfg={}, outputs=[], metas=[])
    assert not isinstance(info.value, PluginError) and info.value.exit_code == 2
    assert str(info.value) == f"{os.strerror(err)} (hook postprocess)"


def test_another_os_error_in_a_hook_is_still_the_plugins_bug():
    mod = types.ModuleType("zoo_writer")

    @hookimpl
    def postprocess(cfg, outputs, metas):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/plugin/data/anchors.npy")

    mod.postprocess = postprocess
    pm = ZooPluginManager(autoload=False)
    pm.register_module("writer", mod, dist=("zoo-writer", "1.0"))
    with pytest.raises(PluginHookError, match=r"hook postprocess: FileNotFoundError: .*anchors.npy"):
        pm.hooks_for("writer").postprocess(cfg={}, outputs=[], metas=[])


def test_a_missing_hook_is_a_plugin_error_and_a_none_result_a_plugin_bug(manager):
    """A model without a hook the stage needs is exit 2 (choose another model or stage); a hook returning
    None is the plugin's bug, exit 1 like an exception escaping it (was exit 2)."""
    hooks = manager.hooks_for("fake")
    with pytest.raises(PluginError, match="does not implement the 'export' hook") as info:
        hooks.export(cfg={}, weights=None, output=Path("x.onnx"), target="onnxruntime")
    assert not isinstance(info.value, PluginHookError) and info.value.exit_code == 2
    with pytest.raises(PluginHookError, match=r"plugin zoo-fake \(model fake\): hook 'input_spec' returned None") as info:
        hooks.input_spec(cfg={})
    assert info.value.exit_code == 1


def test_without_distribution_the_module_is_named():
    pm = ZooPluginManager(autoload=False)
    pm.register_module("fake", _fake_model())
    with pytest.raises(PluginHookError, match=r"^plugin zoo_fake_plugin \(model fake\), hook postprocess: "):
        pm.hooks_for("fake").postprocess(cfg={}, outputs=[], metas=[])


def _good_model() -> types.ModuleType:
    mod = types.ModuleType("zoo_good")

    @hookimpl
    def postprocess(cfg, outputs, metas):
        return [Detections.empty() for _ in metas]

    mod.postprocess = postprocess
    return mod


def test_a_failing_wrapper_is_blamed_not_the_model():
    pm = ZooPluginManager(autoload=False)
    pm.register_module("good", _good_model(), dist=("zoo-good", "1"))
    spy = types.ModuleType("zoo_spy")

    @hookimpl(wrapper=True)
    def postprocess(cfg, outputs, metas):
        result = yield
        raise RuntimeError(f"spy broke after {len(result)} results")

    spy.postprocess = postprocess
    pm.register_module("spy", spy, group="zoo.plugins", dist=("zoo-spy", "2"))
    with pytest.raises(PluginHookError, match=r"^plugin zoo-spy \(spy\), hook postprocess: RuntimeError: spy broke "
                                              r"after 1 results$"):
        pm.hooks_for("good").postprocess(cfg={}, outputs=[], metas=[{}])


def test_the_model_is_blamed_when_it_raises_under_a_wrapper():
    pm = ZooPluginManager(autoload=False)
    pm.register_module("fake", _fake_model(), dist=("zoo-fake", "1.0"))
    spy = types.ModuleType("zoo_spy")

    @hookimpl(wrapper=True)
    def postprocess(cfg, outputs, metas):
        return (yield)

    spy.postprocess = postprocess
    pm.register_module("spy", spy, group="zoo.plugins", dist=("zoo-spy", "2"))
    with pytest.raises(PluginHookError, match=r"^plugin zoo-fake \(model fake\), hook postprocess: SystemExit"):
        pm.hooks_for("fake").postprocess(cfg={}, outputs=[], metas=[])


def test_a_failing_observer_is_named_and_does_not_stop_the_others():
    pm = ZooPluginManager(autoload=False)
    obs = types.ModuleType("zoo_obs")

    @hookimpl
    def zoo_stage_finished(cfg, stage, run_dir, result):
        raise OSError(f"cannot report {stage}")

    obs.zoo_stage_finished = zoo_stage_finished
    seen = []

    class Later:  # one observer registered before the failing one (called after it), one after
        @hookimpl
        def zoo_stage_finished(self, cfg, stage, run_dir, result):
            seen.append(stage)

    pm.pm.register(Later(), name="early")
    pm.register_module("obs", obs, group="zoo.plugins", dist=("zoo-obs", "1"))
    pm.pm.register(Later(), name="late")
    errors = pm.notify_stage_finished(cfg={}, stage="eval", run_dir=Path("."), result={})
    assert errors == ["plugin zoo-obs (obs), hook zoo_stage_finished: OSError: cannot report eval"]
    assert seen == ["eval", "eval"]  # before: the exception escaped and the observers after it were not called


def test_model_hooks_has_one_typed_method_per_model_hook_matching_the_spec():
    for name in hookspecs.MODEL_HOOKS:
        method = getattr(ModelHooks, name, None)
        assert method is not None, f"ModelHooks has no method {name!r}"
        spec = inspect.signature(getattr(hookspecs, name))
        sig = inspect.signature(method)
        params = [p for p in sig.parameters.values() if p.name != "self"]
        assert [p.name for p in params] == list(spec.parameters), name
        assert all(p.kind is p.KEYWORD_ONLY for p in params), name
        assert [p.annotation for p in params] == [p.annotation for p in spec.parameters.values()], name
        assert sig.return_annotation == spec.return_annotation, name
    assert not hasattr(ModelHooks, "__getattr__")


def test_cli_hook_calling_sys_exit_fails_with_one_line(zoo, fixture_onnx):
    rc, out, err = zoo("run", "model=fixture", "stage=eval", f"model_file={fixture_onnx}",
                       ZOO_FIXTURE_FAULT="postprocess:exit")
    assert rc == 1, (rc, out, err)
    lines = err.strip().splitlines()
    assert lines[0] == ("error: plugin zoo-fixture (model fixture), hook postprocess: SystemExit: the hook called "
                        "sys.exit(0); a plugin must raise, not exit"), err
    assert "Traceback" not in err and "a bug in the plugin; traceback in" in err
    trace = Path(err.split("traceback in ")[1].split(")")[0])
    assert "sys.exit(0)" in trace.read_text() and "zoo_fixture/plugin.py" in trace.read_text()
    assert not (zoo.cwd / "outputs" / "fixture" / "postprocess" / "metrics.json").exists()


def test_an_error_from_a_plugin_the_core_registered_itself_passes_unchanged():
    """Hook implementations the core registers (not an installed distribution) are not blamed as plugins."""
    pm = ZooPluginManager(autoload=False)
    pm.register_module("good", _good_model(), dist=("zoo-good", "1"))
    core = types.ModuleType("zoo_core_internal")

    @hookimpl(wrapper=True)
    def postprocess(cfg, outputs, metas):
        yield
        raise AssertionError("core bug")

    core.postprocess = postprocess
    pm.pm.register(core, name="core-internal")
    pm._subset_cache.clear()
    with pytest.raises(AssertionError, match="core bug"):
        pm.hooks_for("good").postprocess(cfg={}, outputs=[], metas=[{}])


def test_cli_preprocess_bug_names_plugin_and_image_and_counts_as_that_image(zoo, fixture_onnx):
    rc, _, err = zoo("run", "model=fixture", "stage=eval", f"model_file={fixture_onnx}", "num_workers=1",
                     ZOO_FIXTURE_FAULT="preprocess:raise")
    assert rc == 2, err
    first = err.strip().splitlines()[0]
    assert first.startswith("error: plugin zoo-fixture (model fixture), hook preprocess (image ") and \
        first.endswith(".png): ValueError: simulated bug in preprocess"), err
    assert "Traceback" not in err
    # the traceback, formatted in the worker process, is in the run dir as for any plugin bug (it was lost)
    assert "(a bug in the plugin; traceback in " in err, err
    trace = Path(err.split("traceback in ")[1].split(")")[0]).read_text()
    assert "zoo_fixture/plugin.py" in trace and "ValueError: simulated bug in preprocess" in trace


def test_prepare_one_keeps_the_traceback_of_a_plugin_bug(manager, tmp_path):
    import cv2

    from zoo_core.api.errors import InputError
    from zoo_core.pipeline.workers import HookTraceback, prepare_one, stop_error

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((4, 4, 3), np.uint8))
    prep = prepare_one(manager.hooks_for("fake"), {}, Sample("a", image))
    assert prep.error.startswith("plugin zoo-fake (model fake), hook preprocess (image ")
    assert "_helper_that_fails" in prep.trace and "ValueError: cannot decode 1.5" in prep.trace
    err = stop_error(InputError(prep.error), prep.trace)
    assert isinstance(err.__cause__, HookTraceback) and err.__cause__.plugin and err.exit_code == 2
    missing = prepare_one(manager.hooks_for("fake"), {}, Sample("b", tmp_path / "b.png"))  # bad input: no trace
    assert missing.error and missing.trace is None and stop_error(InputError("x"), None).__cause__ is None
