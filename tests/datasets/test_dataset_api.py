"""The dataset API as plugins see it: kind dispatch, the default dataset/evaluate hooks, versioning,
titles of the plots, warnings that reach the user and evaluator output kept off the console."""
from __future__ import annotations

import io
import json
import logging
import logging.config
import types

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from zoo_core import datasets as zd
from zoo_core import hookimpl
from zoo_core.api.errors import ConfigError, PluginError, ZooError
from zoo_core.api.types import Detections, EvalResult
from zoo_core.config.confpaths import core_conf_dir
from zoo_core.datasets import widerface
from zoo_core.plugins.manager import ZooPluginManager

DATASETS = core_conf_dir() / "dataset"


def _cfg(dataset: str, tmp_path=None, **model):
    ds = OmegaConf.load(DATASETS / f"{dataset}.yaml").dataset
    if tmp_path is not None:
        ds.root = str(tmp_path / dataset)
    return OmegaConf.create({"model": {"name": "m", **model}, "dataset": ds})


@pytest.fixture(scope="module")
def wider_root(tmp_path_factory):
    return tmp_path_factory.mktemp("api")


def test_shipped_dataset_configs_name_their_kind_and_generator():
    kinds = {}
    for name in ("widerface", "widerface_sample", "coco", "coco_sample"):
        text = (DATASETS / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_")
        d = OmegaConf.load(DATASETS / f"{name}.yaml").dataset
        assert d.name == name and d.root is None
        kinds[name] = (d.kind, d.generator)
    assert kinds == {"widerface": ("widerface", None), "widerface_sample": ("widerface", "widerface_sample"),
                     "coco": ("coco", None), "coco_sample": ("coco", "coco_sample")}
    assert zd.kinds() == ["coco", "widerface"]
    # the sample configs say where the data is generated and where its ground truth is
    sample = (DATASETS / "widerface_sample.yaml").read_text()
    assert "ZOO_CACHE_DIR" in sample and "ground_truth" in sample
    assert "ZOO_CACHE_DIR" in (DATASETS / "coco_sample.yaml").read_text()


def test_open_and_evaluate_dispatch_on_the_kind(wider_root):
    cfg = _cfg("widerface_sample", wider_root)
    ds = zd.open_dataset(cfg)
    assert isinstance(ds, widerface.WiderFaceDataset) and ds.name == "widerface_sample"
    assert ds.gt_dir == wider_root / "widerface_sample" / "ground_truth"
    samples = ds.samples()[:6]
    dets = {s.id: Detections(ds.boxes_xyxy(s.key), np.linspace(0.9, 0.6, len(ds.face_boxes(s.key))),
                             np.zeros(len(ds.face_boxes(s.key)))) for s in samples}
    res = zd.evaluate(cfg, dets, ds, samples)
    assert isinstance(res, EvalResult) and res.metrics == {"easy": 1.0, "medium": 1.0, "hard": 1.0}
    cfg.model.iou_thresh = 0.4
    cfg.model.report_both_iou = True
    res = zd.evaluate(cfg, dets, ds, samples)
    assert res.info["iou_thresh"] == 0.4 and res.metrics["hard_iou0.5"] == 1.0
    # no CenterFace note on whatever model zoo-core scores (it is CenterFace's, on its references)
    assert "note" not in res.info and "CenterFace" not in json.dumps(res.info)


def test_boxes_xyxy_round_trips_through_the_prediction_file(wider_root):
    ds = zd.open_dataset(_cfg("widerface_sample", wider_root))
    s = ds.samples()[0]
    xywh = ds.face_boxes(s.key)
    text = widerface.format_prediction_file(*s.key, ds.boxes_xyxy(s.key), np.ones(len(xywh)))
    rows = np.array([ln.split()[:4] for ln in text.splitlines()[2:]], float)
    np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(xywh.astype(float), axis=0))


def test_configs_without_or_with_an_unknown_kind():
    with pytest.raises(ConfigError, match="has no 'kind'.*coco, widerface"):
        zd.open_dataset(OmegaConf.create({"dataset": {"name": "squares"}}))
    with pytest.raises(ConfigError, match="dataset.kind='voc'.*coco, widerface"):
        zd.open_dataset(OmegaConf.create({"dataset": {"name": "x", "kind": "voc"}}))
    with pytest.raises(ConfigError, match="generator='nope'"):
        zd.open_dataset(OmegaConf.create({"dataset": {"name": "x", "kind": "widerface", "generator": "nope"}}))
    with pytest.raises(ConfigError, match="scores a WiderFaceDataset.*returned a list"):
        zd.evaluate(_cfg("widerface_sample"), {}, [], [])


def test_missing_widerface_data_says_what_to_download(tmp_path):
    for ds, match in (({"root": None, "gt_dir": None}, "dataset.root is not set"),
                      ({"root": str(tmp_path), "gt_dir": None}, "dataset.gt_dir is not set"),
                      ({"root": str(tmp_path / "nope"), "gt_dir": str(tmp_path)}, "dataset root not found")):
        cfg = OmegaConf.create({"dataset": {"name": "widerface", "kind": "widerface", "generator": None, **ds}})
        with pytest.raises(ZooError, match=match) as e:
            zd.open_dataset(cfg)
        assert "WIDERFACE" in str(e.value)
    with pytest.raises(ZooError, match="dataset.root is not set.*coco") as e:
        zd.open_dataset(_cfg("coco"))
    assert "val2017.zip" in str(e.value)


def _manager_with(name, **hooks):
    pm = ZooPluginManager(autoload=False)
    mod = types.ModuleType(f"zoo_{name}")
    for hook, fn in hooks.items():
        setattr(mod, hook, hookimpl(fn))
    pm.register_module(name, mod)
    return pm.hooks_for(name)


def test_a_plugin_without_dataset_and_evaluate_gets_zoo_cores(wider_root):
    hooks = _manager_with("facey", input_spec=lambda cfg: [])
    cfg = _cfg("widerface_sample", wider_root)
    assert hooks.provider("dataset", cfg) == hooks.provider("evaluate", cfg) == "zoo-core"
    assert hooks.provider("input_spec", cfg) == "plugin" and hooks.provider("postprocess", cfg) is None
    ds = hooks.dataset(cfg=cfg)
    assert isinstance(ds, widerface.WiderFaceDataset)
    res = hooks.evaluate(cfg=cfg, detections={}, dataset=ds, samples=ds.samples()[:3], out_dir=None)
    assert res.metrics == {"easy": 0.0, "medium": 0.0, "hard": 0.0}
    squares = OmegaConf.create({"model": {}, "dataset": {"name": "squares"}})
    assert hooks.provider("dataset", squares) is None
    with pytest.raises(PluginError, match="does not implement the 'dataset' hook and dataset 'squares' has no "
                                          "'kind' zoo-core reads \\(kinds: coco, widerface\\)"):
        hooks.dataset(cfg=squares)


def test_a_plugins_own_hooks_win_and_none_hands_back_to_the_core(wider_root):
    mine = types.SimpleNamespace(name="mine", root=None, samples=list)  # the Dataset protocol
    seen = []

    def dataset(cfg):
        return mine if cfg.dataset.name == "mine" else None

    def evaluate(cfg, detections, dataset, samples, out_dir):
        seen.append(dataset)
        return EvalResult({"own": 1.0})

    hooks = _manager_with("own", dataset=dataset, evaluate=evaluate)
    assert hooks.dataset(cfg=OmegaConf.create({"dataset": {"name": "mine"}})) is mine
    cfg = _cfg("widerface_sample", wider_root)
    ds = hooks.dataset(cfg=cfg)
    assert isinstance(ds, widerface.WiderFaceDataset)  # the plugin returned None: the core opened it
    assert hooks.evaluate(cfg=cfg, detections={}, dataset=ds, samples=[], out_dir=None).metrics == {"own": 1.0}
    with pytest.raises(PluginError, match="hook 'dataset' returned None and dataset 'other' has no 'kind'"):
        hooks.dataset(cfg=OmegaConf.create({"dataset": {"name": "other"}}))


def test_dataset_api_version_is_checked_at_load():
    assert zd.DATASET_API_VERSION == "1"
    pm = ZooPluginManager(autoload=False)
    future = types.ModuleType("zoo_future")
    future.ZOO_HOOK_API = "1"
    future.ZOO_DATASET_API = "2"
    pm.register_module("future", future)
    assert "future" not in pm.models
    (broken,) = [b for b in pm.broken if b.name == "future"]
    assert "needs zoo dataset API '2' (its ZOO_DATASET_API), this zoo-core provides '1'" in broken.error
    ok = types.ModuleType("zoo_ok")
    ok.ZOO_DATASET_API = ["1", "2"]
    pm.register_module("ok", ok)
    assert "ok" in pm.models


def test_pr_curves_title_names_the_scored_dataset(wider_root, monkeypatch):
    titles = []
    real = widerface.scoring.pr_curves_png
    monkeypatch.setattr(widerface.scoring, "pr_curves_png", lambda r, t=None: titles.append(t) or real(r, t))
    cfg = _cfg("widerface_sample", wider_root)
    ds = zd.open_dataset(cfg)
    zd.evaluate(cfg, {}, ds, ds.samples()[:8])
    assert titles == ["widerface_sample (8 images), IoU 0.5"]
    assert widerface.pr_curves_title("widerface", 3226, 0.4) == "widerface (3226 images), IoU 0.4"


def test_evaluator_warnings_are_logged_and_listed(wider_root, caplog):
    cfg = _cfg("widerface_sample", wider_root)
    ds = zd.open_dataset(cfg)
    samples = ds.samples()[:4]
    dets = {s.id: Detections(ds.boxes_xyxy(s.key), np.full(len(ds.face_boxes(s.key)), 0.5),
                             np.zeros(len(ds.face_boxes(s.key)))) for s in samples}
    with caplog.at_level(logging.WARNING, logger="zoo"):
        res = zd.evaluate(cfg, dets, ds, samples)
    assert any("all prediction scores are equal" in w for w in res.info["warnings"])
    logged = [r for r in caplog.records if "all prediction scores are equal" in r.getMessage()]
    assert logged and logged[0].levelno == logging.WARNING and logged[0].name.startswith("zoo.")
    assert logged[0].getMessage().startswith("widerface_sample evaluation: ")  # the console adds "warning: "


def _hydra_like_logging(tmp_path):
    """Apply conf/hydra/job_logging/zoo.yaml as Hydra does, with the console on a StringIO."""
    conf = yaml.safe_load((core_conf_dir() / "hydra" / "job_logging" / "zoo.yaml").read_text())
    log_file = tmp_path / "zoo.log"
    conf["handlers"]["file"]["filename"] = str(log_file)
    conf["handlers"]["console"]["stream"] = "ext://sys.stdout"
    console = io.StringIO()
    return conf, console, log_file


def test_cocoeval_output_goes_to_the_log_file_only(tmp_path, monkeypatch):
    from zoo_core.datasets import coco

    conf, console, log_file = _hydra_like_logging(tmp_path)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    monkeypatch.setattr("sys.stdout", console)
    try:
        logging.config.dictConfig(conf)
        ds = coco.open_coco(OmegaConf.create({"name": "coco_sample", "kind": "coco", "generator": "coco_sample",
                                              "root": str(tmp_path / "c"), "n_images": 4, "seed": 0}))
        for evaluator in ("faster-coco-eval", "pycocotools"):
            coco.score_coco({}, ds, ds.samples(), evaluator=evaluator, plots=False)
        logging.getLogger("zoo.tool.test").warning("a tool warning")
    finally:
        for h in root.handlers:
            h.flush()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    text = log_file.read_text()
    assert text.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]") == 2
    assert "zoo.tool.faster-coco-eval" in text and "zoo.tool.pycocotools" in text
    assert "Average Precision" not in console.getvalue() and "DONE" not in console.getvalue()
    assert "a tool warning" in console.getvalue()  # warnings are not file-only


def test_a_missing_optional_package_names_the_extra(monkeypatch):
    from zoo_core.datasets.deps import require

    with pytest.raises(ZooError, match="(?s)reading things needs the Python package 'no_such_pkg'.*zoo-core\\[eval\\]"):
        require("no_such_pkg.sub", "reading things")
    monkeypatch.setitem(__import__("sys").modules, "scipy.io", None)  # as if scipy were not installed
    with pytest.raises(ZooError, match="reading WIDER FACE .mat files needs the Python package 'scipy'"):
        widerface.load_wider_gt(DATASETS)  # fails before touching the folder's content
