"""Ascend ATC command lines: the flags every model shares (REFERENCE 5.2), and the image-size gears of
``--dynamic_image_size`` (planned by :mod:`zoo_core.backends.image_gears`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

    from omegaconf import DictConfig

#: ATC's limit on the number of gears of ``--dynamic_image_size`` (and ``--dynamic_batch_size``), REFERENCE 5.2.
MAX_GEARS = 100

#: Values ATC accepts for ``--precision_mode`` (``atc.precision_mode`` is checked against them): REFERENCE 5.2's five
#: and the newer CANN spellings ATC's ``--precision_mode`` page lists (``cube_fp16in_fp32out`` = ``force_fp32``,
#: ``allow_mix_precision_fp16`` = ``allow_mix_precision``; the bf16 modes are for Atlas A2 parts).
PRECISION_MODES = ("force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision", "force_fp32",
                   "cube_fp16in_fp32out", "allow_mix_precision_fp16", "allow_mix_precision_bf16", "allow_fp32_to_bf16")


def input_shape_arg(shapes: Mapping[str, Sequence[int]], batch: int | list[int], dynamic_hw: bool = False) -> str:
    """``name:N,C,H,W;name2:...``; dynamic gears put ``-1`` in dim 0; ``dynamic_hw`` puts ``-1`` in the
    last two dims of every 3-d (``C,H,W``) input (``--dynamic_image_size``)."""
    n = -1 if isinstance(batch, (list, tuple)) else int(batch)

    def dims(shape: Sequence[int]) -> tuple:
        return (*shape[:-2], -1, -1) if dynamic_hw and len(shape) == 3 else tuple(shape)

    return ";".join(f"{name}:{','.join(str(d) for d in (n, *dims(shape)))}" for name, shape in shapes.items())


def onnx_input_name(onnx_path: str | os.PathLike[str], default: str) -> str:
    """The name of the ONNX model's first graph input that is not an initializer, which ``--input_shape`` must
    name (REFERENCE 5.2: ATC matches the ONNX input names; an unnamed input is ``input.1``); ``default`` when the
    file cannot be read as ONNX (ATC then says why)."""
    try:
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception:  # a missing or unparsable model: ATC's own error names it
        return default
    inits = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    return names[0] if names else default


def dynamic_image_size_arg(image_sizes: Sequence[Sequence[int]]) -> str:
    """``h1,w1;h2,w2;...`` (ATC ``--dynamic_image_size``), the gears in the given order."""
    return ";".join(f"{int(h)},{int(w)}" for h, w in image_sizes)


#: ATC's range for one ``--dynamic_batch_size`` gear (REFERENCE 5.2).
MAX_BATCH_GEAR = 2048


def check_batch_gears(gears: Sequence[int]) -> list[int]:
    """The ``--dynamic_batch_size`` gears as ATC takes them (REFERENCE 5.2: 2 to :data:`MAX_GEARS` gears, each
    in 1..:data:`MAX_BATCH_GEAR`), without repeats; a ConfigError naming ``atc.dynamic_batch`` otherwise."""
    from zoo_core.api.errors import ConfigError

    values = [int(b) for b in gears]
    bad = [b for b in values if not 1 <= b <= MAX_BATCH_GEAR]
    if bad:
        raise ConfigError(f"atc.dynamic_batch={values}: gear {bad[0]} is outside 1..{MAX_BATCH_GEAR} (ATC's range)")
    if len(set(values)) != len(values):
        raise ConfigError(f"atc.dynamic_batch={values}: a gear appears twice")
    if not 2 <= len(values) <= MAX_GEARS:
        raise ConfigError(f"atc.dynamic_batch has {len(values)} gear(s): ATC takes 2 to {MAX_GEARS} "
                          f"(one batch size is a static OM: pass batch_size= instead)")
    return values


def common_args(cfg: DictConfig, onnx_path: str | os.PathLike[str], batch_size: int | list[int], soc_version: str,
                output: str, input_shapes: Mapping[str, Sequence[int]],
                image_sizes: Sequence[Sequence[int]] | None = None) -> list[str]:
    """The flags every ONNX -> OM conversion takes, from ``cfg.atc`` and the arguments.

    ``cfg.atc`` keys used: ``log`` (default ``error``), ``precision_mode`` (None = ATC's default),
    ``extra`` (a list of extra ``--flag=value`` strings, passed literally).

    ``image_sizes`` (the ``atc_args`` hook's argument of that name, ``[[h, w], ...]``): two or more gears
    give ``--input_shape`` with ``-1`` for H and W and ``--dynamic_image_size="h1,w1;h2,w2"`` (at most
    :data:`MAX_GEARS`; not with dynamic-batch gears, ATC refuses the combination); a single size is
    compiled as a static shape.
    """
    atc = cfg.get("atc", {}) or {}
    soc = str(soc_version)
    if not soc.startswith("Ascend"):
        soc = "Ascend" + soc
    sizes = [(int(h), int(w)) for h, w in image_sizes] if image_sizes else []
    if len(sizes) == 1:  # one gear: a static OM of that size
        input_shapes = {k: ((*v[:-2], *sizes[0]) if len(v) == 3 else v) for k, v in input_shapes.items()}
    dynamic_hw = len(sizes) > 1
    if dynamic_hw:
        from zoo_core.api.errors import ConfigError

        if isinstance(batch_size, (list, tuple)):
            raise ConfigError("ATC does not combine --dynamic_image_size with --dynamic_batch_size: "
                              "unset atc.dynamic_batch (the batch is batch_size) or atc.dynamic_image_size")
        if len(sizes) > MAX_GEARS:
            raise ConfigError(f"{len(sizes)} image-size gears: ATC takes at most {MAX_GEARS}")
    args = [
        "--framework=5",
        f"--model={onnx_path}",
        f"--output={output}",
        "--input_format=NCHW",
        f"--input_shape={input_shape_arg(input_shapes, batch_size, dynamic_hw)}",
    ]
    if isinstance(batch_size, (list, tuple)):
        args.append("--dynamic_batch_size=" + ",".join(str(b) for b in check_batch_gears(batch_size)))
    if dynamic_hw:
        args.append(f"--dynamic_image_size={dynamic_image_size_arg(sizes)}")
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
