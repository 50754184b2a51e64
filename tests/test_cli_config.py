"""Configuration errors through the real CLI (exit code and the helpful text), info/--cfg/--help, start-up cost."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

CASES = [
    # overrides, texts that must appear in stderr
    (["model=fixture", "stage=evl"], ["unknown stage 'evl'", "stage=eval", "preprocess", "perf", "predict"]),
    (["model=fixture", "batch_sise=4"], ["'batch_sise'", "Did you mean 'batch_size'", "num_workers", "on_error"]),
    (["model=fixture", "model.mask_treshold=1"], ["'model.mask_treshold'", "'model.mask_threshold'", "iou_thresh"]),
    (["stage=eval"], ["no model given", "fixture", "centerface", "centernet"]),
    (["model=nosuchmodel"], ["unknown model 'nosuchmodel'", "fixture"]),
    (["model=fixture", "on_error=maybe"], ["on_error", "maybe", "fail", "skip"]),
    (["model=fixture", "batch_size=0"], ["batch_size=0", ">= 1"]),
    (["model=fixture", "batch_size=-3"], ["batch_size=-3", ">= 1"]),
    (["model=fixture", "backend=tensorrt"], ["unknown backend 'tensorrt'", "onnxruntime", "acl", "replay"]),
    (["model=fixture", "dataset.num_shards=2", "dataset.shard=2"], ["shard", "num_shards"]),
]


@pytest.mark.parametrize("overrides,texts", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_config_error_is_one_helpful_message(zoo, overrides, texts):
    rc, out, err = zoo("run", *overrides)
    assert rc != 0
    assert "Traceback" not in err, err
    for t in texts:
        assert t in err, f"{t!r} not in:\n{err}"
    assert not (zoo.cwd / "outputs" / "fixture" / "eval" / "metrics.json").exists()


def test_info_prints_resolved_config(zoo, cache_dir):
    import yaml

    out = zoo.ok("info", "model=fixture", "batch_size=3", "backend=oracle")
    cfg = yaml.safe_load(out)
    assert cfg["model"]["name"] == "fixture" and cfg["model"]["mask_threshold"] == 0.5
    assert cfg["stage"]["name"] == "eval" and cfg["backend"]["name"] == "oracle"
    assert cfg["batch_size"] == 3 and cfg["dataset"]["name"] == "squares"
    assert cfg["work_dir"] == "outputs/fixture"  # interpolation resolved
    rc, _, err = zoo("info", "stage=eval")
    assert rc != 0 and "no model given" in err


def test_run_cfg_job_prints_config_without_running(zoo):
    import yaml

    out = zoo.ok("run", "model=fixture", "stage=perf", "--cfg", "job")
    cfg = yaml.safe_load(out)
    assert cfg["stage"]["name"] == "perf" and cfg["stage"]["loop"] == 20
    assert not (zoo.cwd / "outputs").exists()


def test_run_help(zoo):
    out = zoo.ok("run", "--help")
    for t in ("model=", "fixture", "eval", "onnxruntime"):
        assert t in out
    out = zoo.ok("run", "model=fixture", "--help")
    assert "mask_threshold" in out
    out = zoo.ok("--help")
    assert "new-plugin" in out
    rc, _, err = zoo("frobnicate")
    assert rc == 2 and "unknown command" in err


def test_list_imports_neither_torch_nor_hydra(tmp_path, zoo):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "zoo_core.cli", "list"], cwd=tmp_path,
                          env=zoo.env(), capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert "fixture" in proc.stdout
    imported = {m.group(1).strip().split(".")[0]
                for m in re.finditer(r"^import time:\s+\d+\s+\|\s+\d+\s+\|\s+(.+)$", proc.stderr, re.M)}
    assert "zoo_core" in imported and "pluggy" in imported  # the import log was really parsed
    assert not {"torch", "hydra", "omegaconf", "onnxruntime", "cv2"} & imported, sorted(imported)
    print(f"\n[benchmark] zoo list wall time with -X importtime: {wall:.3f} s ({len(imported)} top-level modules)")
