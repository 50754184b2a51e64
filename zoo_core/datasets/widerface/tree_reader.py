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
from pathlib import Path

import numpy as np

from zoo_core.api.errors import ConfigError, ZooError
from zoo_core.api.types import Detections, DetectionsRead, Sample

from .predictions import (
    COUNT_POLICIES,
    ORDER_POLICIES,
    UnsortedPredictionsWarning,
    _name_matches,
    read_prediction_file,
)

#: ``DetectionsRead.info["format"]`` of a WIDER prediction tree.
FORMAT = "widerface_tree"


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
    """One file as :class:`Detections` (labels 0) and whether its boxes were out of descending score order."""
    name, xywh, scores = read_prediction_file(path, count)  # type: ignore[arg-type]
    if not _name_matches(name, stem):
        raise ZooError(f"name line {name!r} is not image {stem!r}", path=path)
    unsorted = bool(scores.size > 1 and np.any(scores[:-1] < scores[1:]))
    if order == "sort" and unsorted:
        idx = np.argsort(-scores, kind="stable")
        xywh, scores = xywh[idx], scores[idx]
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1], axis=1)
    return Detections(xyxy, scores, np.zeros(len(scores), np.int32)), unsorted


def read_tree_detections(path: str | os.PathLike, samples: Sequence[Sample], count: str = "strict",
                         order: str = "sort") -> DetectionsRead:
    """Read ``<path>/<event>/<stem>.txt`` for each sample (``Sample.key == (event, stem)``).

    :param count: ``strict`` (default; a count line that disagrees with the box lines is an error naming
        the file) or ``lines`` (trust the box lines).
    :param order: ``sort`` (default; stable descending sort, as MATLAB ``read_pred.m``) or ``keep``
        (file order, as the wondervictor Python evaluator).
    :returns: detections for the samples that have a file; ``info`` with ``format``, ``path``,
        ``pred_count``, ``pred_order``, ``files_read``, ``unsorted_files`` and ``missing_predictions``
        (+ ``missing_examples``, the first few missing files).
    :raises ZooError: a malformed file (named), or none of the samples has a file.
    """
    check_policies(count, order)
    root = Path(path)
    out: dict[str, Detections] = {}
    missing: list[str] = []
    n_unsorted = 0
    for s in samples:
        event, stem = tuple(s.key)
        f = root / str(event) / f"{stem}.txt"
        if not f.is_file():
            missing.append(f"{event}/{stem}.txt")
            continue
        det, unsorted = tree_file_detections(f, str(stem), count, order)
        n_unsorted += unsorted
        out[s.id] = det
    if samples and not out:
        raise ZooError(f"none of the {len(samples)} dataset image(s) has a prediction file <event>/<stem>.txt here "
                       f"(first expected: {missing[0]})", path=root,
                       hint="pass the folder that holds the event folders, with the dataset the tree was made on")
    if n_unsorted and order == "sort":
        warnings.warn(f"{n_unsorted} prediction file(s) in {root} were not sorted by descending score; sorted them "
                      "(stable), as the official MATLAB evaluation does (model.pred_order=keep keeps file order)",
                      UnsortedPredictionsWarning, stacklevel=2)
    info = {"format": FORMAT, "path": str(root.resolve()), "pred_count": count, "pred_order": order,
            "files_read": len(out), "unsorted_files": n_unsorted, "missing_predictions": len(missing)}
    if missing:
        info["missing_examples"] = missing[:5]
    return DetectionsRead(out, info)
