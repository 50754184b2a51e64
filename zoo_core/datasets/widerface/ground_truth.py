"""WIDER FACE val ground truth: read and write the four official ``.mat`` files.

``wider_face_val.mat`` holds the events, image stems and face boxes; ``wider_{easy,medium,hard}_val.mat``
add ``gt_list``, the 1-based indices of the faces that count in that setting (the other faces of the
image are "ignored" by the evaluation). See REFERENCE 3.5 for the nesting.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoo_core.api.atomic import write_bytes, write_text
from zoo_core.api.errors import ZooError
from zoo_core.datasets.deps import require
from zoo_core.datasets.matfile import read_mat

#: The three WIDER FACE difficulty settings, in report order.
SETTINGS = ("easy", "medium", "hard")
FACE_FILE = "wider_face_val.mat"
SETTING_FILES = {s: f"wider_{s}_val.mat" for s in SETTINGS}
BBX_TXT = "wider_face_val_bbx_gt.txt"
LABEL_KEYS = (
    "blur_label_list",
    "expression_label_list",
    "illumination_label_list",
    "invalid_label_list",
    "occlusion_label_list",
    "pose_label_list",
)
_FACE_KEYS = ("event_list", "file_list", "face_bbx_list")


@dataclass
class WiderGroundTruth:
    """The WIDER FACE ground truth in ``.mat`` order.

    ``files[e][j]`` is the stem (no ``.jpg``) of image ``j`` of event ``events[e]``; ``boxes[e][j]`` its
    ``(k, 4)`` int32 ``x, y, w, h`` faces; ``keep[setting][e][j]`` the 0-based int64 indices of the faces
    that count in ``setting`` (``'easy'``, ``'medium'``, ``'hard'``).
    """

    events: list[str]
    files: list[list[str]]
    boxes: list[list[np.ndarray]]
    keep: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)

    def iter_images(self) -> Iterator[tuple[int, int, str, str]]:
        """Yield ``(event_idx, img_idx, event, stem)`` for every image, in ``.mat`` order."""
        for e, event in enumerate(self.events):
            for j, stem in enumerate(self.files[e]):
                yield e, j, event, stem

    @property
    def num_images(self) -> int:
        """Images over all events."""
        return sum(len(f) for f in self.files)

    @property
    def num_faces(self) -> int:
        """All boxes of ``face_bbx_list`` (kept and ignored)."""
        return sum(len(b) for ev in self.boxes for b in ev)

    def num_kept(self, setting: str) -> int:
        """The number of faces that count in ``setting``."""
        return sum(len(k) for ev in self.keep[setting] for k in ev)


def _loadmat(path: Path, keys: Sequence[str]) -> dict:
    require("scipy.io", "reading WIDER FACE .mat files")  # said first, whatever the folder holds
    if not path.exists():
        raise ZooError("WIDER FACE ground-truth file not found", path=path,
                       hint="pass the folder that holds wider_face_val.mat and wider_{easy,medium,hard}_val.mat")
    mat = read_mat(path, keys)  # checks the element tree first: no file can crash or exhaust the process
    missing = [k for k in keys if k not in mat]
    if missing:
        raise ZooError(f"missing key(s) {', '.join(missing)}; this is not a WIDER FACE ground-truth file",
                       path=path)
    return mat


def _whole_int32(a: np.ndarray, path: Path, where: str) -> None:
    """The official files hold whole pixel numbers (and 1-based indices): a NaN, a fraction or a value
    beyond int32 would be silently truncated or wrapped by the cast, so it is an error naming the entry."""
    kind, size = a.dtype.kind, a.dtype.itemsize
    if a.size == 0 or (kind == "i" and size <= 4) or (kind == "u" and size <= 2):
        return  # (the official files: int32 boxes, uint8 indices)
    lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    if a.dtype.kind in "iu":
        bad = (a < lo) | (a > hi)
    else:
        v = a.astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(v) | (v != np.round(v)) | (v < lo) | (v > hi)
    if bad.any():
        first = a.reshape(-1)[int(np.argmax(bad.reshape(-1)))]
        raise ZooError(f"{where} holds {first.item()!r}, not a whole number within int32", path=path)


def _cells(arr, path: Path, key: str, n: int | None = None) -> list:
    """The entries of an ``(N, 1)`` MATLAB cell column."""
    if not isinstance(arr, np.ndarray) or arr.dtype != object or arr.ndim != 2 or (arr.size and arr.shape[1] != 1):
        shape = getattr(arr, "shape", None)
        raise ZooError(f"'{key}' is not an (N, 1) cell array (shape {shape})", path=path)
    out = [arr[i, 0] for i in range(arr.shape[0])]
    if n is not None and len(out) != n:
        raise ZooError(f"'{key}' has {len(out)} entries, expected {n}", path=path)
    return out


def _string(cell, path: Path, where: str) -> str:
    a = np.asarray(cell)
    if a.dtype.kind != "U" or a.size != 1:
        raise ZooError(f"{where} is not a string (dtype {a.dtype}, shape {a.shape})", path=path)
    return str(a.reshape(-1)[0])


def _inner(cell, path: Path, key: str, e: int, n: int | None = None) -> list:
    return _cells(np.asarray(cell), path, f"{key}[{e}]", n)


def load_wider_gt(gt_dir: str | os.PathLike) -> WiderGroundTruth:
    """Read ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat`` from ``gt_dir``.

    Raises ``ZooError`` naming the file for a missing file, a file that is not a ``.mat``, missing keys,
    a nesting that is not the WIDER one, or ``gt_list`` indices outside the image's boxes.
    """
    gt_dir = Path(gt_dir)
    path = gt_dir / FACE_FILE
    mat = _loadmat(path, _FACE_KEYS)
    ev_cells = _cells(mat["event_list"], path, "event_list")
    n_ev = len(ev_cells)
    events = [_string(c, path, f"event_list[{e}]") for e, c in enumerate(ev_cells)]
    files: list[list[str]] = []
    boxes: list[list[np.ndarray]] = []
    for e, (fcell, bcell) in enumerate(zip(_cells(mat["file_list"], path, "file_list", n_ev),
                                           _cells(mat["face_bbx_list"], path, "face_bbx_list", n_ev))):
        stems = [_string(c, path, f"file_list[{e}][{j}]") for j, c in enumerate(_inner(fcell, path, "file_list", e))]
        ev_boxes = []
        for j, b in enumerate(_inner(bcell, path, "face_bbx_list", e, len(stems))):
            b = np.asarray(b)
            if b.size == 0:
                b = b.reshape(0, 4)
            if b.ndim != 2 or b.shape[1] != 4 or b.dtype.kind not in "iuf":
                raise ZooError(f"face_bbx_list[{e}][{j}] is not a (k, 4) numeric array "
                               f"(shape {b.shape}, dtype {b.dtype})", path=path)
            _whole_int32(b, path, f"face_bbx_list[{e}][{j}] (image {events[e]}/{stems[j] if j < len(stems) else j})")
            ev_boxes.append(np.ascontiguousarray(b, dtype=np.int32))
        files.append(stems)
        boxes.append(ev_boxes)

    keep: dict[str, list[list[np.ndarray]]] = {}
    for setting, name in SETTING_FILES.items():
        spath = gt_dir / name
        smat = _loadmat(spath, ("event_list", "gt_list"))
        s_events = [_string(c, spath, f"event_list[{e}]") for e, c in enumerate(_cells(smat["event_list"], spath,
                                                                                         "event_list"))]
        if s_events != events:
            raise ZooError(f"event_list differs from the one in {FACE_FILE}", path=spath)
        per_event = []
        for e, gcell in enumerate(_cells(smat["gt_list"], spath, "gt_list", n_ev)):
            per_image = []
            for j, g in enumerate(_inner(gcell, spath, "gt_list", e, len(files[e]))):
                g = np.asarray(g)
                if g.size and g.dtype.kind not in "iuf":
                    raise ZooError(f"gt_list[{e}][{j}] is not numeric (dtype {g.dtype})", path=spath)
                _whole_int32(g, spath, f"gt_list[{e}][{j}] (image {events[e]}/{files[e][j]})")
                idx = g.reshape(-1).astype(np.int64) - 1
                k = len(boxes[e][j])
                if idx.size and (idx.min() < 0 or idx.max() >= k):
                    raise ZooError(f"gt_list[{e}][{j}] (image {events[e]}/{files[e][j]}) has index "
                                   f"{int(idx.min() + 1 if idx.min() < 0 else idx.max() + 1)} outside 1..{k}",
                                   path=spath)
                per_image.append(idx)
            per_event.append(per_image)
        keep[setting] = per_event
    return WiderGroundTruth(events=events, files=files, boxes=boxes, keep=keep)


def _cell_column(items: Sequence) -> np.ndarray:
    col = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        col[i, 0] = item
    return col


def _savemat_bytes(data: Mapping[str, np.ndarray]) -> bytes:
    savemat = require("scipy.io", "writing WIDER FACE .mat files").savemat

    buf = io.BytesIO()
    savemat(buf, dict(data), format="5", do_compression=False, oned_as="column")
    return buf.getvalue()


def _validate(events, files, boxes, keep) -> tuple[list, list, dict]:
    n_ev = len(events)
    if len(files) != n_ev or len(boxes) != n_ev:
        raise ZooError(f"events ({n_ev}), files ({len(files)}) and boxes ({len(boxes)}) differ in length")
    norm_boxes = []
    for e in range(n_ev):
        if len(boxes[e]) != len(files[e]):
            raise ZooError(f"event {events[e]!r}: {len(files[e])} files but {len(boxes[e])} box arrays")
        ev = []
        for j, b in enumerate(boxes[e]):
            b = np.asarray(b)
            if b.size == 0:
                b = b.reshape(0, 4)
            if b.ndim != 2 or b.shape[1] != 4:
                raise ZooError(f"boxes of {events[e]}/{files[e][j]} have shape {b.shape}, expected (k, 4)")
            ev.append(np.ascontiguousarray(b, dtype=np.int32))
        norm_boxes.append(ev)
    missing = [s for s in SETTINGS if s not in keep]
    if missing:
        raise ZooError(f"keep lacks setting(s) {', '.join(missing)}")
    norm_keep = {}
    for s in SETTINGS:
        if len(keep[s]) != n_ev:
            raise ZooError(f"keep[{s!r}] has {len(keep[s])} events, expected {n_ev}")
        per_event = []
        for e in range(n_ev):
            if len(keep[s][e]) != len(files[e]):
                raise ZooError(f"keep[{s!r}] for event {events[e]!r} has {len(keep[s][e])} images, "
                               f"expected {len(files[e])}")
            per_image = []
            for j, k in enumerate(keep[s][e]):
                k = np.asarray(k, dtype=np.int64).reshape(-1)
                if k.size and (k.min() < 0 or k.max() >= len(norm_boxes[e][j])):
                    raise ZooError(f"keep[{s!r}] for {events[e]}/{files[e][j]} has an index outside "
                                   f"0..{len(norm_boxes[e][j]) - 1}")
                per_image.append(k)
            per_event.append(per_image)
        norm_keep[s] = per_event
    return norm_boxes, [list(f) for f in files], norm_keep


def write_wider_gt(gt_dir: str | os.PathLike, events: Sequence[str], files: Sequence[Sequence[str]],
                   boxes: Sequence[Sequence[np.ndarray]],
                   keep: Mapping[str, Sequence[Sequence[np.ndarray]]]) -> list[Path]:
    """Write the four WIDER ``.mat`` files and ``wider_face_val_bbx_gt.txt`` into ``gt_dir``.

    ``boxes[e][j]`` is ``(k, 4)`` ``x, y, w, h``; ``keep[setting][e][j]`` holds 0-based face indices for
    ``'easy'``, ``'medium'`` and ``'hard'``. The files use the official nesting (REFERENCE 4, step 7):
    ``(N_events, 1)`` cell columns, int32 boxes, 1-based uint16 ``gt_list`` columns and zero label lists,
    so that the official and the Python evaluators read them. Every file is written atomically.
    Returns the written paths.
    """
    gt_dir = Path(gt_dir)
    boxes_n, files_n, keep_n = _validate(events, files, boxes, keep)
    for name in [*events, *(s for f in files_n for s in f)]:
        if not name or "/" in name or "\\" in name:
            raise ZooError(f"invalid event or file name {name!r}")

    face = {
        "event_list": _cell_column([np.array([str(ev)]) for ev in events]),
        "file_list": _cell_column([_cell_column([np.array([str(s)]) for s in f]) for f in files_n]),
        "face_bbx_list": _cell_column([_cell_column(ev) for ev in boxes_n]),
    }
    for key in LABEL_KEYS:
        face[key] = _cell_column([_cell_column([np.zeros((len(b), 1), np.uint8) for b in ev]) for ev in boxes_n])
    written = [write_bytes(gt_dir / FACE_FILE, _savemat_bytes(face))]
    for s in SETTINGS:
        gt_list = _cell_column([_cell_column([(k + 1).astype(np.uint16).reshape(-1, 1) for k in ev])
                                for ev in keep_n[s]])
        written.append(write_bytes(gt_dir / SETTING_FILES[s], _savemat_bytes({**face, "gt_list": gt_list})))

    lines = []
    for e, ev in enumerate(events):
        for stem, b in zip(files_n[e], boxes_n[e]):
            lines.append(f"{ev}/{stem}.jpg")
            lines.append(str(len(b)))
            if len(b) == 0:
                lines.append("0 0 0 0 0 0 0 0 0 0 ")
            lines.extend(f"{x} {y} {w} {h} 0 0 0 0 0 0 " for x, y, w, h in b.tolist())
    written.append(write_text(gt_dir / BBX_TXT, "\n".join(lines) + "\n"))
    return written
