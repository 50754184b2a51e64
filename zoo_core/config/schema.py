"""Structured-config schema of the run-level keys (registered in Hydra's ConfigStore as ``zoo_schema``).

Model, dataset, backend and stage sections come from config groups; Hydra's struct mode makes any
unknown key an error, and :mod:`zoo_core.config.validate` turns that error into a list of valid keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

STAGES = ("preprocess", "export", "convert", "infer", "postprocess", "evaluate", "eval", "perf", "predict")


class OnError(str, Enum):
    fail = "fail"
    skip = "skip"


class ExportTarget(str, Enum):
    onnxruntime = "onnxruntime"
    ascend = "ascend"


@dataclass
class ExportConfig:
    target: ExportTarget = ExportTarget.onnxruntime
    opset: int | None = None


@dataclass
class AtcConfig:
    soc_version: str = "Ascend310P3"
    precision_mode: str | None = None
    log: str = "error"
    extra: list[str] = field(default_factory=list)
    dynamic_batch: list[int] | None = None


@dataclass
class PinConfig:
    """Per-job resources in parallel sweeps (see :mod:`zoo_core.config.pinning`)."""
    enabled: bool = True
    devices: list[int] | None = None
    cores: int | None = None
    jobs: int | None = None


@dataclass
class ZooSchema:
    model: Any = MISSING
    dataset: Any = MISSING
    backend: Any = MISSING
    stage: Any = MISSING
    batch_size: int = 1
    weights: str | None = None
    model_file: str | None = None
    device_id: int = 0
    num_workers: int = 2
    on_error: OnError = OnError.fail
    allow_skips: bool = False
    resume: bool = False
    save_outputs: bool = False
    progress: bool | None = None
    input: str | None = None
    inputs_dir: str | None = None
    outputs_dir: str | None = None
    dump_dtype: str | None = None
    detections: str | None = None
    work_dir: str = "outputs/${model.name}"
    model_dir: str = "${work_dir}/model"
    export: ExportConfig = field(default_factory=ExportConfig)
    atc: AtcConfig = field(default_factory=AtcConfig)
    pin: PinConfig = field(default_factory=PinConfig)


def register() -> None:
    """Register the schema and zoo's search-path plugin with Hydra (before composing)."""
    from hydra.core.config_store import ConfigStore

    from zoo_core.config.searchpath import register as register_searchpath

    ConfigStore.instance().store(name="zoo_schema", node=ZooSchema, provider="zoo-core")
    register_searchpath()
