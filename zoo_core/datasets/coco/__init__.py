"""COCO detection: the instances reader with its checks, the results json, COCOeval scoring (faster-coco-eval or
pycocotools), PR / per-class AP plots and the generated ``coco_sample``; public API of zoo-core
(:data:`zoo_core.datasets.DATASET_API_VERSION`).

A model plugin whose config selects a ``kind: coco`` dataset (``coco``, ``coco_sample``, or your own
``conf/dataset/*.yaml`` with ``kind: coco``) gets :func:`open_coco` as its ``dataset`` hook and
:func:`score_coco` as its ``evaluate`` hook without implementing either. Model-specific knobs come from
the model config: ``model.category_ids`` (0-based class -> category id; default the 80 COCO ids in
CenterNet's order) and ``model.coco_evaluator`` (``auto``).

Import this package, not its modules: the names below are the versioned API.
"""
from __future__ import annotations

from zoo_core.api.errors import ConfigError, ZooError

from .dataset import CATEGORY_IDS, CATEGORY_NAMES, DOWNLOAD_HINT, CocoDataset, load_instances
from .evaluation import (
    EVALUATORS,
    STAT_NAMES,
    category_ids,
    per_category_ap,
    resolve_evaluator,
    run_cocoeval,
    score_coco,
    scored_category_ids,
)
from .plots import ap_per_class_png, pr_curve_data, pr_curves_png
from .results import class_major_order, coco_records, read_coco_results, round2
from .sample import ANN_FILE, IMAGE_DIR, SAMPLE_CATEGORY_IDS, ensure_coco_sample, make_coco_sample

#: The generated sample's instances json, relative to its folder.
SAMPLE_ANN_FILE = ANN_FILE
#: The generated sample's image folder, relative to its folder.
SAMPLE_IMAGE_DIR = IMAGE_DIR
#: Generators a ``kind: coco`` dataset config may name (``dataset.generator``).
GENERATORS = ("coco_sample",)


def open_coco(dataset_cfg, skip_missing_images: bool = False) -> CocoDataset:
    """Open the COCO-format dataset a ``kind: coco`` config section describes.

    Keys: ``name``; ``root`` (the folder holding ``ann_file`` and ``image_dir``); ``ann_file``
    (default ``annotations/instances_val2017.json``); ``image_dir`` (default ``val2017``);
    ``generator`` (``coco_sample`` or null). With ``generator: coco_sample`` the set of
    ``n_images`` / ``seed`` is generated on first use (see :func:`ensure_coco_sample`); otherwise
    ``root`` is required. ``images_required: false`` (set by ``stage=evaluate``) opens the annotation
    file only: the image folder may be absent. Image files are not checked here: a missing one fails (or,
    with ``on_error=skip``, is skipped and listed) when the run reads it, so ``skip_missing_images`` (the
    argument every kind's ``open`` takes) changes nothing.
    """
    name = str(dataset_cfg.get("name") or "coco")
    root = dataset_cfg.get("root")
    generator = dataset_cfg.get("generator")
    if generator is not None:
        if str(generator) not in GENERATORS:
            raise ConfigError(f"dataset.generator={generator!r} is not a COCO generator; "
                              f"known: {', '.join(GENERATORS)} (or null for data on disk)")
        n_images, seed = int(dataset_cfg.get("n_images", 24)), int(dataset_cfg.get("seed", 0))
        if n_images < 1 or seed < 0:  # numpy refuses them with a ValueError naming neither
            key, value, bound = ("n_images", n_images, 1) if n_images < 1 else ("seed", seed, 0)
            raise ConfigError(f"dataset.{key}={value} is invalid for the generated {generator} set: "
                              f"it must be >= {bound}")
        folder = ensure_coco_sample(None if root is None or str(root) == "" else str(root),
                                    n_images=n_images, seed=seed)
        return CocoDataset(folder, SAMPLE_ANN_FILE, SAMPLE_IMAGE_DIR, name=name)
    if root is None or str(root) == "":
        raise ZooError(f"dataset.root is not set for the COCO dataset {name!r}", hint=DOWNLOAD_HINT)
    return CocoDataset(str(root), str(dataset_cfg.get("ann_file") or "annotations/instances_val2017.json"),
                       str(dataset_cfg.get("image_dir") or "val2017"), name=name,
                       images_required=bool(dataset_cfg.get("images_required", True)))


__all__ = [
    "CATEGORY_IDS",
    "CATEGORY_NAMES",
    "DOWNLOAD_HINT",
    "EVALUATORS",
    "GENERATORS",
    "SAMPLE_ANN_FILE",
    "SAMPLE_CATEGORY_IDS",
    "SAMPLE_IMAGE_DIR",
    "STAT_NAMES",
    "CocoDataset",
    "ap_per_class_png",
    "category_ids",
    "class_major_order",
    "coco_records",
    "ensure_coco_sample",
    "load_instances",
    "make_coco_sample",
    "open_coco",
    "per_category_ap",
    "pr_curve_data",
    "pr_curves_png",
    "read_coco_results",
    "resolve_evaluator",
    "round2",
    "run_cocoeval",
    "score_coco",
    "scored_category_ids",
]
