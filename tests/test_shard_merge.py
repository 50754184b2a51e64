"""Shard merges that survive the real world: a missing or failed shard is named, re-running just that
shard completes the merge, and shards that ran something different are refused."""
from __future__ import annotations

import csv
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.test_resume import _rescore
from zoo_core.runs.detstore import DetectionStore

SHARDS = ("dataset.num_shards=3", "dataset.shard=range(0,3)")
RERUN = re.compile(r"then the merge completes: (zoo run .*?)(?: ; zoo run |$)", re.M)


@pytest.fixture
def squares(tmp_path) -> Path:
    """A private copy of the fixture dataset (12 images) that a test may damage."""
    from zoo_fixture.squares import make_squares

    return make_squares(tmp_path / "squares", n=12, seed=0)


def shard_ids(root: Path, shard: int) -> list[str]:
    return sorted(json.loads((root / "boxes.json").read_text()))[shard::3]


def rerun_commands(sweep: Path) -> list[list[str]]:
    text = (sweep / "sweep_report.md").read_text()
    return [shlex.split(c)[2:] for c in RERUN.findall(text)]  # drop "zoo run": the zoo fixture adds it


def merged(sweep: Path) -> dict:
    return json.loads((sweep / "merged" / "metrics.json").read_text())


def unsharded(zoo, *args) -> dict:
    zoo.ok("run", "model=fixture", "stage=eval", "work_dir=full", *args)
    return json.loads((zoo.cwd / "full" / "eval" / "metrics.json").read_text())


def test_failed_shard_is_named_and_rerunning_only_it_completes_the_merge(zoo, squares, fixture_onnx):
    args = ("model=fixture", "stage=eval", f"dataset.root={squares}", f"model_file={fixture_onnx}")
    victim = squares / "images" / f"{shard_ids(squares, 1)[1]}.png"
    good = victim.read_bytes()
    victim.write_bytes(b"not a png")
    sweep = zoo.cwd / "sweep"
    rc, out, err = zoo("run", "-m", *args, *SHARDS, f"hydra.sweep.dir={sweep}")
    assert rc == 1, out + err
    assert "1 of 3 sweep jobs failed, 1 of 1 shard merges failed" in err
    assert not (sweep / "merged" / "metrics.json").exists()
    md = (sweep / "sweep_report.md").read_text()
    assert f"not merged: shard 1 (job 1) failed: {victim}: not a decodable image" in md
    assert "3 jobs (1 failed), 1 shard merge (1 failed)" in md
    assert "sweep report (3 jobs, 1 failed, 1 shard merge (1 failed))" in out  # (was "1 shard merges, 1 failed")
    [cmd] = rerun_commands(sweep)
    assert cmd[:1] == ["-m"] and "dataset.shard=1" in cmd and "hydra.sweep.subdir=1/eval" in cmd and "resume=true" in cmd
    shard0 = (sweep / "0" / "eval" / "metrics.json").stat().st_mtime_ns

    victim.write_bytes(good)
    rc, out, err = zoo("run", *cmd)
    assert rc == 0, out + err
    assert (sweep / "0" / "eval" / "metrics.json").stat().st_mtime_ns == shard0  # only shard 1 ran again
    full = unsharded(zoo, *args[2:])
    m = merged(sweep)
    assert m["metrics"] == full["metrics"] and m["images"] == full["images"] == 12
    union = set().union(*(DetectionStore(sweep / str(i) / "detections").load() for i in range(3)))
    assert union == set(DetectionStore(zoo.cwd / "full" / "detections").load())
    assert "3 jobs (0 failed), 1 shard merge (0 failed)" in (sweep / "sweep_report.md").read_text()


def test_missing_shard_is_named_and_running_it_completes_the_merge(zoo, fixture_onnx):
    args = ("model=fixture", "stage=eval", f"model_file={fixture_onnx}", "dataset.num_shards=3")
    sweep = zoo.cwd / "sweep"
    rc, out, err = zoo("run", "-m", *args, "dataset.shard=0,2", f"hydra.sweep.dir={sweep}")
    assert rc == 1, out + err
    assert "shard 1 of 3 is missing (no job ran dataset.shard=1)" in (sweep / "sweep_report.md").read_text()
    [cmd] = rerun_commands(sweep)
    assert "dataset.shard=1" in cmd and "hydra.sweep.subdir=2/eval" in cmd  # the next free job dir
    rc, out, err = zoo("run", *cmd)
    assert rc == 0, out + err
    assert json.loads((sweep / "2" / "eval" / "metrics.json").read_text())["images"] == 4
    assert merged(sweep)["metrics"] == unsharded(zoo, f"model_file={fixture_onnx}")["metrics"]
    assert merged(sweep)["images"] == 12
    [row] = [r for r in csv.DictReader(io.StringIO((sweep / "sweep_report.csv").read_text())) if r["job"] == "merged"]
    assert (row["status"], row["images"]) == ("ok", "12")  # the merged row counts the 12 images it scored


def test_two_missing_shards_get_a_job_dir_each_and_running_both_completes_the_merge(zoo, fixture_onnx):
    """Before: both re-run commands named the same next free job dir, so the second refused to resume
    (dataset changed) over the first's finished shard."""
    args = ("model=fixture", "stage=eval", f"model_file={fixture_onnx}", "dataset.num_shards=3")
    sweep = zoo.cwd / "sweep"
    assert zoo("run", "-m", *args, "dataset.shard=0", f"hydra.sweep.dir={sweep}")[0] == 1
    text = (sweep / "sweep_report.md").read_text()
    tail = re.search(r"then the merge completes: (zoo run .*?)(?:\s*\||$)", text, re.M).group(1)
    cmds = [shlex.split(c)[2:] for c in tail.split(" ; ")]
    assert len(cmds) == 2
    assert [[a for a in c if a.startswith(("dataset.shard=", "hydra.sweep.subdir="))] for c in cmds] == [
        ["dataset.shard=1", "hydra.sweep.subdir=1/eval"], ["dataset.shard=2", "hydra.sweep.subdir=2/eval"]]
    for cmd in cmds:
        rc, out, err = zoo("run", *cmd)
    assert rc == 0, out + err
    assert merged(sweep)["images"] == 12
    assert merged(sweep)["metrics"] == unsharded(zoo, f"model_file={fixture_onnx}")["metrics"]


def test_rerunning_the_whole_sweep_with_resume_completes_it(zoo, squares, fixture_onnx):
    """The other way back: the same sweep command again with resume=true (finished shards only re-score)."""
    args = ("model=fixture", "stage=eval", f"dataset.root={squares}", f"model_file={fixture_onnx}", *SHARDS)
    victim = squares / "images" / f"{shard_ids(squares, 2)[0]}.png"
    good = victim.read_bytes()
    victim.write_bytes(b"")
    sweep = zoo.cwd / "sweep"
    assert zoo("run", "-m", *args, f"hydra.sweep.dir={sweep}")[0] == 1
    victim.write_bytes(good)
    rc, out, err = zoo("run", "-m", *args, f"hydra.sweep.dir={sweep}", "resume=true")
    assert rc == 0, out + err
    assert "resuming: 4 images already done" in (sweep / "0" / "eval" / "zoo.log").read_text()
    assert merged(sweep)["images"] == 12


def test_shards_that_ran_a_different_model_file_are_refused(zoo, fixture_onnx):
    import onnx

    model = zoo.cwd / "m.onnx"
    shutil.copy(fixture_onnx, model)
    args = ("model=fixture", "stage=eval", f"model_file={model}", "dataset.num_shards=3")
    sweep = zoo.cwd / "sweep"
    zoo.ok("run", "-m", *args, "dataset.shard=range(0,3)", f"hydra.sweep.dir={sweep}")
    assert merged(sweep)["images"] == 12
    proto = onnx.load(str(model))  # the same graph, re-saved with a note: other bytes, other sha256
    proto.doc_string = "retrained"
    onnx.save(proto, str(model))
    rc, out, err = zoo("run", "-m", *args, "dataset.shard=1", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=1/eval")
    assert rc == 1, out + err
    md = (sweep / "sweep_report.md").read_text()
    assert "not merged: shard 1 (job 1) did not run what shard 0 (job 0) ran: model file (sha256" in md
    assert "shard 2 (job 2) did not run" not in md
    assert not (sweep / "merged" / "metrics.json").exists()  # the stale merge was removed, not kept


def test_shards_of_different_weights_or_config_are_refused_in_process(tmp_path):
    """merge_identity/fingerprint_problems on run.json records: weights, config and annotation files."""
    from zoo_core.reports import shard_merge
    from zoo_core.reports.job_files import job_files

    def job(name: str, weights: str, thresh: float, ann: str, threads: int) -> shard_merge.Shard:
        d = tmp_path / name
        (d / "eval").mkdir(parents=True)
        (d / "eval" / "run.json").write_text(json.dumps({
            "config": {"model": {"name": "m", "thresh": thresh}, "dataset": {"name": "d", "shard": int(name)},
                       "backend": {"name": "onnxruntime", "intra_op_threads": threads}, "stage": {"name": "eval"}},
            "inputs": {"weights": {"sha256": weights}, "dataset_files": [{"sha256": ann}]}}))
        return shard_merge.Shard(int(name), {"job": name, "status": "ok"}, job_files(d, "eval"))

    same = [job("0", "a" * 64, 0.5, "x", 1), job("1", "a" * 64, 0.5, "x", 4)]
    assert shard_merge.fingerprint_problems(same) == []  # threads are not what ran
    bad = [job("2", "a" * 64, 0.5, "x", 1), job("3", "b" * 64, 0.6, "y", 1)]
    [problem] = shard_merge.fingerprint_problems(bad)
    assert problem.startswith("shard 3 (job 3) did not run what shard 2 (job 2) ran: ")
    assert "model config (thresh: 0.5 vs 0.6)" in problem
    assert f"weights (sha256 {'a' * 12} vs {'b' * 12})" in problem
    assert "annotation files" in problem


def test_torch_shards_that_ran_different_thread_counts_are_refused(tmp_path):
    """torch's outputs change in the last bits with its thread count (before: the shards merged, a result no
    unsharded run gives); the count is what torch ran (run.json's backend describe), not the config's 0."""
    from zoo_core.reports import shard_merge
    from zoo_core.reports.job_files import job_files

    def job(name: str, threads: int, ran: int) -> shard_merge.Shard:
        d = tmp_path / name
        (d / "eval").mkdir(parents=True)
        (d / "eval" / "run.json").write_text(json.dumps({
            "config": {"model": {"name": "m"}, "dataset": {"name": "d", "shard": int(name) % 2},
                       "backend": {"name": "torch", "threads": threads}, "stage": {"name": "eval"}},
            "inputs": {}, "backend": {"backend": "torch", "threads": ran, "weights": None}}))
        return shard_merge.Shard(int(name) % 2, {"job": name, "status": "ok"}, job_files(d, "eval"))

    [problem] = shard_merge.fingerprint_problems([job("0", 1, 1), job("1", 2, 2)])
    assert problem == "shard 1 (job 1) did not run what shard 0 (job 0) ran: backend config (threads: 1 vs 2)"
    assert shard_merge.fingerprint_problems([job("2", 2, 2), job("3", 0, 2)]) == []  # 0: torch's default, 2 here
    assert not shard_merge.is_runtime_key("backend.threads")  # a sweep over it merges each count on its own


def test_shards_made_by_other_plugin_or_zoo_core_versions_are_refused(tmp_path, fixture_cfg, monkeypatch):
    """Before: the merge compared config, weights, model file and annotations but no versions, so a shard re-run
    after an upgrade (another decode) merged with shards of the old code, exit 0. Now run.json records the plugin's
    and zoo-core's versions (``producer``, as the fingerprints hold them) and the merge compares them; a run.json of
    a zoo that did not record them differs from a newer one's."""
    from tests.test_resume import _ctx
    from zoo_core.reports import shard_merge
    from zoo_core.reports.job_files import job_files
    from zoo_core.runs.records import write_run_record

    def job(name: str, core: str | None) -> shard_merge.Shard:
        ctx = _ctx(fixture_cfg, tmp_path / name, "eval", **{"dataset.shard": int(name) % 2})
        monkeypatch.setattr("zoo_core.runs.fingerprint.core_version", lambda: core, raising=False)
        write_run_record(ctx)
        run = tmp_path / name / "eval" / "run.json"
        if core is None:  # written by an older zoo
            rec = json.loads(run.read_text())
            rec.pop("producer", None)
            run.write_text(json.dumps(rec))
        return shard_merge.Shard(int(name) % 2, {"job": name, "status": "ok"}, job_files(tmp_path / name, "eval"))

    assert shard_merge.fingerprint_problems([job("0", "0.1.0"), job("1", "0.1.0")]) == []
    [problem] = shard_merge.fingerprint_problems([job("2", "0.1.0"), job("3", "0.2.0")])
    assert problem == "shard 1 (job 3) did not run what shard 0 (job 2) ran: versions (zoo_core: '0.1.0' vs '0.2.0')"
    [problem] = shard_merge.fingerprint_problems([job("4", None), job("5", "0.1.0")])
    assert problem.startswith("shard 1 (job 5) did not run what shard 0 (job 4) ran: versions (plugin: None vs "
                              "'zoo-fixture ")
    assert "zoo_core: None vs '0.1.0'" in problem


@pytest.mark.parametrize("backend, composed, overrides, added", [
    ("torch", 0, [], ["pin.cores=2", "pin.jobs=1"]),  # pinned by the sweep: the re-run alone is pinned again
    ("torch", 2, [], []),  # 2 threads from the config, not pinned: the re-run gets them as the job did
    ("torch", 0, ["backend.threads=3"], []),  # given on the command line: pinning left it alone
    ("torch", 0, ["backend=onnxruntime"], []),  # (a not-started job whose backend is not the template's)
    ("onnxruntime", 0, [], [])])
def test_the_rerun_command_of_a_pinned_torch_job_pins_it_again(tmp_path, backend, composed, overrides, added):
    """torch's outputs change with its thread count: a sweep job pinned to 2 threads, re-run alone (joblib: not
    pinned), would compute with torch's default and its resume would be refused (before: accepted)."""
    from zoo_core.reports import shard_merge
    from zoo_core.reports.job_files import job_files

    files = job_files(tmp_path / "sweep" / "1", "eval")
    files.overrides.parent.mkdir(parents=True)
    files.overrides.write_text("- model=fixture\n- dataset.shard=1\n")
    key = "threads" if backend == "torch" else "intra_op_threads"
    files.config.write_text(f"backend:\n  name: {backend}\n  {key}: {composed}\n")
    files.run.write_text(json.dumps({"config": {"backend": {"name": backend, key: 2}}}))
    args = shlex.split(shard_merge.rerun_command(tmp_path / "sweep", files,
                                                 overrides=["model=fixture", "dataset.shard=1", *overrides]))
    assert args[args.index("dataset.shard=1") + 1:args.index(f"hydra.sweep.dir={tmp_path / 'sweep'}")] == \
        overrides + added


def test_after_a_resume_refusal_the_rerun_commands_start_over_and_complete_the_merge(zoo, fixture_onnx):
    """Before: the suggested commands kept resume=true, so they failed with the same refusal forever."""
    args = ("model=fixture", "stage=eval", f"model_file={fixture_onnx}", *SHARDS)
    sweep = zoo.cwd / "sweep"
    zoo.ok("run", "-m", *args, f"hydra.sweep.dir={sweep}")
    rc, out, err = zoo("run", "-m", *args, "model.iou_thresh=0.4", f"hydra.sweep.dir={sweep}", "resume=true")
    assert rc == 1, out + err
    md = (sweep / "sweep_report.md").read_text()
    assert md.count("cannot resume: model changed since the interrupted run") >= 3
    tail = re.search(r"then the merge completes: (zoo run .*?)(?:\s*\||$)", md, re.M).group(1)
    cmds = [shlex.split(c)[2:] for c in tail.split(" ; ")]
    assert len(cmds) == 3 and all("model.iou_thresh=0.4" in c for c in cmds)
    assert not any("resume=true" in c for c in cmds)  # resuming would be refused again
    for cmd in cmds:
        rc, out, err = zoo("run", *cmd)
    assert rc == 0, out + err
    m = merged(sweep)
    assert m["images"] == 12
    assert m["metrics"] == unsharded(zoo, f"model_file={fixture_onnx}", "model.iou_thresh=0.4")["metrics"]


def test_a_job_without_a_resumable_state_is_rerun_without_resume(tmp_path):
    """In-process: resume=true only when the job left a state.json and did not refuse to resume."""
    from zoo_core.reports import shard_merge
    from zoo_core.reports.job_files import job_files
    from zoo_core.runs.resume import RESUME_REFUSED, ResumeRefused

    files = job_files(tmp_path / "sweep" / "4", "eval")
    files.overrides.parent.mkdir(parents=True)
    files.overrides.write_text("- model=fixture\n- dataset.shard=1\n- resume=true\n")
    cmd = shard_merge.rerun_command(tmp_path / "sweep", files)
    assert cmd.endswith(f"hydra.sweep.dir={tmp_path / 'sweep'} hydra.sweep.subdir=4/eval")  # nothing to resume
    (files.root / "detections").mkdir()
    (files.root / "detections" / "state.json").write_text("{}")
    assert shard_merge.rerun_command(tmp_path / "sweep", files).endswith("hydra.sweep.subdir=4/eval resume=true")
    exc = ResumeRefused(f"{RESUME_REFUSED} model changed", path=files.root / "detections" / "state.json")
    files.error.write_text(json.dumps({"error": str(exc), "type": type(exc).__name__}))
    assert shard_merge.can_resume(files) is False
    assert "resume=true" not in shard_merge.rerun_command(tmp_path / "sweep", files)


def test_unscored_shards_merge_and_the_rebuilt_report_has_its_page(zoo, fixture_onnx):
    """stage.score=false: each shard keeps eval.json (scored: false) and detections, no metrics.json; the
    merge scores the union. Then the documented rebuild writes report.html too."""
    from zoo_core.reports import sweep_report

    sweep = zoo.cwd / "sweep"
    zoo.ok("run", "-m", "model=fixture", "stage=eval", "stage.score=false", f"model_file={fixture_onnx}",
           "dataset.num_shards=2", "dataset.shard=range(0,2)", f"hydra.sweep.dir={sweep}")
    assert not (sweep / "0" / "eval" / "metrics.json").exists()
    assert json.loads((sweep / "0" / "eval" / "eval.json").read_text())["scored"] is False
    m = merged(sweep)
    assert m["images"] == 12
    assert m["metrics"] == unsharded(zoo, f"model_file={fixture_onnx}")["metrics"]

    for name in ("report.html", "sweep_report.md", "sweep_report.csv"):
        (sweep / name).unlink()
    assert sweep_report.main([str(sweep)]) == 0
    page = (sweep / "report.html").read_text()
    assert (sweep / "sweep_report.md").is_file() and "<table>" in page and "merged" in page


def test_stale_merges_are_removed_and_a_merge_starts_from_an_empty_dir(zoo, fixture_onnx):
    """Records of a merge this report did not make (an earlier label, a refused merge) are removed;
    a merge's plots and prediction files are its own."""
    from zoo_core.reports import sweep_report

    sweep = zoo.cwd / "sweep"
    zoo.ok("run", "-m", "model=fixture", "stage=eval", f"model_file={fixture_onnx}", *SHARDS,
           f"hydra.sweep.dir={sweep}")
    root = sweep / "merged"
    files = sorted(p.name for p in root.iterdir())
    (root / "stale_plot.png").write_bytes(b"old")
    (root / "predictions").mkdir()
    (root / "predictions" / "old.txt").write_text("old")
    old_label = root / "model.iou_thresh=0.4"
    old_label.mkdir()
    (old_label / "metrics.json").write_text("{}")
    assert sweep_report.build_report(sweep)["failed_merges"] == 0
    assert sorted(p.name for p in root.iterdir()) == files  # only what this merge wrote

    (sweep / "2" / "eval" / "error.json").write_text(json.dumps({"error": "boom", "type": "ZooError"}))
    summary = sweep_report.build_report(sweep)
    assert summary["failed_merges"] == 1
    assert not root.exists()  # a refused merge leaves nothing that looks current


@pytest.mark.parametrize("label, name", [
    ("model.iou_thresh=0.4", "model.iou_thresh=0.4"),
    ("model_file=/abs/m.onnx", None),
    ("model_file=../../../etc", None),
    ("x=" + "y" * 300, None),
])
def test_merge_dir_names_stay_one_safe_dir_under_merged(label, name):
    from zoo_core.reports.shard_merge import MAX_LABEL_CHARS, label_dir_name

    got = label_dir_name(label)
    if name is not None:
        assert got == name
    else:
        assert "/" not in got and got not in (".", "..") and not got.startswith(".")
        assert len(got) <= MAX_LABEL_CHARS and "=" in got
        assert got != label_dir_name(label + "2")  # a hash keeps cut or replaced labels apart


# ------------------------------------------------ a shard's detections must be what it scored (in-process)


@pytest.fixture(scope="module")
def chunked_sweep(tmp_path_factory, zoo_at, fixture_onnx) -> Path:
    """A finished 3-shard eval sweep, two detection chunks per shard (``stage.flush_every=2``)."""
    d = tmp_path_factory.mktemp("chunked")
    zoo_at(d).ok("run", "-m", "model=fixture", "stage=eval", f"model_file={fixture_onnx}", "stage.flush_every=2",
                 "num_workers=0", *SHARDS, f"hydra.sweep.dir={d / 'sweep'}")
    assert all(len(list((d / "sweep" / str(i) / "detections").glob("chunk-*.npz"))) == 2 for i in range(3))
    return d / "sweep"


@pytest.mark.parametrize("damage, reason", [
    (lambda d: shutil.rmtree(d), "its detections are gone ("),
    (lambda d: (d / "chunk-000001.npz").unlink(), "chunk-000001.npz, listed in"),
    (lambda d: _rescore(d / "chunk-000000.npz"), "chunk-000000.npz changed since it was written"),
    (lambda d: shutil.copy(d.parent.parent / "2" / "detections" / "chunk-000000.npz", d / "chunk-000002.npz"),
     "chunk-000002.npz is not listed in"),
], ids=["detections-deleted", "chunk-deleted", "chunk-edited", "chunk-planted"])
def test_a_shard_whose_detections_are_not_what_it_scored_is_refused_naming_it(
        chunked_sweep, tmp_path, monkeypatch, cache_dir, eval_metrics, damage, reason):
    """Before: the merge scored what was left (8 of 12 images with a shard's detections gone, exit 0,
    ``missing_predictions: 0``) or the edited chunk's scores."""
    from zoo_core.reports import sweep_report

    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    sweep = tmp_path / "sweep"
    shutil.copytree(chunked_sweep, sweep, symlinks=True)
    assert sweep_report.build_report(sweep)["failed_merges"] == 0  # the copy merges as the unsharded run
    assert merged(sweep)["metrics"] == eval_metrics["metrics"] and merged(sweep)["images"] == 12

    damage(sweep / "1" / "detections")
    assert sweep_report.main([str(sweep)]) == 1
    assert not (sweep / "merged").exists()
    md = (sweep / "sweep_report.md").read_text()
    assert "not merged: shard 1 (job 1): its detections" in md and reason in md, md
    assert "shard 0 (job 0)" not in md and "shard 2 (job 2)" not in md
    [cmd] = rerun_commands(sweep)
    assert "dataset.shard=1" in cmd and "hydra.sweep.subdir=1/eval" in cmd


def test_shards_written_before_the_index_still_merge_as_the_unsharded_run(chunked_sweep, tmp_path, monkeypatch,
                                                                         cache_dir, eval_metrics):
    """Shards of a zoo from before detections/index.jsonl: a review found every merge refused ("chunk-000000.npz
    is not listed"), although docs/sweeps.md suggests rebuilding a finished sweep's report; a missing shard's
    detections are still refused (the images each shard scored are checked without the index)."""
    from zoo_core.reports import sweep_report

    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    sweep = tmp_path / "sweep"
    shutil.copytree(chunked_sweep, sweep, symlinks=True)
    for i in range(3):
        (sweep / str(i) / "detections" / "index.jsonl").unlink()
    assert sweep_report.build_report(sweep)["failed_merges"] == 0
    assert merged(sweep)["metrics"] == eval_metrics["metrics"] and merged(sweep)["images"] == 12
    (sweep / "1" / "detections" / "chunk-000001.npz").unlink()
    assert sweep_report.build_report(sweep)["failed_merges"] == 1


def test_a_shard_scored_on_fewer_images_than_its_detections_hold_is_refused(chunked_sweep, tmp_path, monkeypatch,
                                                                            cache_dir):
    """Its metrics.json must count the images its detections hold (both from the same run)."""
    from zoo_core.reports import sweep_report

    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    sweep = tmp_path / "sweep"
    shutil.copytree(chunked_sweep, sweep, symlinks=True)
    rec = json.loads((sweep / "2" / "eval" / "metrics.json").read_text())
    (sweep / "2" / "eval" / "metrics.json").write_text(json.dumps({**rec, "images": 3}))
    assert sweep_report.build_report(sweep)["failed_merges"] == 1
    md = (sweep / "sweep_report.md").read_text()
    assert "not merged: shard 2 (job 2): it scored 3 images but its detections in" in md and "hold 4" in md


def test_the_rerun_command_of_an_edited_shard_redoes_its_chunk_and_completes_the_merge(
        chunked_sweep, tmp_path, zoo, eval_metrics, monkeypatch, cache_dir):
    """The command keeps resume=true: the changed chunk is dropped and its images redone (it looped before,
    resume failing on the chunk or trusting it)."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    sweep = tmp_path / "sweep"
    shutil.copytree(chunked_sweep, sweep, symlinks=True)
    _rescore(sweep / "0" / "detections" / "chunk-000001.npz")
    [cmd] = rerun_commands_after_report(sweep)
    rc, out, err = zoo("run", *cmd)
    assert rc == 0, out + err
    assert "chunk-000001.npz is not listed in index.jsonl with its current size and CRC-32" in err
    assert merged(sweep)["metrics"] == eval_metrics["metrics"] and merged(sweep)["images"] == 12


def rerun_commands_after_report(sweep: Path) -> list[list[str]]:
    from zoo_core.reports import sweep_report

    assert sweep_report.build_report(sweep)["failed_merges"] == 1
    cmds = rerun_commands(sweep)
    assert cmds and all("resume=true" in c for c in cmds)
    return cmds


def test_a_merge_that_fails_its_gate_keeps_its_record_and_exits_1(zoo, monkeypatch, cache_dir):
    """Before: the gate's failure was caught as a merge failure, which removed the merged metrics.json it had
    just written (an unsharded run exits 1 *after* writing it)."""
    from zoo_core.reports import sweep_report

    sweep = zoo.cwd / "sweep"
    rc, out, err = zoo("run", "-m", "model=fixture", "stage=eval", "backend=oracle", "gate=true", "num_workers=0", *SHARDS,
                       f"hydra.sweep.dir={sweep}", FIXTURE_REFERENCE_AP50="0.9")
    assert rc == 1, out + err
    assert "1 of 1 shard merges failed" in err, err
    m = merged(sweep)
    assert m["images"] == 12 and m["metrics"]["AP50"] == 1.0 and m["reference"]["AP50"]["within"] is False
    md = (sweep / "sweep_report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| all |"))
    assert "failed [" in row and "1.0000" in row, row
    assert "job `merged`: gate: AP50: measured 1.0000, reference 0.9000" in md

    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))  # the plugin's own reference (1.0): the gate passes
    monkeypatch.delenv("FIXTURE_REFERENCE_AP50", raising=False)
    assert sweep_report.main([str(sweep)]) == 0
    assert merged(sweep)["reference"]["AP50"]["within"] is True


def test_a_postprocess_merge_judges_the_backend_that_made_the_outputs(zoo, monkeypatch, cache_dir):
    """Before: outputs made by ``backend=oracle`` were judged as the postprocess config's backend in the merge
    (the oracle-only reference was a protocol mismatch, unlike the unsharded postprocess), and the merged record
    lacked ``outputs_dir`` / ``output_suffix_base``. Shards whose outputs different backends made are refused."""
    from zoo_core.reports import sweep_report

    for stage in ("stage=preprocess", "stage=infer"):
        zoo.ok("run", "model=fixture", stage, "backend=oracle", "num_workers=0", "work_dir=inf")
    outputs = f"outputs_dir={zoo.cwd / 'inf' / 'outputs'}"
    zoo.ok("run", "model=fixture", "stage=postprocess", outputs, "num_workers=0", "work_dir=pp")
    full = json.loads((zoo.cwd / "pp" / "postprocess" / "metrics.json").read_text())
    assert full["reference"]["AP50"]["within"] is True
    sweep = zoo.cwd / "sweep"
    zoo.ok("run", "-m", "model=fixture", "stage=postprocess", outputs, "num_workers=0", *SHARDS,
           f"hydra.sweep.dir={sweep}")
    m = merged(sweep)
    assert m["metrics"] == full["metrics"] and m["images"] == 12
    assert m["reference"] == full["reference"] and "reference_mismatches" not in m
    assert (m["outputs_dir"], m["output_suffix_base"]) == (full["outputs_dir"], full["output_suffix_base"])

    state = sweep / "2" / "detections" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "backend": "onnxruntime"}))
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    assert sweep_report.build_report(sweep)["failed_merges"] == 1
    assert "made by different backends (their detections/state.json: shard 0 'oracle', shard 1 'oracle', " \
           "shard 2 'onnxruntime')" in (sweep / "sweep_report.md").read_text()
    assert not (sweep / "merged").exists()


def test_a_shard_rerun_with_a_changed_setting_is_named_as_such_not_missing(tmp_path):
    """In-process: shard 1 re-ran with model.threshold=0.3. Before, the merge of the others said "shard 1 of 3
    is missing (no job ran dataset.shard=1)", which the job dir 1/ of the report contradicts."""
    from zoo_core.reports import sweep_report

    for job in range(3):
        rec = tmp_path / str(job) / "eval"
        (rec / ".hydra").mkdir(parents=True)
        changed = ["model.threshold=0.3"] if job == 1 else []
        (rec / ".hydra" / "overrides.yaml").write_text(
            "".join(f"- {o}\n" for o in ["model=fixture", "dataset.num_shards=3", f"dataset.shard={job}", *changed]))
        (rec / ".hydra" / "config.yaml").write_text(
            f"model:\n  name: fixture\nstage:\n  name: eval\ndataset:\n  num_shards: 3\n  shard: {job}\n")
        (rec / "metrics.json").write_text(json.dumps({"metrics": {"AP50": 1.0}, "images": 4}))
    summary = sweep_report.build_report(tmp_path)
    errors = {r["job"]: r["error"] for r in summary["merged"]}
    assert errors["merged[model.threshold=None]"].startswith(
        "not merged: shard 1 of 3 ran only with other settings (job 1: model.threshold=0.3; this merge: "
        "model.threshold not set). Re-run it, then the merge completes: ")
    assert "is missing" not in summary["markdown"]
    assert ("shard 0 of 3 ran only with other settings (job 0: model.threshold not set; this merge: "
            "model.threshold=0.3)") in errors["merged[model.threshold=0.3]"]


def fake_shard_sweep(sweep: Path, n: int = 2) -> None:
    """The records of an ``eval`` sweep over ``n`` shards, as far as the report reads them before scoring."""
    for job in range(n):
        rec = sweep / str(job) / "eval"
        (rec / ".hydra").mkdir(parents=True)
        (rec / ".hydra" / "overrides.yaml").write_text(
            f"- model=fixture\n- stage=eval\n- dataset.num_shards={n}\n- dataset.shard={job}\n")
        (rec / ".hydra" / "config.yaml").write_text(
            f"model:\n  name: fixture\nstage:\n  name: eval\ndataset:\n  num_shards: {n}\n  shard: {job}\n")
        (rec / "metrics.json").write_text(json.dumps({"metrics": {"AP50": 1.0}, "images": 4}))
        (rec / "run.json").write_text(json.dumps({"status": "ok", "config": {
            "model": {"name": "fixture"}, "dataset": {"name": "squares", "shard": job}, "backend": {"name": "oracle"},
            "stage": {"name": "eval"}}, "inputs": {"weights": {"sha256": "a" * 64}}}))


def snapshot(d: Path) -> dict:
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_merged_link_planted_in_the_sweep_dir_is_refused_and_its_target_left_as_it_was(tmp_path):
    """Before: a symbolic link planted as ``<sweep dir>/merged`` made the merge empty the link's target
    (every file and folder in it removed) and write the merge's records there."""
    from zoo_core.reports.sweep_report import build_report

    sweep, victim = tmp_path / "sweep", tmp_path / "victim"
    fake_shard_sweep(sweep)
    (victim / "subdir").mkdir(parents=True)
    (victim / "important.txt").write_text("precious")
    (victim / "subdir" / "y.txt").write_text("x")
    before = snapshot(victim)
    (sweep / "merged").symlink_to(victim)
    summary = build_report(sweep)
    assert snapshot(victim) == before and (sweep / "merged").is_symlink()
    [row] = summary["merged"]
    assert row["status"] == "failed" and summary["failed_merges"] == 1
    assert row["error"].startswith(f"not merged: {sweep / 'merged'}: is a symbolic link (to {victim}); zoo clears "
                                   "and rewrites this directory"), row["error"]
    assert row["error"].endswith(f"Remove the link, then rebuild the report (the merges are written there): "
                                 f"python -m zoo_core.reports.sweep_report {sweep}")


@pytest.mark.parametrize("name, content, error", [
    ("run.json", '{"config": [1], "status": "ok"}',
     "shard 0 (job 0) has no readable run.json to check what it ran ({f} is missing or not shaped as zoo writes it)"),
    ("run.json", json.dumps({"status": "ok", "config": {"model": {}, "dataset": {}},
                             "inputs": {"weights": "abc"}}),
     "shard 0 (job 0) has no readable run.json to check what it ran ({f} is missing or not shaped as zoo writes it)"),
    ("run.json", json.dumps({"status": "ok", "config": {"model": {}, "dataset": [1]}}),
     "shard 0 (job 0) has no readable run.json to check what it ran ({f} is missing or not shaped as zoo writes it)"),
    (".hydra/config.yaml", "- 1", "{f} is not a readable job config (a ListConfig, not a mapping)"),
    (".hydra/config.yaml", "model: {}\n", "{f} is not a readable job config (Missing key stage"),
])
def test_a_shard_record_of_the_wrong_type_fails_the_merge_naming_it_not_a_traceback(tmp_path, name, content, error):
    """Before: ``AttributeError: 'list' object has no attribute 'get'`` (run.json's config a list, an input's
    hash a string) or ``'ListConfig' object has no attribute 'stage'`` out of the report."""
    from zoo_core.reports.sweep_report import build_report

    fake_shard_sweep(tmp_path)
    f = tmp_path / "0" / "eval" / name
    f.write_text(content)
    summary = build_report(tmp_path)
    [row] = summary["merged"]
    assert row["status"] == "failed" and row["error"].startswith("not merged: " + error.format(f=f)), row["error"]


ALIAS_BOMB = "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10) if i else ', '.join(['x'] * 10)}]\n"
                     for i in range(5))  # 10^5 strings once expanded (the audit's 10^9 never ended)


def test_a_shard_config_with_yaml_aliases_fails_the_merge_naming_it_unexpanded(tmp_path):
    """Before: merge_config gave the text to OmegaConf.create, which copies every alias: a 1 KB alias bomb in a
    shard's .hydra/config.yaml took the sweep report's memory until it was killed."""
    from zoo_core.reports.sweep_report import build_report

    fake_shard_sweep(tmp_path)
    f = tmp_path / "0" / "eval" / ".hydra" / "config.yaml"
    f.write_text(f.read_text() + ALIAS_BOMB)
    [row] = build_report(tmp_path)["merged"]
    assert row["status"] == "failed" and row["error"].startswith(
        f"not merged: {f} uses YAML anchors or aliases (&a0 at line 8), which Hydra never writes"), row["error"]


@pytest.mark.parametrize("value", ["${oc.env:ZOO_TEST_SECRET}", "x-${oc.env:ZOO_TEST_SECRET,none}",
                                   "${oc.decode:'${oc.env:ZOO_TEST_SECRET}'}", "${oc.${model.name}:ZOO_TEST_SECRET}"])
def test_a_shard_config_calling_a_resolver_fails_the_merge_naming_it(tmp_path, monkeypatch, value):
    """Before: the merge resolved ``${oc.env:...}`` in a shard's job config: the environment of whoever built the
    report went into the merged records."""
    from zoo_core.reports.shard_merge import merge_config
    from zoo_core.reports.sweep_report import build_report

    monkeypatch.setenv("ZOO_TEST_SECRET", "hunter2")
    fake_shard_sweep(tmp_path)
    f = tmp_path / "0" / "eval" / ".hydra" / "config.yaml"
    f.write_text(f.read_text() + f"note: {json.dumps(value)}\n")
    [row] = build_report(tmp_path)["merged"]
    assert row["status"] == "failed" and row["error"].startswith(f"not merged: {f} calls the resolver ${{oc."), row
    assert "hunter2" not in row["error"]
    files = tmp_path / "1" / "eval"
    from zoo_core.reports.job_files import JobFiles
    good = files / ".hydra" / "config.yaml"  # what zoo's own configs use still reads: oc.select, nested node paths
    good.write_text(good.read_text() + "variant: a\nby: {a: 1}\nnote: ${oc.select:model.name,null}\n"
                    "pick: ${.by.${.variant}}\n")
    cfg, stage, n = merge_config(JobFiles(tmp_path / "1", files))
    assert (stage, n, cfg.note, cfg.pick) == ("eval", 2, "fixture", 1)


def test_a_resolver_in_a_real_shard_config_leaves_the_environment_out_of_the_merge(chunked_sweep, tmp_path,
                                                                                   monkeypatch, cache_dir):
    """The audit's case end to end: ``${oc.env:...}`` in the config of a finished shard sweep."""
    from zoo_core.reports import sweep_report

    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("ZOO_TEST_SECRET", "hunter2")
    sweep = tmp_path / "sweep"
    shutil.copytree(chunked_sweep, sweep, symlinks=True)
    f = sweep / "0" / "eval" / ".hydra" / "config.yaml"
    f.write_text(f.read_text() + "note: ${oc.env:ZOO_TEST_SECRET}\n")
    assert sweep_report.build_report(sweep)["failed_merges"] == 1
    assert not [p for p in sweep.rglob("*") if p.is_file() and b"hunter2" in p.read_bytes()]
    assert f"not merged: {f} calls the resolver ${{oc.env:...}}" in (sweep / "sweep_report.md").read_text()


@pytest.mark.parametrize("shard", ["1" * 5000, "1" * 19, "x"])
def test_a_shard_override_that_is_no_shard_number_leaves_its_job_out_of_the_merge_with_a_warning(tmp_path, caplog,
                                                                                                shard):
    """Before: a 5000-digit ``dataset.shard`` passed the merge's number check and ``int()`` refused it: a ValueError
    traceback (``Exceeds the limit (4300 digits)``) out of the sweep report, exit 1."""
    from zoo_core.reports.sweep_report import build_report

    fake_shard_sweep(tmp_path)
    f = tmp_path / "1" / "eval" / ".hydra" / "overrides.yaml"
    f.write_text(f.read_text().replace("dataset.shard=1", f"dataset.shard={shard}"))
    with caplog.at_level("WARNING", logger="zoo"):
        [row] = build_report(tmp_path)["merged"]
    assert row["status"] == "failed" and "shard 1 of 2 is missing" in row["error"]
    [warning] = [r.getMessage() for r in caplog.records if "not a shard number" in r.getMessage()]
    assert warning.startswith("job 1 ran dataset.shard=") and f"(its {f}): it is in no merge" in warning
    assert len(warning) < 400


@pytest.mark.parametrize("skipped, what", [("oops", "a str"), (["a.jpg"], "a list holding a str"),
                                           ({"id": "a"}, "a dict")])
def test_a_shard_whose_skipped_list_is_not_zoos_is_refused_naming_its_record(chunked_sweep, tmp_path, monkeypatch,
                                                                             cache_dir, skipped, what):
    """Before: ``"skipped": "oops"`` in a shard's metrics.json was added letter by letter to the merged record
    (``"skipped": ["o", "o", "p", "s"]``), exit 0."""
    from zoo_core.reports import sweep_report

    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    sweep = tmp_path / "sweep"
    shutil.copytree(chunked_sweep, sweep, symlinks=True)
    f = sweep / "1" / "eval" / "metrics.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "skipped": skipped}))
    assert sweep_report.build_report(sweep)["failed_merges"] == 1
    assert not (sweep / "merged").exists()
    md = (sweep / "sweep_report.md").read_text()
    assert f'not merged: shard 1 (job 1): {f}: "skipped" is {what}, not the list of objects zoo writes' in md, md
    [cmd] = rerun_commands(sweep)
    assert "dataset.shard=1" in cmd


@pytest.mark.parametrize("num_shards, error", [
    ("1000000000000", "not merged: 999999999998 of the dataset.num_shards=1000000000000 shards never ran (no job of "
                      "this merge ran their dataset.shard); run them, then the merge completes"),
    ("0", "not merged: {f} sets dataset.num_shards=0: zoo runs only a whole number >= 1"),
    ("'2'", "not merged: {f} sets dataset.num_shards='2': zoo runs only a whole number >= 1"),
])
def test_a_shard_config_with_an_impossible_num_shards_fails_the_merge_in_one_line(tmp_path, num_shards, error):
    """Before: the merge walked ``range(dataset.num_shards)`` shard by shard, building a problem and a re-run
    command for each: ``num_shards: 1000000000000`` in a shard's config stalled the sweep report."""
    import time

    from zoo_core.reports.sweep_report import build_report

    fake_shard_sweep(tmp_path)
    f = tmp_path / "0" / "eval" / ".hydra" / "config.yaml"
    f.write_text(f.read_text().replace("num_shards: 2", f"num_shards: {num_shards}"))
    t0 = time.monotonic()
    [row] = build_report(tmp_path)["merged"]
    assert time.monotonic() - t0 < 30
    assert row["status"] == "failed" and row["error"] == error.format(f=f), row["error"]


def test_a_sharded_skip_run_merges_as_the_unsharded_run_with_its_skipped_list(zoo, squares):
    """docs/run-directory.md: metrics.json lists the images on_error=skip left out. A shard that skipped an image
    holds no detections for it, which the merge must expect, and the merged record lists it as the unsharded
    record does."""
    victim = sorted((squares / "images").glob("*.png"))[4]
    victim.write_text("not a png")
    args = ("model=fixture", "stage=eval", "backend=oracle", "num_workers=0", f"dataset.root={squares}",
            "on_error=skip", "allow_skips=true")
    full = unsharded(zoo, *args)
    assert [e["id"] for e in full["skipped"]] == [victim.stem] and full["images"] == 11
    sweep = zoo.cwd / "sweep"
    zoo.ok("run", "-m", *args, *SHARDS, f"hydra.sweep.dir={sweep}")
    m = merged(sweep)
    assert [e["id"] for e in m["skipped"]] == [victim.stem]
    assert (m["images"], m["metrics"]) == (full["images"], full["metrics"])


def test_a_shard_config_with_the_hydra_interpolations_the_docs_advise_still_merges(tmp_path):
    """docs/sweeps.md advises ``'model_dir=${hydra:runtime.output_dir}/../model'`` for parallel sweeps: Hydra writes it
    unresolved into every job's config, and the first version of the resolver refusal failed every such merge."""
    from zoo_core.reports.job_files import JobFiles
    from zoo_core.reports.shard_merge import merge_config

    fake_shard_sweep(tmp_path)
    rec = tmp_path / "0" / "eval"
    f = rec / ".hydra" / "config.yaml"
    f.write_text(f.read_text() + "model_dir: ${hydra:runtime.output_dir}/../model\nstamp: ${now:%Y-%m-%d}\n")
    cfg, stage, n = merge_config(JobFiles(tmp_path / "0", rec))
    assert (stage, n, cfg.model.name) == ("eval", 2, "fixture")


def test_a_merged_row_shows_the_headline_metrics_not_the_per_class_ones():
    """The merged row's metric columns are those of a job's row (docs/sweeps.md: every headline metric,
    metric:<name>): per-class "AP/<class>" keys of the merged metrics.json stay out of the report."""
    from zoo_core.reports.shard_merge import _metric_cells

    record = {"images": 8, "metrics": {"AP": 0.5, "AP50": None, "AP/person": 0.25, "AP/car": 1.0}}
    assert _metric_cells(record) == {"metric:AP": 0.5, "metric:AP50": None}
    assert _metric_cells({"images": 8, "metrics": "broken"}) == {}


def test_a_shard_that_ran_twice_merges_its_ok_run_even_when_a_newer_run_failed(tmp_path):
    """pick_shards: when a shard ran more than once, an ok run wins over a newer failed one; among ok runs
    the newest wins."""
    import os

    from zoo_core.reports.job_files import JobFiles
    from zoo_core.reports.shard_merge import pick_shards

    jobs = {}
    for job, mtime in (("0", 1_000.0), ("1", 3_000.0), ("2", 2_000.0), ("3", 4_000.0)):
        rec = tmp_path / job / "eval"
        (rec / ".hydra").mkdir(parents=True)
        (rec / ".hydra" / "overrides.yaml").write_text("- dataset.shard=0\n")
        os.utime(rec / ".hydra" / "overrides.yaml", (mtime, mtime))
        jobs[job] = JobFiles(tmp_path / job, rec)
    row = lambda job, status: {"job": job, "status": status, "@dataset.shard": "0"}  # noqa: E731
    assert pick_shards([row("0", "ok"), row("1", "failed")], jobs)[0].row["job"] == "0"
    assert pick_shards([row("1", "failed"), row("0", "ok")], jobs)[0].row["job"] == "0"
    assert pick_shards([row("0", "ok"), row("2", "ok"), row("3", "no result")], jobs)[0].row["job"] == "2"


def test_a_postprocess_merge_records_outputs_dir_only_when_every_shard_agrees(fixture_cfg, tmp_path, monkeypatch):
    """docs/sweeps.md: a postprocess merge records the shards' outputs_dir / output_suffix_base when they agree;
    shards that read different outputs dirs leave the key out rather than naming the first shard's."""
    from omegaconf import OmegaConf, open_dict

    from zoo_core.reports import shard_merge
    from zoo_core.reports.job_files import JobFiles
    from zoo_core.stages import scoring

    cfg = OmegaConf.create(OmegaConf.to_container(fixture_cfg))
    with open_dict(cfg):
        cfg.stage.name = "postprocess"
    records = [{"outputs_dir": "/o/a", "output_suffix_base": "b"}, {"outputs_dir": "/o/b", "output_suffix_base": "b"}]
    shards = [shard_merge.Shard(i, {"job": str(i)}, JobFiles(tmp_path / str(i), tmp_path / str(i) / "pp"))
              for i in range(2)]
    monkeypatch.setattr(shard_merge, "shard_detections",
                        lambda s, samples, n, k: ({f"img{s.index}": None}, records[s.index], "onnxruntime"))
    seen = {}
    monkeypatch.setattr(scoring, "score", lambda ctx, dets, skipped, extra, made_by=None: seen.update(extra) or {})
    shard_merge.score_union(cfg, shards, tmp_path / "merged")
    assert "outputs_dir" not in seen and seen["output_suffix_base"] == "b"
