"""Typed schema of the centernet plugin's config file (``ZOO_CONFIG_SCHEMAS``, see zoo_core.api.config).

Values live in ``conf/model/centernet.yaml``; this class gives each key its type, so a bad value
(``model.K=abc``, ``model.keep_res=maybe``) fails at composition. A key added to the YAML file must be
declared here (the contract kit's ``test_config_composes`` checks it). The keys zoo-core's COCO
evaluator reads (``category_ids``, ``coco_evaluator``) come from
:class:`~zoo_core.api.config.CocoModelConfig`; the datasets (``coco``, ``coco_sample``) are zoo-core's
and typed there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from zoo_core.api.config import MISSING, CocoModelConfig


@dataclass
class CenterNetExportConfig:
    dcn_impl: str = "auto"


@dataclass
class CenterNetConfig(CocoModelConfig):
    keep_res: bool = False
    input_h: int = MISSING
    input_w: int = MISSING
    down_ratio: int = MISSING
    num_classes: int = MISSING
    head_conv: int = MISSING
    K: int = MISSING
    mean: list[float] = MISSING
    std: list[float] = MISSING
    export: CenterNetExportConfig = field(default_factory=CenterNetExportConfig)


SCHEMAS: dict[str, type] = {"model/centernet": CenterNetConfig}
