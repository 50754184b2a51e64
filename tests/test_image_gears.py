"""Image-size gears for ATC ``--dynamic_image_size`` (in-process): planning under the 100-gear cap, the gear an
input takes, padding / cropping, and the ATC flags (REFERENCE 5.2)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from omegaconf import OmegaConf

from zoo_core.api.atc import MAX_GEARS, common_args, dynamic_image_size_arg, input_shape_arg
from zoo_core.api.errors import ConfigError
from zoo_core.backends.image_gears import crop_outputs, gear_for, pad_to, plan_gears

CFG = OmegaConf.create({"atc": {"log": "error"}})


def _pixels(plan, sizes):
    return sum(plan.assignment[s][0] * plan.assignment[s][1] for s in sizes)


def test_every_distinct_size_is_a_gear_when_they_fit():
    sizes = [(512, 672)] * 3 + [(672, 448)] * 2 + [(32, 64)]
    plan = plan_gears(sizes)
    assert plan.gears == [(32, 64), (672, 448), (512, 672)]  # ascending area
    assert plan.padding() == {"padded_images": 0, "images": 6, "max_extra_rows": 0, "max_extra_cols": 0,
                              "mean_extra_pixels": 0.0, "max_extra_pixels": 0.0}
    assert all(plan.assignment[s] == s for s in set(sizes))


def test_beyond_the_cap_sizes_are_padded_up_into_n_gears():
    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in 32 * rng.integers(1, 21, 2)) for _ in range(3000)]
    distinct = set(sizes)
    assert len(distinct) > MAX_GEARS
    plan = plan_gears(sizes, MAX_GEARS, "pad")
    assert len(plan.gears) <= MAX_GEARS and plan.images == 3000
    for s in distinct:  # every image fits its gear, and its gear is the smallest-area one that holds it
        g = plan.assignment[s]
        assert g[0] >= s[0] and g[1] >= s[1] and g == gear_for(plan.gears, *s)
    pad = plan.padding()
    n_padded = sum(1 for s in sizes if plan.assignment[s] != s)
    assert pad["padded_images"] == n_padded > 0
    extra = [(plan.assignment[s][0] * plan.assignment[s][1]) / (s[0] * s[1]) - 1 for s in sizes
             if plan.assignment[s] != s]
    assert pad["mean_extra_pixels"] == pytest.approx(np.mean(extra)) and pad["max_extra_pixels"] == max(extra)
    assert pad["max_extra_rows"] == max(plan.assignment[s][0] - s[0] for s in sizes)
    # the greedy merge beats the trivial "one gear for the largest size" plan by far
    assert _pixels(plan, sizes) < 0.7 * len(sizes) * max(h for h, _ in sizes) * max(w for _, w in sizes)


def test_small_cap_matches_exhaustive_best_on_a_small_case():
    sizes = [(64, 64)] * 5 + [(64, 96)] * 4 + [(96, 64)] * 3 + [(128, 128)] + [(32, 32)] * 6
    plan = plan_gears(sizes, 3)
    distinct = sorted(set(sizes))
    best = None
    for combo in itertools.combinations(
            {(max(a[0], b[0]), max(a[1], b[1])) for a in distinct for b in distinct} | set(distinct), 3):
        if all(gear_for(combo, *s) for s in distinct):
            cost = sum(np.prod(gear_for(combo, *s)) for s in sizes)
            best = cost if best is None else min(best, cost)
    assert _pixels(plan, sizes) <= 1.15 * best  # greedy: within 15% of the best 3-gear plan here


def test_refuse_names_the_count_and_bad_settings():
    sizes = [(32 * i, 32) for i in range(1, 8)]
    with pytest.raises(ConfigError, match="7 distinct input sizes, more than atc.max_image_gears=5"):
        plan_gears(sizes, 5, "refuse")
    assert len(plan_gears(sizes, 7, "refuse").gears) == 7
    with pytest.raises(ConfigError, match="must be in 1..100"):
        plan_gears(sizes, 101)
    with pytest.raises(ConfigError, match="image_gear_policy"):
        plan_gears(sizes, 5, "shrink")


def test_gear_for_and_pad_crop():
    gears = [(64, 80), (96, 64), (128, 112)]
    assert gear_for(gears, 48, 48) == (64, 80) and gear_for(gears, 96, 50) == (96, 64)
    assert gear_for(gears, 65, 80) == (128, 112) and gear_for(gears, 129, 10) is None
    x = np.arange(2 * 1 * 3 * 2, dtype=np.float32).reshape(2, 1, 3, 2)
    p = pad_to(x, 4, 5)
    assert p.shape == (2, 1, 4, 5) and np.array_equal(p[..., :3, :2], x)
    assert np.array_equal(p[..., 3, :2], x[..., 2, :]) and np.array_equal(p[..., :3, 4], x[..., :, 1])
    out = [np.zeros((2, 80, 32, 40)), np.zeros((2, 7))]  # stride-2 map and a flat output
    c = crop_outputs(out, 48, 60, (64, 80))
    assert c[0].shape == (2, 80, 24, 30) and c[1].shape == (2, 7)


@pytest.mark.parametrize("gears", [[(256, 512), (512, 256)], [(512, 256), (256, 512)]])
def test_gear_for_breaks_an_area_tie_towards_the_lower_gear(gears):
    """gear_for's promise: the smallest-area gear that holds (h, w); of two of equal area, the lower one (in either
    order given). A size only one holds gets that one."""
    assert gear_for(gears, 200, 200) == (256, 512)
    assert gear_for(gears, 300, 200) == (512, 256)
    assert gear_for(gears, 300, 300) is None


def test_atc_log_defaults_to_error_and_passes_a_given_level():
    """docs/stages.md: atc.log is ATC's --log level, default error."""
    shapes = {"image": (3, 800, 800)}
    for cfg in (OmegaConf.create({"atc": {"soc_version": "Ascend310P3"}}), OmegaConf.create({})):
        args = common_args(cfg, "m.onnx", 1, "310P3", "out/m_bs1", shapes)
        assert [a for a in args if a.startswith("--log=")] == ["--log=error"]
    info = common_args(OmegaConf.create({"atc": {"log": "info"}}), "m.onnx", 1, "310P3", "out/m_bs1", shapes)
    assert [a for a in info if a.startswith("--log=")] == ["--log=info"]


def test_atc_flags_for_image_size_gears():
    gears = [[512, 672], [672, 448]]
    assert dynamic_image_size_arg(gears) == "512,672;672,448"
    assert input_shape_arg({"x": (3, 512, 512)}, 4, dynamic_hw=True) == "x:4,3,-1,-1"
    args = common_args(CFG, "m.onnx", 2, "310P3", "out", {"actual_input": (3, 512, 512)}, gears)
    assert "--input_shape=actual_input:2,3,-1,-1" in args
    assert "--dynamic_image_size=512,672;672,448" in args
    assert not any(a.startswith("--dynamic_batch_size") for a in args)
    one = common_args(CFG, "m.onnx", 1, "310P3", "out", {"actual_input": (3, 512, 512)}, [[384, 640]])
    assert "--input_shape=actual_input:1,3,384,640" in one and not any("dynamic" in a for a in one)
    with pytest.raises(ConfigError, match="does not combine --dynamic_image_size with --dynamic_batch_size"):
        common_args(CFG, "m.onnx", [1, 2], "310P3", "out", {"x": (3, 8, 8)}, gears)
    with pytest.raises(ConfigError, match="at most 100"):
        common_args(CFG, "m.onnx", 1, "310P3", "out", {"x": (3, 8, 8)}, [[32, 32 * i] for i in range(1, 102)])
    plain = common_args(CFG, "m.onnx", 1, "310P3", "out", {"x": (3, 8, 8)})
    assert "--input_shape=x:1,3,8,8" in plain and not any("dynamic" in a for a in plain)


@pytest.mark.parametrize(("gears", "why"), [
    ([4], "has 1 gear"), ([0, 4], "gear 0 is outside 1..2048"), ([1, 4096], "gear 4096 is outside"),
    ([4, 1, 4], "appears twice"), (list(range(1, 102)), "has 101 gear"),
])
def test_dynamic_batch_gears_outside_atcs_range_are_refused(gears, why):
    """REFERENCE 5.2: 2-100 gears, each in [1, 2048]. Before: every list was written into the atc script."""
    with pytest.raises(ConfigError, match=rf"atc.dynamic_batch.*{why}"):
        common_args(CFG, "m.onnx", gears, "310P3", "out", {"x": (3, 8, 8)})
    ok = common_args(CFG, "m.onnx", [1, 2, 8, 2048], "310P3", "out", {"x": (3, 8, 8)})
    assert "--dynamic_batch_size=1,2,8,2048" in ok and "--input_shape=x:-1,3,8,8" in ok


def test_centernet_keep_res_needs_gears_and_passes_them(tmp_path):
    pytest.importorskip("zoo_centernet")
    from zoo_centernet import plugin
    from zoo_core.config.validate import compose

    cfg = compose(["model=centernet", "model.keep_res=true"])
    with pytest.raises(ConfigError, match="atc.dynamic_image_size=true"):
        plugin.atc_args(cfg, tmp_path / "m.onnx", 1, "310P3", "out")
    import unittest.mock as um

    with um.patch("zoo_centernet.export.head_out_nodes", return_value=["a", "b", "c"]):
        args = plugin.atc_args(cfg, tmp_path / "m.onnx", 1, "310P3", "out", image_sizes=[[512, 672], [672, 448]])
    assert "--input_shape=actual_input:1,3,-1,-1" in args and "--dynamic_image_size=512,672;672,448" in args
    assert "--out_nodes=a:0;b:0;c:0" in args


def test_the_acl_backend_warns_about_inputs_its_gears_were_not_planned_for(tmp_path, monkeypatch, fixtures_dir, caplog):
    """A keep_res OM run on fix_res inputs padded every 512x512 input into a 512x672 gear silently (95-100 of
    100 detections differed); an input size the plan does not list is now said, once, and counted at close."""
    import json
    import logging

    import onnx
    from onnx import TensorProto, helper

    from zoo_core.backends.acl_backend import AclBackend
    from zoo_core.backends.base import Batch

    monkeypatch.syspath_prepend(str(fixtures_dir / "fake_ascend"))
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "h", "w"])
    graph = helper.make_graph([helper.make_node("Relu", ["image"], ["y"])], "g", [x], [y])
    om = tmp_path / "m_bs1.om"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(om))
    (tmp_path / "m_bs1.om.contract.json").write_text(json.dumps(
        {"input_shape": "image:1,1,-1,-1", "dynamic_batch_size": None, "dynamic_image_size": "64,64;96,96"}))
    (tmp_path / "m_bs1.om.gears.json").write_text(json.dumps(
        {"dynamic_image_size": [[64, 64], [96, 96]], "sizes": [[64, 64, 3], [80, 96, 1], [96, 96, 2]]}))
    backend = AclBackend(om, {})

    def run(h, w):
        img = np.ones((1, 1, h, w), np.float32)
        (out,) = backend.infer(Batch(ids=["a"], inputs={"image": img}, metas=[{}]))
        assert out.shape == (1, 1, h, w)

    with caplog.at_level(logging.WARNING, logger="zoo"):
        run(64, 64)
        run(80, 96)  # planned: padded into 96x96 as the plan says
        assert not caplog.records
        run(64, 80)
        run(64, 80)
        assert len(caplog.records) == 1
        assert "64x80 inputs are not among the sizes its image-size gears were planned for" in caplog.text
        backend.close()
    assert "2 input(s) of 1 size(s) the gears were not planned for were padded into larger gears (64x80: 2)" \
        in caplog.text


_GOOD_GEARS = {"dynamic_image_size": [[48, 48], [64, 80]], "sizes": [[48, 48, 2], [64, 80, 1]]}


@pytest.mark.parametrize("key, bad", [("dynamic_image_size", [["1e999", 48]]), ("dynamic_image_size", [[1.5, 48]]),
                                      ("dynamic_image_size", [[-3, 48]]), ("dynamic_image_size", "abc"),
                                      ("dynamic_image_size", [[48]]), ("sizes", [[float("inf"), 48, 1]]),
                                      ("sizes", {"a": 1})])
def test_a_gears_file_with_sizes_that_are_not_whole_numbers_is_one_line(tmp_path, key, bad):
    """Before: ``Infinity`` in <om>.gears.json raised OverflowError (exit 1, traceback); 1.5 was cut to 1."""
    import json

    from zoo_core.api.errors import ZooError
    from zoo_core.backends.image_gears import read_gears, read_planned_sizes

    om = tmp_path / "m_bs1.om"
    path = tmp_path / "m_bs1.om.gears.json"
    path.write_text(json.dumps(_GOOD_GEARS))
    assert read_gears(om) == [(48, 48), (64, 80)] and read_planned_sizes(om) == {(48, 48), (64, 80)}
    path.write_text(json.dumps({**_GOOD_GEARS, key: bad}).replace('"1e999"', "1e999"))
    with pytest.raises(ZooError, match=rf"m_bs1.om.gears.json: unreadable image-size gears file: '{key}' is not"):
        read_gears(om) if key == "dynamic_image_size" else read_planned_sizes(om)


@pytest.mark.parametrize("mode", ["cube_fp16in_fp32out", "allow_mix_precision_fp16", "allow_mix_precision_bf16",
                                  "allow_fp32_to_bf16", "force_fp16", "allow_mix_precision"])
def test_every_precision_mode_atc_documents_is_passed(mode):
    """ATC's --precision_mode page lists these (the first four are newer CANN spellings). Before: the first four
    were refused as 'not one of force_fp16, ...'."""
    cfg = OmegaConf.create({"atc": {"log": "error", "precision_mode": mode}})
    assert f"--precision_mode={mode}" in common_args(cfg, "m.onnx", 1, "310P3", "out", {"x": (3, 8, 8)})
    with pytest.raises(ConfigError, match="atc.precision_mode='fp16' is not one of"):
        common_args(OmegaConf.create({"atc": {"precision_mode": "fp16"}}), "m.onnx", 1, "310P3", "out",
                    {"x": (3, 8, 8)})
