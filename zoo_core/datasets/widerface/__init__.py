"""WIDER FACE: the ground-truth ``.mat`` files, prediction trees, the official evaluation and its plot,
the bundled sample; public API of zoo-core (:data:`zoo_core.datasets.DATASET_API_VERSION`).

A model plugin whose config selects a ``kind: widerface`` dataset (``widerface``,
``widerface_sample``, or your own ``conf/dataset/*.yaml`` with ``kind: widerface``) gets
:func:`open_widerface` as its ``dataset`` hook and :func:`score_widerface` as its ``evaluate`` hook
without implementing either. The pieces are public for plugins that override ``evaluate`` or need the
ground truth (an ``oracle_outputs`` reads :meth:`WiderFaceDataset.boxes_xyxy`).

Import this package, not its modules: the names below are the versioned API.
"""
from __future__ import annotations

import os
from pathlib import Path

from zoo_core.api.errors import ConfigError

from .dataset import DOWNLOAD_HINT, GT_FILES, WiderFaceDataset
from .evaluation import WiderEvalWarning, WiderResult, evaluate_wider, evaluate_wider_reference, thresholds
from .ground_truth import SETTINGS, WiderGroundTruth, load_wider_gt, write_wider_gt
from .plots import pr_curves_png, pr_curves_title
from .predictions import (
    COUNT_POLICIES,
    ORDER_POLICIES,
    ExtraPredictionsWarning,
    ScoreRangeWarning,
    UnsortedPredictionsWarning,
    format_prediction_file,
    read_prediction_file,
    read_prediction_texts,
    read_prediction_tree,
    write_prediction_tree,
)
from .sample import GT_DIR, ensure_sample
from .scoring import IOU_BOTH, score_widerface
from .tree_reader import is_prediction_tree, read_tree_detections

#: The bundled sample's ground-truth folder, relative to its root (``<root>/ground_truth``).
SAMPLE_GT_DIR = GT_DIR
#: Generators a ``kind: widerface`` dataset config may name (``dataset.generator``).
GENERATORS = ("widerface_sample",)


def open_widerface(dataset_cfg, skip_missing_images: bool = False) -> WiderFaceDataset:
    """Open the WIDER-format dataset a ``kind: widerface`` config section describes.

    Keys: ``name``; ``root`` (the folder holding ``WIDER_val/images``); ``gt_dir`` (the folder of the
    four ``.mat`` files); ``generator`` (``widerface_sample`` or null). With ``generator:
    widerface_sample`` the bundled sample is built on first use into ``root`` (null: the cache,
    see :func:`ensure_sample`; a ``root`` holding anything but an earlier zoo sample is refused, never
    replaced) and ``gt_dir`` defaults to ``<root>/ground_truth``. Without a
    generator, ``root`` and ``gt_dir`` are required. Ground-truth images missing on disk are an
    error naming how many, unless ``skip_missing_images`` (``on_error=skip``): then each is skipped
    and listed when the run reads it. ``images_required: false`` (set by ``stage=evaluate``) opens the
    ground truth only: ``root`` may be unset and the images absent.
    """
    name = str(dataset_cfg.get("name") or "widerface")
    root = dataset_cfg.get("root")
    gt_dir = dataset_cfg.get("gt_dir")
    generator = dataset_cfg.get("generator")
    if generator is not None:
        if str(generator) not in GENERATORS:
            raise ConfigError(f"dataset.generator={generator!r} is not a WIDER FACE generator; "
                              f"known: {', '.join(GENERATORS)} (or null for data on disk)")
        root = ensure_sample(None if root is None or str(root) == "" else os.fspath(str(root)))
        gt_dir = Path(root) / SAMPLE_GT_DIR if gt_dir is None or str(gt_dir) == "" else gt_dir
    images_required = bool(dataset_cfg.get("images_required", True))
    return WiderFaceDataset(root, gt_dir, name=name, check_images=images_required and not skip_missing_images,
                            images_required=images_required)


__all__ = [
    "COUNT_POLICIES",
    "DOWNLOAD_HINT",
    "GENERATORS",
    "GT_FILES",
    "IOU_BOTH",
    "ORDER_POLICIES",
    "SAMPLE_GT_DIR",
    "SETTINGS",
    "ExtraPredictionsWarning",
    "ScoreRangeWarning",
    "UnsortedPredictionsWarning",
    "WiderEvalWarning",
    "WiderFaceDataset",
    "WiderGroundTruth",
    "WiderResult",
    "ensure_sample",
    "evaluate_wider",
    "evaluate_wider_reference",
    "format_prediction_file",
    "is_prediction_tree",
    "load_wider_gt",
    "open_widerface",
    "pr_curves_png",
    "pr_curves_title",
    "read_prediction_file",
    "read_prediction_texts",
    "read_prediction_tree",
    "read_tree_detections",
    "score_widerface",
    "thresholds",
    "write_prediction_tree",
    "write_wider_gt",
]
