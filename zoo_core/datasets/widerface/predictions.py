"""WIDER FACE prediction trees: ``<dir>/<event>/<stem>.txt``.

File format (REFERENCE 3.5): line 1 the image name (``<event>/<stem>.jpg``; only the part after the last
``/`` is checked), line 2 the number of boxes, then one ``x y w h score`` line per box, where
``w = x2 - x1 + 1`` and ``h = y2 - y1 + 1``. Boxes must be in descending score order: the evaluation
takes, for every threshold, the *last* box in file order whose score passes it.

Reading is strict where the Python evaluators are silent: a count line that disagrees with the box
lines, a malformed line, a non-finite number, or a name line for another image is an error; a missing
file and an unsorted file follow an explicit policy.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from zoo_core.api.atomic import write_text
from zoo_core.api.checkpoint import read_at_most
from zoo_core.api.errors import ZooError

from .ground_truth import WiderGroundTruth

Key = tuple[str, str]
MissingPolicy = Literal["error", "empty"]
UnsortedPolicy = Literal["sort", "error", "keep"]
CountPolicy = Literal["strict", "lines"]
#: ``model.pred_count`` values: ``strict`` (a count line that disagrees with the box lines is an error) or
#: ``lines`` (trust the box lines, as the Python reference evaluators do).
COUNT_POLICIES = ("strict", "lines")
#: ``model.pred_order`` values: ``sort`` (stable descending sort, MATLAB ``read_pred.m``) or ``keep`` (file order).
ORDER_POLICIES = ("sort", "keep")
#: The largest prediction file read (one image's boxes, ~40 bytes a line: over a million boxes); a larger one is
#: refused unread, naming it.
MAX_PREDICTION_BYTES = 64 << 20


class UnsortedPredictionsWarning(UserWarning):
    """Some prediction files were not in descending score order."""


class ExtraPredictionsWarning(UserWarning):
    """The prediction tree holds files for images that are not in the ground truth."""


class ScoreRangeWarning(UserWarning):
    """Some prediction files hold scores outside [0, 1] (the evaluation's min-max normalisation then
    depends on them)."""


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float64), np.zeros((0,), np.float64)


def _bad_line(path: Path, lineno: int, line: str, reason: str) -> ZooError:
    return ZooError(f"line {lineno}: {reason}: {line.strip()[:80]!r}", path=f"{path}:{lineno}")


def _check_count(path: Path, line: str, n_body: int) -> None:
    """Raise unless the count line is an integer equal to the number of box lines."""
    try:
        n = int(line.strip())
    except ValueError:
        raise _bad_line(path, 2, line, "the count line is not an integer") from None
    if n < 0:
        raise _bad_line(path, 2, line, "negative count")
    if n != n_body:
        raise ZooError(f"count line says {n} boxes but the file has {n_body} box lines", path=path,
                       hint="fix the file, or pass model.pred_count=lines to trust the box lines")


def read_prediction_file(path: str | os.PathLike, count: CountPolicy = "strict") -> tuple[str, np.ndarray, np.ndarray]:
    """Parse one prediction file; return ``(name, boxes_xywh (n, 4) float64, scores (n,) float64)``.

    The boxes stay in file order. ``name`` is line 1 without surrounding whitespace. Raises ``ZooError``
    for an unreadable file, a missing or non-integer count line, a count that differs from the number
    of box lines, and (naming ``file:line``) a line that is not 5 finite numbers. Blank lines at the end
    of the file are ignored. ``count="lines"`` trusts the box lines: the count line (line 2) is not
    read at all, as in the wondervictor / chenjun2hao Python evaluators.
    """
    path = Path(path)
    data = read_at_most(path, MAX_PREDICTION_BYTES, "prediction file")  # (not a FIFO, a device, nor larger)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ZooError(f"cannot read prediction file ({exc})", path=path) from None
    return parse_prediction_text(text, path, count)


def parse_prediction_text(text: str, path: str | os.PathLike,
                          count: CountPolicy = "strict") -> tuple[str, np.ndarray, np.ndarray]:
    """:func:`read_prediction_file` on a file's text; ``path`` only names it in errors."""
    if count not in COUNT_POLICIES:
        raise ZooError(f"count must be one of {', '.join(COUNT_POLICIES)}, not {count!r}")
    path = Path(path)
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise ZooError("prediction file needs a name line and a count line", path=path)
    name = lines[0].strip()
    body = lines[2:]
    if count == "strict":
        _check_count(path, lines[1], len(body))
    if not body:
        return (name, *_empty())
    tokens = [ln.split() for ln in body]
    for i, tok in enumerate(tokens):
        if len(tok) != 5:
            raise _bad_line(path, i + 3, body[i], f"expected 5 values 'x y w h score', got {len(tok)}")
    try:
        arr = np.array(tokens, dtype=np.float64)
    except ValueError:
        for i, tok in enumerate(tokens):
            try:
                [float(t) for t in tok]
            except ValueError:
                raise _bad_line(path, i + 3, body[i], "not a number") from None
        raise
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise _bad_line(path, i + 3, body[i], "non-finite value")
    f32 = float(np.finfo(np.float32).max)  # zoo keeps boxes and scores as float32
    fits = (np.abs(arr) <= f32).all(axis=1) & (np.abs(arr[:, :2] + arr[:, 2:4]) <= f32).all(axis=1)
    if not fits.all():
        i = int(np.argmin(fits))
        raise _bad_line(path, i + 3, body[i], "a value (or x + w, y + h) beyond the float32 range")
    return name, np.ascontiguousarray(arr[:, :4]), np.ascontiguousarray(arr[:, 4])


def _name_matches(name: str, stem: str) -> bool:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base == stem or (base.rsplit(".", 1)[0] == stem and "." in base)


def _is_sorted_desc(scores: np.ndarray) -> bool:
    return bool(np.all(scores[:-1] >= scores[1:])) if scores.size > 1 else True


def _refuse_a_non_file(f: Path) -> None:
    """A prediction path that exists but is not a regular file (a directory, a broken link, an event
    "folder" that is a file) is an error naming it, not an image without predictions."""
    hint = "a WIDER prediction tree holds <event>/<stem>.txt files"
    event = f.parent
    if os.path.lexists(event) and not event.is_dir():
        kind = "a broken symbolic link" if not event.exists() else "not a directory"
        raise ZooError(f"the event folder is {kind}", path=event, hint=hint)
    if os.path.lexists(f):
        kind = ("a broken symbolic link" if not f.exists() else "a directory" if f.is_dir()
                else "not a regular file")
        raise ZooError(f"the prediction file is {kind}", path=f, hint=hint)


def read_prediction_tree(pred_dir: str | os.PathLike, gt: WiderGroundTruth, *, missing: MissingPolicy = "error",
                         unsorted: UnsortedPolicy = "sort",
                         count: CountPolicy = "strict") -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    """Read ``<pred_dir>/<event>/<stem>.txt`` for every image of ``gt``.

    Returns ``{(event, stem): (boxes_xywh (n, 4), scores (n,))}`` in ``gt`` order, ready for
    ``evaluate_wider``.

    * ``missing="error"`` (default): a missing file raises ``ZooError`` naming it (and how many are
      missing). ``"empty"``: the image gets no predictions, and its faces still count (the official
      MATLAB behaviour; the chenjun2hao/Ascend evaluator instead drops them, which inflates recall).
    * ``unsorted="sort"`` (default): a file not in descending score order is stably sorted by score,
      as the official MATLAB ``read_pred.m`` does, and one ``UnsortedPredictionsWarning`` gives the number
      of such files. ``"error"`` raises ``ZooError`` naming the first one; ``"keep"`` keeps file order
      (what the wondervictor and chenjun2hao Python evaluators do; the AP then depends on the order).
    * ``count``: see :func:`read_prediction_file`.
    * A ``<stem>.txt`` (or its event folder) that is there but is not a regular file (a directory, a FIFO, a
      broken link) raises ``ZooError`` naming it, whatever ``missing`` says: it is not a missing file.
    * A name line for another image raises ``ZooError``. Files for images not in ``gt`` are not read;
      one ``ExtraPredictionsWarning`` gives their number (e.g. truncated event folder names).
    """
    if missing not in ("error", "empty"):
        raise ZooError(f"missing must be 'error' or 'empty', not {missing!r}")
    if unsorted not in ("sort", "error", "keep"):
        raise ZooError(f"unsorted must be 'sort', 'error' or 'keep', not {unsorted!r}")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise ZooError("prediction folder not found", path=pred_dir)

    def read(event: str, stem: str) -> tuple[str, np.ndarray, np.ndarray] | None:
        path = pred_dir / event / f"{stem}.txt"
        if path.is_file():
            return read_prediction_file(path, count)
        _refuse_a_non_file(path)
        return None

    out = _read_images(gt, read, pred_dir, missing, unsorted)
    expected = {(e, s) for _, _, e, s in gt.iter_images()}
    extra = sum(1 for p in pred_dir.glob("*/*.txt") if (p.parent.name, p.stem) not in expected)
    if extra:
        warnings.warn(f"{extra} prediction file(s) in {pred_dir} are not WIDER val images and were ignored",
                      ExtraPredictionsWarning, stacklevel=2)
    return out


def read_prediction_texts(texts: Mapping[Key, str], gt: WiderGroundTruth, *,
                          unsorted: UnsortedPolicy = "sort") -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    """:func:`read_prediction_tree` over in-memory file texts ``{(event, stem): text}`` (the bytes a
    user gets, parsed without a round trip through the disk); an image without a text has no
    predictions (``missing="empty"``), texts for images not in ``gt`` are ignored."""
    def read(event: str, stem: str) -> tuple[str, np.ndarray, np.ndarray] | None:
        text = texts.get((event, stem))
        return None if text is None else parse_prediction_text(text, Path(event) / f"{stem}.txt", "strict")

    return _read_images(gt, read, Path("predictions"), "empty", unsorted)


def _read_images(gt: WiderGroundTruth, read: Callable[[str, str], tuple[str, np.ndarray, np.ndarray] | None],
                 where: Path, missing: MissingPolicy,
                 unsorted: UnsortedPolicy) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    out: dict[Key, tuple[np.ndarray, np.ndarray]] = {}
    absent: list[Path] = []
    n_unsorted = 0
    for _, _, event, stem in gt.iter_images():
        path = where / event / f"{stem}.txt"
        got = read(event, stem)
        if got is None:
            absent.append(path)
            out[(event, stem)] = _empty()
            continue
        name, boxes, scores = got
        if not _name_matches(name, stem):
            raise ZooError(f"name line {name!r} is not image {stem!r}", path=path)
        if not _is_sorted_desc(scores):
            n_unsorted += 1
            if unsorted == "error":
                raise ZooError("boxes are not in descending score order", path=path,
                               hint="sort detections by score before writing, or read with unsorted='sort'")
            if unsorted == "sort":
                order = np.argsort(-scores, kind="stable")
                boxes, scores = boxes[order], scores[order]
        out[(event, stem)] = (boxes, scores)
    if absent and missing == "error":
        raise ZooError(f"prediction file missing ({len(absent)} of {gt.num_images} missing)", path=absent[0],
                       hint="run inference on every val image, or read with missing='empty' (faces still count)")
    if n_unsorted and unsorted == "sort":
        warnings.warn(f"{n_unsorted} prediction file(s) in {where} were not sorted by descending score; "
                      "sorted them (stable), as the official MATLAB evaluation does",
                      UnsortedPredictionsWarning, stacklevel=3)
    return out


def format_prediction_file(event: str, stem: str, boxes_xyxy: np.ndarray, scores: np.ndarray,
                           sort: bool = True) -> str:
    """The text of one prediction file: boxes as ``x1 y1 x2-x1+1 y2-y1+1 score``, best score first
    (stable for ties; ``sort=False`` keeps the given order)."""
    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if boxes_xyxy.size == 0:
        boxes_xyxy = boxes_xyxy.reshape(0, 4)
    if boxes_xyxy.ndim != 2 or boxes_xyxy.shape[1] != 4 or scores.shape != (len(boxes_xyxy),):
        raise ZooError(f"{event}/{stem}: boxes must be (n, 4) and scores (n,), got {boxes_xyxy.shape} "
                       f"and {scores.shape}")
    if not (np.isfinite(boxes_xyxy).all() and np.isfinite(scores).all()):
        raise ZooError(f"{event}/{stem}: non-finite box or score")
    order = np.argsort(-scores, kind="stable") if sort else np.arange(len(scores))
    b, s = boxes_xyxy[order], scores[order]
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    rows = [f"{x:.1f} {y:.1f} {ww:.1f} {hh:.1f} {sc:.3f}\n"
            for x, y, ww, hh, sc in zip(b[:, 0].tolist(), b[:, 1].tolist(), w.tolist(), h.tolist(), s.tolist())]
    return f"{event}/{stem}.jpg\n{len(rows)}\n" + "".join(rows)


def format_written_file(event: str, stem: str, xywh: np.ndarray, scores: np.ndarray) -> str:
    """The text of one prediction file holding ``x y w h score`` rows as given (a user's tree read back), each
    value at the shortest precision that reads back to the same float64, in the given order."""
    boxes = np.asarray(xywh, np.float64).reshape(-1, 4).tolist()
    rows = [" ".join(repr(float(v)) for v in (*box, sc)) + "\n"
            for box, sc in zip(boxes, np.asarray(scores, np.float64).tolist())]
    return f"{event}/{stem}.jpg\n{len(rows)}\n" + "".join(rows)


def write_prediction_tree(pred_dir: str | os.PathLike,
                          detections: Mapping[Key, tuple[np.ndarray, np.ndarray]], sort: bool = True, *,
                          durable: bool = True) -> int:
    """Write ``<pred_dir>/<event>/<stem>.txt`` for every ``(event, stem) -> (boxes_xyxy, scores)``.

    Boxes are written at 1 decimal and scores at 3, sorted by descending score (stable for ties;
    ``sort=False`` keeps the given order), with the true count; each file is written atomically (temp +
    fsync + rename) unless ``durable=False``, for a scratch tree that is read back and thrown away (no
    fsync: it would cost one disk flush per image). Returns the number of files written.
    """
    pred_dir = Path(pred_dir)
    n = 0
    for (event, stem), (boxes, scores) in detections.items():
        for part in (event, stem):
            if not part or "/" in part or "\\" in part or part in (".", ".."):
                raise ZooError(f"invalid event or image name {part!r}")
        path, text = pred_dir / event / f"{stem}.txt", format_prediction_file(event, stem, boxes, scores, sort)
        if durable:
            write_text(path, text)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        n += 1
    return n
