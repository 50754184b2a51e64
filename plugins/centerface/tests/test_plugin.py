"""The centerface hooks end to end: real Star-Clouds weights in ORT, WIDER scoring (zoo-core's), dumps, ATC lines."""
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from zoo_centerface import plugin
from zoo_core import datasets
from zoo_core.api.aisbench import DumpDir
from zoo_core.api.errors import ConfigError, ZooError
from zoo_core.api.imaging import read_image
from zoo_core.testing import core_conf_dir, golden_dir

CONF = __import__("pathlib").Path(plugin.__file__).parent / "conf"
ASTRONAUT_BOX = (181.53, 58.20, 269.88, 177.81)
#: Measured: the bundled sample through the real starclouds weights, threshold 0.05, IoU 0.5.
SAMPLE_AP_IOU05 = {"easy": 0.9688, "medium": 0.9754, "hard": 0.7409}


def make_cfg(tmp_path=None, **model):
    m = OmegaConf.load(CONF / "model" / "centerface.yaml")["model"]
    m = OmegaConf.merge(m, model)
    ds = OmegaConf.load(core_conf_dir() / "dataset" / "widerface_sample.yaml")["dataset"]
    ds.root = str(tmp_path / "sample") if tmp_path else None
    return OmegaConf.create({
        "model": m,
        "dataset": ds,
        "weights": None, "export": {"target": "onnxruntime", "opset": None},
        "atc": {"soc_version": "Ascend310P3", "precision_mode": None, "log": "error", "extra": [],
                "dynamic_batch": None},
        "batch_size": 1,
    })


@pytest.fixture(scope="module")
def sc_session(tmp_path_factory):
    import onnxruntime as ort

    d = tmp_path_factory.mktemp("sc")
    res = plugin.export(make_cfg(), None, d / "centerface.onnx", "onnxruntime")
    assert res.input_names == ["input.1"] and res.output_names == ["537", "538", "539", "540"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(res.path), so, providers=["CPUExecutionProvider"])


def _run(cfg, sess, image, sample=None):
    inputs, meta = plugin.preprocess(cfg, image, sample)
    outs = sess.run(None, {k: v[None] for k, v in inputs.items()})
    return plugin.postprocess(cfg, outs, [meta])[0], outs, meta


def test_astronaut_one_face_within_one_pixel(sc_session):
    cfg = make_cfg()
    det, _, _ = _run(cfg, sc_session, read_image(golden_dir("centerface") / "astronaut.png"))
    assert len(det) == 1
    np.testing.assert_allclose(det.boxes[0], ASTRONAUT_BOX, atol=1.0)
    assert det.scores[0] > 0.9 and det.extras["landmarks"].shape == (1, 10)


def test_sample_ap_with_real_weights(tmp_path_factory, sc_session):
    root = tmp_path_factory.mktemp("cache")
    cfg = make_cfg(root)
    ds = datasets.open_dataset(cfg)  # what the dataset hook gives: zoo-core's WIDER reader
    assert ds.root == root / "sample" and len(ds.samples()) == 24
    dets = {s.id: _run(cfg, sc_session, read_image(s.path), s)[0] for s in ds.samples()}
    res = datasets.evaluate(cfg, dets, ds, ds.samples())
    assert set(res.metrics) == {"easy", "medium", "hard"}
    for k, v in SAMPLE_AP_IOU05.items():
        assert abs(res.metrics[k] - v) <= 0.01, (k, res.metrics[k])
    assert res.info["iou_thresh"] == 0.5
    assert res.files["pr_curves.png"][:8] == b"\x89PNG\r\n\x1a\n"
    preds = {k: v for k, v in res.files.items() if k.startswith("predictions/")}
    assert sorted(preds) == sorted(f"predictions/{s.key[0]}/{s.id}.txt" for s in ds.samples())
    first = ds.samples()[0]
    lines = preds[f"predictions/{first.key[0]}/{first.id}.txt"].decode().splitlines()
    assert lines[0] == f"{first.key[0]}/{first.id}.jpg" and int(lines[1]) == len(dets[first.id]) == len(lines) - 2

    cfg.model.report_both_iou = True
    both = datasets.evaluate(cfg, dets, ds, ds.samples()).metrics
    assert {f"{k}_iou{t}" for k in SAMPLE_AP_IOU05 for t in (0.5, 0.4)} <= set(both)
    assert both["easy_iou0.5"] == res.metrics["easy"] and both["hard_iou0.4"] >= both["hard_iou0.5"]

    shard = ds.samples()[:8]  # a shard is scored on its own images; a failed image counts as empty
    part = datasets.evaluate(cfg, {s.id: dets[s.id] for s in shard[1:]}, ds, shard)
    assert part.info["missing_predictions"] == 1 and len(part.files) == 8


def _famb_meta():
    d = np.load(golden_dir("centerface") / "famB_1024x683.npz")
    return d, {"c": d["c"].tolist(), "s": float(d["s"]), "out_hw": [200, 200], "input_shape": [3, 800, 800]}


@pytest.mark.parametrize("base", [0, 1])
def test_aisbench_dumps_give_the_same_detections(tmp_path, base):
    d, meta = _famb_meta()
    cfg = make_cfg(variant="ascend")
    outs = [d["hm"], d["wh"], d["hm_offset"], d["landmarks"]]
    for i, a in enumerate(outs):
        a[0].astype("<f4").tofile(tmp_path / f"0_Synth_coffee_1_{i + base}.bin")
    specs = plugin.output_spec(cfg, meta)
    assert [s.shape for s in specs] == [(1, 200, 200), (2, 200, 200), (2, 200, 200), (10, 200, 200)]
    dump = DumpDir(tmp_path, len(specs))
    assert dump.base == base
    read = dump.read("0_Synth_coffee_1", specs)
    got = plugin.postprocess(cfg, [r[None] for r in read], [meta])[0]
    ref = plugin.postprocess(cfg, outs, [meta])[0]
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_allclose(got.boxes, d["results"][:, :4], atol=1e-3, rtol=0)


def test_specs_follow_variant_and_meta():
    sc = make_cfg()
    assert [(s.name, s.shape) for s in plugin.input_spec(sc)] == [("input.1", (3, 800, 800))]
    meta = {"input_shape": [3, 384, 512]}
    assert [s.shape for s in plugin.output_spec(sc, meta)][3] == (10, 96, 128)
    assert [s.name for s in plugin.output_spec(sc, meta)] == ["537", "538", "539", "540"]
    asc = make_cfg(variant="ascend", aipp=True)
    assert [(s.name, s.shape, s.dtype) for s in plugin.input_spec(asc)] == [("image", (800, 800, 3), "uint8")]
    assert plugin.output_spec(asc, {"input_shape": [800, 800, 3]})[0].shape == (1, 200, 200)
    assert [s.name for s in plugin.output_spec(asc, None)] == ["output1", "output2", "output3", "output4"]


def test_atc_args(tmp_path):
    onnx = tmp_path / "CenterFace.onnx"
    cfg = make_cfg(variant="ascend")
    args = plugin.atc_args(cfg, onnx, 1, "Ascend310P3", str(tmp_path / "CenterFace_bs1"))
    assert args == ["--framework=5", f"--model={onnx}", f"--output={tmp_path / 'CenterFace_bs1'}",
                    "--input_format=NCHW", "--input_shape=image:1,3,800,800", "--soc_version=Ascend310P3",
                    "--log=error"]
    cfg.model.aipp = True
    cfg.atc.precision_mode = "allow_fp32_to_fp16"
    cfg.atc.extra = ["--op_select_implmode=high_performance"]
    args = plugin.atc_args(cfg, onnx, [1, 4, 8], "Ascend310P3", str(tmp_path / "CenterFace_dyn"))
    conf = tmp_path / "CenterFace_dyn.aippconfig"  # the OM's own (<output>.aippconfig), not one per ONNX
    assert "--input_shape=image:-1,3,800,800" in args and "--dynamic_batch_size=1,4,8" in args
    assert "--precision_mode=allow_fp32_to_fp16" in args
    assert args[-3:] == [f"--insert_op_conf={conf}", "--enable_small_channel=1",
                         "--op_select_implmode=high_performance"]
    assert "min_chn_2 : 120" in conf.read_text()
    with pytest.raises(ConfigError, match="input_hw"):
        plugin.atc_args(make_cfg(), onnx, 1, "Ascend310P3", "out")


def test_atc_input_shape_of_a_non_square_input_is_nchw(tmp_path):
    """REFERENCE 5.2: --input_shape="name:n,c,h,w". model.input_hw is [h, w]: [640, 800] is 640 high, 800 wide."""
    cfg = make_cfg(variant="ascend")
    cfg.model.input_hw = [640, 800]
    args = plugin.atc_args(cfg, tmp_path / "CenterFace.onnx", 1, "Ascend310P3", str(tmp_path / "CenterFace_bs1"))
    assert [a for a in args if a.startswith("--input_shape=")] == ["--input_shape=image:1,3,640,800"]


def test_aipp_with_the_starclouds_variant_is_refused(tmp_path):
    """Before: model.aipp=true model.variant=starclouds converted with exit 0 and no --insert_op_conf (ignored)."""
    cfg = make_cfg(variant="starclouds", aipp=True)
    cfg.model.input_hw = [800, 800]
    for call in (lambda: plugin.atc_args(cfg, tmp_path / "sc.onnx", 1, "Ascend310P3", str(tmp_path / "sc_bs1")),
                 lambda: plugin.export(cfg, None, tmp_path / "sc.onnx", "ascend")):
        with pytest.raises(ConfigError, match="model.aipp=true is the ascend variant's on-device normalisation") \
                as exc:
            call()
        assert "model.aipp=false" in exc.value.hint
    assert not list(tmp_path.iterdir())


@pytest.mark.needs_torch
def test_build_model_ascend_seeded_and_checkpoint(tmp_path):
    import torch

    cfg = make_cfg(variant="ascend")
    a, b = plugin.build_model(cfg, None), plugin.build_model(cfg, None)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not a.training
    torch.nn.init.constant_(a.hm[0].bias, 1.5)
    ckpt = tmp_path / "model_best.pth"
    torch.save({"epoch": 140, "state_dict": {"module." + k: v for k, v in a.state_dict().items()}}, ckpt)
    c = plugin.build_model(cfg, str(ckpt))
    assert torch.equal(c.hm[0].bias, a.hm[0].bias)
    cfg.model.head_conv = 24
    with pytest.raises(ZooError, match=r"not match the centerface ascend network \(head_conv=24\): mis-shaped keys"):
        plugin.build_model(cfg, str(ckpt))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ZooError, match=r"junk.pth"):
        plugin.build_model(make_cfg(variant="ascend"), str(tmp_path / "junk.pth"))


def test_export_refuses_aipp_for_onnxruntime(tmp_path):
    with pytest.raises(ConfigError, match="aipp"):
        plugin.export(make_cfg(variant="ascend", aipp=True), None, tmp_path / "x.onnx", "onnxruntime")


def test_import_is_light():
    code = ("import sys, zoo_centerface.plugin, zoo_centerface.decode, zoo_centerface.oracle, "
            "zoo_centerface.aipp, zoo_core.datasets.widerface; "
            "print(sorted(m for m in ('torch', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert plugin.ZOO_HOOK_API == "1" and plugin.ZOO_DATASET_API == "1"
    assert not hasattr(plugin, "dataset") and not hasattr(plugin, "evaluate")  # zoo-core's dataset API answers


@pytest.mark.needs_torch
def test_ascend_torch_outputs_match_output_spec_and_decode():
    import torch

    torch.set_num_threads(2)
    cfg = make_cfg(variant="ascend")
    img = read_image(golden_dir("centerface") / "famB_pre_1024x683.png")
    inputs, meta = plugin.preprocess(cfg, img, None)
    model = plugin.build_model(cfg, None)
    with torch.no_grad():
        outs = [o.numpy() for o in model(torch.from_numpy(inputs["image"][None]))]
    assert [o.shape[1:] for o in outs] == [s.shape for s in plugin.output_spec(cfg, meta)]
    det = plugin.postprocess(cfg, outs, [meta])[0]
    assert len(det) == 200 and np.all(np.diff(det.scores) <= 0)
    # grid centres map back inside the letterboxed image: x in [0, 1024), y in [-170.5, 853.5)
    cx = det.boxes[:, 0::2].mean(1)
    cy = det.boxes[:, 1::2].mean(1)
    assert cx.min() > -6 and cx.max() < 1030 and cy.min() > -177 and cy.max() < 860
