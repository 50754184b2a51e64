"""Directories zoo owns inside a run dir, linked elsewhere before the run (``model/``) or swapped for a link while it
runs (``detections/``, ``outputs/``, ``inputs/``, the record dir): refused with one error naming the dir, and
nothing written into the link's target."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from zoo_core.api.errors import ZooError
from zoo_core.api.types import Detections, Sample
from zoo_core.pipeline.stream import Result


def _swap_for_link(d: Path, victim: Path) -> None:
    """What an attacker does mid-run: move the dir aside, put a link to ``victim`` in its place."""
    d.rename(d.with_name(d.name + ".moved"))
    d.symlink_to(victim, target_is_directory=True)


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    return victim


def _untouched(victim: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert (victim / "precious.txt").read_text() == "keep"


REPLACED = r"was replaced during the run \(now a symbolic link to {}\)"


def _ctx(cfg: dict, root: Path) -> SimpleNamespace:
    from omegaconf import OmegaConf

    return SimpleNamespace(cfg=OmegaConf.create(cfg), path=lambda *p: root.joinpath(*p))


def test_a_model_dir_link_planted_in_the_run_dir_is_refused(tmp_path):
    """Before: ``<work_dir>/model`` was resolved through a planted link, and exports, OMs and their records were
    written (replacing files) in its target, exit 0."""
    from zoo_core.runs.model_files import model_dir

    victim = _victim(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model").symlink_to(victim)
    ctx = _ctx({"work_dir": str(run), "model_dir": str(run / "model")}, run)
    with pytest.raises(ZooError, match=r"run/model: is a symbolic link \(to .*victim\)"):
        model_dir(ctx)
    _untouched(victim)
    # a model_dir= the user points elsewhere may be a link: it is the place they chose
    shared = tmp_path / "shared"
    shared.symlink_to(victim)
    assert model_dir(_ctx({"work_dir": str(run), "model_dir": str(shared)}, run)) == victim.resolve()
    (run / "model").unlink()
    (run / "model").mkdir()
    assert model_dir(ctx) == (run / "model").resolve()


def test_a_model_dir_link_through_the_cli_exits_2_and_writes_nothing_there(zoo):
    victim = zoo.cwd / "victim"
    victim.mkdir()
    (victim / "fixture_onnxruntime.onnx").write_text("precious")
    (zoo.cwd / "run").mkdir()
    (zoo.cwd / "run" / "model").symlink_to(victim)
    rc, out, err = zoo("run", "model=fixture", "stage=export", "work_dir=run")
    assert rc == 2, err
    assert "run/model: is a symbolic link" in err and "Traceback" not in err
    assert sorted(p.name for p in victim.iterdir()) == ["fixture_onnxruntime.onnx"]
    assert (victim / "fixture_onnxruntime.onnx").read_text() == "precious"


def _none() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def test_a_detections_dir_swapped_between_two_flushes_is_an_error_and_its_target_untouched(tmp_path):
    """Before: the store refused a link only when it was opened; each flush then wrote its chunk and its
    ``index.jsonl`` line through whatever ``detections`` named, so a dir swapped for a link mid-run sent the rest of
    the detections (and ``state.json``'s "complete") into the link's target, exit 0."""
    from zoo_core.runs.detstore import DetectionStore
    from zoo_core.runs.resume import mark_complete

    victim = _victim(tmp_path)
    store = DetectionStore(tmp_path / "run" / "detections", flush_every=1)
    store.reset()
    (store.dir / "state.json").write_text('{"complete": false}')
    store.add("a", _none())
    assert (store.dir / "chunk-000000.npz").is_file()
    shutil.copy(store.dir / "state.json", victim / "state.json")  # (the audit's repro: a state to mark complete)
    _swap_for_link(store.dir, victim)
    with pytest.raises(ZooError, match=REPLACED.format(".*victim")) as err:
        store.add("b", _none())
    assert str(err.value).startswith(f"{store.dir}: ")
    with pytest.raises(ZooError, match="was replaced during the run"):
        mark_complete(store.dir / "state.json", pinned=store.pinned)
    assert json.loads((victim / "state.json").read_text()) == {"complete": False}
    (victim / "state.json").unlink()
    _untouched(victim)


def test_another_directory_in_place_of_the_detections_dir_is_an_error_too(tmp_path):
    from zoo_core.runs.detstore import DetectionStore

    store = DetectionStore(tmp_path / "detections", flush_every=1)
    store.add("a", _none())  # (pinned at the first flush when not reset)
    store.dir.rename(tmp_path / "moved")
    store.dir.mkdir()
    with pytest.raises(ZooError, match=r"was replaced during the run \(now another directory\)"):
        store.add("b", _none())
    assert list(store.dir.iterdir()) == []
    shutil.rmtree(store.dir)
    with pytest.raises(ZooError, match=r"was replaced during the run \(now missing\)"):
        store.add("c", _none())
    assert not store.dir.exists()


def _result(sample_id: str, outputs=None, inputs=None) -> Result:
    return Result(sample=Sample(sample_id, Path(f"{sample_id}.png")), outputs=outputs, inputs=inputs, meta={})


def test_an_outputs_dir_swapped_between_two_images_is_an_error_and_its_target_untouched(tmp_path):
    """Before: save_outputs=true / stage=infer wrote each image's .bin through the dir's name, so after a swap every
    later output went into the link's target."""
    from zoo_core.pipeline.sinks import OutputBinSink

    victim = _victim(tmp_path)
    sink = OutputBinSink(tmp_path / "outputs")
    sink.write(_result("a", outputs=[np.ones(3, np.float32)]))
    _swap_for_link(sink.dir, victim)
    with pytest.raises(ZooError, match=REPLACED.format(".*victim")):
        sink.write(_result("b", outputs=[np.ones(3, np.float32)]))
    sink.close()
    _untouched(victim)
    moved = tmp_path / "outputs.moved"
    assert sorted(p.name for p in moved.iterdir()) == ["a_0.bin", "index.jsonl"]


@pytest.mark.parametrize("multi", [False, True])
def test_an_inputs_dir_or_its_input_subdir_swapped_mid_preprocess_is_an_error(tmp_path, multi):
    from zoo_core.pipeline.sinks import InputBinSink

    victim = _victim(tmp_path)
    sink = InputBinSink(tmp_path / "inputs")
    arrays = {"x": np.ones(2, np.float32), "y": np.zeros(2, np.float32)} if multi else {"x": np.ones(2, np.float32)}
    sink.write(_result("a", inputs=arrays))
    swapped = sink.dir / "x" if multi else sink.dir
    _swap_for_link(swapped, victim)
    with pytest.raises(ZooError, match=REPLACED.format(".*victim")) as err:
        sink.write(_result("b", inputs=arrays))
    assert str(err.value).startswith(f"{swapped}: ")
    sink.close()
    _untouched(victim)


def test_a_record_dir_swapped_during_the_run_is_an_error_and_its_target_untouched(fixture_cfg, tmp_path):
    """Before: ``ctx.record(...)`` joined names onto the record dir's path: run.json, metrics.json and the plugin's
    files went into whatever it named by then."""
    from zoo_core.plugins.manager import ZooPluginManager
    from zoo_core.runs.context import RunContext
    from zoo_core.runs.records import write_perf

    victim = _victim(tmp_path)
    (tmp_path / "run" / "eval").mkdir(parents=True)  # (Hydra made it before the stage)
    ctx = RunContext(fixture_cfg.copy(), ZooPluginManager(), tmp_path / "run")
    write_perf(ctx, {"wall_s": 1.0})
    _swap_for_link(ctx.record_dir, victim)
    with pytest.raises(ZooError, match=REPLACED.format(".*victim")):
        write_perf(ctx, {"wall_s": 2.0})
    _untouched(victim)


def test_detections_swapped_mid_eval_end_the_run_failed_with_nothing_in_the_target(fixture_cfg, fixture_onnx,
                                                                                  tmp_path, monkeypatch):
    """The stage as a whole (the audit's repro, in-process): detections/ swapped for a link after the first chunk;
    the run stops with the error (exit 2 through the CLI: a ZooError) and the target keeps only what it had."""
    from omegaconf import OmegaConf, open_dict

    from zoo_core.plugins.manager import ZooPluginManager
    from zoo_core.runs.context import RunContext
    from zoo_core.runs.detstore import DetectionStore
    from zoo_core.runs.run_stage import run_stage

    victim = _victim(tmp_path)
    run = tmp_path / "run"
    flush = DetectionStore.flush
    calls = []

    def flush_then_swap(self):
        flush(self)
        calls.append(1)
        if len(calls) == 1:
            shutil.copy(self.dir / "state.json", victim / "state.json")
            _swap_for_link(self.dir, victim)

    monkeypatch.setattr(DetectionStore, "flush", flush_then_swap)
    cfg = fixture_cfg.copy()
    with open_dict(cfg):
        cfg.stage.name = "eval"
        cfg.num_workers = 0
        for k, v in {"backend.name": "onnxruntime", "model_file": str(fixture_onnx), "stage.flush_every": 1,
                     "dataset.limit": 4}.items():
            OmegaConf.update(cfg, k, v, merge=False)
    with pytest.raises(ZooError, match=REPLACED.format(".*victim")) as err:
        run_stage(RunContext(cfg, ZooPluginManager(), run))
    assert err.value.exit_code == 2
    assert json.loads((victim / "state.json").read_text())["complete"] is False
    (victim / "state.json").unlink()
    _untouched(victim)
    record = json.loads((run / "eval" / "run.json").read_text())
    assert record["status"] == "failed" and "was replaced during the run" in record["error"]
