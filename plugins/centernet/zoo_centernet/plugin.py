"""Hook implementations of the centernet model plugin (entry point zoo.models:centernet).

CenterNet ctdet (DLA-34 + DCNv2) on COCO: fix_res 512x512 letterbox (or keep_res), heads
hm 80 / wh 2 / reg 2 on a stride-4 grid, top-100 decode. The COCO datasets (``coco``,
``coco_sample``) and COCOeval scoring come from zoo-core's dataset API (:mod:`zoo_core.datasets.coco`):
this plugin implements neither ``dataset`` nor ``evaluate``; its class -> category mapping is
``model.category_ids`` (null: the 80 COCO ids). torch is imported only inside the hooks that need it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo_core import hookimpl
from zoo_core.api.config import per_config
from zoo_core.api.errors import ConfigError, ZooError
from zoo_core.api.optional import require_torch
from zoo_core.api.types import TensorSpec
from zoo_core.datasets.coco import category_ids

from .config import SCHEMAS
from .decode import decode_batch
from .oracle import coco_boxes, encode_boxes
from .preprocess import INPUT_NAME, preprocess_image

ZOO_HOOK_API = "1"
ZOO_DATASET_API = "1"
#: The types of every key of conf/model/centernet.yaml and conf/dataset/*.yaml (zoo_core.api.config).
ZOO_CONFIG_SCHEMAS = SCHEMAS


HEAD_NAMES = ("hm", "wh", "reg")
#: This plugin's distribution; ``pip install 'zoo-centernet[torch]'`` adds PyTorch (build / export only).
DIST = "zoo-centernet"
INIT_SEED = 0


def _model_cfg(cfg):
    return cfg.model


def _input_hw(cfg) -> tuple[int, int]:
    m = _model_cfg(cfg)
    return int(m.input_h), int(m.input_w)


def _heads(cfg) -> dict[str, int]:
    return {"hm": int(_model_cfg(cfg).num_classes), "wh": 2, "reg": 2}


@hookimpl
def input_spec(cfg):
    h, w = _input_hw(cfg)
    return [TensorSpec(INPUT_NAME, (3, h, w), "float32")]


@hookimpl
def preprocess(cfg, image, sample):
    m = _model_cfg(cfg)
    return preprocess_image(image, keep_res=bool(m.keep_res), input_hw=_input_hw(cfg),
                            mean=tuple(m.mean), std=tuple(m.std), down_ratio=int(m.down_ratio))


@hookimpl
def build_model(cfg, weights):
    torch = require_torch("building the centernet model", dist=DIST)

    from .dla import build_dla34_ctdet
    from .weights import load_checkpoint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model = build_dla34_ctdet(heads=_heads(cfg), head_conv=int(_model_cfg(cfg).head_conv))
    if weights is not None:
        load_checkpoint(model, weights)
    return model.eval()


@hookimpl
def export(cfg, weights, output, target):
    require_torch(f"exporting the centernet model (export.target={target})", dist=DIST)
    from .export import export_onnx

    model = build_model(cfg, weights)
    opset = (cfg.get("export") or {}).get("opset")
    return export_onnx(model, Path(output), target, dcn_impl=str(_model_cfg(cfg).export.dcn_impl),
                       opset=opset, input_hw=_input_hw(cfg))


@hookimpl
def atc_args(cfg, onnx_path, batch_size, soc_version, output, image_sizes=None):
    """The seed's ATC line at ``model.input_h x input_w``; with ``keep_res`` the image-size gears ``convert``
    planned from the dataset (``atc.dynamic_image_size=true``) instead. ``--input_shape`` names the ONNX's own
    input (``actual_input`` in zoo's export)."""
    from zoo_core.api.atc import common_args, extra_args, onnx_input_name

    from .export import head_out_nodes

    if bool(_model_cfg(cfg).get("keep_res", False)) and not image_sizes:
        raise ConfigError("model.keep_res=true gives every image its own input size: convert with "
                          "atc.dynamic_image_size=true (image-size gears planned from the dataset)")
    h, w = _input_hw(cfg)
    name = onnx_input_name(onnx_path, INPUT_NAME)  # a given model_file= ONNX may name its input otherwise
    args = common_args(cfg, onnx_path, batch_size, soc_version, output, {name: (3, h, w)}, image_sizes)
    nodes = head_out_nodes(str(onnx_path))
    if len(nodes) != len(HEAD_NAMES):
        raise ZooError(f"expected {len(HEAD_NAMES)} head convolutions, found {len(nodes)}", path=onnx_path)
    at = next(i for i, a in enumerate(args) if a.startswith("--input_shape=")) + 1
    args.insert(at, "--out_nodes=" + ";".join(f"{n}:0" for n in nodes))
    return args + extra_args(cfg)


@dataclass(frozen=True)
class _DecodeParams:
    """The config values ``output_spec`` and ``postprocess`` read, taken from ``cfg`` once per run."""

    input_hw: tuple[int, int]
    down_ratio: int
    heads: tuple[tuple[str, int], ...]
    k: int


@per_config
def decode_params(cfg) -> _DecodeParams:
    """``cfg``'s decode parameters, read through OmegaConf once per cfg object."""
    m = _model_cfg(cfg)
    params = _DecodeParams(input_hw=_input_hw(cfg), down_ratio=int(m.down_ratio),
                           heads=tuple(_heads(cfg).items()), k=int(m.K))
    return params


@hookimpl
def output_spec(cfg, meta):
    p = decode_params(cfg)
    if meta and meta.get("input_shape"):
        _, h, w = (int(v) for v in meta["input_shape"])
    else:
        h, w = p.input_hw
    r = p.down_ratio
    return [TensorSpec(name, (ch, h // r, w // r), "float32") for name, ch in p.heads]


@hookimpl
def postprocess(cfg, outputs, metas):
    hm, wh, reg = (np.asarray(o) for o in outputs)
    return decode_batch(hm, wh, reg, metas, K=decode_params(cfg).k)


@hookimpl
def oracle_outputs(cfg, sample, meta, dataset):
    """The sample's non-crowd COCO boxes encoded as the heads a perfect CenterNet would output."""
    boxes, classes = coco_boxes(dataset.annotations(sample.key), category_ids(_model_cfg(cfg)))
    return encode_boxes(boxes, classes, meta, num_classes=int(_model_cfg(cfg).num_classes))



@hookimpl
def references(cfg):
    """CenterNet's published COCO val2017 APs (fix_res 36.6, keep_res 37.4; :mod:`zoo_centernet.references`)."""
    from .references import references as known

    return known()
