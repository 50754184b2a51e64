"""Typed schemas of the centerface plugin's config files (``ZOO_CONFIG_SCHEMAS``, see zoo_core.api.config).

Values live in ``conf/model/centerface.yaml`` and ``conf/dataset/*.yaml``; these classes give each
key its type, so a bad value (``model.iou_thresh=abc``, ``model.variant=foo``) fails at composition.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from zoo_core.api.config import MISSING, DatasetConfig, ModelConfig


class Variant(StrEnum):
    """The two CenterFace families (REFERENCE 3.1)."""

    starclouds = "starclouds"
    ascend = "ascend"


@dataclass
class CenterFaceConfig(ModelConfig):
    variant: Variant = Variant.starclouds
    #: per variant, what ``default_weights`` says (null: that variant ships no weights)
    variant_default_weights: dict[str, str | None] = field(default_factory=dict)
    input_hw: list[int] | None = None
    threshold: float = MISSING
    nms_iou: float = MISSING
    K: int = MISSING
    head_conv: int = MISSING
    aipp: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    iou_thresh: float = MISSING
    report_both_iou: bool = False


@dataclass
class WiderFaceConfig(DatasetConfig):
    root: str | None = None
    gt_dir: str | None = None


@dataclass
class WiderFaceSampleConfig(DatasetConfig):
    root: str | None = None


SCHEMAS: dict[str, type] = {"model/centerface": CenterFaceConfig, "dataset/widerface": WiderFaceConfig,
                            "dataset/widerface_sample": WiderFaceSampleConfig}
