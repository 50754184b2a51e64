"""Typed schemas of the dataset configs zoo-core ships (``conf/dataset/*.yaml``, the dataset API).

One dataclass per file, keyed by the file's name; :mod:`zoo_core.config.plugin_schema` merges the
composed ``dataset`` section into it, so ``dataset.n_images=abc`` fails at composition naming the key
and its type. A key added to one of these YAML files must be declared here too.
"""
from __future__ import annotations

from dataclasses import dataclass

from zoo_core.api.config import MISSING, DatasetConfig, in_range


@dataclass
class WiderFaceDatasetConfig(DatasetConfig):
    """``widerface``: WIDER FACE val on disk."""

    root: str | None = None
    gt_dir: str | None = None


@dataclass
class WiderFaceSampleDatasetConfig(DatasetConfig):
    """``widerface_sample``: the generated WIDER-format sample."""

    root: str | None = None
    gt_dir: str | None = None


@dataclass
class CocoDatasetConfig(DatasetConfig):
    """``coco``: COCO 2017 val on disk."""

    root: str | None = None
    ann_file: str = MISSING
    image_dir: str = MISSING


@dataclass
class CocoSampleDatasetConfig(DatasetConfig):
    """``coco_sample``: the generated COCO-format sample."""

    root: str | None = None
    n_images: int = in_range(MISSING, 1)    # >= 1
    seed: int = in_range(0, 0)              # >= 0 (numpy's default_rng refuses a negative seed)


#: ``{dataset file name: schema}`` of zoo-core's own dataset files (``none`` takes the base class).
CORE_DATASET_SCHEMAS: dict[str, type[DatasetConfig]] = {
    "widerface": WiderFaceDatasetConfig,
    "widerface_sample": WiderFaceSampleDatasetConfig,
    "coco": CocoDatasetConfig,
    "coco_sample": CocoSampleDatasetConfig,
}
