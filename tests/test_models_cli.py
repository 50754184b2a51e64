"""The bundled models through the `zoo` CLI, as the README shows them."""
from __future__ import annotations

import json
import os
import shlex

import numpy as np
import pytest

from zoo_core.testing import golden_dir

ASTRONAUT_BOX = [181.53, 58.20, 269.88, 177.81]


def test_main_job_scores_the_bundled_sample_with_the_real_weights(zoo):
    """`make demo`: no arguments beyond the model; the numbers the README documents."""
    out = zoo.ok("run", "model=centerface", "stage=eval")
    m = json.loads((zoo.cwd / "outputs" / "centerface" / "eval" / "metrics.json").read_text())
    assert m["images"] == 24 and m["skipped"] == []
    assert m["info"]["iou_thresh"] == 0.5
    for key, expected in {"easy": 0.9688, "medium": 0.9754, "hard": 0.7409}.items():
        assert abs(m["metrics"][key] - expected) < 0.01, (key, m["metrics"][key])
        assert key in out
    run_dir = zoo.cwd / "outputs" / "centerface" / "eval"
    assert (run_dir / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((run_dir / "predictions").rglob("*.txt"))) == 24


def test_predict_draws_the_astronaut_face(zoo):
    image = golden_dir("centerface", "astronaut.png")
    zoo.ok("run", "model=centerface", "stage=predict", f"input={image}")
    pred = zoo.cwd / "outputs" / "centerface" / "predict"
    det = json.loads((pred / "astronaut.png.json").read_text())
    assert len(det["boxes"]) == 1
    np.testing.assert_allclose(det["boxes"][0], ASTRONAUT_BOX, atol=1.0)
    assert len(det["landmarks"][0]) == 10
    assert (pred / "astronaut.png.jpg").read_bytes()[:2] == b"\xff\xd8"


@pytest.mark.needs_torch
@pytest.mark.slow
def test_centernet_export_convert_sweep_and_perf(zoo, fixtures_dir, tmp_path):
    """README's CenterNet commands: ascend export, `-m stage=convert batch_size=1,16` with a fake atc, perf.

    No checkpoint here: export and convert run ``weights=random`` (said, recorded); perf times random
    weights without being asked (latency does not depend on them) and says so."""
    fake = fixtures_dir / "fake_ascend"
    env = zoo.env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", FAKE_ATC_LOG=str(tmp_path / "argv.json"))
    zoo.ok("run", "model=centernet", "stage=export", "export.target=ascend", "weights=random", env=env)
    model_dir = zoo.cwd / "outputs" / "centernet" / "model"
    assert json.loads((model_dir / "centernet_ascend.json").read_text())["fingerprint"]["weights"] == "random"
    out = zoo.ok("run", "-m", "model=centernet", "stage=convert", "batch_size=1,16", "weights=random", env=env)
    assert "re-exporting" not in out
    for n in (1, 16):
        om = model_dir / f"centernet_bs{n}.om"
        assert om.is_file()
        argv = shlex.split((model_dir / f"atc_bs{n}.sh").read_text().splitlines()[-1])
        assert f"--input_shape=actual_input:{n},3,512,512" in argv
        assert "--out_nodes=/hm/hm.2/Conv:0;/wh/wh.2/Conv:0;/reg/reg.2/Conv:0" in argv
        assert f"--output={model_dir / f'centernet_bs{n}'}" in argv
    rc, out, err = zoo("run", "model=centernet", "stage=perf", "stage.loop=2", "stage.warmup=1")
    assert rc == 0 and "stage=perf times centernet with seeded random weights" in err, err
    perf = json.loads((zoo.cwd / "outputs" / "centernet" / "perf" / "perf.json").read_text())
    assert perf["weights"] == "random"
    assert perf["latency_ms"]["count"] == 2
    assert perf["throughput"] == pytest.approx(1000 * perf["batch_size"] / perf["latency_ms"]["mean"])
    assert perf["model_file"].endswith("centernet_onnxruntime.onnx")
