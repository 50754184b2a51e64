"""A COCO stat that COCOeval cannot define (it writes -1: no ground truth of that kind among the images
scored) is ``null`` in metrics.json with its reason in ``null_metrics``, never the number -1."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from zoo_core.api.types import Detections
from zoo_core.datasets.coco import (
    CATEGORY_IDS,
    SAMPLE_ANN_FILE,
    SAMPLE_IMAGE_DIR,
    CocoDataset,
    ensure_coco_sample,
    score_coco,
)

LARGE = 96 ** 2  # COCOeval's "large" area range starts here


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = ensure_coco_sample(tmp_path_factory.mktemp("coco_sample"), n_images=24, seed=0)
    return CocoDataset(root, SAMPLE_ANN_FILE, SAMPLE_IMAGE_DIR, name="coco_sample")


def oracle(ds, samples) -> dict:
    index = {c: i for i, c in enumerate(CATEGORY_IDS)}
    out = {}
    for s in samples:
        anns = [a for a in ds.annotations(s.key) if not a["iscrowd"]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
        out[s.id] = Detections(boxes.reshape(-1, 4), np.linspace(0.9, 0.5, len(anns)),
                               np.array([index[a["category_id"]] for a in anns], np.int32))
    return out


@pytest.mark.parametrize("evaluator", ["pycocotools", "faster-coco-eval"])
def test_stats_without_ground_truth_of_their_kind_are_nan_with_the_reason(coco, evaluator):
    small = [s for s in coco.samples() if all(a["area"] < LARGE for a in coco.annotations(s.key))
             and any(not a["iscrowd"] for a in coco.annotations(s.key))][:1]
    assert small, "the sample has an image with objects, none of them large"
    res = score_coco(oracle(coco, small), coco, small, evaluator=evaluator, plots=False)
    assert math.isnan(res.metrics["APl"]) and math.isnan(res.metrics["ARl"])
    assert res.metrics["AP"] == pytest.approx(1.0) and res.metrics["AR100"] == pytest.approx(1.0)
    reasons = res.info["null_reasons"]
    assert "APl" in reasons and "ARl" in reasons and "AP" not in reasons
    assert reasons["APl"] == ("COCOeval gave -1: no ground truth of this kind (area range / IoU) among the "
                              "1 image scored")
    assert not any(v == -1 for v in res.metrics.values())


def test_metrics_json_has_null_and_the_reason_not_minus_one(zoo):
    """The brief's reproducer: a 5-shard sweep of 3 images; a shard's stats without ground truth."""
    zoo.ok("run", "model=centernet", "backend=oracle", "dataset=coco_sample", "model.K=2", "stage=eval",
           "dataset.limit=3", "dataset.num_shards=3", "dataset.shard=1", "work_dir=run")
    rec = json.loads((zoo.cwd / "run" / "eval" / "metrics.json").read_text())
    undefined = [k for k, v in rec["metrics"].items() if v is None]
    assert undefined, rec["metrics"]
    assert -1 not in rec["metrics"].values() and -1.0 not in rec["metrics"].values()
    assert set(rec["null_metrics"]) == set(undefined)
    assert all(r.startswith("COCOeval gave -1: no ground truth of this kind") for r in rec["null_metrics"].values())
    assert "null_reasons" not in rec["info"]


def test_no_image_scored_draws_no_per_class_chart_and_warns_nothing(coco, recwarn, caplog):
    """Before: ``dataset.limit=0`` (or an empty shard) printed matplotlib's "identical low and high ylims"
    warning while drawing an ``ap_per_class.png`` with no bars."""
    res = score_coco({}, coco, [], evaluator="faster-coco-eval", plots=True)
    assert "ap_per_class.png" not in res.files and "pr_curves.png" in res.files
    assert not [w for w in recwarn if "ylim" in str(w.message)]
    assert "ylim" not in caplog.text
    assert all(math.isnan(v) for v in res.metrics.values())
