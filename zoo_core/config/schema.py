"""Structured-config schema of the run-level keys (registered in Hydra's ConfigStore as ``zoo_schema``).

Model, dataset, backend and stage sections come from config groups; Hydra's struct mode makes any
unknown key an error, and :mod:`zoo_core.config.validate` turns that error into a list of valid keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from zoo_core.api.config import in_range

STAGES = ("preprocess", "export", "convert", "infer", "postprocess", "evaluate", "eval", "perf", "predict", "compare",
          "quantize")


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
    dynamic_image_size: bool = False        # convert: ATC --dynamic_image_size gears from the dataset's input sizes
    max_image_gears: int = 100              # at most this many image-size gears (ATC's limit is 100)
    image_gear_policy: str = "pad"          # more sizes than gears: pad (sizes up into larger gears) | refuse


@dataclass
class PinConfig:
    """Per-job resources in parallel sweeps (see :mod:`zoo_core.config.pinning`)."""
    enabled: bool = True
    devices: list[int] | None = None
    cores: int | None = None
    jobs: int | None = None


@dataclass
class CompareConfig:
    """``stage=compare`` (docs/compare.md): two backends on the same preprocessed images."""
    reference: str = "torch"
    candidate: str = "onnxruntime"
    reference_model: str | None = None   # torch: a checkpoint; replay: a dump dir; else an .onnx / .om
    candidate_model: str | None = None   # default: model_file
    atol: float = 1e-4
    rtol: float = 1e-2                      # of max |reference| of the output, per image
    min_cosine: float = 0.999
    iou: float = 0.99                       # detections match at this IoU (and the same class)
    metrics: bool = True                    # score both detection sets when the dataset has ground truth
    layers: bool = False
    layer_images: int = 1
    candidate_dump: str | None = None    # acl: msaccucmp-converted .npy dump of the first image
    plot_points: int = 2000                 # values per output and image kept for the scatter plot
    allow_same: bool = False                # compare a model with itself (refused otherwise: it proves nothing)


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class QuantType(str, Enum):
    qint8 = "qint8"
    quint8 = "quint8"


@dataclass
class QuantizeConfig:
    """``quantize`` group (docs/quantize.md): ``none`` (FP32) or ``int8`` (static post-training quantization)."""
    name: str = "none"                      # none | int8: int8 makes eval/perf/predict/compare use the INT8 model
    calibration_images: int = 32            # drawn from the whole dataset, spread over it, seeded
    method: CalibrationMethod = CalibrationMethod.minmax
    seed: int = 0
    per_channel: bool = True                # per-output-channel weight scales
    activation_type: QuantType = QuantType.quint8   # U8S8: what onnxruntime's x86 int8 kernels are fastest at
    weight_type: QuantType = QuantType.qint8
    percentile: float = 99.999              # method=percentile: the histogram percentile kept
    preprocess: bool = True                 # onnxruntime's quant_pre_process first (folds BN into Conv)
    exclude_nodes: list[str] = field(default_factory=list)      # nodes kept in FP32 (name, or a tensor they write)
    exclude_op_types: list[str] = field(default_factory=list)   # + model.quantize_exclude_op_types


@dataclass
class ZooSchema:
    model: Any = MISSING
    dataset: Any = MISSING
    backend: Any = MISSING
    stage: Any = MISSING
    batch_size: int = 1
    weights: str | None = None
    model_file: str | None = None
    device_id: int = in_range(0, 0)          # the NPU's index (>= 0); backend.device_id follows it
    num_workers: int = 2
    worker_nice: int = 10                   # added to each preprocess worker's nice value (0: same as zoo)
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
    bootstrap: int = 0                      # eval/evaluate: 95% intervals from N image resamples (0: off)
    bootstrap_seed: int = 0
    gate: bool = False                      # eval/evaluate: exit 1 unless the plugin's references are reproduced
    work_dir: str = "outputs/${model.name}"
    model_dir: str = "${work_dir}/model"
    export: ExportConfig = field(default_factory=ExportConfig)
    atc: AtcConfig = field(default_factory=AtcConfig)
    pin: PinConfig = field(default_factory=PinConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)


def register() -> None:
    """Register the schema and zoo's search-path plugin with Hydra (before composing)."""
    from hydra.core.config_store import ConfigStore

    from zoo_core.config.searchpath import register as register_searchpath

    ConfigStore.instance().store(name="zoo_schema", node=ZooSchema, provider="zoo-core")
    register_searchpath()
