"""Typed schema of the centernet plugin's config file (``ZOO_CONFIG_SCHEMAS``, see zoo_core.api.config).

Values live in ``conf/model/centernet.yaml``; this class gives each key its type and, for the numbers,
the range the plugin's code assumes, so a bad value (``model.K=abc``, ``model.keep_res=maybe``,
``model.K=0``, ``model.down_ratio=0``, ``model.std=[0.3,0.3]``, ``model.input_h=500``) fails at composition
naming the key.
A key added to the YAML file must be declared here (the contract kit's ``test_config_composes``
checks it). The keys zoo-core's COCO evaluator reads (``category_ids``, ``coco_evaluator``) come from
:class:`~zoo_core.api.config.CocoModelConfig`; the datasets (``coco``, ``coco_sample``) are zoo-core's
and typed there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from zoo_core.api.config import MISSING, CocoModelConfig, in_range


@dataclass
class CenterNetExportConfig:
    dcn_impl: str = "auto"


@dataclass
class CenterNetConfig(CocoModelConfig):
    keep_res: bool = False
    #: the fix_res input and the nominal size (export, perf): DLA-34 halves it 5 times, so a multiple of 32
    input_h: int = in_range(MISSING, 1, multiple=32)          # pixels, >= 1, a multiple of 32
    input_w: int = in_range(MISSING, 1, multiple=32)          # pixels, >= 1, a multiple of 32
    down_ratio: int = in_range(MISSING, 1)                    # output grid stride, >= 1
    num_classes: int = in_range(MISSING, 1)                   # heatmap channels, >= 1
    head_conv: int = in_range(MISSING, 1)                     # head width, >= 1
    K: int = in_range(MISSING, 1)                             # detections kept per image, >= 1
    mean: list[float] = in_range(MISSING, length=3)           # B, G, R
    std: list[float] = in_range(MISSING, 0.0, lo_open=True, length=3)  # B, G, R, each > 0 (a divisor)
    export: CenterNetExportConfig = field(default_factory=CenterNetExportConfig)


SCHEMAS: dict[str, type] = {"model/centernet": CenterNetConfig}
