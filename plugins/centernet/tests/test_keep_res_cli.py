"""keep_res on the default backend, through the CLI: one onnxruntime export (dynamic H/W) serves fix_res
and keep_res, gives the torch model's detections, and evaluation-only keys never re-export it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

#: coco_sample images 0..2 are 640x480, 427x640 and 37x23: keep_res inputs (h, w) 512x672, 672x448, 32x64.
N_IMAGES = 3
KEEP_RES_HW = {(512, 672), (672, 448), (32, 64)}
#: Score / box agreement of onnxruntime and torch (model outputs agree within 1e-4 of max |out|).
SCORE_TOL = 1e-4
BOX_TOL_PX = 0.01
#: Only detections scoring clearly above the K-th score are compared one to one (at the top-K
#: boundary a near-tie may swap which of two peaks is kept).
BOUNDARY_MARGIN = 1e-3


def _zoo(cwd: Path, cache: Path, *args: str, limit: int = N_IMAGES) -> str:
    """``zoo run model=centernet dataset=coco_sample ...``; returns its log (stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZOO_DISABLE_PLUGINS")}
    env.update(ZOO_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "zoo_core.cli", "run", "model=centernet", "dataset=coco_sample",
                           f"dataset.limit={limit}", "num_workers=0", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"zoo {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stderr


def _detections(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """``<root>/detections/chunk-*.npz`` (docs/run-directory.md) by image id."""
    out = {}
    for p in sorted((root / "detections").glob("chunk-*.npz")):
        with np.load(p, allow_pickle=False) as z:
            ends = np.cumsum(z["counts"])
            for sid, a, b in zip(z["ids"], ends - z["counts"], ends):
                out[str(sid)] = {k: z[k][a:b] for k in ("boxes", "scores", "labels")}
    return out


def _match(ort_det, torch_det):
    """Pairs (i, j) of the same class whose boxes are closest, for ort detections above the boundary."""
    kth = min(ort_det["scores"].min(), torch_det["scores"].min())
    pairs = []
    for i in np.flatnonzero(ort_det["scores"] > kth + BOUNDARY_MARGIN):
        same = np.flatnonzero(torch_det["labels"] == ort_det["labels"][i])
        assert len(same), f"class {ort_det['labels'][i]} found by onnxruntime only"
        d = np.abs(torch_det["boxes"][same] - ort_det["boxes"][i]).max(axis=1)
        pairs.append((i, int(same[np.argmin(d)])))
    return pairs


@pytest.mark.slow
def test_keep_res_eval_on_onnxruntime_matches_torch_and_reuses_the_export(tmp_path, golden_ckpt):
    cache = tmp_path / "cache"
    w = f"weights={golden_ckpt}"
    # fix_res exports once (traced at 512x512)
    _zoo(tmp_path, cache, w, "work_dir=ort", limit=1)
    onnx = tmp_path / "ort" / "model" / "centernet_onnxruntime.onnx"
    first = onnx.stat().st_mtime_ns
    # keep_res: the same ONNX, each image its own padded size (keep_res is not an export key)
    log = _zoo(tmp_path, cache, w, "work_dir=ort", "model.keep_res=true", "save_outputs=true")
    assert onnx.stat().st_mtime_ns == first and "reusing" in log and "re-exporting" not in log
    # the hm output of each image (80 x h/4 x w/4 float32) shows the keep_res input size it ran at
    hm_bytes = sorted(p.stat().st_size for p in (tmp_path / "ort" / "outputs").glob("*_0.bin"))
    assert hm_bytes == sorted(80 * (h // 4) * (w // 4) * 4 for h, w in KEEP_RES_HW)
    _zoo(tmp_path, cache, w, "work_dir=torch", "model.keep_res=true", "backend=torch")

    run = json.loads((tmp_path / "ort" / "eval" / "run.json").read_text())
    assert run["config"]["model"]["keep_res"] is True
    ort_dets, torch_dets = _detections(tmp_path / "ort"), _detections(tmp_path / "torch")
    assert len(ort_dets) == len(torch_dets) == N_IMAGES and set(ort_dets) == set(torch_dets)
    compared = 0
    for sid in ort_dets:
        a, b = ort_dets[sid], torch_dets[sid]
        assert len(a["scores"]) == len(b["scores"]) == 100
        np.testing.assert_allclose(np.sort(a["scores"]), np.sort(b["scores"]), rtol=0, atol=SCORE_TOL)
        for i, j in _match(a, b):
            np.testing.assert_allclose(a["boxes"][i], b["boxes"][j], rtol=0, atol=BOX_TOL_PX)
            assert abs(float(a["scores"][i]) - float(b["scores"][j])) <= SCORE_TOL
            compared += 1
    assert compared >= 30 * N_IMAGES, compared

    # an evaluation-only key reuses the export as well
    log = _zoo(tmp_path, cache, w, "work_dir=ort", "model.coco_evaluator=pycocotools")
    assert onnx.stat().st_mtime_ns == first and "reusing" in log and "re-exporting" not in log
    metrics = json.loads((tmp_path / "ort" / "eval" / "metrics.json").read_text())
    assert metrics["info"]["evaluator"] == "pycocotools"
