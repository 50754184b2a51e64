"""Load the Star-Clouds ``centerface.onnx`` weights into ``build_starclouds_model()`` (REFERENCE 3.2).

The ONNX graph is walked in node order (topological) and paired with the torch network's
convolutions in execution order (recorded with forward hooks on a tiny dummy input); each pair is
checked for kind, shape and groups, so no initializer name or number is hard-coded:

* ONNX conv with a folded bias, torch conv + BN: the weight goes into the conv, the bias into the
  BN's beta, and the BN becomes an identity (gamma 1, mean 0, var 1 - eps), so it outputs x + beta.
* ONNX (transposed) conv followed by a BatchNormalization (the three deconvs): conv weight and BN
  statistics are copied as they are.
* ONNX conv with a bias, torch conv with a bias (the heads): copied.

The outputs keep the family-A conventions: heatmap, scale (h, w), offset (y, x), landmarks (y, x).
"""
from __future__ import annotations

from pathlib import Path

from zoo_core.api.errors import ZooError

_CONV_OPS = ("Conv", "ConvTranspose")


def _onnx_layers(onnx_path: Path) -> list[dict]:
    """Every Conv / ConvTranspose of the graph in node order, with its initializers and next BN."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(onnx_path))
    except Exception as e:
        raise ZooError(f"not an ONNX model ({type(e).__name__}: {e})", path=onnx_path) from e
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    layers = []
    for node in graph.node:
        if node.op_type not in _CONV_OPS:
            continue
        names = list(node.input)
        if len(names) < 2 or names[1] not in inits:
            raise ZooError(f"{node.op_type} node {node.name or node.output[0]!r} has no weight initializer",
                           path=onnx_path)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        layer = {
            "op": node.op_type,
            "output": node.output[0],
            "weight": inits[names[1]],
            "bias": inits[names[2]] if len(names) > 2 and names[2] else None,
            "group": int(attrs.get("group", 1)),
            "bn": None,
        }
        nxt = consumers.get(node.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "BatchNormalization":
            bn = nxt[0]
            bn_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in bn.attribute}
            gamma, beta, mean, var = (inits[n] for n in bn.input[1:5])
            layer["bn"] = {"weight": gamma, "bias": beta, "running_mean": mean, "running_var": var,
                           "eps": float(bn_attrs.get("epsilon", 1e-5))}
        layers.append(layer)
    return layers


def _torch_layers(model) -> list[tuple]:
    """``(conv, bn or None)`` for every Conv2d / ConvTranspose2d in forward execution order."""
    import torch
    from torch import nn

    calls: list = []
    handles = [m.register_forward_hook(lambda mod, _i, _o: calls.append(mod))
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for i, mod in enumerate(calls):
        if isinstance(mod, nn.BatchNorm2d):
            continue
        nxt = calls[i + 1] if i + 1 < len(calls) else None
        pairs.append((mod, nxt if isinstance(nxt, nn.BatchNorm2d) else None))
    return pairs


def load_starclouds_weights(model, onnx_path: str | Path):
    """Copy the Star-Clouds ONNX weights into ``model`` (a ``build_starclouds_model()``), in place.

    :returns: ``model`` in eval mode.
    :raises ZooError: the model is not the ReLU / full-deconv / width-24 variant, or the graph does
        not pair up with it (layer count, kind, shape or groups differ).
    """
    import torch
    from torch import nn

    onnx_path = Path(onnx_path)
    if (getattr(model, "activation", None), getattr(model, "deconv", None)) != ("relu", "full"):
        raise ZooError("the Star-Clouds weights need the ReLU / full-deconv network "
                       "(build_starclouds_model()); ReLU6 or depthwise deconvs change the outputs",
                       path=onnx_path)
    model.eval()
    src = _onnx_layers(onnx_path)
    dst = _torch_layers(model)
    if len(src) != len(dst):
        raise ZooError(f"layer count differs: ONNX has {len(src)} conv layers, the network {len(dst)}",
                       path=onnx_path)
    with torch.no_grad():
        for k, (layer, (conv, bn)) in enumerate(zip(src, dst)):
            kind = "ConvTranspose" if isinstance(conv, nn.ConvTranspose2d) else "Conv"
            where = f"conv layer #{k} (ONNX output {layer['output']!r})"
            if kind != layer["op"] or tuple(conv.weight.shape) != layer["weight"].shape \
                    or conv.groups != layer["group"]:
                raise ZooError(
                    f"{where}: ONNX {layer['op']} {layer['weight'].shape} groups {layer['group']} does not match "
                    f"torch {kind} {tuple(conv.weight.shape)} groups {conv.groups}", path=onnx_path)
            conv.weight.copy_(torch.from_numpy(layer["weight"]))
            if layer["bn"] is not None:
                if bn is None or layer["bias"] is not None:
                    raise ZooError(f"{where}: BatchNormalization layout does not match the network", path=onnx_path)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, name).copy_(torch.from_numpy(layer["bn"][name]))
                bn.eps = layer["bn"]["eps"]
            elif bn is not None:
                if layer["bias"] is None:
                    raise ZooError(f"{where}: expected a BN-folded conv with a bias", path=onnx_path)
                bn.weight.fill_(1.0)
                bn.bias.copy_(torch.from_numpy(layer["bias"]))
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            else:
                if (conv.bias is None) != (layer["bias"] is None):
                    raise ZooError(f"{where}: bias presence differs", path=onnx_path)
                if conv.bias is not None:
                    conv.bias.copy_(torch.from_numpy(layer["bias"]))
    return model


def starclouds_torch_model(onnx_path: str | Path):
    """``build_starclouds_model()`` with the weights of the Star-Clouds ONNX at ``onnx_path``."""
    from .mobilenet_fpn import build_starclouds_model

    return load_starclouds_weights(build_starclouds_model(), onnx_path)
