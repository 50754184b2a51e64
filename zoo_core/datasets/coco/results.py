"""The COCO results list (``detections.json``), record for record as CenterNet's ``convert_eval_format``, and its
reader (a user's results json scored by ``stage=evaluate``)."""
from __future__ import annotations

import codecs
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoo_core.api.errors import ZooError
from zoo_core.api.types import Detections, DetectionsRead, Sample
from zoo_core.json_numbers import finite_number, long_integer, shown

from .dataset import CATEGORY_IDS, CocoDataset


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


@dataclass
class WrittenCocoDetections(Detections):
    """Detections read from a COCO results json that also keep each record's ``bbox`` and ``score`` as
    the file wrote them (``written[i]`` for box ``i``), so :func:`coco_records` gives the file's values
    back and the file is scored as written: no float32 cast, no 2-decimal rounding."""

    written: list[tuple[list[float], float]] = field(default_factory=list)


def coco_records(detections: Mapping[str, Detections], samples: Sequence[Sample],
                 category_ids: Sequence[int] = CATEGORY_IDS) -> list[dict]:
    """The COCO results list, record for record as the reference ``convert_eval_format``.

    Images in ``samples`` order (``Sample.key`` is the COCO image id); within an image, classes
    ascending and descending score inside a class; ``bbox = [x1, y1, x2 - x1, y2 - y1]`` in float32
    then 2-decimal rounded like the score; ``category_id = category_ids[label]``; no score threshold.
    Samples without detections add nothing. A label outside ``category_ids`` raises ``ZooError`` naming the image.
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
        written = getattr(det, "written", None)
        if written:  # a user's results file: its own values
            bbox = [list(written[i][0]) for i in order]
            score = [written[i][1] for i in order]
        else:
            bbox = round2(xywh).tolist()
            score = round2(det.scores[order]).tolist()
        labels = det.labels[order]
        if labels.min() < 0 or labels.max() >= len(ids):
            bad = int(labels[(labels < 0) | (labels >= len(ids))][0])
            raise ZooError(f"image {sample.id!r}: class index {bad} is outside 0..{len(ids) - 1}, the classes "
                           "model.category_ids maps to COCO categories", path=sample.path)
        cats = ids[labels].tolist()
        image_id = int(sample.key)
        records.extend({"image_id": image_id, "category_id": c, "bbox": b, "score": s}
                       for c, b, s in zip(cats, bbox, score))
    return records


#: ``DetectionsRead.info["format"]`` of a COCO results json.
FORMAT = "coco_results"


def _results_list(path: Path) -> list | None:
    """The parsed list when ``path`` is a COCO results json (a list of objects with ``image_id`` and
    ``bbox``, or an empty list; a ``.json`` list of objects too, whatever their keys, so a mistake in the first
    record is named as in any other); ``None`` for another kind of file. A ``.json`` that does not parse raises.
    A UTF-8 byte order mark (what some Windows editors write first) is read past, as the instances json's is."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16).removeprefix(codecs.BOM_UTF8).lstrip()
    except OSError as e:
        raise ZooError(f"cannot read the results file ({e.strerror})", path=path) from None
    if not head.startswith(b"["):
        if path.suffix.lower() == ".json":
            raise ZooError(f"not a COCO results file: a results json is a list "
                           f"[{{\"image_id\", \"category_id\", \"bbox\", \"score\"}}, ...], this file starts with "
                           f"{head[:12]!r}", path=path)
        return None
    try:
        with open(path, "rb") as f:
            text = f.read()
        data = json.loads(text)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer beyond CPython's int-string limit
        where = long_integer(e, text)
        if where:
            raise ZooError(f"not a COCO results file: line {where[0]} holds an integer of {where[1]} digits",
                           path=path) from None
        raise ZooError(f"not a JSON file ({e})", path=path) from None
    except RecursionError:
        raise ZooError("not a COCO results file: its JSON is nested too deeply to read", path=path) from None
    except MemoryError:
        raise ZooError("too large to read into memory as one JSON document", path=path) from None
    if not isinstance(data, list):
        return None
    if data and not (isinstance(data[0], dict) and "image_id" in data[0] and "bbox" in data[0]):
        # a .json list of objects is a results file with a mistake in its first record: its check names it
        return data if path.suffix.lower() == ".json" and isinstance(data[0], dict) else None
    return data


_F32_MAX = float(np.finfo(np.float32).max)


def _finite_number(v) -> bool:
    """A JSON number that stays finite as the float32 zoo keeps boxes and scores in."""
    return finite_number(v) and abs(v) <= _F32_MAX


def _got(rec: dict, key: str) -> str:
    """What record ``rec`` holds under ``key``, for an error message: the value, or that the key is missing and
    which keys the record has (a misspelt ``imageid`` shows)."""
    if key in rec:
        return shown(rec[key])
    keys = ", ".join(shown(str(k)) for k in list(rec)[:8]) + (", ..." if len(rec) > 8 else "")
    return f"no {key!r} key (the record's keys: {keys or 'none'})"


def read_coco_results(path: str | os.PathLike, dataset: CocoDataset, samples: Sequence[Sample],
                      category_ids: Sequence[int] = CATEGORY_IDS) -> DetectionsRead | None:
    """Read a COCO results json (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``).

    Recognised by content (a json list whose first record has ``image_id`` and ``bbox``; an empty list
    too; any ``.json`` list of objects, so a key missing from the first record is named as from any other);
    ``None`` for any other file. Every record is checked: an ``image_id`` or ``category_id`` that is not an
    integer (``11.0`` is not), an ``image_id`` that is not an image of the dataset's annotation file, a
    ``category_id`` outside ``category_ids`` (``model.category_ids``), a bbox that is not 4 finite numbers
    (float32-finite, with ``x + w`` and ``y + h``; a negative size is kept: COCOeval takes it, and a decoder
    may write one) or a score that is not float32-finite raise ``ZooError`` naming the file, the record and
    a missing key. Records of dataset images outside ``samples`` are ignored.
    Boxes become ``x1 y1 x1+w y1+h`` (float32) with the category's 0-based class index, per image in
    descending score (stable: file order among ties); each keeps its record's values as written
    (:class:`WrittenCocoDetections`), which is what is scored. ``info``: ``format``, ``path``, ``records``,
    ``missing_predictions`` (scored images without any record).
    """
    path = Path(path)
    data = _results_list(path)
    if data is None:
        return None
    image_ids = {int(s.key) for s in dataset.samples()}
    wanted = {int(s.key): s.id for s in samples}
    label_of = {int(c): i for i, c in enumerate(category_ids)}
    per_image: dict[int, list[tuple[float, list[float], int]]] = {}
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise ZooError(f"results[{i}] is not an object", path=path)
        img, cat, bbox, score = rec.get("image_id"), rec.get("category_id"), rec.get("bbox"), rec.get("score")
        score = score if _finite_number(score) else None
        if not (isinstance(img, int) and not isinstance(img, bool)):
            raise ZooError(f"results[{i}] needs an integer 'image_id', got {_got(rec, 'image_id')}", path=path)
        if img not in image_ids:
            raise ZooError(f"results[{i}]: image_id {shown(img)} is not an image of {dataset.ann_path}", path=path,
                           hint="score the results with the dataset they were made on")
        if not (isinstance(cat, int) and not isinstance(cat, bool)):
            raise ZooError(f"results[{i}] needs an integer 'category_id', got {_got(rec, 'category_id')}", path=path)
        if cat not in label_of:
            raise ZooError(f"results[{i}]: category_id {shown(cat)} is not one of the model's categories "
                           "(model.category_ids)", path=path)
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite_number(v) for v in bbox)
                and _finite_number(bbox[0] + bbox[2]) and _finite_number(bbox[1] + bbox[3])):
            raise ZooError(f"results[{i}] needs a 'bbox' of 4 finite numbers [x, y, w, h] (whose x + w and y + h "
                           f"fit a float32), got {_got(rec, 'bbox')}", path=path)
        if score is None:
            raise ZooError(f"results[{i}] needs a finite number 'score' that fits a float32, got "
                           f"{_got(rec, 'score')}", path=path)
        if img in wanted:
            per_image.setdefault(img, []).append((float(score), [float(v) for v in bbox], label_of[cat]))
    out: dict[str, Detections] = {}
    for img, rows in per_image.items():
        scores = np.array([r[0] for r in rows], np.float64)
        xywh = np.array([r[1] for r in rows], np.float64).reshape(-1, 4)
        labels = np.array([r[2] for r in rows], np.int32)
        order = np.argsort(-scores, kind="stable")
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        out[wanted[img]] = WrittenCocoDetections(xyxy[order], scores[order], labels[order],
                                                 written=[(rows[i][1], rows[i][0]) for i in order.tolist()])
    info = {"format": FORMAT, "path": str(path.resolve()), "records": len(data),
            "missing_predictions": len(samples) - len(out)}
    return DetectionsRead(out, info)
