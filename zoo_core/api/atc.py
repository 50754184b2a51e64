"""Ascend ATC command lines: the flags every model shares (REFERENCE 5.2)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

    from omegaconf import DictConfig

#: Values ATC accepts for ``--precision_mode`` (``atc.precision_mode`` is checked against them).
PRECISION_MODES = ("force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision", "force_fp32")


def input_shape_arg(shapes: Mapping[str, Sequence[int]], batch: int | list[int]) -> str:
    """``name:N,C,H,W;name2:...``; dynamic gears put ``-1`` in dim 0."""
    n = -1 if isinstance(batch, (list, tuple)) else int(batch)
    return ";".join(f"{name}:{','.join(str(d) for d in (n, *shape))}" for name, shape in shapes.items())


def common_args(cfg: DictConfig, onnx_path: str | os.PathLike[str], batch_size: int | list[int], soc_version: str,
                output: str, input_shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """The flags every ONNX -> OM conversion takes, from ``cfg.atc`` and the arguments.

    ``cfg.atc`` keys used: ``log`` (default ``error``), ``precision_mode`` (None = ATC's default),
    ``extra`` (a list of extra ``--flag=value`` strings, passed literally).
    """
    atc = cfg.get("atc", {}) or {}
    soc = str(soc_version)
    if not soc.startswith("Ascend"):
        soc = "Ascend" + soc
    args = [
        "--framework=5",
        f"--model={onnx_path}",
        f"--output={output}",
        "--input_format=NCHW",
        f"--input_shape={input_shape_arg(input_shapes, batch_size)}",
    ]
    if isinstance(batch_size, (list, tuple)):
        args.append("--dynamic_batch_size=" + ",".join(str(int(b)) for b in batch_size))
    args.append(f"--soc_version={soc}")
    args.append(f"--log={atc.get('log') or 'error'}")
    pm = atc.get("precision_mode")
    if pm:
        if pm not in PRECISION_MODES:
            from zoo_core.api.errors import ConfigError

            raise ConfigError(f"atc.precision_mode={pm!r} is not one of {', '.join(PRECISION_MODES)}")
        args.append(f"--precision_mode={pm}")
    return args


def extra_args(cfg: DictConfig) -> list[str]:
    """``cfg.atc.extra`` as strings, passed to ATC literally (append after the model's own flags)."""
    atc = cfg.get("atc", {}) or {}
    return [str(x) for x in (atc.get("extra") or [])]
