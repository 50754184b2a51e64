"""Typed schema of the centerface plugin's config file (``ZOO_CONFIG_SCHEMAS``, see zoo_core.api.config).

Values live in ``conf/model/centerface.yaml``; this class gives each key its type and, for the
numbers, the range the plugin's code assumes, so a bad value (``model.iou_thresh=abc``,
``model.variant=foo``, ``model.K=0``, ``model.std=[0,1,1]``) fails at composition naming the key.
A key added to the YAML file must be declared here (the contract kit's ``test_config_composes``
checks it). The keys zoo-core's WIDER FACE evaluator reads (``iou_thresh``, ``report_both_iou``) come from
:class:`~zoo_core.api.config.WiderFaceModelConfig`; the datasets (``widerface``, ``widerface_sample``)
are zoo-core's and typed there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from zoo_core.api.config import MISSING, WiderFaceModelConfig, in_range


class Variant(StrEnum):
    """The two CenterFace families (REFERENCE 3.1)."""

    starclouds = "starclouds"
    ascend = "ascend"


@dataclass
class CenterFaceConfig(WiderFaceModelConfig):
    variant: Variant = Variant.starclouds
    #: per variant, what ``default_weights`` says (null: that variant ships no weights)
    variant_default_weights: dict[str, str | None] = field(default_factory=dict)
    #: per variant, the ``export_keys`` (the keys that change that variant's export)
    variant_export_keys: dict[str, list[str]] = field(default_factory=dict)
    input_hw: list[int] | None = in_range(None, 1, length=2, multiple=32)  # [h, w], each >= 1, a multiple of 32
    threshold: float = in_range(MISSING, 0.0, 1.0)
    nms_iou: float = in_range(MISSING, 0.0, 1.0)
    K: int = in_range(MISSING, 1)                                     # detections kept per image, >= 1
    head_conv: int = in_range(MISSING, 1)                             # neck / head width, >= 1
    aipp: bool = False
    mean: list[float] | None = in_range(None, length=3)               # B, G, R
    std: list[float] | None = in_range(None, 0.0, lo_open=True, length=3)  # B, G, R, each > 0 (a divisor)


SCHEMAS: dict[str, type] = {"model/centerface": CenterFaceConfig}
