"""Data types exchanged between the core and model plugins.

Everything here is plain numpy / dataclasses so that plugins and the core agree on shapes without
importing each other's internals.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One dataset item.

    :param id: the file stem used for every per-image artifact (``inputs/<id>.bin``,
        ``outputs/<id>_<i>.bin``); unique within a dataset.
    :param path: the image file.
    :param key: the dataset's own identifier of the image, whatever its type: the integer COCO image
        id for ``kind: coco``, the ``(event, stem)`` tuple for ``kind: widerface``, the stem for the
        scaffold's discs. ``evaluate`` and ``oracle_outputs`` get it back (``dataset.boxes_xyxy(sample.key)``,
        ``dataset.annotations(sample.key)``); ``None`` for images that are not in a dataset (``predict``).
    """

    id: str
    path: Path
    key: Any = None


@dataclass(frozen=True)
class TensorSpec:
    """Name, per-item shape (without the batch dimension) and numpy dtype name of a tensor.

    :param name: the graph input / output name.
    :param shape: per-item shape, e.g. ``(3, 512, 512)``.
    :param dtype: a numpy dtype name (``"float32"``, ``"uint8"``...).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def nbytes(self) -> int:
        """Bytes of one item (``prod(shape) * itemsize``), e.g. the size of one ais_bench ``.bin``."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


@dataclass
class Detections:
    """Detections of one image in original-image pixels.

    :param boxes: ``(n, 4)`` ``[x1, y1, x2, y2]``, stored as float32.
    :param scores: ``(n,)`` in descending order, stored as float32.
    :param labels: ``(n,)`` the model's 0-based class index, stored as **int32** (any integer input is
        converted; single-class models pass zeros, e.g. ``np.zeros(n)``).
    :param extras: per-box arrays whose first dimension is n, stored as float32 (e.g. ``landmarks``
        ``(n, 10)`` as ``x0, y0, ..., x4, y4``).
    Inputs are converted and reshaped on construction (a mismatching ``extras`` length raises
    ``ValueError``); an image without detections is :meth:`Detections.empty`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(n)
        self.labels = np.asarray(self.labels, dtype=np.int32).reshape(n)
        for k, v in self.extras.items():
            v = np.asarray(v, dtype=np.float32)
            if len(v) != n:
                raise ValueError(f"extras[{k!r}] has {len(v)} rows, boxes have {n}")
            self.extras[k] = v

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        """No detections: ``(0, 4)`` boxes, ``(0,)`` scores and labels (what ``postprocess`` returns for an
        image without faces / objects)."""
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))

    def to_json(self) -> dict[str, Any]:
        """``{"boxes", "scores", "labels", <extras>...}`` as nested lists (the ``predict`` JSON)."""
        out = {
            "boxes": self.boxes.tolist(),
            "scores": self.scores.tolist(),
            "labels": self.labels.tolist(),
        }
        for k, v in self.extras.items():
            out[k] = v.tolist()
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Detections:
        """The inverse of :meth:`to_json`."""
        extras = {k: np.asarray(v, np.float32) for k, v in d.items() if k not in ("boxes", "scores", "labels")}
        n = len(d["boxes"])
        extras = {k: v.reshape(n, -1) if n else v.reshape(0, 0) for k, v in extras.items()}
        return cls(np.asarray(d["boxes"], np.float32).reshape(-1, 4), d["scores"], d["labels"], extras)


@dataclass
class ExportResult:
    """What ``export`` wrote: the ONNX path and its graph input / output names, in output order."""

    path: Path
    input_names: list[str]
    output_names: list[str]
    target: str = "onnxruntime"


@dataclass
class EvalResult:
    """Metrics (flat ``name -> number``) plus files to write next to ``metrics.json``.

    ``files`` maps a file name relative to the run dir to its bytes; the core writes each one
    atomically. ``info`` holds JSON-able, non-numeric facts that belong in ``metrics.json``
    (e.g. ``{"iou_thresh": 0.5, "evaluator": "faster-coco-eval"}``).
    """

    metrics: dict[str, float]
    files: dict[str, bytes] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class DetectionsRead:
    """What the ``read_detections`` hook found in a user's results (a prediction tree, a results json...).

    :param detections: ``{sample.id: Detections}`` for the images the results cover. An image of the
        dataset without an entry counts as "no detections" when scored (its ground truth still counts).
    :param info: JSON-able facts recorded in ``metrics.json`` under ``"read"``: at least ``"format"``
        (e.g. ``"widerface_tree"``, ``"coco_results"``); the reading policies used; and
        ``"missing_predictions"`` (the number of dataset images the results hold nothing for).
    """

    detections: dict[str, Detections]
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Dataset(Protocol):
    """What a model plugin's ``dataset`` hook returns."""

    name: str
    root: Path

    def samples(self) -> Sequence[Sample]:
        """All samples in a deterministic order."""
        ...


#: What ``preprocess`` returns for one item: graph input name -> array without the batch dimension.
Inputs = dict[str, np.ndarray]

#: The JSON-able per-item dict ``preprocess`` returns (the core adds ``id`` and ``orig_hw``);
#: ``output_spec``, ``postprocess`` and ``oracle_outputs`` receive it back.
Meta = dict[str, Any]
