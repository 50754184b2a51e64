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


class _Answering:
    """The plugin's hooks, with some hooks answering fixed values (``references=[...]``)."""

    def __init__(self, hooks, **answers):
        self._hooks = hooks
        self._answers = answers

    def __getattr__(self, name):
        if name in self._answers:
            return lambda **kw: self._answers[name]
        return getattr(self._hooks, name)


@pytest.mark.needs_torch
def test_atc_args_gets_the_ascend_export(fixture_plugin):
    spy = fixture_plugin.__dict__["hooks"] = _RecordExports(fixture_plugin.hooks)
    args = checks.check_atc_args(fixture_plugin)
    assert spy.targets == ["ascend"]
    onnx = fixture_plugin.export("ascend").path
    assert onnx.name == "fixture_ascend.onnx" and f"--model={onnx}" in args
    assert spy.targets == ["ascend"]  # cached: exported once


@pytest.mark.needs_torch
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


def test_a_plugin_without_schemas_fails_on_its_untyped_keys(fixture_plugin, monkeypatch):
    # the guide says the kit checks that every key of the plugin's files has a type; it used to return
    # early when ZOO_CONFIG_SCHEMAS was absent, so `model.<key>=abc` surfaced later as a plugin bug
    monkeypatch.delattr(fixture_plugin.hooks.info.module, "ZOO_CONFIG_SCHEMAS")
    with pytest.raises(checks.ContractError) as err:
        checks.check_config(fixture_plugin)
    msg = str(err.value)
    assert msg.startswith("conf/model/fixture.yaml keys without a type: ") and "mask_threshold" in msg
    assert "declares no ZOO_CONFIG_SCHEMAS" in msg and "ZOO_CONFIG_SCHEMAS = {'model/fixture': " in msg
    assert "name" not in msg.split(": ")[1].split(" (")[0].split(", ")  # ModelConfig's keys are typed


def test_a_plugin_without_schemas_whose_files_hold_only_base_keys_passes(fixture_plugin, monkeypatch):
    from omegaconf import OmegaConf

    from zoo_core.config import confpaths

    monkeypatch.delattr(fixture_plugin.hooks.info.module, "ZOO_CONFIG_SCHEMAS")
    # a plugin that ships no dataset file (the fixture's squares holds keys of its own)
    monkeypatch.setattr(confpaths, "scan_plugin_confs", lambda: confpaths.ConfScan())
    fixture_plugin.__dict__["cfg"] = OmegaConf.create(
        {"model": {"name": "fixture", "export_keys": None, "predict_threshold": 0.3}, "dataset": {"name": "coco_sample"}})
    checks.check_schemas(fixture_plugin)


@pytest.mark.parametrize("value", ["0.5", True, [0.5]])
def test_references_check_refuses_a_protocol_value_no_run_can_match(fixture_plugin, value):
    # protocol={"model.iou_thresh": "0.5"} passed the kit, then never matched a run (same_value compares
    # a str with a float as different): the reference was silently never judged
    from zoo_core.api.types import Reference

    ref = Reference("AP50", 1.0, 1e-9, "typo", {"dataset.name": "squares", "backend.name": "oracle",
                                                "model.iou_thresh": value})
    fixture_plugin.__dict__["hooks"] = _Answering(fixture_plugin.hooks, references=[ref])
    with pytest.raises(checks.ContractError) as err:
        checks.check_references(fixture_plugin)
    assert f"protocol model.iou_thresh={value!r} ({type(value).__name__}) can never equal the config's float " \
           "value 0.5" in str(err.value)


def test_references_check_accepts_numbers_of_either_kind(fixture_plugin):
    from zoo_core.api.types import Reference
    from zoo_core.runs.references import comparable, same_value

    ref = Reference("AP50", 1.0, 1e-9, "int", {"dataset.name": "squares", "backend.name": "oracle",
                                               "model.iou_thresh": 1, "dataset.limit": None})
    fixture_plugin.__dict__["hooks"] = _Answering(fixture_plugin.hooks, references=[ref])
    assert checks.check_references(fixture_plugin)[0]["protocol"]["model.iou_thresh"] == 1
    for run, want in ((0.5, "0.5"), (True, 1), ([1, 2], ["1", "2"]), ("a", 1)):
        assert not comparable(run, want) and not same_value(run, want)
    assert comparable(0.5, 1) and comparable([1.0, 2], [1, 2.0]) and comparable(None, "x")


def test_schemas_check_covers_dataset_files_the_model_does_not_select(fixture_plugin, monkeypatch):
    # only the dataset the model selects by default was checked, though the guide says "every key of the
    # dataset files the plugin ships": an untyped key of another one reached the plugin as a string
    from omegaconf import OmegaConf

    module = fixture_plugin.hooks.info.module
    schemas = dict(module.ZOO_CONFIG_SCHEMAS)
    assert "dataset/squares" in schemas
    fixture_plugin.__dict__["cfg"] = OmegaConf.merge(fixture_plugin.cfg, {"dataset": {"name": "coco_sample"}})
    checks.check_schemas(fixture_plugin)  # squares composed on its own, and typed
    del schemas["dataset/squares"]
    monkeypatch.setattr(module, "ZOO_CONFIG_SCHEMAS", schemas)
    with pytest.raises(checks.ContractError, match=r"ZOO_CONFIG_SCHEMAS has no entry dataset/'squares'"):
        checks.check_schemas(fixture_plugin)
    monkeypatch.delattr(module, "ZOO_CONFIG_SCHEMAS")
    fixture_plugin.__dict__["cfg"] = OmegaConf.create({"model": {"name": "fixture"}, "dataset": {"name": "coco_sample"}})
    with pytest.raises(checks.ContractError, match=r"^conf/dataset/squares.yaml keys without a type: "):
        checks.check_schemas(fixture_plugin)


def test_a_plugin_without_atc_args_passes_the_kit(fixture_plugin, monkeypatch):
    # REQUIRED_HOOKS held atc_args, so every plugin needed an Ascend export to pass, though the guide says
    # atc_args is for stage=convert only
    assert "atc_args" not in checks.REQUIRED_HOOKS
    monkeypatch.setattr(fixture_plugin.hooks.info, "hooks",
                        [h for h in fixture_plugin.hooks.info.hooks if h != "atc_args"])
    spy = fixture_plugin.__dict__["hooks"] = _RecordExports(fixture_plugin.hooks)
    checks.check_registration(fixture_plugin)
    assert checks.check_atc_args(fixture_plugin) == [] and spy.targets == []  # nothing exported for ascend
    report = checks.check_plugin("fixture", checks=("registration", "atc_args"))
    assert report == {"registration": "ok", "atc_args": "skipped: the plugin does not implement atc_args "
                                                       "(no stage=convert)"}
    assert checks.check_atc_args(fixture_plugin, target=None) == []


def test_contract_class_skips_atc_args_without_an_ascend_path(fixture_plugin):
    from zoo_core.testing.contract import PluginContract

    class NoAscend(PluginContract):
        model = "fixture"
        atc_target = None

    with pytest.raises(pytest.skip.Exception, match="no Ascend path"):
        NoAscend().test_atc_args(fixture_plugin)


def test_the_kit_skips_an_export_that_needs_a_missing_optional_package_and_fails_on_anything_else():
    """Without torch, the kit's export tests said MissingDependencyError as a failure (or an error at setup)."""
    from zoo_core.api.errors import ConfigError
    from zoo_core.api.optional import MissingDependencyError
    from zoo_core.testing.contract import _skip_if_missing_dependency

    with pytest.raises(pytest.skip.Exception, match=r"needs torch, which is not installed: pip install"), \
            _skip_if_missing_dependency():
        raise MissingDependencyError("exporting x needs torch, which is not installed: pip install 'zoo-x[torch]'")
    with pytest.raises(ConfigError), _skip_if_missing_dependency():
        raise ConfigError("a real failure")


@pytest.fixture
def coco_kit(tmp_path, monkeypatch):
    """A PluginUnderTest on the installed centernet plugin on coco_sample, with extra overrides."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))

    def make(*overrides):
        p = checks.PluginUnderTest("centernet", ["dataset=coco_sample", *overrides], tmp_path / "kit")
        if "centernet" not in p.manager.models:
            pytest.skip("the centernet plugin is not installed")
        return p
    return make


def test_the_round_trip_runs_on_images_holding_the_models_classes(coco_kit):
    # a one-class giraffe model (category 25): coco_sample's first 2 images hold no giraffe, so before the round
    # trip ran on them and failed "does not beat empty detections" for a correct plugin
    giraffe = coco_kit("model.category_ids=[25]")
    assert [s.key for s in giraffe.samples] == [105158, 161867]  # the first 2 images holding a giraffe
    metrics = checks.check_roundtrip(giraffe)
    assert metrics["AP"] == 1.0 and [k for k in metrics if k.startswith("AP/")] == ["AP/giraffe"]
    every = coco_kit()  # the 80 COCO ids: image 9917 holds no object at all, 24584 does
    assert [s.key for s in every.samples] == [1644, 24584] and checks.check_roundtrip(every)["AP"] == 1.0


def test_the_kit_says_so_when_no_image_holds_the_models_classes(coco_kit):
    person = coco_kit("model.category_ids=[1]")  # person: not a category of coco_sample
    with pytest.raises(checks.ContractError) as e:
        checks.check_roundtrip(person)
    assert str(e.value).startswith(f"{person.dataset.ann_path}: no image holds (non-crowd) ground truth of the "
                                   "model's categories, model.category_ids [1]")


def test_the_dataset_check_finds_a_missing_file_beyond_the_first_samples(fixture_plugin, tmp_path):
    """Before: only samples[:n_samples] were checked, so a dataset whose 3rd image is missing passed the kit
    ('existing' samples, says the guide) and the run then failed on it."""
    from types import SimpleNamespace

    from zoo_core.api.types import Sample

    for name in ("a", "b"):
        (tmp_path / f"{name}.png").write_bytes(b"x")
    samples = [Sample("a", str(tmp_path / "a.png")), Sample("b", str(tmp_path / "b.png")),
               Sample("c", str(tmp_path / "c.png")), Sample("d", str(tmp_path / "d.png"))]
    fixture_plugin.__dict__["dataset"] = SimpleNamespace(name="four", root=tmp_path, samples=lambda: list(samples))
    with pytest.raises(checks.ContractError, match=r"hook 'dataset': sample 'c' points to a missing file "
                                                   rf"{tmp_path / 'c.png'} \(and 1 more of the 4 samples\)$"):
        checks.check_dataset(fixture_plugin)
    samples[2:] = []
    checks.check_dataset(fixture_plugin)


class _Float16Spec:
    """The plugin's hooks, with an output_spec saying float16 (the fixture's ONNX gives float32)."""

    def __init__(self, hooks):
        self._hooks = hooks

    def __getattr__(self, name):
        call = getattr(self._hooks, name)
        if name != "output_spec":
            return call
        import dataclasses

        return lambda **kw: [dataclasses.replace(s, dtype="float16") for s in call(**kw)]


@pytest.mark.needs_torch
def test_the_export_check_compares_output_dtypes_with_the_output_spec(fixture_plugin):
    """Before: output_spec float16 vs ONNX float32 passed the kit (and eval), and a later stage=postprocess failed
    reading the float32 .bin files as float16."""
    fixture_plugin.__dict__["hooks"] = _Float16Spec(fixture_plugin.hooks)
    with pytest.raises(checks.ContractError, match=r"^hook 'export \(onnxruntime outputs\)': output '\w+' is float32, "
                                                   r"output_spec says float16$"):
        checks.check_export(fixture_plugin, compare_torch=False)
