"""Every stage on the fixture model through the CLI; ais_bench dump ingestion; the replay backend."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

BIN_BYTES = 1 * 64 * 64 * 4


def _metrics(root: Path, stage: str) -> dict:
    return json.loads((Path(root) / stage / "metrics.json").read_text())


def _scored_ids(root: Path, stage: str) -> list[str]:
    return sorted(json.loads((Path(root) / stage / "fixture_detections.json").read_text()))


def test_eval_scores_all_twelve_images(eval_metrics):
    assert eval_metrics["images"] == 12
    assert eval_metrics["metrics"]["AP50"] == 1.0 and eval_metrics["metrics"]["recall"] == 1.0
    assert eval_metrics["skipped"] == []


def test_stage_chain_matches_eval(zoo, infer_run, eval_metrics, fixture_onnx):
    inputs = sorted((infer_run / "inputs").glob("*.bin"))
    outputs = sorted((infer_run / "outputs").glob("*.bin"))
    assert len(inputs) == 12 and len(outputs) == 12
    assert {p.stat().st_size for p in inputs} == {BIN_BYTES}
    assert {p.stat().st_size for p in outputs} == {BIN_BYTES}
    assert all(p.name.endswith("_0.bin") for p in outputs)
    metas = [json.loads(ln) for ln in (infer_run / "inputs" / "meta.jsonl").read_text().splitlines()]
    assert len(metas) == 12 and metas[0]["inputs"]["image"]["shape"] == [1, 64, 64]
    run = zoo.cwd / "chain"
    shutil.copytree(infer_run, run)
    zoo.ok("run", "model=fixture", "stage=postprocess", f"work_dir={run}")
    assert _metrics(run, "postprocess")["metrics"] == eval_metrics["metrics"]
    zoo.ok("run", "model=fixture", "stage=evaluate", f"work_dir={run}")
    m = _metrics(run, "evaluate")
    assert m["metrics"] == eval_metrics["metrics"] and m["images"] == 12
    # the detections keep the model file infer recorded (before: null, so evaluate refused model_file=)
    zoo.ok("run", "model=fixture", "stage=evaluate", f"work_dir={run}", f"model_file={fixture_onnx}")
    other = zoo.cwd / "other.onnx"
    other.write_bytes(fixture_onnx.read_bytes() + b"\0")
    rc, out, err = zoo("run", "model=fixture", "stage=evaluate", f"work_dir={run}", f"model_file={other}")
    assert rc == 2 and "were not made with model_file=" in err, err


def test_postprocess_of_a_partial_chain_fails_or_lists_every_missing_image(zoo, infer_run, eval_metrics):
    """Before: outputs of an interrupted infer (or inputs of a subset) scored 9 of 12 images, exit 0,
    skipped: [] (the rest of the dataset silently dropped)."""
    run = zoo.cwd / "partial"
    shutil.copytree(infer_run, run)
    meta = run / "inputs" / "meta.jsonl"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(lines[:9]) + "\n")
    rc, out, err = zoo("run", "model=fixture", "stage=postprocess", f"work_dir={run}")
    assert rc == 2 and "3 of the 12 image(s) of the dataset are not listed" in err and str(meta) in err, err
    assert "dataset.limit / dataset.shard" in err
    zoo.ok("run", "model=fixture", "stage=postprocess", f"work_dir={run}", "allow_skips=true")
    m = _metrics(run, "postprocess")
    dropped = [json.loads(ln)["id"] for ln in lines[9:]]
    assert m["images"] == 9 and sorted(x["id"] for x in m["skipped"]) == sorted(dropped)
    limited = zoo.cwd / "limited"  # a subset repeated with its dataset.limit is a whole run
    shutil.copytree(infer_run, limited)
    meta = limited / "inputs" / "meta.jsonl"
    meta.write_text("\n".join(lines[:6]) + "\n")
    zoo.ok("run", "model=fixture", "stage=postprocess", f"work_dir={limited}", "dataset.limit=6")
    assert _metrics(limited, "postprocess")["images"] == 6 and _metrics(limited, "postprocess")["skipped"] == []


def test_the_oracle_through_the_stage_chain_scores_like_eval(zoo):
    """Before: infer backend=oracle read .bin inputs without the dataset's key of each image, so the oracle
    encoded empty images (CenterNet AP 0.0 with exit 0; CenterFace a TypeError)."""
    for stage in ("preprocess", "infer", "postprocess"):
        zoo.ok("run", "model=fixture", f"stage={stage}", "backend=oracle", "work_dir=chain")
    m = _metrics(zoo.cwd / "chain", "postprocess")
    assert m["images"] == 12 and m["metrics"]["AP50"] == 1.0 and m["metrics"]["recall"] == 1.0


def test_predict_on_folder_writes_json_and_jpg(zoo, cache_dir, fixture_onnx):
    import cv2

    folder = zoo.cwd / "pics"
    folder.mkdir()
    src = sorted((cache_dir / "fixture_squares" / "images").glob("*.png"))[:3]
    for p in src:
        shutil.copy(p, folder)
    zoo.ok("run", "model=fixture", "stage=predict", f"input={folder}", f"model_file={fixture_onnx}", "work_dir=pred")
    pred = zoo.cwd / "pred" / "predict"
    gt = json.loads((cache_dir / "fixture_squares" / "boxes.json").read_text())
    for p in src:
        rec = json.loads((pred / f"{p.name}.json").read_text())
        assert len(rec["boxes"]) == len(gt[p.stem])
        img = cv2.imread(str(pred / f"{p.name}.jpg"))
        assert img is not None and img.shape == cv2.imread(str(p)).shape
    assert len([q for q in pred.glob("*.png.*")]) == 2 * len(src)


@pytest.mark.needs_torch
@pytest.mark.parametrize("target,opset", [("onnxruntime", 17), ("ascend", 11)])
def test_export_for_both_targets(zoo, target, opset):
    import onnx

    zoo.ok("run", "model=fixture", "stage=export", f"export.target={target}")
    path = zoo.cwd / "outputs" / "fixture" / "model" / f"fixture_{target}.onnx"
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["mask"]
    assert model.opset_import[0].version == opset
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["target"] == target and len(info["sha256"]) == 64


def test_perf_writes_latency_stats_and_throughput(zoo, fixture_onnx):
    zoo.ok("run", "model=fixture", "stage=perf", "batch_size=3", "stage.loop=7", f"model_file={fixture_onnx}")
    perf = json.loads((zoo.cwd / "outputs" / "fixture" / "perf" / "perf.json").read_text())
    lat = perf["latency_ms"]
    assert lat["count"] == 7 and lat["min"] <= lat["median"] <= lat["max"] and lat["min"] <= lat["mean"] <= lat["max"]
    assert perf["batch_size"] == 3
    assert perf["throughput"] == pytest.approx(1000 * 3 / lat["mean"], rel=1e-9)


def test_multirun_perf_sweep_creates_jobs_and_report(zoo, fixture_onnx):
    zoo.ok("run", "-m", "model=fixture", "stage=perf", "batch_size=1,2", f"model_file={fixture_onnx}")
    sweeps = list((zoo.cwd / "multirun" / "fixture").iterdir())
    assert len(sweeps) == 1
    sweep = sweeps[0]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    assert [json.loads((j / "perf" / "perf.json").read_text())["batch_size"] for j in jobs] == [1, 2]
    report = list(sweep.glob("sweep_report.*"))
    assert {p.suffix for p in report} >= {".csv", ".md"}
    assert "batch_size" in (sweep / "sweep_report.md").read_text()


@pytest.mark.parametrize("extra", [["batch_size=5"], ["batch_size=7", "backend=oracle"]], ids=["bs5", "bs7-oracle"])
def test_partial_last_batch_scores_each_image_once(zoo, fixture_onnx, eval_metrics, extra):
    zoo.ok("run", "model=fixture", "stage=eval", f"model_file={fixture_onnx}", *extra)
    run = zoo.cwd / "outputs" / "fixture"
    m = _metrics(run, "eval")
    assert m["images"] == 12 and m["metrics"] == eval_metrics["metrics"]
    ids = _scored_ids(run, "eval")
    assert len(ids) == 12 and len(set(ids)) == 12
    perf = json.loads((run / "eval" / "perf.json").read_text())
    assert perf["images"] == 12


# -- ais_bench dump directories ---------------------------------------------------------------------------

def _make_dump(src: Path, dump: Path, base: int, nested: bool, seed: int) -> None:
    files = sorted(src.glob("*_0.bin"))
    random.Random(seed).shuffle(files)
    target = dump / "2024_05_01-12_00_00" if nested else dump
    target.mkdir(parents=True)
    for f in files:
        stem = f.name[: -len("_0.bin")]
        shutil.copy(f, target / f"{stem}_{base}.bin")


@pytest.mark.parametrize("base,nested", [(0, False), (1, True)], ids=["ais_bench_0", "legacy_1_nested"])
def test_postprocess_ingests_ais_bench_dump(zoo, infer_run, eval_metrics, base, nested):
    dump = zoo.cwd / "dump"
    _make_dump(infer_run / "outputs", dump, base, nested, seed=base)
    out = zoo.ok("run", "model=fixture", "stage=postprocess", f"outputs_dir={dump}", "work_dir=fresh")
    assert f"start at _{base}" in out
    assert not (zoo.cwd / "fresh" / "inputs").exists()  # metas were recomputed, not read
    m = _metrics(zoo.cwd / "fresh", "postprocess")
    assert m["metrics"] == eval_metrics["metrics"] and m["images"] == 12


def test_wrong_size_bin_is_named_then_skippable(zoo, infer_run, eval_metrics):
    dump = zoo.cwd / "dump"
    shutil.copytree(infer_run / "outputs", dump)
    bad = dump / "sq004_0.bin"
    bad.write_bytes(bad.read_bytes()[:1000])
    rc, out, err = zoo("run", "model=fixture", "stage=postprocess", f"outputs_dir={dump}", "work_dir=a")
    assert rc != 0 and "Traceback" not in err
    assert str(bad) in err and "1000 bytes" in err and str(BIN_BYTES) in err
    rc, out, err = zoo("run", "model=fixture", "stage=postprocess", f"outputs_dir={dump}", "work_dir=b",
                       "on_error=skip")
    assert rc != 0 and "allow_skips" in err
    zoo.ok("run", "model=fixture", "stage=postprocess", f"outputs_dir={dump}", "work_dir=c",
           "on_error=skip", "allow_skips=true")
    m = _metrics(zoo.cwd / "c", "postprocess")
    assert [s["id"] for s in m["skipped"]] == ["sq004"] and str(bad) in m["skipped"][0]["reason"]
    assert m["images"] == 11 and "sq004" not in _scored_ids(zoo.cwd / "c", "postprocess")


# -- replay backend -----------------------------------------------------------------------------------------

def test_replay_backend_reproduces_metrics_and_emulates_latency(zoo, infer_run, eval_metrics):
    dump = infer_run / "outputs"
    zoo.ok("run", "model=fixture", "stage=eval", "backend=replay", f"outputs_dir={dump}", "work_dir=r0")
    assert _metrics(zoo.cwd / "r0", "eval")["metrics"] == eval_metrics["metrics"]
    zoo.ok("run", "model=fixture", "stage=eval", "backend=replay", f"outputs_dir={dump}", "work_dir=r20",
           "backend.device_latency_ms=20", "dataset.limit=4")
    perf = json.loads((zoo.cwd / "r20" / "eval" / "perf.json").read_text())
    assert perf["backend"] == "replay" and perf["images"] == 4
    assert perf["device_call_ms"]["mean"] >= 20.0
    rc, _, err = zoo("run", "model=fixture", "stage=eval", "backend=replay", "work_dir=r1")
    assert rc != 0 and "outputs_dir" in err


@pytest.mark.needs_torch
def test_a_preprocess_worker_crashing_on_an_image_fails_that_image_or_skips_it(zoo):
    """A worker that dies on an image (a segfault, an exit) ends the run naming the image and how the worker
    ended (before: "a preprocess worker process died", no image named, an out-of-memory hint), or with
    on_error=skip lists that image as skipped and scores the rest."""
    rc, out, err = zoo("run", "model=fixture", "stage=eval", "num_workers=2", ZOO_FIXTURE_CRASH_ON="sq003")
    assert rc == 2, err
    assert "sq003.png: the preprocess worker crashed on it (exit code 3)" in err, err
    assert "Traceback" not in err and "num_workers" not in err
    zoo.ok("run", "model=fixture", "stage=eval", "num_workers=2", "work_dir=s", "on_error=skip", "allow_skips=true",
           ZOO_FIXTURE_CRASH_ON="sq003")
    m = _metrics(zoo.cwd / "s", "eval")
    assert [(s["id"], s["reason"].endswith("the preprocess worker crashed on it (exit code 3)")) for s in m["skipped"]] \
        == [("sq003", True)]
    assert m["images"] == 11


def test_fresh_infer_removes_outputs_of_an_earlier_run(zoo, fixture_onnx):
    """Without resume=true nothing of an earlier run survives to be mixed with (or trusted by) a later resume."""
    zoo.ok("run", "model=fixture", "stage=preprocess")
    zoo.ok("run", "model=fixture", "stage=infer", f"model_file={fixture_onnx}")
    out = zoo.cwd / "outputs" / "fixture" / "outputs"
    (out / "stale_0.bin").write_bytes(b"\0" * 16)
    zoo.ok("run", "model=fixture", "stage=infer", f"model_file={fixture_onnx}")
    assert not (out / "stale_0.bin").exists()
    assert len(list(out.glob("*_0.bin"))) == 12


def test_postprocess_batches_variable_size_outputs_by_shape(zoo):
    """Star-Clouds images have per-image input sizes: postprocess at batch 4 must not stack mixed shapes."""
    common = ["model=centerface", "dataset.limit=6", "batch_size=4"]
    zoo.ok("run", "stage=preprocess", *common)
    zoo.ok("run", "stage=infer", *common)
    zoo.ok("run", "stage=postprocess", *common)
    m = json.loads((zoo.cwd / "outputs" / "centerface" / "postprocess" / "metrics.json").read_text())
    assert m["images"] == 6 and m["skipped"] == []


def test_perf_rejects_zero_loops(zoo):
    rc, out, err = zoo("run", "model=fixture", "stage=perf", "stage.loop=0")
    assert rc != 0 and "stage.loop=0" in err and "Traceback" not in err


def test_perf_on_the_oracle_backend_is_refused_in_one_line(zoo):
    """Before: `ValueError: zip() argument 2 is longer than argument 1` (unexpected error, exit 1)."""
    rc, out, err = zoo("run", "model=fixture", "stage=perf", "backend=oracle")
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("error: stage=perf times a model's inference on random input; backend=oracle runs no model")


@pytest.mark.needs_torch
def test_sigterm_stops_workers_and_removes_shared_memory(zoo):
    """`kill` (and Slurm's scancel) unwind like Ctrl-C: exit 130, no worker or /dev/shm file left behind."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "zoo_core.cli", "run", "model=fixture", "stage=eval",
                             "model.preprocess_delay_ms=2000", "num_workers=2"],
                            cwd=zoo.cwd, env=zoo.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120  # (the workers' start-up: seconds on a loaded machine)
    children: list[str] = []
    while not children and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        children = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == proc.pid]
    assert children, "the run should have started preprocess workers"
    time.sleep(2)  # (the pool's first tasks: its shared-memory slots exist)
    slots = [p for p in os.listdir("/dev/shm") if p.startswith(f"zoo-slots-{proc.pid}-")] \
        if os.path.isdir("/dev/shm") else []
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    for name in slots:
        assert not os.path.exists(os.path.join("/dev/shm", name))
    deadline = time.time() + 10
    while any(os.path.exists(f"/proc/{p}") for p in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{p}") for p in children)


def _ppid(pid: str) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_replay_with_a_missing_output_file_skips_that_image(zoo, infer_run):
    """on_error=skip covers output files served by the replay backend too, not only decoding errors."""
    dump = zoo.cwd / "dump"
    shutil.copytree(infer_run / "outputs", dump)
    (dump / "sq004_0.bin").unlink()
    base = ["run", "model=fixture", "stage=eval", "backend=replay", f"outputs_dir={dump}", "batch_size=4"]
    rc, out, err = zoo(*base)
    assert rc != 0 and "sq004" in err and "Traceback" not in err
    zoo.ok(*base, "on_error=skip", "allow_skips=true")
    m = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "metrics.json").read_text())
    assert m["images"] == 11 and [s["id"] for s in m["skipped"]] == ["sq004"]
