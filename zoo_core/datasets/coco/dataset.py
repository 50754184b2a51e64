"""COCO detection datasets: a validated instances json plus an image folder (REFERENCE 2.9)."""
from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from zoo_core.api.aisbench import safe_stem
from zoo_core.api.checkpoint import regular_file
from zoo_core.api.errors import InputError, ZooError
from zoo_core.api.types import Sample
from zoo_core.json_numbers import finite_number, long_integer, shown

#: The 80 COCO 2017 category ids (12, 26, 29, 30, 45, 66, 68, 69, 71 and 83 are unused): the default
#: 0-based model class -> category id mapping (CenterNet's ``valid_ids``; ``model.category_ids`` overrides it).
CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)

#: COCO 2017 category names, in :data:`CATEGORY_IDS` order.
CATEGORY_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

#: What to download and where to put it (the hint of every missing-data error).
DOWNLOAD_HINT = (
    "download the COCO 2017 validation images (http://images.cocodataset.org/zips/val2017.zip) and "
    "annotations (http://images.cocodataset.org/annotations/annotations_trainval2017.zip), unzip both "
    "into one folder so that it holds val2017/*.jpg and annotations/instances_val2017.json, and pass "
    "dataset.root=<that folder> (or use dataset=coco_sample for a small generated set)"
)


def load_instances(path: str | os.PathLike) -> dict:
    """Read and check a COCO instances json; :class:`ZooError` naming the file when it is not one.

    Checked: valid JSON, nested no deeper than Python can read; a top-level object with ``images``,
    ``annotations`` and ``categories`` lists; integer, unique image ids with string ``file_name``;
    integer, unique category ids; image and category ids within the signed 64-bit range; every
    annotation with an integer, unique ``id`` from 1 to 2**63-1 (COCOeval takes 0 for "no match",
    faster-coco-eval reads ids as int64), an integer ``image_id`` of a listed
    image, a listed ``category_id``, a ``bbox`` of 4 finite numbers ``x, y, w, h`` none of them
    negative, a finite, non-negative ``area`` and an ``iscrowd`` of 0 or 1. These are what the two
    COCO evaluators (pycocotools, faster-coco-eval) would otherwise read differently (without ``area``,
    pycocotools fails and faster-coco-eval scores other size ranges); the message names the first
    offending annotation by index and id, and the field. No value is ever filled in.
    """
    p = Path(path)
    data = _read_json(p)
    if not isinstance(data, dict):
        raise ZooError("not a COCO instances file (top level is not an object)", path=p)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ZooError(f"not a COCO instances file (no {key!r} list)", path=p)
    problem = _instances_problem(data)
    if problem:
        hint = MISSING_FIELD_HINT if problem.endswith(_MISSING_FIELD) else \
            ANN_ID_HINT if problem.endswith(_ID_OUT_OF_RANGE) else None
        raise ZooError(f"not a valid COCO instances file: {problem}", path=p, hint=hint)
    return data


def _read_json(p: Path) -> object:
    if p.exists():  # unopened: a FIFO would block the read forever, /dev/zero fill the memory
        regular_file(p, "COCO annotation file")
    try:
        with open(p, "rb") as f:
            data = f.read()
        return json.loads(data)
    except FileNotFoundError:
        raise ZooError("COCO annotation file not found", path=p, hint=DOWNLOAD_HINT) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer beyond CPython's int-string limit
        where = long_integer(e, data)
        if where:
            raise ZooError(f"not a COCO instances file: line {where[0]} holds an integer of {where[1]} digits",
                           path=p) from None
        raise ZooError(f"not a JSON file ({e})", path=p) from None
    except RecursionError:
        raise ZooError("not a COCO instances file: its JSON is nested too deeply to read", path=p) from None
    except MemoryError:
        raise ZooError("too large to read into memory as one JSON document", path=p) from None
    except OSError as e:
        raise ZooError(f"cannot read the annotation file ({e.strerror})", path=p) from None


def _instances_problem(data: dict) -> str | None:
    """The first thing wrong with the ``images`` / ``categories`` / ``annotations`` lists, or None."""
    image_ids = set()
    for i, img in enumerate(data["images"]):
        if not (isinstance(img, dict) and _is_int(img.get("id")) and isinstance(img.get("file_name"), str)):
            return f"images[{i}] needs an integer 'id' and a string 'file_name'"
        if not is_int64(img["id"]):
            return f"image id {img['id']} {_NOT_INT64}"
        if img["id"] in image_ids:
            return f"image id {img['id']} appears twice"
        image_ids.add(img["id"])
    cat_ids = set()
    for i, cat in enumerate(data["categories"]):
        if not (isinstance(cat, dict) and _is_int(cat.get("id"))):
            return f"categories[{i}] needs an integer 'id'"
        if not is_int64(cat["id"]):
            return f"category id {cat['id']} {_NOT_INT64}"
        if cat["id"] in cat_ids:  # the per-class AP would be keyed by one name only, the other lost
            return f"category id {cat['id']} appears twice"
        cat_ids.add(cat["id"])
    ann_ids: dict[int, int] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            return f"annotations[{i}] is not an object"
        problem = _annotation_problem(ann, image_ids, cat_ids)
        if problem is None and ann["id"] in ann_ids:
            problem = f"its id also belongs to annotations[{ann_ids[ann['id']]}]"
        if problem:
            ident = f" (id {shown(ann.get('id'))})" if "id" in ann else ""
            return f"annotations[{i}]{ident}: {problem}"
        ann_ids[ann["id"]] = i
    return None


#: How a missing ``area`` / ``iscrowd`` problem ends (it gets :data:`MISSING_FIELD_HINT`).
_MISSING_FIELD = "which COCOeval reads for every ground-truth annotation"
#: The hint of an annotation without ``area`` or ``iscrowd``.
MISSING_FIELD_HINT = ("add 'area' (the object's segmentation area in pixels, as COCO's own files hold; zoo does "
                      "not make one up) and 'iscrowd' (0, or 1 for a crowd region) to every annotation")


def _annotation_problem(ann: dict, image_ids: set, cat_ids: set) -> str | None:
    """What is wrong with one annotation (its ``id`` uniqueness aside), or None."""
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"needs a 'bbox' of 4 numbers, got {shown(bbox)}"
    if not all(finite_number(v) for v in bbox):
        what = "a NaN or an infinity" if any(isinstance(v, float) for v in bbox if not finite_number(v)) \
            else "an integer beyond the float range"
        return f"bbox {shown(bbox)} holds {what}"
    if min(bbox) < 0:
        return f"bbox {bbox!r} has a negative coordinate or size (x, y, width, height must be >= 0)"
    if "area" in ann and not (finite_number(ann["area"]) and ann["area"] >= 0):
        return f"area {shown(ann['area'])} is not a finite number >= 0"
    if "iscrowd" in ann and (ann["iscrowd"] not in (0, 1) or isinstance(ann["iscrowd"], bool)):
        return f"iscrowd {ann['iscrowd']!r} is not 0 or 1"
    if not _is_int(ann.get("image_id")) or ann["image_id"] not in image_ids:
        return f"refers to unknown image_id {ann.get('image_id')!r}"
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in cat_ids:
        return f"refers to unknown category_id {ann.get('category_id')!r}"
    if not _is_int(ann.get("id")):
        return f"needs an integer 'id', got {ann.get('id')!r}"
    if not 1 <= ann["id"] <= ANN_ID_MAX:
        return f"its id {_ID_OUT_OF_RANGE}"
    for key in ("area", "iscrowd"):
        if key not in ann:
            return f"has no {key!r}, {_MISSING_FIELD}"
    return None


#: The largest COCO annotation id both evaluators read as written (faster-coco-eval stores ids as int64).
ANN_ID_MAX = 2**63 - 1
#: How an annotation id out of range is described (that problem gets :data:`ANN_ID_HINT`).
_ID_OUT_OF_RANGE = "is outside 1..2**63-1, so COCOeval would lose the annotation's match"
#: The hint of an annotation id out of range.
ANN_ID_HINT = ("COCO annotation ids start at 1 (COCOeval takes id 0 for 'no match'; faster-coco-eval reads ids "
               "as int64, so a negative id or one beyond 2**63-1 also loses its match): number them 1, 2, 3, ...")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: Why an image or category id out of the signed 64-bit range is refused.
_NOT_INT64 = "does not fit in a signed 64-bit integer (the evaluators and zoo's arrays store ids as int64)"


def is_int64(v: int) -> bool:
    """``v`` fits in a signed 64-bit integer, as the evaluators and zoo's arrays store ids."""
    return -(2**63) <= v < 2**63


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _file_stem(file_name: str) -> str:
    """The stem of ``file_name``'s last component, a ``/`` or a ``\\`` (a name written on Windows) ending a folder."""
    return PurePosixPath(PureWindowsPath(file_name).name).stem


def _safe_image_path(image_root: Path, file_name: str, ann_path: Path) -> Path:
    """``image_root / file_name``, refusing absolute names and names that climb out with ``..``."""
    for flavour in (PurePosixPath, PureWindowsPath):
        pure = flavour(file_name)
        depth = 0
        for part in pure.parts:
            depth += -1 if part == ".." else (part not in (".", ""))
            if depth < 0:
                break
        if pure.is_absolute() or pure.anchor or depth < 0:
            raise ZooError(f"image file_name {file_name!r} is absolute or leaves the image folder", path=ann_path)
    return image_root / file_name


class CocoDataset:
    """A COCO-format detection set: ``root / ann_file`` (instances json) and ``root / image_dir``.

    ``samples()`` follows the json's image order (that of ``COCO.getImgIds()``): ``Sample.id`` is
    the file stem, ``Sample.key`` the integer COCO image id. Every listed image is a sample,
    annotated or not.

    :param root: the dataset folder; ``ann_file`` and ``image_dir`` are relative to it.
    :param name: the dataset name used in reports.
    :param images_required: ``False`` opens the annotations only (scoring saved results): the image folder
        may be absent.
    """

    def __init__(self, root: str | os.PathLike, ann_file: str = "annotations/instances_val2017.json",
                 image_dir: str = "val2017", name: str = "coco", images_required: bool = True):
        self.name = name
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ZooError("COCO dataset folder not found", path=self.root, hint=DOWNLOAD_HINT)
        self.ann_path = self.root / ann_file
        self.image_root = self.root / image_dir
        self.instances = load_instances(self.ann_path)
        if images_required and not self.image_root.is_dir():
            raise ZooError("COCO image folder not found", path=self.image_root, hint=DOWNLOAD_HINT)
        samples: list[Sample] = []
        seen: dict[str, int] = {}
        for img in self.instances["images"]:
            path = _safe_image_path(self.image_root, img["file_name"], self.ann_path)
            stem = safe_stem(_file_stem(img["file_name"]), self.ann_path, f"image stem (image id {img['id']})")
            if any(ord(c) < 32 or ord(c) == 127 for c in img["file_name"]):  # the stem passed: a folder holds one
                raise InputError(f"unsafe image file_name (image id {img['id']}) {img['file_name']!r}: it contains a "
                                 "control character, so it cannot name a file", path=self.ann_path)
            if stem in seen:
                raise ZooError(f"images {seen[stem]} and {img['id']} share the file stem {stem!r}", path=self.ann_path,
                               hint="zoo names every per-image file (inputs/<stem>.bin, outputs/<stem>_<i>.bin, "
                                    "detections) by the image's file stem, so stems must be unique across "
                                    "sub-folders too: rename one of the files")
            seen[stem] = img["id"]
            samples.append(Sample(id=stem, path=path, key=img["id"]))
        self._samples = samples
        self._anns_by_image: dict[int, list[dict]] = {}
        for ann in self.instances["annotations"]:
            self._anns_by_image.setdefault(ann["image_id"], []).append(ann)

    def samples(self) -> list[Sample]:
        """Every image of the annotation file, in json order."""
        return list(self._samples)

    def annotations(self, image_id: int) -> list[dict]:
        """The ground-truth annotation dicts of one image (crowd regions included)."""
        return list(self._anns_by_image.get(image_id, ()))

    def annotation_files(self) -> list[Path]:
        """The instances json (hashed into ``run.json``)."""
        return [self.ann_path]

    def category_names(self) -> dict[int, str]:
        """COCO category id -> name, from the annotation file."""
        return {c["id"]: str(c.get("name", c["id"])) for c in self.instances["categories"]}

    def __repr__(self) -> str:
        return f"CocoDataset({str(self.root)!r}, {len(self._samples)} images)"
