"""The COCO results list (``detections.json``), record for record as CenterNet's ``convert_eval_format``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from zoo_core.api.types import Detections, Sample

from .dataset import CATEGORY_IDS


def round2(values: np.ndarray) -> np.ndarray:
    """``float("{:.2f}".format(v))`` for every float32 ``v``, vectorised.

    For a float32 value, ``float64(v) * 100`` is exact (24 + 7 bits), so round-half-even of it is
    the decimal rounding Python's formatting does, and ``q / 100`` is the double that parsing the
    2-decimal string gives.
    """
    v = np.asarray(values, dtype=np.float32).astype(np.float64)
    return np.round(v * 100.0) / 100.0


def class_major_order(labels: np.ndarray) -> np.ndarray:
    """Row order of the reference per-class dict: classes ascending, the given (score) order kept inside each.

    ``labels`` must come from rows already in descending score (as ``postprocess`` returns them).
    """
    return np.argsort(np.asarray(labels), kind="stable")


def coco_records(detections: Mapping[str, Detections], samples: Sequence[Sample],
                 category_ids: Sequence[int] = CATEGORY_IDS) -> list[dict]:
    """The COCO results list, record for record as the reference ``convert_eval_format``.

    Images in ``samples`` order (``Sample.key`` is the COCO image id); within an image, classes
    ascending and descending score inside a class; ``bbox = [x1, y1, x2 - x1, y2 - y1]`` in float32
    then 2-decimal rounded like the score; ``category_id = category_ids[label]``; no score threshold.
    Samples without detections add nothing. A label outside ``category_ids`` raises ``ValueError``.
    """
    ids = np.asarray(category_ids, dtype=np.int64)
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
