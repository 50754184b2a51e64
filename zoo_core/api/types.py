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

    :param boxes: ``(n, 4)`` ``[x1, y1, x2, y2]``, stored as float32 (another shape raises ``ValueError``).
    :param scores: ``(n,)`` in descending order, stored as float32.
    :param labels: ``(n,)`` the model's 0-based class index, stored as **int32** (integer values are
        converted, float ones too when integral; ``0.5`` raises ``ValueError``, never truncated; single-class
        models pass zeros, e.g. ``np.zeros(n)``).
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
        boxes = np.asarray(self.boxes, dtype=np.float32)
        if boxes.size and not ((boxes.ndim == 2 and boxes.shape[1] == 4) or boxes.shape == (4,)):
            raise ValueError(f"boxes must be (n, 4) [x1, y1, x2, y2], got shape {boxes.shape}")
        self.boxes = boxes.reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(n)
        labels = np.asarray(self.labels)
        if labels.dtype.kind not in "biu":
            as_float = labels.astype(np.float64)  # raises for non-numbers
            bad = ~np.isfinite(as_float) | (as_float != np.round(as_float))
            if bad.any():
                raise ValueError(f"labels must be integer class indices, got {float(as_float[bad][0])!r} "
                                 f"({int(bad.sum())} non-integer value(s))")
        self.labels = labels.astype(np.int32).reshape(n)
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
    """What ``export`` wrote: the ONNX path and its graph input / output names, in output order.

    ``weights``: the weights file the export read when it was called with ``weights=None`` and
    the plugin used real default weights from a file (the core names it on stderr and in
    ``run.json``); ``None`` otherwise.
    """

    path: Path
    input_names: list[str]
    output_names: list[str]
    target: str = "onnxruntime"
    weights: Path | None = None


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
    #: 95% bootstrap intervals ``{metric: (lo, hi)}`` when the run asked for ``bootstrap=N`` and the
    #: evaluator computes them (zoo-core's ``widerface`` and ``coco`` kinds do); ``info["bootstrap"]`` then
    #: says how (N, seed, what was resampled).
    ci95: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


#: Protocol keys that say what a :class:`Reference` is *about* by default: a run that differs on one of them
#: measures something else (no verdict, no mismatch report).
REFERENCE_SUBJECT = ("model.variant", "dataset.name", "backend.name")


@dataclass(frozen=True)
class Reference:
    """A published (or pinned) value of one metric under one evaluation protocol, declared by a plugin's
    ``references`` hook; the core compares an ``eval`` / ``evaluate`` run with it (docs/plugins.md).

    :param metric: the metric name as the evaluator reports it (``"AP"``, ``"easy"``...).
    :param expected: the reference value, on the evaluator's scale (COCO AP 36.6 is ``0.366``).
    :param tolerance: the largest ``|measured - expected|`` still counted as reproducing it (``>= 0``).
    :param source: where the number comes from (a README, a paper, a pinned measurement), as a reader can
        find it.
    :param protocol: the config values that define the protocol, dotted keys of the run configuration ->
        value, e.g. ``{"model.variant": "ascend", "dataset.name": "widerface", "model.iou_thresh": 0.4}``.
        Decoding and model parameters (thresholds, K, weights, quantization) are *not* protocol: a run that
        changes them is still compared (catching that is what ``gate=true`` is for).
    :param subject: the protocol keys saying what the reference is about (default: variant, dataset,
        backend, when present in ``protocol``). A run that agrees on them but differs on another protocol
        key (IoU 0.5 against a 0.4 reference) is a *protocol mismatch*: said, not compared.
    :param note: optional context printed with the verdict.
    :param images: the number of images the reference scored (COCO val2017: 5000; WIDER FACE val: 3226), or
        ``None``. A run that scored another number (a COCO-format set of its own saved as
        ``instances_val2017.json``, skipped images) is a protocol mismatch, since the dataset's name and files
        alone do not tell that it is the reference's data.
    """

    metric: str
    expected: float
    tolerance: float
    source: str
    protocol: Mapping[str, Any]
    subject: tuple[str, ...] = REFERENCE_SUBJECT
    note: str = ""
    images: int | None = None

    def __post_init__(self) -> None:
        import math

        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"Reference.metric must be a non-empty string, got {self.metric!r}")
        for name in ("expected", "tolerance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ValueError(f"Reference({self.metric}).{name} must be a finite number, got {v!r}")
        if self.tolerance < 0:
            raise ValueError(f"Reference({self.metric}).tolerance must be >= 0, got {self.tolerance}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(f"Reference({self.metric}).source must say where the number comes from")
        if not isinstance(self.protocol, Mapping) or not self.protocol:
            raise ValueError(f"Reference({self.metric}).protocol must be a non-empty mapping of config keys")
        bad = [k for k in self.protocol if not isinstance(k, str) or not k or k.startswith(".") or k.endswith(".")]
        if bad:
            raise ValueError(f"Reference({self.metric}).protocol keys must be dotted config keys, got {bad}")
        if self.images is not None and (isinstance(self.images, bool) or not isinstance(self.images, int)
                                        or self.images < 1):
            raise ValueError(f"Reference({self.metric}).images must be a positive int or None, got {self.images!r}")
        object.__setattr__(self, "protocol", dict(self.protocol))
        object.__setattr__(self, "subject", tuple(self.subject))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"metric", "expected", "tolerance", "source", "protocol"}`` (+ ``"note"``, ``"images"``)."""
        d = {"metric": self.metric, "expected": float(self.expected), "tolerance": float(self.tolerance),
             "source": self.source, "protocol": dict(self.protocol)}
        if self.note:
            d["note"] = self.note
        if self.images is not None:
            d["images"] = self.images
        return d


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
