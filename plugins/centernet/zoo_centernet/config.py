"""Typed schemas of the centernet plugin's config files (``ZOO_CONFIG_SCHEMAS``, see zoo_core.api.config).

Values live in ``conf/model/centernet.yaml`` and ``conf/dataset/*.yaml``; these classes give each
key its type, so a bad value (``model.K=abc``, ``model.keep_res=maybe``) fails at composition.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from zoo_core.api.config import MISSING, DatasetConfig, ModelConfig


@dataclass
class CenterNetExportConfig:
    dcn_impl: str = "auto"


@dataclass
class CenterNetConfig(ModelConfig):
    keep_res: bool = False
    input_h: int = MISSING
    input_w: int = MISSING
    down_ratio: int = MISSING
    num_classes: int = MISSING
    head_conv: int = MISSING
    K: int = MISSING
    mean: list[float] = MISSING
    std: list[float] = MISSING
    coco_evaluator: str = "auto"
    export: CenterNetExportConfig = field(default_factory=CenterNetExportConfig)


@dataclass
class CocoConfig(DatasetConfig):
    root: str | None = None
    ann_file: str = MISSING
    image_dir: str = MISSING


@dataclass
class CocoSampleConfig(DatasetConfig):
    root: str | None = None
    n_images: int = MISSING
    seed: int = 0


SCHEMAS: dict[str, type] = {"model/centernet": CenterNetConfig, "dataset/coco": CocoConfig,
                            "dataset/coco_sample": CocoSampleConfig}
