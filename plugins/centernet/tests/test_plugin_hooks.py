"""The centernet plugin's hook wiring: registration, config files, specs, ATC args, dumps, and the COCO
datasets / evaluation it takes from zoo-core's dataset API."""
from __future__ import annotations

import subprocess
import sys
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pluggy
import pytest
from omegaconf import OmegaConf

import zoo_core.api.hookspecs as hookspecs
from zoo_centernet import plugin
from zoo_core.api.aisbench import DumpDir
from zoo_core.api.errors import ZooError
from zoo_core.api.imaging import read_image
from zoo_core.api.types import Detections, EvalResult, Sample, TensorSpec
from zoo_core.datasets import hooks as dataset_hooks
from zoo_core.testing import core_conf_dir, golden_dir

CONF = resources.files("zoo_centernet") / "conf"
CORE_DATASETS = core_conf_dir() / "dataset"


def _cfg(dataset=None, **top):
    model = OmegaConf.load(str(CONF / "model" / "centernet.yaml")).model
    ds = dataset or OmegaConf.load(str(CORE_DATASETS / "coco_sample.yaml")).dataset
    return OmegaConf.create({"model": model, "dataset": ds, "batch_size": 1, "weights": None,
                             "export": {"target": "onnxruntime", "opset": None},
                             "atc": {"soc_version": "Ascend310P3", "precision_mode": None, "log": "error",
                                     "extra": [], "dynamic_batch": None}} | top)


@pytest.fixture
def pm():
    """The plugin next to zoo-core's default dataset / evaluate implementations, as ZooPluginManager sets up."""
    manager = pluggy.PluginManager("zoo")
    manager.add_hookspecs(hookspecs)
    manager.register(dataset_hooks, name=dataset_hooks.PLUGIN_NAME)
    manager.register(plugin, name="centernet")
    return manager


def test_entry_point_and_hook_api():
    eps = {ep.name: ep.value for ep in entry_points(group="zoo.models")}
    assert eps.get("centernet") == "zoo_centernet.plugin"
    assert plugin.ZOO_HOOK_API == "1"


def test_every_model_hook_is_implemented_or_comes_from_the_dataset_api(pm):
    pm.check_pending()
    for name in hookspecs.MODEL_HOOKS:
        impls = [i.plugin_name for i in getattr(pm.hook, name).get_hookimpls()]
        if name in dataset_hooks.DEFAULT_HOOKS:  # COCO reading and scoring: zoo-core's, not a private copy
            assert impls == [dataset_hooks.PLUGIN_NAME], name
        else:
            assert impls == ["centernet"], name
    assert plugin.ZOO_DATASET_API == "1"


def test_importing_the_plugin_does_not_import_heavy_modules():
    code = ("import sys, zoo_centernet.plugin; "
            "bad = [m for m in ('torch', 'pycocotools', 'faster_coco_eval', 'onnx') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_files_are_global_packages():
    assert (CONF / "model" / "centernet.yaml").read_text().startswith("# @package _global_")
    assert not (CONF / "dataset").is_dir()  # the COCO dataset configs are zoo-core's
    model = OmegaConf.load(str(CONF / "model" / "centernet.yaml"))
    assert model.model.name == "centernet" and {"override /dataset": "coco"} in OmegaConf.to_container(model.defaults)
    assert model.model.keep_res is False and model.model.K == 100 and model.model.category_ids is None
    assert OmegaConf.load(str(CORE_DATASETS / "coco.yaml")).dataset.kind == "coco"


def test_input_and_output_specs(pm):
    cfg = _cfg()
    assert pm.hook.input_spec(cfg=cfg) == [TensorSpec("actual_input", (3, 512, 512), "float32")]
    specs = pm.hook.output_spec(cfg=cfg, meta={"input_shape": [3, 512, 512]})
    assert [(s.name, s.shape) for s in specs] == [("hm", (80, 128, 128)), ("wh", (2, 128, 128)), ("reg", (2, 128, 128))]
    assert sum(s.nbytes for s in specs) == 5_505_024
    keep = pm.hook.output_spec(cfg=cfg, meta={"input_shape": [3, 512, 672]})
    assert keep[0].shape == (80, 128, 168)
    assert pm.hook.output_spec(cfg=cfg, meta=None)[1].shape == (2, 128, 128)


def test_preprocess_hook_matches_golden(pm):
    cases = golden_dir("centernet", "preprocess_cases")
    ref = np.load(cases / "a.npz")
    inputs, meta = pm.hook.preprocess(cfg=_cfg(), image=read_image(cases / "a.jpg"),
                                      sample=Sample("a", cases / "a.jpg"))
    np.testing.assert_array_equal(inputs["actual_input"], ref["images"][0])
    assert meta["c"] == [320.0, 240.0] and meta["s"] == 640.0
    _, keep = pm.hook.preprocess(cfg=_cfg(model=dict(_cfg().model) | {"keep_res": True}),
                                 image=read_image(cases / "a.jpg"), sample=Sample("a", cases / "a.jpg"))
    assert keep["input_shape"] == [3, 512, 672] and keep["s"] == [672.0, 512.0]


def _tiny_head_graph(path: Path, input_name: str = "actual_input") -> None:
    import onnx
    from onnx import TensorProto, helper

    w = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, [c, 3, 1, 1], np.zeros(c * 3, np.float32))
         for i, c in enumerate((80, 2, 2))]
    nodes = [helper.make_node("Conv", [input_name, f"w{i}"], [f"output{i + 1}"], name=name)
             for i, name in enumerate(("Conv_1120", "Conv_1123", "Conv_1126"))]
    graph = helper.make_graph(
        nodes, "heads", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info(f"output{i}", TensorProto.FLOAT, None) for i in (1, 2, 3)], initializer=w)
    onnx.save(helper.make_model(graph), str(path))


def test_atc_args_static_batch(pm, tmp_path):
    onnx_path = tmp_path / "centernet.onnx"
    _tiny_head_graph(onnx_path)
    args = pm.hook.atc_args(cfg=_cfg(), onnx_path=onnx_path, batch_size=1, soc_version="310P3",
                            output="out/centernet_bs1")
    assert args == [
        "--framework=5", f"--model={onnx_path}", "--output=out/centernet_bs1", "--input_format=NCHW",
        "--input_shape=actual_input:1,3,512,512", "--out_nodes=Conv_1120:0;Conv_1123:0;Conv_1126:0",
        "--soc_version=Ascend310P3", "--log=error",
    ]


def test_atc_input_shape_of_a_non_square_input_is_nchw(pm, tmp_path):
    """REFERENCE 2.6 / 5.2: --input_shape="actual_input:n,3,h,w": input_h=384, input_w=512 -> 1,3,384,512."""
    onnx_path = tmp_path / "centernet.onnx"
    _tiny_head_graph(onnx_path)
    cfg = _cfg()
    cfg.model.input_h, cfg.model.input_w = 384, 512
    args = pm.hook.atc_args(cfg=cfg, onnx_path=onnx_path, batch_size=1, soc_version="310P3", output="out/cn")
    assert [a for a in args if a.startswith("--input_shape=")] == ["--input_shape=actual_input:1,3,384,512"]


def test_atc_args_name_the_input_of_the_given_onnx(pm, tmp_path):
    """REFERENCE 5.2: --input_shape uses the ONNX input names. Before: always 'actual_input', so a model_file= ONNX
    whose input is 'input.1' (an unnamed export) got an ATC line real ATC refuses (the fake atc now refuses it too)."""
    onnx_path = tmp_path / "centernet.onnx"
    _tiny_head_graph(onnx_path, "input.1")
    args = pm.hook.atc_args(cfg=_cfg(), onnx_path=onnx_path, batch_size=2, soc_version="310P3",
                            output=str(tmp_path / "cn_bs2"))
    assert "--input_shape=input.1:2,3,512,512" in args
    atc = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "fake_ascend" / "atc"
    proc = subprocess.run([sys.executable, str(atc), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wrong = [a.replace("input.1:", "actual_input:") for a in args]
    proc = subprocess.run([sys.executable, str(atc), *wrong], capture_output=True, text=True)
    assert proc.returncode == 1 and "'actual_input' is not an input of the model (its inputs: ['input.1'])" \
        in proc.stderr


def test_atc_args_dynamic_batch_precision_and_extra(pm, tmp_path):
    onnx_path = tmp_path / "centernet.onnx"
    _tiny_head_graph(onnx_path)
    cfg = _cfg()
    cfg.atc.precision_mode = "allow_fp32_to_fp16"
    cfg.atc.extra = ["--op_select_implmode=high_performance"]
    args = pm.hook.atc_args(cfg=cfg, onnx_path=onnx_path, batch_size=[1, 4, 8], soc_version="Ascend310P3",
                            output="om/cn")
    assert "--input_shape=actual_input:-1,3,512,512" in args
    assert "--dynamic_batch_size=1,4,8" in args
    assert "--precision_mode=allow_fp32_to_fp16" in args
    assert args[-1] == "--op_select_implmode=high_performance"
    assert args.index("--out_nodes=Conv_1120:0;Conv_1123:0;Conv_1126:0") == 5
    assert not any(" " in a or '"' in a for a in args[:-1])


@pytest.mark.parametrize("base", [0, 1])
def test_ais_bench_dump_reads_back_to_golden_detections(pm, tmp_path, base):
    """Seed flow files: ``<stem>_0/_1/_2.bin`` (ais_bench) or ``_1/_2/_3`` (legacy benchmark)."""
    cfg = _cfg()
    cases = [np.load(golden_dir("centernet", "decode_cases") / f"case_{n}.npz") for n in ("640x480", "tiny37x23")]
    dump = tmp_path / "dumpout_bs1" / "2024_01_01-00_00_00"
    dump.mkdir(parents=True)
    stems = []
    for d in cases:
        stem = f"{int(d['image_id']):012d}"
        stems.append(stem)
        for i, key in enumerate(("hm", "wh", "reg")):
            d[key].astype("<f4").tofile(dump / f"{stem}_{i + base}.bin")
    metas = [{"c": d["c"].tolist(), "s": float(d["s"]), "out_h": 128, "out_w": 128, "input_shape": [3, 512, 512]}
             for d in cases]
    specs = pm.hook.output_spec(cfg=cfg, meta=metas[0])
    dd = DumpDir(tmp_path / "dumpout_bs1", len(specs))
    assert dd.base == base and dd.stems() == sorted(stems)
    per_image = [dd.read(stem, specs) for stem in stems]
    outputs = [np.stack([p[j] for p in per_image]) for j in range(3)]
    dets = pm.hook.postprocess(cfg=cfg, outputs=outputs, metas=metas)
    for d, det in zip(cases, dets):
        ref = d["dets_rank_order"]
        np.testing.assert_array_equal(det.labels + 1, ref[:, 5].astype(np.int32))
        assert np.abs(det.boxes - ref[:, :4]).max() <= 1e-3
        assert np.abs(det.scores - ref[:, 4]).max() <= 1e-6


def test_dataset_hook_coco_without_root_says_where_to_put_it(pm):
    ds = OmegaConf.load(str(CORE_DATASETS / "coco.yaml")).dataset
    with pytest.raises(ZooError) as e:
        pm.hook.dataset(cfg=_cfg(dataset=ds))
    msg = str(e.value)
    assert "dataset.root" in msg and "val2017" in msg and "annotations/instances_val2017.json" in msg


def test_dataset_hook_generates_the_sample_into_the_cache(pm, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
    cfg = _cfg()
    cfg.dataset.n_images = 5
    ds = pm.hook.dataset(cfg=cfg)
    assert ds.name == "coco_sample" and len(ds.samples()) == 5
    assert ds.root.parent == tmp_path / "coco_sample"
    again = pm.hook.dataset(cfg=cfg)
    assert [s.path for s in again.samples()] == [s.path for s in ds.samples()]
    coco = OmegaConf.create({"name": "coco", "kind": "coco", "root": str(ds.root),
                             "ann_file": "annotations/instances_sample.json",
                             "image_dir": "images"})
    assert [s.key for s in pm.hook.dataset(cfg=_cfg(dataset=coco)).samples()] == [s.key for s in ds.samples()]


def test_evaluate_hook_uses_the_configured_evaluator(pm, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
    cfg = _cfg()
    cfg.dataset.n_images = 4
    cfg.model.coco_evaluator = "pycocotools"
    ds = pm.hook.dataset(cfg=cfg)
    res = pm.hook.evaluate(cfg=cfg, detections={}, dataset=ds, samples=ds.samples(), out_dir=tmp_path)
    info = dict(res.info)
    undefined = info.pop("null_reasons", {})
    assert isinstance(res, EvalResult) and info == {"evaluator": "pycocotools", "images": 4, "iou_type": "bbox"}
    assert res.metrics["AP"] == 0.0 and res.files["detections.json"] == b"[]"
    # COCOeval's -1 (no ground truth of that area range) is NaN with its reason, never a score of -1
    assert set(undefined) == {k for k, v in res.metrics.items() if v != v}
    assert all(v >= 0 for v in res.metrics.values() if v == v)
    assert sorted(res.files) == ["ap_per_class.png", "detections.json", "pr_curves.png"]


def test_category_ids_knob_maps_classes(pm, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
    cfg = _cfg()
    cfg.dataset.n_images = 2
    cfg.model.category_ids = [90, 11]
    ds = pm.hook.dataset(cfg=cfg)
    s = ds.samples()[0]
    dets = {s.id: Detections(np.array([[0, 0, 4, 4], [1, 1, 5, 5]], np.float32), [0.9, 0.8], [1, 0])}  # labels 1, 0
    res = pm.hook.evaluate(cfg=cfg, detections=dets, dataset=ds, samples=[s], out_dir=tmp_path)
    import json

    # class-major order: class 0 (-> 90) first, then class 1 (-> 11)
    assert [r["category_id"] for r in json.loads(res.files["detections.json"])] == [90, 11]


def test_a_dataset_without_kind_is_not_read_by_anyone(pm):
    assert pm.hook.dataset(cfg=_cfg(dataset=OmegaConf.create({"name": "squares", "root": None}))) is None


@pytest.mark.needs_torch
def test_export_hook_passes_config_through(pm, monkeypatch, tmp_path):
    import zoo_centernet.export as export_mod

    calls = {}
    monkeypatch.setattr(plugin, "build_model", lambda cfg, weights: ("model", weights))
    monkeypatch.setattr(export_mod, "export_onnx",
                        lambda model, output, target, **kw: calls.update(model=model, output=output, target=target,
                                                                         **kw))
    cfg = _cfg()
    cfg.export.opset = 17
    cfg.model.export.dcn_impl = "gridsample"
    pm.hook.export(cfg=cfg, weights="w.pth", output=tmp_path / "m.onnx", target="onnxruntime")
    assert calls == {"model": ("model", "w.pth"), "output": tmp_path / "m.onnx", "target": "onnxruntime",
                     "dcn_impl": "gridsample", "opset": 17, "input_hw": (512, 512)}


def test_build_model_random_init_is_seeded(pm):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    a = pm.hook.build_model(cfg=_cfg(), weights=None)
    torch.manual_seed(123)  # the global RNG state must not matter
    b = pm.hook.build_model(cfg=_cfg(), weights=None)
    assert not a.training
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        outs = a(torch.zeros(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 80, 16, 16), (1, 2, 16, 16), (1, 2, 16, 16)]


def test_postprocess_hook_returns_sorted_detections(pm):
    d = np.load(golden_dir("centernet", "decode_cases") / "case_427x640.npz")
    meta = {"c": d["c"].tolist(), "s": float(d["s"]), "out_h": 128, "out_w": 128, "input_shape": [3, 512, 512]}
    cfg = _cfg()
    cfg.model.K = 10
    (det,) = pm.hook.postprocess(cfg=cfg, outputs=[d["hm"], d["wh"], d["reg"]], metas=[meta])
    assert isinstance(det, Detections) and len(det) == 10
    assert np.abs(det.scores - d["dets_rank_order"][:10, 4]).max() <= 1e-6
