"""A plugin that returns the wrong thing, or ships a broken config schema, is named as the culprit (one
ZooError line naming the plugin and the hook), not reported as zoo's own AttributeError or a traceback."""
from __future__ import annotations

import dataclasses
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from zoo_core.api.errors import PluginError
from zoo_core.api.types import Detections, Sample
from zoo_core.plugins import get_manager


@pytest.fixture
def hooks():
    return get_manager().hooks_for("fixture")


@pytest.mark.parametrize(("hook", "returned", "kwargs", "text"), [
    ("postprocess", [{"boxes": []}], {"cfg": None, "outputs": [], "metas": []},
     r"hook 'postprocess' must return a list of zoo_core.api.types.Detections \(one per item\), got a list of dict"),
    ("evaluate", {"AP": 1.0}, {"cfg": None, "detections": {}, "dataset": None, "samples": [], "out_dir": None},
     r"hook 'evaluate' must return a zoo_core.api.types.EvalResult, got dict"),
    ("dataset", ["a.png"], {"cfg": None}, r"hook 'dataset' must return a dataset object with a samples\(\) method"),
    ("preprocess", np.zeros((1, 4, 4), np.float32),
     {"cfg": None, "image": np.zeros((4, 4, 3), np.uint8), "sample": Sample("a", "a.png")},
     r"hook 'preprocess' must return a tuple \(inputs: dict of arrays, meta: dict\), got ndarray"),
    ("input_spec", [("image", (3, 4, 4))], {"cfg": None},
     r"hook 'input_spec' must return a list of zoo_core.api.types.TensorSpec, got a list of tuple"),
    ("output_spec", [("heat", (1, 4, 4))], {"cfg": None, "meta": {}},
     r"hook 'output_spec' must return a list of zoo_core.api.types.TensorSpec, got a list of tuple"),
    ("export", "/tmp/model.onnx", {"cfg": None, "weights": None, "output": None, "target": "onnxruntime"},
     r"hook 'export' must return a zoo_core.api.types.ExportResult, got str"),
    ("preprocess", ({"image": np.zeros((1, 4, 4), np.float32)}, {"scale_xy": np.array([1.0, 1.0]), "ok": [1]}),
     {"cfg": None, "image": np.zeros((4, 4, 3), np.uint8), "sample": Sample("a", "a.png")},
     r"hook 'preprocess' \(image a.png\) must return a JSON-serializable meta dict .*got meta\['scale_xy'\] is "
     r"ndarray$"),
])
def test_a_wrong_return_type_names_the_plugin_and_the_hook(hooks, monkeypatch, hook, returned, kwargs, text):
    """Before: input_spec / output_spec returning tuples, export returning a str and a preprocess meta
    holding an ndarray (fine in eval, a TypeError at pipeline/sinks.py in stage=preprocess) were
    "unexpected error" tracebacks naming neither plugin nor hook. Before: postprocess returning dicts failed deep in the detection store with `AttributeError: 'dict'
    object has no attribute 'boxes' (unexpected error)`, exit 1; a bare array from preprocess was blamed on
    the image ("too many values to unpack")."""
    monkeypatch.setattr(hooks, "_call", lambda name, *a, **k: returned)
    with pytest.raises(PluginError, match=rf"zoo-fixture.*{text}") as err:
        getattr(hooks, hook)(**kwargs)
    assert err.value.exit_code == 1  # a plugin bug, as an exception escaping the hook (was 2, like bad input)


def test_postprocess_returning_the_wrong_count_names_the_plugin_and_exits_1(hooks, monkeypatch):
    """Before: `postprocess returned 1 results for a batch of 4` (raised by the stream) named no plugin and
    exited 2 like bad input; a wrong count is a plugin bug (exit 1), named like the other hook errors."""
    from zoo_core.api.errors import PluginHookError

    monkeypatch.setattr(hooks, "_call", lambda name, *a, **k: [Detections.empty()])
    with pytest.raises(PluginHookError, match=r"^plugin zoo-fixture \(model fixture\), hook postprocess: returned 1 "
                                              r"Detections for a batch of 4") as err:
        hooks.postprocess(cfg=None, outputs=[], metas=[{}] * 4)
    assert err.value.exit_code == 1


def test_right_returns_pass_through(hooks, monkeypatch):
    det = Detections.empty()
    monkeypatch.setattr(hooks, "_call", lambda name, *a, **k: (det,))
    assert hooks.postprocess(cfg=None, outputs=[], metas=[{}]) == [det]


def test_a_schema_that_cannot_be_built_names_the_plugin():
    from zoo_core.api.config import ModelConfig
    from zoo_core.config.plugin_schema import typed_section

    @dataclasses.dataclass
    class Broken(ModelConfig):
        K: list = None  # not Optional, default None: OmegaConf refuses the class itself

    with pytest.raises(PluginError, match=r"zoo-mydet's Broken: the config schema of model cannot be built"):
        typed_section(OmegaConf.create({"name": "mydet"}), Broken, "model", "zoo-mydet's Broken")


def test_a_schemas_attribute_that_is_not_a_dict_is_an_error():
    from zoo_core.config.plugin_schema import schema_for

    module = ModuleType("zoo_mydet")
    module.ZOO_CONFIG_SCHEMAS = [object]
    info = SimpleNamespace(module=module, label="plugin zoo-mydet (model mydet)", distribution="zoo-mydet",
                           entry_point="zoo_mydet.plugin")
    manager = SimpleNamespace(models={"mydet": info})
    with pytest.raises(PluginError, match=r"plugin zoo-mydet \(model mydet\): ZOO_CONFIG_SCHEMAS must be a dict"):
        schema_for("model", "mydet", SimpleNamespace(dataset_owner={}), manager)


def test_a_hook_with_a_misnamed_argument_is_one_line_in_the_broken_list():
    import pluggy

    from zoo_core import hookimpl
    from zoo_core.config.confpaths import MODELS_GROUP
    from zoo_core.plugins.manager import ZooPluginManager

    module = ModuleType("zoo_typo")
    module.ZOO_HOOK_API = get_manager().hooks_for("fixture").info.module.ZOO_HOOK_API

    @hookimpl
    def preprocess(cfg, img, sample):  # 'img' is not the spec's 'image'
        return {}, {}

    module.preprocess = preprocess
    pm = ZooPluginManager()
    pm._register("typo", module, MODELS_GROUP, {}, "zoo_typo", ("zoo-typo", "0"))
    [broken] = [b for b in pm.broken if b.name == "typo"]
    assert "\n" not in broken.error and "{'img'}" in broken.error and "Plugin '" not in broken.error
    assert pluggy.PluginValidationError.__name__ in broken.error


def test_detections_refuse_float_labels_that_are_not_integers():
    """Before: labels=[0.5, 1.7] were silently truncated to classes 0 and 1 (api.md promises integer input is
    converted, nothing about fractions)."""
    with pytest.raises(ValueError, match=r"labels must be integer class indices, got 0\.5 \(2 non-integer value"):
        Detections(np.zeros((3, 4)), [0.9, 0.8, 0.7], [0.5, 1.0, 1.7])
    with pytest.raises(ValueError, match=r"labels must be integer class indices, got nan"):
        Detections(np.zeros((1, 4)), [0.9], [np.nan])
    assert Detections(np.zeros((2, 4)), [0.9, 0.8], np.array([0.0, 2.0])).labels.tolist() == [0, 2]
    assert Detections(np.zeros((2, 4)), [0.9, 0.8], np.zeros(2)).labels.dtype == np.int32


def test_detections_refuse_boxes_that_are_not_n_by_4():
    """Before: (n, 5) boxes (x1, y1, x2, y2, score) gave a bare `cannot reshape array of size 15 into shape
    (4)`-style ValueError, or were silently regrouped into other boxes when the size divided by 4."""
    with pytest.raises(ValueError, match=r"boxes must be \(n, 4\) \[x1, y1, x2, y2\], got shape \(3, 5\)"):
        Detections(np.zeros((3, 5)), [0.9, 0.8, 0.7], [0, 0, 0])
    with pytest.raises(ValueError, match=r"got shape \(4, 5\)"):  # 20 values: reshaped to 5 boxes before
        Detections(np.zeros((4, 5)), np.zeros(5), np.zeros(5))
    assert len(Detections(np.zeros((0, 5)), [], [])) == 0
    assert Detections([1, 2, 3, 4], [0.9], [0]).boxes.shape == (1, 4)



def test_non_numeric_metrics_from_evaluate_are_a_plugin_bug():
    """An EvalResult whose metrics hold a string is the evaluate hook's bug: exit 1 (was 2, like bad input)."""
    from zoo_core.api.errors import PluginHookError
    from zoo_core.runs.records import metrics_record

    ctx = SimpleNamespace(model_name="mydet")
    with pytest.raises(PluginHookError, match=r"the mydet evaluate hook returned non-numeric metrics: \['AP'\]") as err:
        metrics_record(ctx, {"AP": "0.5", "AR": 0.4}, 1, {}, [], [])
    assert err.value.exit_code == 1


def _returning(hooks, monkeypatch, inputs, specs):
    """``hooks`` whose preprocess returns ``inputs`` (and a sane meta) and whose input_spec is ``specs``; counts
    the input_spec calls."""
    asked = []

    def call(name, *a, **k):
        if name == "input_spec":
            asked.append(k["cfg"])
            return specs
        return inputs, {"scale_xy": [1.0, 1.0]}

    monkeypatch.setattr(hooks, "_call", call)
    return asked


@pytest.mark.parametrize(("inputs", "text"), [
    ({"image": np.zeros((1, 8, 8), np.float64)}, r"got input 'image' float64 \(1, 8, 8\); input_spec says float32 "
                                                 r"\(1, 4, 4\)"),
    ({"image": np.zeros((8, 8), np.float32)}, r"got input 'image' float32 \(8, 8\); input_spec says float32 \(1, 4, 4\)"),
    ({"image": [[[0.0]]]}, r"got input 'image' as list; input_spec says a float32 array \(1, 4, 4\)"),
    ({"img": np.zeros((1, 4, 4), np.float32)}, r"got inputs \['img'\]; input_spec names \['image'\]"),
    ({"image": np.zeros((1, 4, 4), np.float32), "extra": np.zeros(1, np.float32)},
     r"got inputs \['extra', 'image'\]; input_spec names \['image'\]"),
])
def test_preprocess_inputs_that_disagree_with_the_input_spec_name_the_plugin_and_the_image(
        hooks, monkeypatch, inputs, text):
    """Before: nothing compared them; stage=preprocess wrote a float64 .bin (exit 0) and eval / infer stopped in
    onnxruntime naming the model file, even with on_error=skip."""
    from zoo_core.api.errors import PluginHookError
    from zoo_core.api.types import TensorSpec

    _returning(hooks, monkeypatch, inputs, [TensorSpec("image", (1, 4, 4))])
    with pytest.raises(PluginHookError, match=r"^plugin zoo-fixture \(model fixture\): hook 'preprocess' \(image "
                                              r"a.png\) must return inputs matching the model's input_spec \(names, "
                                              rf"dtypes, ranks; no batch dimension\), {text}$") as err:
        hooks.preprocess(cfg=object(), image=np.zeros((4, 4, 3), np.uint8), sample=Sample("a", "a.png"))
    assert err.value.exit_code == 1


def test_preprocess_inputs_of_their_own_size_pass_and_the_input_spec_is_asked_once_per_cfg(hooks, monkeypatch):
    """The dims are not compared (``input_spec`` is the nominal size; keep_res models give each image its own), and
    the check costs a few attribute compares per image: ``input_spec`` is asked once per cfg object."""
    from zoo_core.api.types import TensorSpec

    x = np.zeros((37, 52, 3), np.uint8)  # an AIPP-style uint8 HWC input of a non-nominal size
    asked = _returning(hooks, monkeypatch, {"image": x}, [TensorSpec("image", (64, 64, 3), "uint8")])
    cfg, other = object(), object()
    for c in (cfg, cfg, cfg, other, other):
        inputs, _ = hooks.preprocess(cfg=c, image=x, sample=Sample("a", "a.png"))
        assert inputs["image"] is x
    assert asked == [cfg, other]


def test_a_preprocess_meta_the_read_back_would_refuse_names_the_plugin_and_the_image(hooks, monkeypatch):
    """Before: json.dumps wrote a NaN as the non-JSON `NaN` into meta.jsonl and infer then blamed the file."""
    from zoo_core.api.errors import PluginHookError

    monkeypatch.setattr(hooks, "_call", lambda name, *a, **k: ({}, {"c": [1.0, float("inf")]}))
    with pytest.raises(PluginHookError, match=r"hook 'preprocess' \(image a.png\) must return a meta that infer and "
                                              r"postprocess can read back .* got meta\['c'\]\[1\] is inf$"):
        hooks.preprocess(cfg=None, image=np.zeros((4, 4, 3), np.uint8), sample=Sample("a", "a.png"))


#: (metric value, accepted by both the run and the contract kit). One rule (zoo_core.plugins.results): numpy
#: integer / floating scalars are numbers (stored as int / float), bools are not, NaN / inf become null.
METRIC_VALUES = [
    (np.float32(0.25), True), (np.float64(0.5), True), (np.int64(3), True), (0.5, True), (2, True),
    (float("inf"), True), (float("nan"), True), (np.float32("inf"), True),
    (True, False), (np.bool_(True), False), ("0.5", False), (None, False), (np.array([0.5]), False),
    (10 ** 400, False),
]


@pytest.mark.parametrize(("value", "ok"), METRIC_VALUES, ids=[repr(v)[:20] for v, _ in METRIC_VALUES])
def test_the_run_and_the_contract_kit_accept_the_same_metrics(hooks, monkeypatch, value, ok):
    """Before: np.float32(0.25) (a float32 array's .mean()) passed the kit but `zoo run` refused it after the
    whole dataset ran (`non-numeric metrics: ['hit_rate']`, exit 1); inf was refused by the kit and stored as
    null by the run; 10**400 was an OverflowError traceback."""
    from zoo_core.api.errors import PluginHookError
    from zoo_core.api.types import EvalResult
    from zoo_core.testing.checks import ContractError, check_eval_result

    res = EvalResult(metrics={"hit_rate": value})
    monkeypatch.setattr(hooks, "_call", lambda name, *a, **k: res)
    kw = {"cfg": None, "detections": {}, "dataset": None, "samples": [], "out_dir": None}
    if ok:
        got = hooks.evaluate(**kw).metrics["hit_rate"]
        assert type(got) in (int, float) and (got == value or (np.isnan(got) and np.isnan(value)))
        assert check_eval_result(res).metrics["hit_rate"] == got or np.isnan(got)
    else:
        with pytest.raises(PluginHookError, match=r"^plugin zoo-fixture \(model fixture\): hook 'evaluate' returned "
                                                  r"an EvalResult zoo cannot record: metric 'hit_rate' ") as err:
            hooks.evaluate(**kw)
        assert err.value.exit_code == 1
        with pytest.raises(ContractError, match=r"metric 'hit_rate' "):
            check_eval_result(res)


def test_numpy_metrics_and_inf_are_recorded_as_plain_numbers_and_null():
    from zoo_core.runs.records import metrics_record

    ctx = SimpleNamespace(model_name="mydet", stage="eval", cfg=OmegaConf.create({"dataset": {"name": "d"}}))
    rec = metrics_record(ctx, {"hit_rate": np.float32(0.25), "n": np.int64(3), "r": float("inf")}, 2, {}, [], [])
    assert rec["metrics"] == {"hit_rate": 0.25, "n": 3.0, "r": None}
    assert rec["null_metrics"] == {"r": "the evaluator returned inf (JSON has no infinity)"}


class _Unjsonable:
    pass


@pytest.mark.parametrize(("fields", "text"), [
    ({"metrics": {}}, r"metrics must be a non-empty dict, got \{\}"),
    ({"metrics": {1: 0.5}}, r"metric names must be str, got 1"),
    ({"metrics": {"AP": 10 ** 400}}, r"metric 'AP' must be a number|metric 'AP' is 1000.*beyond the float range"),
    ({"files": {"a.txt": "text"}}, r"file 'a.txt' must be bytes, got str"),
    ({"files": {"../a.txt": b"x"}}, r"file name '../a.txt' must be relative to the run directory"),
    ({"info": {"obj": _Unjsonable()}}, r"info must be JSON-serialisable .*_Unjsonable"),
    ({"info": {"x": float("nan")}}, r"info must be JSON-serialisable \(no NaN or infinity\)"),
    ({"ci95": {"AP": "0.1-0.2"}}, r"ci95\['AP'\] must be a \(lo, hi\) pair, got str"),
    ({"ci95": {"AP": (0.1, "x")}}, r"ci95\['AP'\] bounds must be finite numbers or None"),
])
def test_a_bad_eval_result_names_the_plugin_before_anything_is_written(hooks, monkeypatch, tmp_path, fields, text):
    """Before: these reached the user as `unexpected error` + traceback, exit 1, not naming the plugin (the
    plugin's files already written for a bad info), and `metrics={}` exited 0 printing nothing."""
    from zoo_core.api.errors import PluginHookError
    from zoo_core.api.types import EvalResult

    res = EvalResult(**{"metrics": {"AP": 0.5}, "files": {"det.json": b"[]"}, **fields})
    monkeypatch.setattr(hooks, "_call", lambda name, *a, **k: res)
    with pytest.raises(PluginHookError, match=r"^plugin zoo-fixture \(model fixture\): hook 'evaluate' returned an "
                                              rf"EvalResult zoo cannot record: {text}") as err:
        hooks.evaluate(cfg=None, detections={}, dataset=None, samples=[], out_dir=tmp_path)
    assert err.value.exit_code == 1 and "\n" not in str(err.value)


def test_zoo_core_evaluators_results_pass_the_check():
    """The numpy-free ci95 pairs with None (every resample undefined) and NaN metrics zoo-core gives are fine."""
    from zoo_core.api.types import EvalResult
    from zoo_core.plugins.results import checked_eval_result

    res = checked_eval_result(EvalResult({"AP": float("nan"), "AR": np.float64(0.5)}, ci95={"AP": (None, None),
                                                                                          "AR": [np.float32(0.25), 1]}))
    assert res.ci95 == {"AP": (None, None), "AR": (0.25, 1.0)} and type(res.metrics["AR"]) is float
