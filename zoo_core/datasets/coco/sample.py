"""A small generated COCO-format detection set (``dataset=coco_sample``), deterministic per seed.

Images hold filled rectangles and ellipses on a noisy gradient; each shape's bounding box is an
annotation. Categories are 12 real COCO ids that straddle the gaps in the 80-id list, so a wrong
class -> category mapping lowers AP; some boxes are crowd regions; sizes include landscape,
portrait and tiny (37x23) images, an image without objects and one with only a crowd region.

Where it lives: ``dataset=coco_sample`` with ``dataset.root: null`` (the default) writes it on first
use to ``$ZOO_CACHE_DIR/coco_sample/n<N>_seed<S>`` (else ``~/.cache/zoo/coco_sample/...``), one folder
per ``(dataset.n_images, dataset.seed)``; a given ``dataset.root`` gets the same sub-folder. Images:
``<folder>/images/<id>.jpg``; ground truth: ``<folder>/annotations/instances_sample.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .dataset import CATEGORY_IDS, CATEGORY_NAMES

#: The 12 COCO category ids the generated sample uses (around the gaps of the 80-id list).
SAMPLE_CATEGORY_IDS = (11, 13, 25, 27, 28, 31, 44, 46, 65, 67, 70, 90)
IMAGE_SIZES = ((640, 480), (427, 640), (37, 23), (500, 375), (333, 500), (640, 427), (96, 64), (256, 256))
#: The generated sample's instances json, relative to its folder.
ANN_FILE = "annotations/instances_sample.json"
#: The generated sample's image folder, relative to its folder.
IMAGE_DIR = "images"


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, 3).astype(np.float32)
    slope = rng.uniform(-60, 60, (2, 3)).astype(np.float32)
    img = base + (xx[..., None] / max(w, 1)) * slope[0] + (yy[..., None] / max(h, 1)) * slope[1]
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _random_box(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
    min_side = 3 if min(w, h) < 64 else 8
    bw = int(rng.integers(min_side, max(min_side + 1, int(w * 0.6))))
    bh = int(rng.integers(min_side, max(min_side + 1, int(h * 0.6))))
    bw, bh = min(bw, w), min(bh, h)
    x1 = int(rng.integers(0, w - bw + 1))
    y1 = int(rng.integers(0, h - bh + 1))
    return x1, y1, bw, bh


def _draw(img: np.ndarray, rng: np.random.Generator, box: tuple[int, int, int, int]) -> None:
    import cv2

    x1, y1, bw, bh = box
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    if rng.random() < 0.5 or min(bw, bh) < 6:
        img[y1:y1 + bh, x1:x1 + bw] = colour
    else:
        # an ellipse touching all four sides of the box: its bounding box is the annotation
        mask = np.zeros(img.shape[:2], np.uint8)
        centre = (x1 * 16 + (bw - 1) * 8, y1 * 16 + (bh - 1) * 8)
        axes = ((bw - 1) * 8, (bh - 1) * 8)
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1, cv2.LINE_8, 4)
        img[mask > 0] = colour


def make_coco_sample(out_dir: str | os.PathLike, n_images: int = 24, seed: int = 0) -> Path:
    """Write a COCO-format set to ``out_dir`` (``images/*.jpg`` + ``annotations/instances_sample.json``).

    Deterministic for a given ``(n_images, seed)``. Returns ``out_dir``.
    """
    import cv2

    out = Path(out_dir)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (out / ANN_FILE).parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = dict(zip(CATEGORY_IDS, CATEGORY_NAMES))
    categories = [{"id": c, "name": names[c], "supercategory": "sample"} for c in SAMPLE_CATEGORY_IDS]
    image_ids = sorted(int(i) for i in rng.choice(np.arange(1, 600_000), size=n_images, replace=False))
    images: list[dict] = []
    annotations: list[dict] = []
    for n, image_id in enumerate(image_ids):
        w, h = IMAGE_SIZES[n % len(IMAGE_SIZES)]
        img = _background(rng, w, h)
        if n == 1:
            count, crowd_only = 0, False
        elif n == 3:
            count, crowd_only = 1, True
        else:
            count, crowd_only = int(rng.integers(1, 7)), False
        for _ in range(count):
            box = _random_box(rng, w, h)
            _draw(img, rng, box)
            crowd = crowd_only or rng.random() < 0.1
            x, y, bw, bh = box
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(rng.choice(SAMPLE_CATEGORY_IDS)),
                "bbox": [float(x), float(y), float(bw), float(bh)],
                "area": float(bw * bh),
                "iscrowd": int(crowd),
                "segmentation": [[float(x), float(y), float(x + bw), float(y), float(x + bw), float(y + bh),
                                  float(x), float(y + bh)]],
            })
        file_name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(out / IMAGE_DIR / file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
    instances = {"info": {"description": f"zoo generated COCO sample (n_images={n_images}, seed={seed})"},
                 "images": images, "annotations": annotations, "categories": categories}
    (out / ANN_FILE).write_text(json.dumps(instances))
    return out


def default_cache_dir() -> Path:
    """``$ZOO_CACHE_DIR/coco_sample``, else ``~/.cache/zoo/coco_sample``."""
    base = os.environ.get("ZOO_CACHE_DIR")
    return Path(base) / "coco_sample" if base else Path.home() / ".cache" / "zoo" / "coco_sample"


def _check_free(target: Path) -> None:
    """A ZooError when ``target`` exists as anything but an empty folder: the set is renamed into place, and
    a file or a folder of the user's there is never replaced (nor an unhelpful ``OSError`` raised)."""
    from zoo_core.api.errors import ZooError

    if not (target.exists() or target.is_symlink()):
        return
    if target.is_dir() and not any(target.iterdir()):
        return
    what = "is not a folder" if not target.is_dir() else f"is a folder without {ANN_FILE}"
    raise ZooError(f"{what}: the generated COCO sample (dataset=coco_sample) goes there, so zoo leaves it alone",
                   path=target, hint="remove or move it, or pass another dataset.root= (for your own COCO data: "
                                     "dataset=coco dataset.root=<dir>)")


def ensure_coco_sample(root: str | os.PathLike | None = None, n_images: int = 24, seed: int = 0) -> Path:
    """The folder of the generated set for ``(n_images, seed)``, generating it on first use.

    ``root`` defaults to :func:`default_cache_dir`; the set lives in ``root/n<N>_seed<S>``. It is
    written to a temporary sibling and renamed into place, so concurrent first uses are safe and an
    interrupted generation never leaves a half set behind. A ``root/n<N>_seed<S>`` that exists without the
    set's annotation file (and is not an empty folder) is a ZooError naming it: it is never replaced.
    """
    base = Path(root).expanduser() if root is not None else default_cache_dir()
    target = base / f"n{int(n_images)}_seed{int(seed)}"
    if (target / ANN_FILE).is_file():
        return target
    _check_free(target)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base))
    try:
        make_coco_sample(tmp, n_images=n_images, seed=seed)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / ANN_FILE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
