"""The WIDER FACE val dataset: images under ``<root>/WIDER_val/images`` and the four ``.mat`` files.

Samples follow the ground truth's order (events as in ``event_list``, images as in ``file_list``);
``Sample.id`` is the image stem (unique in WIDER val), ``Sample.key`` is ``(event, stem)``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from zoo_core.api.aisbench import safe_stem
from zoo_core.api.errors import ZooError
from zoo_core.api.types import Sample

from .ground_truth import FACE_FILE, SETTING_FILES, WiderGroundTruth, load_wider_gt

log = logging.getLogger("zoo")

#: The four ground-truth files a ``gt_dir`` must hold.
GT_FILES = (FACE_FILE, *SETTING_FILES.values())
IMAGE_DIRS = (Path("WIDER_val") / "images", Path("images"))
#: What to download and where to put it (the hint of every missing-data error).
DOWNLOAD_HINT = ("get WIDER_val.zip and the evaluation tools' ground_truth/ folder from "
                 "http://shuoyang1213.me/WIDERFACE/ ; unzip so that <root>/WIDER_val/images/<event>/<stem>.jpg "
                 "exists, and set dataset.gt_dir to the folder holding " + ", ".join(GT_FILES))


def find_images_dir(root: Path) -> Path:
    """``<root>/WIDER_val/images`` or ``<root>/images``, whichever exists (in that order)."""
    for rel in IMAGE_DIRS:
        cand = root / rel
        if cand.is_dir():
            return cand
    raise ZooError(f"no WIDER val image folder: neither {root / IMAGE_DIRS[0]} nor {root / IMAGE_DIRS[1]} exists",
                   path=root, hint=DOWNLOAD_HINT)


def check_gt_dir(gt_dir: Path) -> None:
    """Raise naming every missing ground-truth ``.mat`` file."""
    if not gt_dir.is_dir():
        raise ZooError("ground-truth folder not found", path=gt_dir, hint=DOWNLOAD_HINT)
    missing = [name for name in GT_FILES if not (gt_dir / name).is_file()]
    if missing:
        raise ZooError(f"ground-truth files missing: {', '.join(missing)}", path=gt_dir, hint=DOWNLOAD_HINT)


class WiderFaceDataset:
    """WIDER FACE val (or a WIDER-format set such as the bundled sample).

    :param root: folder holding ``WIDER_val/images/<event>/<stem>.jpg`` (``images/...`` also works).
    :param gt_dir: folder with ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``.
    :param name: dataset name for reports.
    :param check_images: raise at construction if any ground-truth image file is missing; ``False``
        (``on_error=skip``) logs how many are missing and leaves each to be skipped and listed when it
        is read.
    :param images_required: ``False`` opens the ground truth only (scoring saved results): ``root`` may
        then be unset or hold no images, and the samples' paths point where the images would be.
    """

    def __init__(self, root: str | os.PathLike | None, gt_dir: str | os.PathLike | None, name: str = "widerface",
                 check_images: bool = True, images_required: bool = True):
        check_images = check_images and images_required
        if not images_required and (root is None or str(root) == ""):
            root = gt_dir if gt_dir is not None and str(gt_dir) != "" else "."
        if root is None or str(root) == "":
            raise ZooError("dataset.root is not set: it must be the WIDER FACE folder holding WIDER_val/images",
                           hint=DOWNLOAD_HINT)
        if gt_dir is None or str(gt_dir) == "":
            raise ZooError("dataset.gt_dir is not set: it must be the folder holding " + ", ".join(GT_FILES),
                           hint=DOWNLOAD_HINT)
        self.name = name
        self.root = Path(root).expanduser()
        if check_images and not self.root.is_dir():
            raise ZooError("dataset root not found", path=self.root, hint=DOWNLOAD_HINT)
        self.gt_dir = Path(gt_dir).expanduser()
        try:
            self.images_dir = find_images_dir(self.root)
        except ZooError:
            if images_required:
                raise
            self.images_dir = self.root / IMAGE_DIRS[0]
        check_gt_dir(self.gt_dir)
        self.gt: WiderGroundTruth = load_wider_gt(self.gt_dir)
        self._samples = self._build_samples()
        self._index = {(event, stem): (e, j) for e, j, event, stem in self.gt.iter_images()}
        missing = [] if not images_required else [s.path for s in self._samples if not s.path.is_file()]
        if missing and not check_images:
            log.warning("%d of %d ground-truth images of %s are missing, e.g. %s; on_error=skip: each is "
                        "skipped and listed in metrics.json", len(missing), len(self._samples), name, missing[0])
        elif missing:
            raise ZooError(f"{len(missing)} of {len(self._samples)} ground-truth images are missing, "
                               f"e.g. {missing[0]}", path=self.images_dir, hint=DOWNLOAD_HINT)

    def _build_samples(self) -> list[Sample]:
        """One sample per ground-truth image at ``<images>/<event>/<stem>.jpg``. Event and stem are single,
        safe path components (no separator, ``.``, ``..``, control character...), so the path stays in the image
        folder by its name alone; event folders and images may be symbolic links (shared storage), as COCO's."""
        seen: dict[str, str] = {}
        out = []
        gt_file = self.gt_dir / FACE_FILE
        for _, _, event, stem in self.gt.iter_images():
            if any(part in ("", ".", "..") for part in (event, stem)) \
                    or "/" in stem or "\\" in stem or "/" in event or "\\" in event:
                raise ZooError(f"image {event!r}/{stem!r} from the ground truth points outside {self.images_dir}",
                               path=gt_file)
            # event folders and stems name files (images, prediction trees, .bin dumps): checked before
            # any path is built from them (a 300-byte stem, a newline), never rewritten
            safe_stem(event, gt_file, "event name")
            safe_stem(stem, gt_file, f"image stem (event {event!r})")
            path = self.images_dir / event / f"{stem}.jpg"
            if stem in seen:
                raise ZooError(f"image stem {stem!r} appears in events {seen[stem]!r} and {event!r}; "
                               "sample ids must be unique", path=gt_file)
            seen[stem] = event
            out.append(Sample(id=stem, path=path, key=(event, stem)))
        return out

    def samples(self) -> list[Sample]:
        """Every val image, in ground-truth order."""
        return list(self._samples)

    def annotation_files(self) -> list[Path]:
        """The four ground-truth ``.mat`` files (hashed into ``run.json``)."""
        return [self.gt_dir / name for name in GT_FILES]

    def face_boxes(self, key) -> np.ndarray:
        """The ``(k, 4)`` int32 ``x, y, w, h`` faces of image ``key`` (``(event, stem)``), kept and ignored."""
        e, j = self._index[tuple(key)]
        return self.gt.boxes[e][j]

    def boxes_xyxy(self, key) -> np.ndarray:
        """The faces of image ``key`` as ``(k, 4)`` float32 inclusive pixel corners ``x1, y1, x2, y2``.

        ``x2 = x + w - 1``: a detection decoded to exactly these corners is written to the prediction
        file as ``x y w h`` again (the WIDER writer's ``w = x2 - x1 + 1``), so it matches its face with
        IoU 1. This is what an oracle (``oracle_outputs``) encodes.
        """
        b = self.face_boxes(key).astype(np.float32)
        return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:] - 1], axis=1) if len(b) else b.reshape(0, 4)

    def subset_gt(self, keys) -> WiderGroundTruth:
        """The ground truth restricted to ``keys`` ((event, stem) pairs), keeping ``.mat`` order.

        Events with no selected image are dropped; used to score a shard on its own images.
        """
        wanted = set(keys)
        events, files, boxes = [], [], []
        keep: dict[str, list[list[np.ndarray]]] = {s: [] for s in self.gt.keep}
        for e, event in enumerate(self.gt.events):
            js = [j for j, stem in enumerate(self.gt.files[e]) if (event, stem) in wanted]
            if not js:
                continue
            events.append(event)
            files.append([self.gt.files[e][j] for j in js])
            boxes.append([self.gt.boxes[e][j] for j in js])
            for s in keep:
                keep[s].append([self.gt.keep[s][e][j] for j in js])
        return WiderGroundTruth(events=events, files=files, boxes=boxes, keep=keep)
