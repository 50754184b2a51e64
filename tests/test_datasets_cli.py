"""The dataset API through the `zoo` CLI: CenterFace oracle on WIDER, COCO plots and quiet evaluators,
evaluator warnings on the console, and a dataset shipped by a disabled plugin."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zoo_core.runs.detstore import DetectionStore


@pytest.mark.parametrize("variant", ["starclouds", "ascend"])
def test_centerface_oracle_eval_scores_the_bundled_sample(zoo, variant):
    out = zoo.ok("run", "model=centerface", "stage=eval", "backend=oracle", f"model.variant={variant}")
    m = json.loads((zoo.cwd / "outputs" / "centerface" / "eval" / "metrics.json").read_text())
    assert m["dataset"] == "widerface_sample" and m["images"] == 24
    for setting in ("easy", "medium", "hard"):
        assert m["metrics"][setting] >= 0.99, (setting, m["metrics"])
    assert "warnings" not in m["info"] and "centerface on widerface_sample (24 images)" in out


def test_coco_plots_and_evaluator_output_in_the_log_only(zoo):
    rc, out, err = zoo("run", "model=centernet", "stage=eval", "backend=oracle", "dataset=coco_sample")
    assert rc == 0, err
    run = zoo.cwd / "outputs" / "centernet" / "eval"
    m = json.loads((run / "metrics.json").read_text())
    assert m["metrics"]["AP"] == 1.0 and {"pr_curves.png", "ap_per_class.png", "detections.json"} <= set(m["files"])
    for name in ("pr_curves.png", "ap_per_class.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # faster-coco-eval's own 12-line summary and progress: in zoo.log, not on the console
    assert "Average Precision" not in err + out and "DONE (t=" not in err + out
    log = "\n".join(p.read_text() for p in run.rglob("zoo.log"))
    assert log.count("Average Precision") == 6 and "Accumulating evaluation results" in log
    # zoo's own summary, once
    assert out.count("centernet on coco_sample (24 images):") == 1 and out.count("  AP50 ") == 1


@pytest.mark.slow
def test_a_shard_merge_keeps_the_evaluator_output_in_its_own_zoo_log(zoo):
    """Before: the merge of a sharded sweep, scored in the launching ``zoo run -m`` (Hydra's own logging, not a
    job's), printed faster-coco-eval's progress and 12-line summary as ``[HYDRA]`` console lines, and
    ``merged/`` had no zoo.log."""
    sweep = zoo.cwd / "sweep"
    rc, out, err = zoo("run", "-m", "model=centernet", "backend=oracle", "dataset=coco_sample", "stage=eval",
                       "dataset.num_shards=2", "dataset.shard=0,1", f"hydra.sweep.dir={sweep}")
    assert rc == 0, err
    console = out + err
    for chatter in ("Average Precision", "Average Recall", "DONE (t=", "Evaluate annotation type", "Accumulating"):
        assert chatter not in console, console
    log = (sweep / "merged" / "zoo.log").read_text()
    assert log.count("Average Precision") == 6 and "Accumulating evaluation results" in log
    assert json.loads((sweep / "merged" / "metrics.json").read_text())["metrics"]["AP"] == 1.0


def test_wider_evaluator_warnings_reach_the_console_and_metrics(zoo):
    zoo.ok("run", "model=anchorface", "stage=eval", "backend=oracle", "dataset.limit=4", "work_dir=first")
    dets = DetectionStore(zoo.cwd / "first" / "detections").load()
    flat = DetectionStore(zoo.cwd / "flat")
    for sid, d in dets.items():
        d.scores = np.full(len(d), 0.5, np.float32)
        flat.add(sid, d)
    flat.flush()
    rc, out, err = zoo("run", "model=anchorface", "stage=evaluate", f"detections={zoo.cwd / 'flat'}",
                       "dataset.limit=4", "work_dir=second")
    assert rc == 0, err
    assert "warning: widerface_sample evaluation: all prediction scores are equal" in err
    m = json.loads((zoo.cwd / "second" / "evaluate" / "metrics.json").read_text())
    assert any("all prediction scores are equal" in w for w in m["info"]["warnings"])


def test_a_dataset_of_a_disabled_plugin_names_its_distribution(zoo, tmp_path):
    """A third-party model whose yaml picks the ``squares`` dataset of zoo-fixture, disabled."""
    site = tmp_path / "site"
    pkg = site / "zoo_ssdface"
    (pkg / "conf" / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text('ZOO_HOOK_API = "1"\n')
    (pkg / "conf" / "model" / "ssdface.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /dataset: squares\nmodel:\n  name: ssdface\n")
    info = site / "zoo_ssdface-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-ssdface\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[zoo.models]\nssdface = zoo_ssdface.plugin\n")
    env = zoo.env(PYTHONPATH=str(site), ZOO_DISABLE_PLUGINS="fixture")
    rc, out, err = zoo("run", "model=ssdface", "stage=eval", env=env)
    assert rc == 2 and "Traceback" not in err
    assert ("dataset 'squares' is provided by distribution zoo-fixture (plugin 'fixture'), which is disabled by "
            "ZOO_DISABLE_PLUGINS") in err
    # enabled again: the config composes; squares has no kind, so this hook-less model is told what is missing
    # (weights=random: a plugin without default weights is refused without weights= first, issue 12)
    rc, out, err = zoo("run", "model=ssdface", "stage=eval", "weights=random", env=zoo.env(PYTHONPATH=str(site)))
    assert rc == 2 and "disabled" not in err
    assert ("model 'ssdface' does not implement the 'dataset' hook and dataset 'squares' has no 'kind' zoo-core "
            "reads (kinds: coco, widerface)") in err
