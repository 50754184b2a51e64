"""Provenance: run.json traces a result (config, versions, input hashes); stale artifacts are not trusted."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _weights(path: Path, w: float) -> Path:
    import torch

    torch.save({"conv.weight": torch.full((1, 1, 1, 1), w), "conv.bias": torch.full((1,), -10.0)}, path)
    return path


@pytest.mark.needs_torch
def test_run_json_records_config_versions_and_input_hashes(zoo, cache_dir):
    a = _weights(zoo.cwd / "a.pth", 20.0)
    zoo.ok("run", "model=fixture", "num_workers=0", f"weights={a}", "batch_size=2", "work_dir=run")
    rec = json.loads((zoo.cwd / "run" / "eval" / "run.json").read_text())
    assert rec["stage"] == "eval" and rec["config"]["batch_size"] == 2 and rec["config"]["weights"] == str(a)
    for dist in ("zoo-core", "zoo-fixture", "onnxruntime", "torch", "python"):
        assert rec["versions"].get(dist), dist
    ins = rec["inputs"]
    assert ins["weights"]["sha256"] == _sha(a)
    onnx = zoo.cwd / "run" / "model" / "fixture_onnxruntime.onnx"
    assert ins["model_file"]["path"] == str(onnx) and ins["model_file"]["sha256"] == _sha(onnx)
    boxes = cache_dir / "fixture_squares" / "boxes.json"
    assert [f["sha256"] for f in ins["dataset_files"]] == [_sha(boxes)]


@pytest.mark.needs_torch
def test_export_from_other_weights_is_redone_not_trusted(zoo):
    a, b = _weights(zoo.cwd / "a.pth", 20.0), _weights(zoo.cwd / "b.pth", 5.0)
    common = ["model=fixture", "num_workers=0", "work_dir=run"]
    zoo.ok("run", *common, f"weights={a}")
    onnx = zoo.cwd / "run" / "model" / "fixture_onnxruntime.onnx"
    meta = onnx.with_suffix(".json")
    first = json.loads(meta.read_text())
    assert first["fingerprint"]["weights_sha256"] == _sha(a)
    zoo.ok("run", *common, f"weights={b}")
    second = json.loads(meta.read_text())
    assert second["fingerprint"]["weights_sha256"] == _sha(b) and second["sha256"] == _sha(onnx)
    assert second["sha256"] != first["sha256"]
    # a tampered export (bytes no longer match its record) is re-exported as well
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    zoo.ok("run", *common, f"weights={b}")
    assert _sha(onnx) == second["sha256"]
    assert "re-exporting" in (zoo.cwd / "run" / "eval" / "zoo.log").read_text()


@pytest.mark.needs_torch
def test_evaluate_refuses_detections_of_other_weights_and_warns_on_other_config(zoo):
    a, b = _weights(zoo.cwd / "a.pth", 20.0), _weights(zoo.cwd / "b.pth", 5.0)
    zoo.ok("run", "model=fixture", "num_workers=0", f"weights={a}", "work_dir=run")
    ev = ["model=fixture", "stage=evaluate", "work_dir=run"]
    rc, out, err = zoo("run", *ev, f"weights={b}")
    assert rc != 0 and "Traceback" not in err and "not made with weights=" in err and "state.json" in err
    assert not (zoo.cwd / "run" / "evaluate" / "metrics.json").exists()
    rc, out, err = zoo("run", *ev, "model.iou_thresh=0.3")
    assert rc == 0 and "model.iou_thresh: 0.5 -> 0.3" in err
    m = json.loads((zoo.cwd / "run" / "evaluate" / "metrics.json").read_text())
    assert m["provenance"]["warnings"] == ["model.iou_thresh: 0.5 -> 0.3"] and m["info"]["iou_thresh"] == 0.3
    rc, out, err = zoo("run", *ev, "model=centernet", "dataset=coco_sample", "work_dir=run")
    assert rc != 0 and "made by model 'fixture', not 'centernet'" in err


def test_evaluate_of_an_interrupted_run_refuses_missing_images(zoo, tmp_path):

    zoo.ok("run", "model=fixture", "backend=oracle", "num_workers=0", "work_dir=run")
    det = zoo.cwd / "run" / "detections"
    state = json.loads((det / "state.json").read_text())
    state["complete"] = False
    (det / "state.json").write_text(json.dumps(state))
    keep = sorted(det.glob("chunk-*.npz"))
    assert len(keep) == 1
    import numpy as np

    z = dict(np.load(keep[0], allow_pickle=False))
    n0 = int(z["counts"][0])
    part = {"ids": z["ids"][:1], "counts": z["counts"][:1], "boxes": z["boxes"][:n0], "scores": z["scores"][:n0],
            "labels": z["labels"][:n0]}
    np.savez(keep[0], **part)
    (zoo.cwd / "run" / "eval" / "metrics.json").unlink()
    rc, out, err = zoo("run", "model=fixture", "stage=evaluate", "work_dir=run")
    assert rc != 0 and "11 image(s) of the dataset have no saved detections" in err
    assert not (zoo.cwd / "run" / "evaluate" / "metrics.json").exists()
    rc, out, err = zoo("run", "model=fixture", "stage=evaluate", "work_dir=run", "allow_skips=true")
    assert rc == 0 and "did not finish" in err
    assert len(json.loads((zoo.cwd / "run" / "evaluate" / "metrics.json").read_text())["skipped"]) == 11


def test_evaluate_of_int8_detections_says_so_and_judges_them_as_int8(fixture_cfg, fixture_onnx, tmp_path,
                                                                     monkeypatch, caplog):
    """Before: stage=evaluate of detections made with quantize=int8 compared only the model and dataset sections:
    no word, evaluate/run.json said quantize: {name: none} and the references were judged as for the FP32 model.
    Now the difference is warned (and listed in metrics.json's provenance), and the producer's quantize section is
    the run's: run.json says int8 and a reference naming quantize.name matches it."""
    from tests.test_resume import _ctx
    from zoo_core.api.types import Reference
    from zoo_core.runs.run_stage import run_stage

    over = {"backend.name": "onnxruntime", "model_file": str(fixture_onnx), "model_dir": str(tmp_path / "model")}
    q = {"quantize.name": "int8", "quantize.calibration_images": 2, "quantize.seed": 3}
    run_stage(_ctx(fixture_cfg, tmp_path / "run", "eval", **over, **q))
    det = tmp_path / "run" / "detections"
    assert json.loads((det / "state.json").read_text())["quantize_config"]["name"] == "int8"
    measured = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["metrics"]["AP50"]

    ctx = _ctx(fixture_cfg, tmp_path / "ev", "evaluate", detections=str(det))
    protocol = {"dataset.name": "squares", "model.iou_thresh": 0.5}
    monkeypatch.setattr(ctx.hooks, "references", lambda cfg: [
        Reference("AP50", 0.0, 1e-9, "FP32", {**protocol, "quantize.name": "none"}),
        Reference("AP50", measured, 1e-9, "INT8", {**protocol, "quantize.name": "int8"})])
    with caplog.at_level("WARNING", logger="zoo"):
        run_stage(ctx)
    assert "quantize.name: 'int8' -> 'none'" in caplog.text and "quantize.seed: 3 -> 0" in caplog.text
    rec = json.loads((tmp_path / "ev" / "evaluate" / "metrics.json").read_text())
    assert "quantize.name: 'int8' -> 'none'" in rec["provenance"]["warnings"]
    assert rec["provenance"]["quantize"]["name"] == "int8"
    assert rec["reference"]["AP50"]["source"] == "INT8" and rec["reference"]["AP50"]["within"]
    run = json.loads((tmp_path / "ev" / "evaluate" / "run.json").read_text())
    assert run["config"]["quantize"]["name"] == "int8" and run["config"]["quantize"]["seed"] == 3
