"""Read a user's WIDER prediction tree (``<dir>/<event>/<stem>.txt``) as :class:`Detections` for ``stage=evaluate``.

The tree is recognised by content: a directory whose sub-directories hold ``.txt`` files. Each file is read
with :func:`read_prediction_file` under two policies (``model.pred_count``, ``model.pred_order``), and its
``x y w h`` boxes become inclusive corners ``x1 y1 x1+w-1 y1+h-1`` (the inverse of the WIDER writer). A
dataset image without a file counts as "no detections" (its faces still count) and is reported as
``missing_predictions``; files for images outside the scored samples are not read.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoo_core.api.errors import ConfigError, ZooError
from zoo_core.api.types import Detections, DetectionsRead, Sample

from .predictions import (
    COUNT_POLICIES,
    ORDER_POLICIES,
    ExtraPredictionsWarning,
    ScoreRangeWarning,
    UnsortedPredictionsWarning,
    _name_matches,
    _refuse_a_non_file,
    read_prediction_file,
)

#: ``DetectionsRead.info["format"]`` of a WIDER prediction tree.
FORMAT = "widerface_tree"


@dataclass
class WrittenWiderDetections(Detections):
    """Detections read from a user's prediction file that also keep its ``x y w h`` boxes and scores as the
    file wrote them (float64, in the order the policies gave), so the file is scored as written: no float32
    cast, no 1-decimal / 3-decimal rounding (which moved a tree of small scores from hard AP 0.478 to 0.319)."""

    written_xywh: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    written_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))


def is_prediction_tree(path: str | os.PathLike) -> bool:
    """``path`` is a directory with at least one ``<sub-directory>/<name>.txt`` file."""
    p = Path(path)
    if not p.is_dir():
        return False
    return any(f.is_file() for f in p.glob("*/*.txt"))


def check_policies(count: str, order: str) -> None:
    """Raise :class:`ConfigError` for a ``model.pred_count`` / ``model.pred_order`` value that is not known."""
    if count not in COUNT_POLICIES:
        raise ConfigError(f"model.pred_count={count!r} must be one of {', '.join(COUNT_POLICIES)}")
    if order not in ORDER_POLICIES:
        raise ConfigError(f"model.pred_order={order!r} must be one of {', '.join(ORDER_POLICIES)}")


def tree_file_detections(path: Path, stem: str, count: str, order: str) -> tuple[Detections, bool]:
    """One file as :class:`WrittenWiderDetections` (labels 0) and whether its boxes were out of descending score
    order."""
    name, xywh, scores = read_prediction_file(path, count)  # type: ignore[arg-type]
    if not _name_matches(name, stem):
        raise ZooError(f"name line {name!r} is not image {stem!r}", path=path)
    unsorted = bool(scores.size > 1 and np.any(scores[:-1] < scores[1:]))
    if order == "sort" and unsorted:
        idx = np.argsort(-scores, kind="stable")
        xywh, scores = xywh[idx], scores[idx]
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1], axis=1)
    det = WrittenWiderDetections(xyxy, scores, np.zeros(len(scores), np.int32),
                                 written_xywh=np.asarray(xywh, np.float64),
                                 written_scores=np.asarray(scores, np.float64))
    return det, unsorted


def read_tree_detections(path: str | os.PathLike, samples: Sequence[Sample], count: str = "strict",
                         order: str = "sort", dataset_keys: set[tuple[str, str]] | None = None) -> DetectionsRead:
    """Read ``<path>/<event>/<stem>.txt`` for each sample (``Sample.key == (event, stem)``).

    :param count: ``strict`` (default; a count line that disagrees with the box lines is an error naming
        the file) or ``lines`` (trust the box lines).
    :param order: ``sort`` (default; stable descending sort, as MATLAB ``read_pred.m``) or ``keep``
        (file order, as the wondervictor Python evaluator).
    :param dataset_keys: ``(event, stem)`` of every image of the dataset (default: of ``samples``): files
        for other images are not read, and one ``ExtraPredictionsWarning`` gives their number.
    :returns: detections for the samples that have a file; ``info`` with ``format``, ``path``,
        ``pred_count``, ``pred_order``, ``files_read``, ``unsorted_files`` and ``missing_predictions``
        (+ ``missing_examples``, the first few missing files).
    :raises ZooError: a malformed file (named), or none of the samples has a file.
    """
    check_policies(count, order)
    root = Path(path)
    out: dict[str, Detections] = {}
    missing: list[str] = []
    outside: list[Path] = []
    n_unsorted = 0
    for s in samples:
        event, stem = tuple(s.key)
        f = root / str(event) / f"{stem}.txt"
        if not f.is_file():
            _refuse_a_non_file(f)
            missing.append(f"{event}/{stem}.txt")
            continue
        det, unsorted = tree_file_detections(f, str(stem), count, order)
        n_unsorted += unsorted
        if len(det) and (det.scores.min() < 0 or det.scores.max() > 1):
            outside.append(f)
        out[s.id] = det
    if samples and not out:
        raise ZooError(f"none of the {len(samples)} dataset image(s) has a prediction file <event>/<stem>.txt here "
                       f"(first expected: {missing[0]})", path=root,
                       hint="pass the folder that holds the event folders, with the dataset the tree was made on")
    known = dataset_keys if dataset_keys is not None else {(str(s.key[0]), str(s.key[1])) for s in samples}
    strays = [p for p in sorted(root.glob("*/*.txt")) if (p.parent.name, p.stem) not in known]
    if strays:
        scored_stems = {str(s.key[1]) for s in samples}
        misplaced = [p for p in strays if p.stem in scored_stems]
        where = (f"; {len(misplaced)} of them name a scored image but lie in another event folder "
                 f"(first: {misplaced[0].relative_to(root)})") if misplaced else ""
        what = "the dataset" if dataset_keys is not None else "the scored samples"
        warnings.warn(f"{len(strays)} prediction file(s) in {root} are not images of {what} and were not read "
                      f"(first: {strays[0].relative_to(root)}){where}; WIDER FACE's evaluation.py would also put "
                      "their scores into its min-max normalisation", ExtraPredictionsWarning, stacklevel=2)
    if outside:
        warnings.warn(f"{len(outside)} prediction file(s) in {root} hold scores outside [0, 1] (first: {outside[0]}): "
                      "the WIDER FACE evaluation normalises every score by the minimum and maximum over all files, so "
                      "one outlying score rescales all the others and moves every AP",
                      ScoreRangeWarning, stacklevel=2)
    if n_unsorted and order == "sort":
        warnings.warn(f"{n_unsorted} prediction file(s) in {root} were not sorted by descending score; sorted them "
                      "(stable), as the official MATLAB evaluation does (model.pred_order=keep keeps file order)",
                      UnsortedPredictionsWarning, stacklevel=2)
    info = {"format": FORMAT, "path": str(root.resolve()), "pred_count": count, "pred_order": order,
            "files_read": len(out), "unsorted_files": n_unsorted, "missing_predictions": len(missing)}
    if missing:
        info["missing_examples"] = missing[:5]
    return DetectionsRead(out, info)
