"""Interruption: SIGKILL ``eval`` / ``preprocess`` / ``infer`` mid-run, then ``resume=true`` gives exactly
the result of an uninterrupted run with each image counted once; a changed config or weights is refused."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

N = 30


@pytest.fixture(scope="session")
def big_squares(tmp_path_factory) -> Path:
    from zoo_fixture.squares import make_squares

    return make_squares(tmp_path_factory.mktemp("squares30") / "ds", n=N, seed=5)


@pytest.fixture(scope="session")
def oracle_dump(tmp_path_factory, cache_dir, big_squares) -> tuple[Path, dict]:
    """An ais_bench-layout dump of the 30 images (oracle outputs) and its uninterrupted metrics."""
    import os

    d = tmp_path_factory.mktemp("dump")
    subprocess.run([sys.executable, "-m", "zoo_core.cli", "run", "model=fixture", "backend=oracle",
                    "save_outputs=true", "num_workers=0", f"dataset.root={big_squares}", "work_dir=run"],
                   cwd=d, env={**os.environ, "ZOO_CACHE_DIR": str(cache_dir)}, check=True, capture_output=True)
    return d / "run" / "outputs", json.loads((d / "run" / "eval" / "metrics.json").read_text())


def _kill_when(zoo, args, ready, timeout=60.0) -> None:
    """Start ``zoo run <args>``, SIGKILL it as soon as ``ready()`` is true (the run must not have finished)."""
    proc = subprocess.Popen([sys.executable, "-m", "zoo_core.cli", "run", *args], cwd=zoo.cwd, env=zoo.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while not ready():
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read()}"
            assert time.monotonic() - t0 < timeout
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _chunk_ids(det_dir: Path) -> list[str]:
    ids = []
    for p in sorted(det_dir.glob("chunk-*.npz")):
        ids += [str(i) for i in np.load(p, allow_pickle=False)["ids"]]
    return ids


def test_eval_killed_then_resumed_scores_each_image_once(zoo, big_squares, oracle_dump):
    dump, reference = oracle_dump
    args = ["model=fixture", "stage=eval", "backend=replay", f"outputs_dir={dump}", "backend.device_latency_ms=60",
            "stage.flush_every=2", "num_workers=0", f"dataset.root={big_squares}", "work_dir=run"]
    det = zoo.cwd / "run" / "detections"
    _kill_when(zoo, args, lambda: len(list(det.glob("chunk-*.npz"))) >= 3)
    assert not (zoo.cwd / "run" / "eval" / "metrics.json").exists()
    done_before = len(_chunk_ids(det))
    assert 6 <= done_before < N
    assert json.loads((det / "state.json").read_text())["complete"] is False

    rc, out, err = zoo("run", *args, "resume=true", "model.mask_threshold=0.6")
    assert rc != 0 and "cannot resume: model changed" in err and "Traceback" not in err
    assert "(model.mask_threshold: 0.5 -> 0.6)" in err, err  # the key, not only its section
    assert not (zoo.cwd / "run" / "eval" / "metrics.json").exists()

    zoo.ok("run", *args, "resume=true")
    m = json.loads((zoo.cwd / "run" / "eval" / "metrics.json").read_text())
    assert m["metrics"] == reference["metrics"] and m["images"] == N
    ids = _chunk_ids(det)
    assert len(ids) == N and sorted(set(ids)) == sorted(ids)
    perf = json.loads((zoo.cwd / "run" / "eval" / "perf.json").read_text())
    assert perf["resumed_images"] == done_before and perf["images"] == N - done_before
    assert json.loads((det / "state.json").read_text())["complete"] is True


def test_resume_with_other_weights_is_refused(zoo, fixture_onnx):
    import torch

    for name, w in (("a.pth", 20.0), ("b.pth", 21.0)):
        torch.save({"conv.weight": torch.full((1, 1, 1, 1), w), "conv.bias": torch.full((1,), -10.0)}, zoo.cwd / name)
    args = ["model=fixture", "stage=eval", "num_workers=0", "work_dir=run"]
    zoo.ok("run", *args, f"weights={zoo.cwd / 'a.pth'}")
    rc, out, err = zoo("run", *args, f"weights={zoo.cwd / 'b.pth'}", "resume=true")
    assert rc != 0 and "Traceback" not in err
    assert "cannot resume" in err and "weights_sha256" in err and "detections/state.json" in err


@pytest.mark.needs_torch
def test_a_torch_resume_with_another_thread_count_is_refused_naming_it(zoo):
    """torch's outputs change in the last bits with its thread count (before: accepted, a result that matches
    no uninterrupted run); the old count resumes. onnxruntime's threads still resume (test_pinning.py)."""
    args = ["model=fixture", "stage=eval", "backend=torch", "num_workers=0", "work_dir=run"]
    zoo.ok("run", *args, "backend.threads=1")
    rc, out, err = zoo("run", *args, "backend.threads=2", "resume=true")
    assert rc == 2 and "cannot resume: backend changed since the interrupted run (backend.threads: 1 -> 2)" in err, err
    assert "pass backend.threads=1 to resume" in err
    zoo.ok("run", *args, "backend.threads=1", "resume=true")
    assert "resuming: 12 images already done" in (zoo.cwd / "run" / "eval" / "zoo.log").read_text()


def test_a_refused_resume_names_the_changed_quantize_and_backend_keys(fixture_cfg, tmp_path):
    """Before: state.json kept no copy of the backend and quantize sections, so a changed quantize.seed was
    'model_file_sha256 changed since the interrupted run' and a changed backend option 'backend changed ...',
    naming no key. A state file written before the copies still gets the message without keys."""
    from tests.test_om_record import _ctx
    from zoo_core.runs.resume import ResumeRefused, start_resumable

    state = tmp_path / "detections" / "state.json"
    state.parent.mkdir()
    q = {"quantize.name": "int8", "quantize.calibration_images": 4}
    backend = {"name": "onnxruntime", "graph_optimization": "all"}
    start_resumable(_ctx(fixture_cfg, tmp_path, "eval", **q, **{"quantize.seed": 0}), state,
                    {"model_file_sha256": "a", "backend": "x"}, lambda: None, "onnxruntime", backend)
    written = json.loads(state.read_text())
    assert written["backend_config"] == backend and written["quantize_config"]["seed"] == 0

    def refusal(fingerprint, backend_config, **over) -> str:
        with pytest.raises(ResumeRefused) as exc:
            start_resumable(_ctx(fixture_cfg, tmp_path, "eval", resume=True, **q, **over), state, fingerprint,
                            lambda: None, "onnxruntime", backend_config)
        return str(exc.value).split("\n")[0]  # (then the hint)

    assert refusal({"model_file_sha256": "b", "backend": "x"}, backend, **{"quantize.seed": 1}) == (
        f"{state}: cannot resume: model_file_sha256 changed since the interrupted run (quantize.seed: 0 -> 1)")
    assert refusal({"model_file_sha256": "a", "backend": "y"}, {**backend, "graph_optimization": "basic"},
                   **{"quantize.seed": 0}).endswith(
        "cannot resume: backend changed since the interrupted run (backend.graph_optimization: 'all' -> 'basic')")
    old = {k: v for k, v in written.items() if k not in ("backend_config", "quantize_config")}
    state.write_text(json.dumps(old))  # written by an older zoo
    assert refusal({"model_file_sha256": "b", "backend": "x"}, backend, **{"quantize.seed": 1}).endswith(
        "cannot resume: model_file_sha256 changed since the interrupted run")


def test_preprocess_killed_then_resumed_writes_every_input_once(zoo, big_squares):
    zoo.ok("run", "model=fixture", "stage=preprocess", "num_workers=0", f"dataset.root={big_squares}", "work_dir=ref")
    args = ["model=fixture", "stage=preprocess", "num_workers=0", "model.preprocess_delay_ms=80",
            f"dataset.root={big_squares}", "work_dir=run"]
    meta = zoo.cwd / "run" / "inputs" / "meta.jsonl"

    def lines():
        return meta.read_text().count("\n") if meta.is_file() else 0

    _kill_when(zoo, args, lambda: lines() >= 5)
    before = lines()
    assert before < N
    rc, out, err = zoo("run", *args, "resume=true", "dataset.limit=10")
    assert rc != 0 and "cannot resume: dataset changed" in err and "Traceback" not in err
    assert "dataset.limit: None -> 10" in err, err
    out = zoo.ok("run", *args, "resume=true")
    assert f"({before} already done" in out or f"({before + 1} already done" in out
    recs = [json.loads(x) for x in meta.read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == sorted({r["id"] for r in recs}) and len(recs) == N
    ref_lines = (zoo.cwd / "ref" / "inputs" / "meta.jsonl").read_text().splitlines()
    ref = {json.loads(x)["id"]: json.loads(x) for x in ref_lines}
    assert {r["id"]: r for r in recs} == ref
    for sid in ref:
        assert (zoo.cwd / "run" / "inputs" / f"{sid}.bin").read_bytes() == \
            (zoo.cwd / "ref" / "inputs" / f"{sid}.bin").read_bytes()


def test_infer_killed_then_resumed_writes_every_output_once(zoo, big_squares, oracle_dump):
    dump, _ = oracle_dump
    zoo.ok("run", "model=fixture", "stage=preprocess", "num_workers=0", f"dataset.root={big_squares}", "work_dir=run")
    args = ["model=fixture", "stage=infer", "backend=replay", f"backend.dir={dump}", "backend.device_latency_ms=60",
            f"dataset.root={big_squares}", "work_dir=run"]
    out_dir = zoo.cwd / "run" / "outputs"
    _kill_when(zoo, args, lambda: len(list(out_dir.glob("*_0.bin"))) >= 5)
    before = len(list(out_dir.glob("*_0.bin")))
    assert before < N
    rc, out, err = zoo("run", *args, "resume=true", "backend.device_latency_ms=1")
    assert rc != 0 and "cannot resume: backend changed" in err and "Traceback" not in err
    out = zoo.ok("run", *args, "resume=true")
    assert f"inferred {N - before} images" in out or f"inferred {N - before + 1} images" in out
    produced = sorted(p.name for p in out_dir.glob("*.bin"))
    assert produced == sorted(p.name for p in dump.glob("*.bin")) and len(produced) == N
    for name in produced:
        assert (out_dir / name).read_bytes() == (dump / name).read_bytes()
    assert not list(out_dir.glob(".*.tmp"))


def _rescore(p: Path) -> None:
    """Rewrite a detections chunk by hand as a valid npz (every score 0.99): readable, but not what zoo wrote."""
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["scores"] = np.full_like(arrays["scores"], 0.99)
    with open(p, "wb") as f:
        np.savez(f, **arrays)


def test_eval_resume_keeps_the_readable_chunks_of_detections_written_before_the_index(zoo, fixture_onnx,
                                                                                         eval_metrics):
    """Detections of a zoo from before index.jsonl (chunks, no index): a review found every chunk removed as
    "damaged" and all the work redone. Now the readable chunks are kept and listed, an unreadable one is redone."""
    args = ["model=fixture", "stage=eval", f"model_file={fixture_onnx}", "stage.flush_every=3", "num_workers=0",
            "work_dir=run"]
    zoo.ok("run", *args)
    det = zoo.cwd / "run" / "detections"
    (det / "index.jsonl").unlink()
    (det / "chunk-000002.npz").write_bytes(b"not a zip")
    rc, out, err = zoo("run", *args, "resume=true")
    assert rc == 0, out + err
    assert "chunk-000002.npz: unreadable detections chunk" in err and "chunk-000000.npz" not in err
    perf = json.loads((zoo.cwd / "run" / "eval" / "perf.json").read_text())
    assert perf["resumed_images"] == 9 and perf["images"] == 3
    m = json.loads((zoo.cwd / "run" / "eval" / "metrics.json").read_text())
    assert m["metrics"] == eval_metrics["metrics"] and m["images"] == 12
    listed = [json.loads(line)["id"] for line in (det / "index.jsonl").read_text().splitlines()]
    assert sorted(listed) == sorted(p.name for p in det.glob("chunk-*.npz")) and len(listed) == 4


def test_eval_resume_redoes_the_images_of_damaged_chunks(zoo, fixture_onnx, eval_metrics):
    """Before: a truncated chunk failed the resumed run (``unreadable detections chunk (File is not a zip
    file)``, exit 2, no hint) and a chunk edited by hand was trusted (its scores were scored). Now each is
    dropped with a warning naming it, its images redone, and the result is the uninterrupted run's."""
    args = ["model=fixture", "stage=eval", f"model_file={fixture_onnx}", "stage.flush_every=3", "num_workers=0",
            "work_dir=run"]
    zoo.ok("run", *args)
    det = zoo.cwd / "run" / "detections"
    assert len(list(det.glob("chunk-*.npz"))) == 4
    (det / "chunk-000001.npz").write_bytes((det / "chunk-000001.npz").read_bytes()[:100])
    _rescore(det / "chunk-000003.npz")
    rc, out, err = zoo("run", *args, "resume=true")
    assert rc == 0, out + err
    for name in ("chunk-000001.npz", "chunk-000003.npz"):
        assert f"{det / name} is not listed in index.jsonl with its current size and CRC-32" in err
    m = json.loads((zoo.cwd / "run" / "eval" / "metrics.json").read_text())
    assert m["metrics"] == eval_metrics["metrics"] and m["images"] == eval_metrics["images"] == 12
    perf = json.loads((zoo.cwd / "run" / "eval" / "perf.json").read_text())
    assert perf["resumed_images"] == 6 and perf["images"] == 6
    ids = _chunk_ids(det)
    assert len(ids) == 12 and len(set(ids)) == 12


# -- the dataset's images rewritten between the kill and resume=true (in-process) -------------------------

def _ctx(fixture_cfg, root, stage, **over):
    from omegaconf import OmegaConf, open_dict

    from zoo_core.plugins.manager import ZooPluginManager
    from zoo_core.runs.context import RunContext

    cfg = fixture_cfg.copy()
    with open_dict(cfg):
        cfg.stage.name = stage
        cfg.num_workers = 0
        for k, v in over.items():
            OmegaConf.update(cfg, k, v, merge=False)
    return RunContext(cfg, ZooPluginManager(), root)


def _interrupted(state: Path) -> None:
    """The state file of a run killed before its end."""
    s = json.loads(state.read_text())
    s["complete"] = False
    state.write_text(json.dumps(s))


def _rewrite_images(ds: Path, how) -> None:
    """Every image rewritten in place (same names), as a user replacing the dataset's files would."""
    import cv2

    for q in sorted((ds / "images").glob("*.png")):
        cv2.imwrite(str(q), how(cv2.imread(str(q))))


def test_eval_resume_redoes_the_images_rewritten_since_the_interrupted_run(fixture_cfg, fixture_onnx, tmp_path,
                                                                           caplog):
    """Before: resume=true trusted every image found in a detections chunk, so images rewritten (same names)
    between the kill and the resume were scored from the old pixels' detections: a mix of both datasets, exit 0,
    no warning. Now each chunk records its images' size and mtime; a chunk holding a changed image is removed
    and its images redone, so the score is a fresh run's on the current images (and stage=evaluate reads it)."""
    import cv2

    from zoo_core.runs.run_stage import run_stage
    from zoo_fixture.squares import make_squares

    ds = make_squares(tmp_path / "ds", n=8, seed=4)
    over = {"backend.name": "onnxruntime", "model_file": str(fixture_onnx), "dataset.root": str(ds),
            "stage.flush_every": 1}
    run_dir = tmp_path / "run"
    run_stage(_ctx(fixture_cfg, run_dir, "eval", **over))
    original = json.loads((run_dir / "eval" / "metrics.json").read_text())["metrics"]
    det = run_dir / "detections"
    for p in sorted(det.glob("chunk-*.npz"))[4:]:  # killed after 4 of its 8 images
        p.unlink()
    _interrupted(det / "state.json")
    _rewrite_images(ds, lambda img: cv2.flip(img, 1))  # each image its own mirror: the boxes.json no longer fits

    with caplog.at_level("INFO", logger="zoo"):
        run_stage(_ctx(fixture_cfg, run_dir, "eval", resume=True, **over))
    resumed = json.loads((run_dir / "eval" / "metrics.json").read_text())
    run_stage(_ctx(fixture_cfg, tmp_path / "fresh", "eval", **over))
    fresh = json.loads((tmp_path / "fresh" / "eval" / "metrics.json").read_text())["metrics"]
    assert fresh != original  # (the check below could not tell the two datasets apart otherwise)
    assert resumed["metrics"] == fresh and resumed["images"] == 8
    assert json.loads((run_dir / "eval" / "perf.json").read_text())["resumed_images"] == 0
    assert (f"resume: 4 image(s) changed since the interrupted run made their detections (first: "
            f"{ds / 'images' / 'sq000.png'})") in caplog.text
    ids = _chunk_ids(det)
    assert sorted(ids) == [f"sq{i:03d}" for i in range(8)]

    run_stage(_ctx(fixture_cfg, tmp_path / "ev", "evaluate", detections=str(det), **over))
    assert json.loads((tmp_path / "ev" / "evaluate" / "metrics.json").read_text())["metrics"] == fresh


@pytest.mark.needs_torch
def test_a_torch_eval_resumed_with_other_weights_is_refused_naming_the_weights(fixture_cfg, tmp_path):
    """backend=torch has no model file, so the weights' own hash is the only thing that tells two checkpoints
    apart (the onnxruntime test above is also refused through model_file_sha256). Without it an eval interrupted
    with a.pth resumed with b.pth kept a.pth's detections, exit 0."""
    import torch

    from zoo_core.runs.resume import ResumeRefused
    from zoo_core.runs.run_stage import run_stage

    for name, w in (("a.pth", 20.0), ("b.pth", 21.0)):
        torch.save({"conv.weight": torch.full((1, 1, 1, 1), w), "conv.bias": torch.full((1,), -10.0)},
                   tmp_path / name)
    over = {"backend.name": "torch", "backend.threads": 1, "stage.flush_every": 1}
    run_dir = tmp_path / "run"
    run_stage(_ctx(fixture_cfg, run_dir, "eval", weights=str(tmp_path / "a.pth"), **over))
    det = run_dir / "detections"
    state = json.loads((det / "state.json").read_text())
    assert state["fingerprint"]["model_file_sha256"] is None  # nothing else records the checkpoint
    for p in sorted(det.glob("chunk-*.npz"))[4:]:
        p.unlink()
    _interrupted(det / "state.json")
    kept = {p.name: p.read_bytes() for p in det.glob("chunk-*.npz")}

    with pytest.raises(ResumeRefused) as exc:
        run_stage(_ctx(fixture_cfg, run_dir, "eval", resume=True, weights=str(tmp_path / "b.pth"), **over))
    assert str(exc.value).split("\n")[0].startswith(
        f"{det / 'state.json'}: cannot resume: weights_sha256 changed since the interrupted run")
    assert exc.value.exit_code == 2
    assert {p.name: p.read_bytes() for p in det.glob("chunk-*.npz")} == kept  # nothing removed or rewritten


@pytest.mark.parametrize("before, after", [(True, False), (False, True)])
def test_an_eval_resumed_with_save_outputs_flipped_is_refused(fixture_cfg, fixture_onnx, tmp_path, before, after):
    """save_outputs is part of the eval fingerprint (docs/run-directory.md). Without it, an eval killed with
    save_outputs=true and resumed with false finished "complete" with outputs/ holding only the images done before
    the kill (4 of 12 here), and the other way round redid the done images and listed them twice in
    detections/. Now both are refused, naming save_outputs, and nothing of the interrupted run is touched."""
    from zoo_core.runs.resume import ResumeRefused
    from zoo_core.runs.run_stage import run_stage

    over = {"backend.name": "onnxruntime", "model_file": str(fixture_onnx), "stage.flush_every": 1}
    run_dir = tmp_path / "run"
    run_stage(_ctx(fixture_cfg, run_dir, "eval", save_outputs=before, **over))
    det, out = run_dir / "detections", run_dir / "outputs"
    for p in sorted(det.glob("chunk-*.npz"))[4:]:  # killed after 4 of its 12 images
        p.unlink()
    if before:
        index = out / "index.jsonl"
        index.write_text("".join(index.read_text().splitlines(keepends=True)[:4]))
        for p in sorted(out.glob("*.bin"))[4:]:
            p.unlink()
    _interrupted(det / "state.json")
    files = {p: p.read_bytes() for d in (det, out) if d.is_dir() for p in d.iterdir()}

    with pytest.raises(ResumeRefused) as exc:
        run_stage(_ctx(fixture_cfg, run_dir, "eval", resume=True, save_outputs=after, **over))
    assert str(exc.value).split("\n")[0] == (f"{det / 'state.json'}: cannot resume: save_outputs changed since "
                                             "the interrupted run")
    assert exc.value.exit_code == 2
    assert {p: p.read_bytes() for d in (det, out) if d.is_dir() for p in d.iterdir()} == files


def test_detections_listed_without_image_sources_resume_as_before(tmp_path):
    """index.jsonl lines of an older zoo (no "sources") are trusted as before; an image whose recorded size or
    mtime differs drops its whole chunk (and only it)."""
    from zoo_core.api.types import Detections
    from zoo_core.runs.detstore import DetectionStore
    from zoo_core.runs.resume import file_identity

    imgs = {}
    for name in ("a", "b", "c"):
        imgs[name] = tmp_path / f"{name}.png"
        imgs[name].write_bytes(b"x" * 10)
    store = DetectionStore(tmp_path / "d", flush_every=2, sources={k: file_identity(p) for k, p in imgs.items()})
    none = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    for name in imgs:
        store.add(name, none)
    store.flush()
    index = store.dir / "index.jsonl"
    lines = [json.loads(x) for x in index.read_text().splitlines()]
    assert [sorted(rec["sources"]) for rec in lines] == [["a", "b"], ["c"]]
    del lines[1]["sources"]  # chunk-000001 (c) as an older zoo listed it
    index.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    imgs["c"].write_bytes(b"y" * 11)
    assert store.drop_changed_images(imgs) == []
    imgs["b"].write_bytes(b"y" * 11)
    assert store.drop_changed_images(imgs) == ["b"]
    assert sorted(store.load()) == ["c"] and [json.loads(x)["id"] for x in index.read_text().splitlines()] == \
        ["chunk-000001.npz"]


def test_preprocess_resume_redoes_the_images_rewritten_since_the_interrupted_run(fixture_cfg, tmp_path, caplog):
    """Before: preprocess resume=true kept the .bin of every image listed in meta.jsonl, made from the pixels the
    images had before they were rewritten. Now each meta.jsonl line records the image's size and mtime ("source")
    and a changed image is preprocessed again: inputs/ is byte for byte a fresh preprocess of the current images."""
    from zoo_core.runs.run_stage import run_stage
    from zoo_fixture.squares import make_squares

    ds = make_squares(tmp_path / "ds", n=6, seed=2)
    run_dir = tmp_path / "run"
    run_stage(_ctx(fixture_cfg, run_dir, "preprocess", **{"dataset.root": str(ds)}))
    inputs = run_dir / "inputs"
    lines = (inputs / "meta.jsonl").read_text().splitlines(keepends=True)
    (inputs / "meta.jsonl").write_text("".join(lines[:3]))  # killed after 3 of its 6 images
    _interrupted(inputs / "state.json")
    _rewrite_images(ds, lambda img: 255 - img)

    with caplog.at_level("INFO", logger="zoo"):
        res = run_stage(_ctx(fixture_cfg, run_dir, "preprocess", resume=True, **{"dataset.root": str(ds)}))
    assert res["resumed_images"] == 0 and res["images"] == 6
    assert (f"resume: 3 image(s) changed since the interrupted run preprocessed them (first: "
            f"{ds / 'images' / 'sq000.png'})") in caplog.text
    run_stage(_ctx(fixture_cfg, tmp_path / "fresh", "preprocess", **{"dataset.root": str(ds)}))
    for i in range(6):
        name = f"sq{i:03d}.bin"
        assert (inputs / name).read_bytes() == (tmp_path / "fresh" / "inputs" / name).read_bytes(), name


@pytest.mark.parametrize("stage", ["eval", "infer"])
def test_a_resume_with_other_quantize_settings_is_refused_before_the_int8_model_is_rebuilt(stage, tmp_path,
                                                                                          monkeypatch, cache_dir,
                                                                                          capsys):
    """Before: refused only once the shared INT8 model had been rebuilt with the new settings (minutes of
    calibration), since the check compared the model file's sha256."""
    import zoo_core.quantize.onnxruntime_int8 as int8
    from zoo_core.cli import main as zoo_main

    def rebuilt(*args, **kwargs):
        raise AssertionError("the INT8 model was built")

    monkeypatch.setattr(int8, "ensure_int8_onnx", rebuilt)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "run" / ("detections" if stage == "eval" else "outputs") / "state.json"
    state.parent.mkdir(parents=True)
    (tmp_path / "run" / "inputs").mkdir()
    (tmp_path / "run" / "inputs" / "a.bin").write_bytes(b"")
    quantize = {"name": "int8", "calibration_images": 32, "method": "minmax", "seed": 0, "per_channel": True,
                "activation_type": "quint8", "weight_type": "qint8", "percentile": 99.999, "preprocess": True,
                "exclude_nodes": [], "exclude_op_types": []}
    state.write_text(json.dumps({"fingerprint": {}, "quantize_config": quantize}))
    args = ["run", "model=fixture", f"stage={stage}", "num_workers=0", "quantize=int8", "resume=true",
            f"work_dir={tmp_path / 'run'}"]
    with pytest.raises(SystemExit) as info:
        zoo_main([*args, "quantize.seed=1", "quantize.method=entropy"])
    assert info.value.code == 2
    assert (f"error: {state}: cannot resume: the quantize settings changed since the interrupted run "
            f"(quantize.method: 'minmax' -> 'entropy'; quantize.seed: 0 -> 1)") in capsys.readouterr().err
    for same in ([], ["quantize.percentile=99.9"]):  # the same model (percentile counts only with method=percentile)
        with pytest.raises(SystemExit):  # on to the model (here the stand-in that refuses)
            zoo_main([*args, *same])
        assert "the INT8 model was built" in (tmp_path / "run" / stage / "run.json").read_text()


def test_the_early_quantize_check_compares_the_settings_as_the_int8_model_reads_them():
    """Before: `resume=true quantize.exclude_op_types=[DeformConv]` over a CenterNet run was refused ([] -> [...]),
    though the plugin keeps DeformConv in FP32 already and stage=quantize reused the INT8 model; likewise a repeated
    op type, or a node named by a number."""
    from zoo_core.runs.resume import _deciding

    base = {"name": "int8", "method": "minmax", "percentile": 99.999, "exclude_op_types": [], "exclude_nodes": []}
    dcn = ["DeformConv"]
    assert _deciding(base, dcn) == _deciding({**base, "exclude_op_types": ["DeformConv"]}, dcn)
    assert _deciding({**base, "exclude_op_types": ["Sigmoid"]}, []) == \
        _deciding({**base, "exclude_op_types": ["Sigmoid", "Sigmoid"]}, [])
    assert _deciding({**base, "exclude_nodes": [537]}, []) == _deciding({**base, "exclude_nodes": ["537"]}, [])
    assert _deciding({**base, "percentile": 99.9}, []) == _deciding(base, [])  # (minmax: percentile unused)
    assert _deciding({**base, "exclude_op_types": ["Sigmoid"]}, dcn)["exclude_op_types"] == ["DeformConv", "Sigmoid"]
    assert _deciding({**base, "exclude_op_types": ["Sigmoid"]}, dcn) != _deciding(base, dcn)


def test_an_image_rewritten_with_its_size_and_mtime_restored_is_still_a_changed_image(tmp_path):
    """Before: the identity was [size, mtime_ns], so a rewrite whose mtime a tool restored (`touch -r`, `cp -p`,
    `rsync -t`) kept its old detections on resume. ctime cannot be set: it moves. A [size, mtime_ns] record of an
    older zoo is compared on those two."""
    import os
    import time

    from zoo_core.runs.resume import file_identity, source_changed

    img = tmp_path / "a.jpg"
    img.write_bytes(b"old pixels")
    recorded = file_identity(img)
    assert recorded is not None and len(recorded) == 3 and not source_changed(recorded, img)
    st = os.stat(img)
    time.sleep(0.02)
    img.write_bytes(b"new pixels")
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [os.stat(img).st_size, os.stat(img).st_mtime_ns] == recorded[:2]
    assert source_changed(recorded, img)
    assert not source_changed(recorded[:2], img)  # what an older zoo recorded: size and mtime only
    assert source_changed([*recorded[:2], "x"], img) and source_changed(recorded, tmp_path / "gone.jpg")


# -- backend=replay: the dump rewritten between the kill and resume=true -----------------------------------

def _rewrite_dump(dump: Path, restore_mtime: bool) -> None:
    """Every heatmap (output 0) of the dump scaled by 0.5 in place, as a device run redone into the same folder;
    ``restore_mtime``: each file's size and mtime put back as they were (``touch -r``)."""
    for p in sorted(dump.glob("*_0.bin")):
        st = p.stat()
        (np.fromfile(p, np.float32) * 0.5).astype(np.float32).tofile(p)
        if restore_mtime:
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _oracle_dump(fixture_cfg, tmp_path) -> Path:
    from zoo_core.runs.run_stage import run_stage

    run_stage(_ctx(fixture_cfg, tmp_path / "src", "eval", **{"backend.name": "oracle", "save_outputs": True}))
    dump = tmp_path / "dump"
    dump.mkdir()
    for p in (tmp_path / "src" / "outputs").glob("*.bin"):
        dump.joinpath(p.name).write_bytes(p.read_bytes())
    return dump


@pytest.mark.parametrize("restore_mtime", [False, True])
def test_eval_replay_resume_over_a_rewritten_dump_is_refused(fixture_cfg, tmp_path, restore_mtime):
    """Before: the fingerprint of backend=replay held the dump's path only, so resume=true over a dump rewritten
    in place (a device run redone into the same folder) kept the old half's detections and scored the new dump's
    rest: a mix of both, exit 0. Now it holds the dump's file listing as file_identity records it (size, mtime,
    ctime, inode): the resume is refused, even with the files' mtimes restored; an untouched dump still resumes."""
    from zoo_core.runs.resume import ResumeRefused
    from zoo_core.runs.run_stage import run_stage

    dump = _oracle_dump(fixture_cfg, tmp_path)
    over = {"backend.name": "replay", "outputs_dir": str(dump), "stage.flush_every": 1}
    run_dir = tmp_path / "run"
    run_stage(_ctx(fixture_cfg, run_dir, "eval", **over))
    det = run_dir / "detections"

    def kill():
        for p in sorted(det.glob("chunk-*.npz"))[6:]:
            p.unlink()
        _interrupted(det / "state.json")

    kill()
    run_stage(_ctx(fixture_cfg, run_dir, "eval", resume=True, **over))  # the same dump: resumed
    assert json.loads((run_dir / "eval" / "perf.json").read_text())["resumed_images"] == 6
    kill()
    _rewrite_dump(dump, restore_mtime)
    with pytest.raises(ResumeRefused, match="cannot resume: replay_dump_files changed since the interrupted run"):
        run_stage(_ctx(fixture_cfg, run_dir, "eval", resume=True, **over))


def test_infer_replay_resume_over_a_rewritten_dump_is_refused(fixture_cfg, tmp_path):
    from zoo_core.runs.resume import ResumeRefused
    from zoo_core.runs.run_stage import run_stage

    dump = _oracle_dump(fixture_cfg, tmp_path)
    over = {"backend.name": "replay", "outputs_dir": str(dump)}
    run_dir = tmp_path / "run"
    run_stage(_ctx(fixture_cfg, run_dir, "preprocess"))
    run_stage(_ctx(fixture_cfg, run_dir, "infer", **over))
    _interrupted(run_dir / "outputs" / "state.json")
    _rewrite_dump(dump, restore_mtime=True)
    with pytest.raises(ResumeRefused, match="cannot resume: replay_dump_files changed"):
        run_stage(_ctx(fixture_cfg, run_dir, "infer", resume=True, **over))


def test_cli_eval_replay_resume_over_a_rewritten_dump_exits_2(zoo, fixture_cfg, tmp_path):
    dump = _oracle_dump(fixture_cfg, tmp_path)
    args = ["run", "model=fixture", "stage=eval", "backend=replay", f"outputs_dir={dump}", "stage.flush_every=1",
            "num_workers=0", "work_dir=run"]
    zoo.ok(*args)
    det = zoo.cwd / "run" / "detections"
    for p in sorted(det.glob("chunk-*.npz"))[6:]:
        p.unlink()
    _interrupted(det / "state.json")
    _rewrite_dump(dump, restore_mtime=False)
    rc, _out, err = zoo(*args, "resume=true")
    assert rc == 2 and "Traceback" not in err
    assert f"{det / 'state.json'}: cannot resume: replay_dump_files changed since the interrupted run" in err


def _upgraded(monkeypatch, core: str = "0.2.0") -> None:
    """zoo-core reported as another version, as after a `pip install -U` (the version lookup the fingerprints use)."""
    monkeypatch.setattr("zoo_core.runs.fingerprint.core_version", lambda: core, raising=False)


def test_eval_resume_after_a_zoo_upgrade_is_refused_naming_the_versions(fixture_cfg, fixture_onnx, tmp_path,
                                                                        monkeypatch):
    """Before: the resume fingerprint held config and file hashes but no versions, so an eval interrupted under
    one zoo-core / plugin version and resumed under an upgraded one ('resuming: N images already done', exit 0)
    scored the old code's detections mixed with the new code's. Now it is refused, naming the versions, like the
    re-export names them; a state file of a zoo that recorded no versions is refused too (never trusted, no
    crash)."""
    from zoo_core.runs.resume import ResumeRefused
    from zoo_core.runs.run_stage import run_stage

    over = {"backend.name": "onnxruntime", "model_file": str(fixture_onnx), "stage.flush_every": 1}
    run_dir = tmp_path / "run"
    _upgraded(monkeypatch, "0.1.0")
    run_stage(_ctx(fixture_cfg, run_dir, "eval", **over))
    det = run_dir / "detections"
    for p in sorted(det.glob("chunk-*.npz"))[4:]:
        p.unlink()
    _interrupted(det / "state.json")
    state = json.loads((det / "state.json").read_text())
    assert state["fingerprint"]["zoo_core"] == "0.1.0" and state["fingerprint"]["plugin"].startswith("zoo-fixture ")

    _upgraded(monkeypatch, "0.2.0")
    with pytest.raises(ResumeRefused) as exc:
        run_stage(_ctx(fixture_cfg, run_dir, "eval", resume=True, **over))
    assert str(exc.value).split("\n")[0] == (f"{det / 'state.json'}: cannot resume: zoo_core changed since the "
                                             "interrupted run (zoo_core: '0.1.0' -> '0.2.0')")
    assert exc.value.hint == "run again without resume=true to start over"
    assert len(list(det.glob("chunk-*.npz"))) == 4  # nothing removed or rewritten

    for key in ("plugin", "zoo_core"):  # written by a zoo that did not record the versions
        del state["fingerprint"][key]
    (det / "state.json").write_text(json.dumps(state))
    _upgraded(monkeypatch, "0.1.0")
    with pytest.raises(ResumeRefused) as exc:
        run_stage(_ctx(fixture_cfg, run_dir, "eval", resume=True, **over))
    assert "cannot resume: plugin, zoo_core changed since the interrupted run (plugin: not recorded (the " \
           "interrupted run was made by an older zoo) -> 'zoo-fixture " in str(exc.value)
    assert "zoo_core: not recorded (the interrupted run was made by an older zoo) -> '0.1.0')" in str(exc.value)


def test_preprocess_resume_after_a_plugin_upgrade_is_refused(fixture_cfg, tmp_path, monkeypatch):
    """The preprocess (and infer) resume goes through the same fingerprint: another plugin version is refused."""
    from zoo_core.runs.resume import ResumeRefused, artifact_fingerprint, start_resumable

    state = tmp_path / "inputs" / "state.json"
    state.parent.mkdir()
    ctx = _ctx(fixture_cfg, tmp_path, "preprocess")
    start_resumable(ctx, state, artifact_fingerprint(ctx), lambda: None)
    ctx = _ctx(fixture_cfg, tmp_path, "preprocess", resume=True)
    assert start_resumable(ctx, state, artifact_fingerprint(ctx), lambda: None)  # same versions: resumes
    ctx = _ctx(fixture_cfg, tmp_path, "preprocess", resume=True)
    was = ctx.hooks.info.version
    monkeypatch.setattr(ctx.hooks.info, "version", "9.9.9")
    with pytest.raises(ResumeRefused, match=rf"cannot resume: plugin changed since the interrupted run \(plugin: "
                                            rf"'zoo-fixture {was}' -> 'zoo-fixture 9.9.9'\)"):
        start_resumable(ctx, state, artifact_fingerprint(ctx), lambda: None)
