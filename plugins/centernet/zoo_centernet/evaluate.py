"""COCO results json (as the reference writes it) and COCOeval bbox scoring (REFERENCE 2.9)."""
from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence

import numpy as np

from zoo_core.api.errors import ConfigError
from zoo_core.api.types import Detections, EvalResult, Sample

from .coco import VALID_IDS
from .decode import class_major_order

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
EVALUATORS = ("auto", "pycocotools", "faster-coco-eval")


def round2(values: np.ndarray) -> np.ndarray:
    """``float("{:.2f}".format(v))`` for every float32 ``v``, vectorised.

    For a float32 value, ``float64(v) * 100`` is exact (24 + 7 bits), so round-half-even of it is
    the decimal rounding Python's formatting does, and ``q / 100`` is the double that parsing the
    2-decimal string gives.
    """
    v = np.asarray(values, dtype=np.float32).astype(np.float64)
    return np.round(v * 100.0) / 100.0


def coco_records(detections: Mapping[str, Detections], samples: Sequence[Sample],
                 valid_ids: Sequence[int] = VALID_IDS) -> list[dict]:
    """The COCO results list, record for record as the reference ``convert_eval_format``.

    Images in ``samples`` order; within an image, classes ascending and descending score inside a
    class; ``bbox = [x1, y1, x2 - x1, y2 - y1]`` in float32 then 2-decimal rounded like the score;
    ``category_id = valid_ids[label]``; no score threshold. Samples without detections add nothing.
    """
    ids = np.asarray(valid_ids, dtype=np.int64)
    records: list[dict] = []
    for sample in samples:
        det = detections.get(sample.id)
        if det is None or len(det) == 0:
            continue
        order = class_major_order(det.labels)
        boxes = det.boxes[order].astype(np.float32)
        xywh = np.empty_like(boxes)
        xywh[:, :2] = boxes[:, :2]
        xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
        bbox = round2(xywh).tolist()
        score = round2(det.scores[order]).tolist()
        labels = det.labels[order]
        if labels.min() < 0 or labels.max() >= len(ids):
            raise ValueError(f"image {sample.id}: class index outside 0..{len(ids) - 1}")
        cats = ids[labels].tolist()
        image_id = int(sample.key)
        records.extend({"image_id": image_id, "category_id": c, "bbox": b, "score": s}
                       for c, b, s in zip(cats, bbox, score))
    return records


def resolve_evaluator(name: str | None) -> str:
    """``auto`` -> ``faster-coco-eval`` when importable, else ``pycocotools``; checks the name."""
    name = name or "auto"
    if name not in EVALUATORS:
        raise ConfigError(f"model.coco_evaluator={name!r} is not one of {', '.join(EVALUATORS)}")
    if name == "auto":
        return "faster-coco-eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"
    return name


def _coco_api(evaluator: str):
    if evaluator == "faster-coco-eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def _quiet(fn):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def run_cocoeval(instances: dict, records: list[dict], image_ids: Sequence[int], evaluator: str):
    """COCOeval bbox with default parameters on ``image_ids``; returns the finished evaluator object."""
    COCO, COCOeval = _coco_api(evaluator)

    def make():
        gt = COCO()
        gt.dataset = {k: instances[k] for k in ("images", "annotations", "categories")}
        gt.createIndex()
        if records:
            dt = gt.loadRes([dict(r) for r in records])
        else:
            dt = COCO()
            dt.dataset = {"images": list(instances["images"]), "annotations": [],
                          "categories": list(instances["categories"])}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return ev

    return _quiet(make)


def per_category_ap(ev, names: Mapping[int, str]) -> dict[str, float]:
    """``AP/<name>`` (IoU 0.50:0.95, all areas, 100 dets) for each category with ground truth."""
    precision = np.asarray(ev.eval["precision"])
    out = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        if p.size:
            out[f"AP/{names.get(cat_id, cat_id)}"] = float(p.mean())
    return out


def evaluate_coco(detections: Mapping[str, Detections], dataset, samples: Sequence[Sample],
                  evaluator: str = "auto", valid_ids: Sequence[int] = VALID_IDS) -> EvalResult:
    """Score ``detections`` of ``samples`` against ``dataset`` (a :class:`CocoDataset`).

    Only the images in ``samples`` are scored. Metrics: the 12 COCOeval stats (``AP`` = stats[0])
    and ``AP/<category name>``; files: ``detections.json`` (the reference results list).
    """
    used = resolve_evaluator(evaluator)
    records = coco_records(detections, samples, valid_ids)
    ev = run_cocoeval(dataset.instances, records, [s.key for s in samples], used)
    metrics = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
    metrics.update(per_category_ap(ev, dataset.category_names()))
    return EvalResult(
        metrics=metrics,
        files={"detections.json": json.dumps(records).encode()},
        info={"evaluator": used, "images": len(samples), "iou_type": "bbox"},
    )
