"""The bundled WIDER-format face sample, generated offline from scikit-image's bundled data (REFERENCE 4).

Real faces (LFW crops from ``skimage.data.lfw_subset()`` items 0-99 and the astronaut's colour
face) are pasted onto face-free backgrounds, with LFW non-face crops (items 100-199) as
distractors. The result is a small WIDER FACE val lookalike: ``WIDER_val/images/<event>/*.jpg``
plus the four ground-truth ``.mat`` files in ``ground_truth/``. The ground-truth box rule is
calibrated to the Star-Clouds detector, so the set tests the plumbing and the evaluator, not
accuracy.

Where it lives: ``dataset=widerface_sample`` with ``dataset.root: null`` (the default) makes
:func:`ensure_sample` build it once, atomically, into ``$ZOO_CACHE_DIR/widerface_sample`` (else
``~/.cache/zoo/widerface_sample``) and reuse it; a ``dataset.root`` is built the same way when it is
absent, empty or an earlier zoo sample (its marker file), and refused otherwise (a folder of the user's
is never replaced). Images: ``<root>/WIDER_val/images/<event>/<stem>.jpg``; ground truth:
``<root>/ground_truth/wider_face_val.mat``, ``wider_{easy,medium,hard}_val.mat`` (the official
nesting) and ``wider_face_val_bbx_gt.txt``. Generation needs scikit-image (``zoo-core[eval]``)
and takes a few seconds.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RECIPE_VERSION = "1"
SEED = 12345
MARKER = "SAMPLE_COMPLETE.json"
IMAGES_DIR = Path("WIDER_val") / "images"
#: The sample's ground-truth folder, relative to its root.
GT_DIR = "ground_truth"
JPEG_QUALITY = 92
IMAGES_PER_EVENT = 8

#: (event folder, face-count range, distractor-count range), both ranges inclusive.
EVENTS = (
    ("0--Synth", (1, 4), (0, 0)),
    ("1--Clutter", (1, 4), (1, 2)),
    ("2--Crowd", (5, 8), (0, 2)),
)
#: Face-free scikit-image images (each gives no Star-Clouds detection at 0.3, REFERENCE 4).
BACKGROUNDS = ("coffee", "brick", "grass", "gravel", "rocket", "chelsea", "hubble_deep_field",
               "coins", "moon", "retina", "cell", "page", "text")
CANVASES = ((640, 480), (800, 600))  # (w, h)
FACE_SIDE = (8.0, 160.0)             # log-uniform paste side of LFW faces, px
DISTRACTOR_SIDE = (16.0, 96.0)
ASTRONAUT_SHARE = 0.15
#: The astronaut's face (x1, y1, x2, y2) in ``skimage.data.astronaut()`` and the crop pasted around it.
ASTRONAUT_FACE = (181.53, 58.20, 269.88, 177.81)
ASTRONAUT_CROP = (141, 18, 311, 218)
#: GT box of an LFW paste of side s at (x, y): (x + 0.07s, y + 0.02s, 0.77s, 0.94s).
LFW_BOX = (0.07, 0.02, 0.77, 0.94)
#: Cumulative difficulty by GT face height (px): faces under 10 px are in no setting.
MIN_HEIGHT = {"easy": 64, "medium": 32, "hard": 10}


@dataclass
class SampleImage:
    event: str
    stem: str
    image: np.ndarray                       # BGR uint8
    boxes: list[list[int]] = field(default_factory=list)  # xywh
    kinds: list[str] = field(default_factory=list)        # "lfw" or "astronaut", per box


def default_cache_dir() -> Path:
    """``$ZOO_CACHE_DIR/widerface_sample`` or ``~/.cache/zoo/widerface_sample``."""
    base = os.environ.get("ZOO_CACHE_DIR")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "zoo"
    return root / "widerface_sample"


def _to_bgr(img: np.ndarray) -> np.ndarray:
    import cv2

    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2BGR)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _canvas(rng: np.random.Generator, backgrounds: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """A random 640x480 or 800x600 crop of a randomly chosen background (upscaled to cover)."""
    import cv2

    name = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    bg = backgrounds[name]
    w, h = CANVASES[int(rng.integers(len(CANVASES)))]
    bh, bw = bg.shape[:2]
    k = max(w / bw, h / bh)
    if k > 1:
        bg = cv2.resize(bg, (max(w, math.ceil(bw * k)), max(h, math.ceil(bh * k))), interpolation=cv2.INTER_LINEAR)
        bh, bw = bg.shape[:2]
    y0 = int(rng.integers(bh - h + 1))
    x0 = int(rng.integers(bw - w + 1))
    return name, np.ascontiguousarray(bg[y0:y0 + h, x0:x0 + w])


def _place(rng: np.random.Generator, taken: list[tuple[int, int, int, int]], pw: int, ph: int,
           canvas_hw: tuple[int, int], margin: int = 2, tries: int = 100):
    """Top-left corner of a ``pw x ph`` patch that overlaps no rectangle in ``taken``, or None."""
    h, w = canvas_hw
    if pw >= w or ph >= h:
        return None
    for _ in range(tries):
        x = int(rng.integers(w - pw + 1))
        y = int(rng.integers(h - ph + 1))
        if all(x + pw + margin <= tx or tx + tw + margin <= x or y + ph + margin <= ty or ty + th + margin <= y
               for tx, ty, tw, th in taken):
            taken.append((x, y, pw, ph))
            return x, y
    return None


def _resize(patch: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    grow = w >= patch.shape[1]
    return cv2.resize(patch, (w, h), interpolation=cv2.INTER_CUBIC if grow else cv2.INTER_AREA)


def _lfw_patch(rng: np.random.Generator, lfw: np.ndarray, index: int, side: int) -> np.ndarray:
    u8 = np.clip(np.round(lfw[index] * 255.0), 0, 255).astype(np.uint8)
    patch = _resize(u8, side, side)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.repeat(patch[:, :, None], 3, axis=2)


def _paste_face(rng, canvas, taken, lfw, astronaut_bgr) -> tuple[str, list[int]] | None:
    """Paste one face (LFW or astronaut) and return (kind, GT box xywh ints), or None if no room."""
    target = _log_uniform(rng, *FACE_SIDE)
    if rng.random() < ASTRONAUT_SHARE:
        cx0, cy0, cx1, cy1 = ASTRONAUT_CROP
        fx1, fy1, fx2, fy2 = ASTRONAUT_FACE
        k = target / (fy2 - fy1)
        pw, ph = max(1, round((cx1 - cx0) * k)), max(1, round((cy1 - cy0) * k))
        spot = _place(rng, taken, pw, ph, canvas.shape[:2])
        if spot is None:
            return None
        x, y = spot
        canvas[y:y + ph, x:x + pw] = _resize(astronaut_bgr[cy0:cy1, cx0:cx1], pw, ph)
        kx, ky = pw / (cx1 - cx0), ph / (cy1 - cy0)
        return "astronaut", [round(x + (fx1 - cx0) * kx), round(y + (fy1 - cy0) * ky),
                             round((fx2 - fx1) * kx), round((fy2 - fy1) * ky)]
    side = max(2, round(target))
    spot = _place(rng, taken, side, side, canvas.shape[:2])
    if spot is None:
        return None
    x, y = spot
    canvas[y:y + side, x:x + side] = _lfw_patch(rng, lfw, int(rng.integers(0, 100)), side)
    dx, dy, fw, fh = LFW_BOX
    return "lfw", [round(x + dx * side), round(y + dy * side), round(fw * side), round(fh * side)]


def generate_sample() -> list[SampleImage]:
    """Build every sample image in memory, deterministically (seed :data:`SEED`)."""
    from zoo_core.datasets.deps import require

    skdata = require("skimage.data", "generating the bundled widerface_sample (its faces are scikit-image data)")
    rng = np.random.default_rng(SEED)
    backgrounds = {name: _to_bgr(getattr(skdata, name)()) for name in BACKGROUNDS}
    lfw = skdata.lfw_subset()
    astronaut = _to_bgr(skdata.astronaut())
    images = []
    for event, faces_range, distractor_range in EVENTS:
        idx, label = event.split("--")
        for n in range(IMAGES_PER_EVENT):
            bg_name, canvas = _canvas(rng, backgrounds)
            taken: list[tuple[int, int, int, int]] = []
            boxes, kinds = [], []
            for _ in range(int(rng.integers(faces_range[0], faces_range[1] + 1))):
                pasted = _paste_face(rng, canvas, taken, lfw, astronaut)
                if pasted is not None:
                    kinds.append(pasted[0])
                    boxes.append(pasted[1])
            for _ in range(int(rng.integers(distractor_range[0], distractor_range[1] + 1))):
                side = max(2, round(_log_uniform(rng, *DISTRACTOR_SIDE)))
                spot = _place(rng, taken, side, side, canvas.shape[:2])
                if spot is not None:
                    x, y = spot
                    canvas[y:y + side, x:x + side] = _lfw_patch(rng, lfw, int(rng.integers(100, 200)), side)
            stem = f"{idx}_{label}_{bg_name}_{n}"
            images.append(SampleImage(event, stem, canvas, boxes, kinds))
    return images


def difficulty_keep(boxes_xywh: np.ndarray) -> dict[str, np.ndarray]:
    """0-based indices of the faces kept by each setting (cumulative, by face height)."""
    h = np.asarray(boxes_xywh, np.int64).reshape(-1, 4)[:, 3]
    return {name: np.nonzero(h >= lo)[0] for name, lo in MIN_HEIGHT.items()}


def write_sample(root: str | os.PathLike) -> dict:
    """Generate the sample into ``root`` (images + ``ground_truth/``) and return its summary."""
    import cv2

    from .ground_truth import write_wider_gt

    root = Path(root)
    images = generate_sample()
    events = [e for e, _, _ in EVENTS]
    files: list[list[str]] = [[] for _ in events]
    boxes: list[list[np.ndarray]] = [[] for _ in events]
    keep: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in events] for k in MIN_HEIGHT}
    counts = {"images": len(images), "faces": 0, **{k: 0 for k in MIN_HEIGHT}}
    for im in images:
        ei = events.index(im.event)
        path = root / IMAGES_DIR / im.event / f"{im.stem}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".jpg", im.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {path}")
        path.write_bytes(buf.tobytes())
        bx = np.asarray(im.boxes, np.int32).reshape(-1, 4)
        files[ei].append(im.stem)
        boxes[ei].append(bx)
        counts["faces"] += len(bx)
        for name, idx in difficulty_keep(bx).items():
            keep[name][ei].append(idx)
            counts[name] += len(idx)
    write_wider_gt(root / GT_DIR, events, files, boxes, keep)
    return counts


def _is_complete(root: Path) -> bool:
    """Whether ``root`` holds a complete sample of this recipe: its :data:`MARKER` is a regular file of at most
    :data:`~zoo_core.api.checkpoint.MAX_RECORD_BYTES` holding a JSON object with this ``recipe`` and a ``files``
    list of strings, each a file there. Anything else (a FIFO, ``/dev/zero``, ``[1]``, ``{"files": 5}``, JSON
    nested too deeply) is not a complete sample: never a hang, a traceback or a read without end."""
    from zoo_core.api.checkpoint import MAX_RECORD_BYTES, read_at_most
    from zoo_core.api.errors import ZooError

    try:
        marker = json.loads(read_at_most(root / MARKER, MAX_RECORD_BYTES, "sample marker"))
    except (ZooError, ValueError, RecursionError):
        return False
    files = marker.get("files", []) if isinstance(marker, dict) else None
    if not isinstance(marker, dict) or marker.get("recipe") != RECIPE_VERSION or not isinstance(files, list) \
            or not all(isinstance(rel, str) for rel in files):
        return False
    return all((root / rel).is_file() for rel in files)


def _check_replaceable(root: Path) -> None:
    """A ZooError unless ``root`` may be (re)built: absent, an empty folder, or a sample zoo built (its
    :data:`MARKER` file, an outdated or incomplete sample). Any other file or folder is the user's."""
    from zoo_core.api.errors import ZooError

    if not (root.exists() or root.is_symlink()):
        return
    if root.is_dir():
        if (root / MARKER).is_file() or not any(root.iterdir()):
            return
        marker = root / MARKER
        if marker.exists() or marker.is_symlink():  # a FIFO, a device, a directory, a dangling link
            what = f"holds no sample zoo generated (its {MARKER} is not a regular file: a FIFO, a device or a link)"
        else:
            what = f"is not empty and holds no sample zoo generated (no {MARKER})"
    else:
        what = "is not a folder"
    raise ZooError(f"{what}: building the WIDER-format sample (dataset=widerface_sample) there would replace "
                   f"it, so zoo leaves it alone", path=root,
                   hint="for the real WIDER FACE layout pass dataset=widerface dataset.root=<dir> "
                        "dataset.gt_dir=<ground-truth dir>; for the sample, a new or empty dataset.root= "
                        "(or none: the cache)")


def ensure_sample(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the sample's root, generating it first if it is absent, incomplete or outdated.

    The sample is built in a temporary sibling directory and renamed into place, so a crash never
    leaves a half sample that a later call trusts; a complete sample (marker file with the same
    :data:`RECIPE_VERSION` and every listed file present) is reused untouched. Only an absent or empty
    root, or one holding zoo's marker file (a sample zoo built), is replaced; any other existing root
    is a ZooError naming it, before anything is generated.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if _is_complete(root):
        return root
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        counts = write_sample(tmp)
        rel = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        (tmp / MARKER).write_text(json.dumps({"recipe": RECIPE_VERSION, "seed": SEED, **counts, "files": rel},
                                             indent=1) + "\n")
        if root.exists():
            if _is_complete(root):  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            _check_replaceable(root)  # (again: something may have appeared there meanwhile)
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
            os.replace(root, trash / root.name)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _is_complete(root):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
