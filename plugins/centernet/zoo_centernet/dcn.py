"""Modulated deformable convolution (DCNv2) in pure PyTorch, with export-friendly forward modes.

Semantics (REFERENCE 2.3, DCNv2 ``modulated_deformable_im2col``): ``conv_offset_mask(x)`` gives
``dg * 3 * K`` channels (``K = kh * kw``); the first ``dg * 2 * K`` are offsets, interleaved per tap
``k = i * kw + j`` as channel ``2k`` = dy, ``2k + 1`` = dx; the last ``dg * K`` go through a sigmoid
to give the masks. Tap ``k`` of output ``(ho, wo)`` samples
``py = ho * stride - pad + i * dil + dy``, ``px = wo * stride - pad + j * dil + dx``; a sample is
read only when ``-1 < py < H`` and ``-1 < px < W``, bilinearly with out-of-map corners counted as 0,
then multiplied by the mask; ``out = W.reshape(O, C * K) @ columns + bias``.

Forward modes (:data:`MODES`), chosen per module (``DCN.impl``) or for a block of code
(:func:`dcn_mode`):

* ``pure``: gather-based eager reference (default);
* ``gridsample``: one ``grid_sample`` over all taps plus a 1x1 conv (ONNX GridSample, opset >= 16);
* ``deformconv``: a ``torch.library`` custom op exported as ONNX ``DeformConv`` (opset 19);
* ``ascend``: a custom op exported as the Ascend ``DeformableConv2D`` node (default domain) with the
  offset input re-laid out as ``[dx x K, dy x K, sigmoid(mask) x K]``. Its eager result equals
  ``pure``; its ONNX graph only converts with ATC.
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("pure", "gridsample", "deformconv", "ascend")

_state = threading.local()


def current_mode() -> str:
    """The forward mode a :class:`DCN` with ``impl=None`` uses right now."""
    return getattr(_state, "mode", "pure")


@contextlib.contextmanager
def dcn_mode(mode: str) -> Iterator[None]:
    """Run every :class:`DCN` whose ``impl`` is ``None`` in ``mode`` inside the ``with`` block."""
    _check_mode(mode)
    previous = current_mode()
    _state.mode = mode
    try:
        yield
    finally:
        _state.mode = previous


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown DCN mode {mode!r}; expected one of {', '.join(MODES)}")


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


def _tap_positions(offset: torch.Tensor, dg: int, kh: int, kw: int, stride, padding, dilation):
    """Sampling coordinates ``(py, px)``, each ``(N, dg, K, Ho, Wo)``, from interleaved offsets.

    The grid size is read from ``offset``'s shape without converting it to Python ints, so an ONNX
    trace records it as shape arithmetic (``Shape`` -> ``Range``, ``Reshape`` by computed sizes): the
    exported graph takes any input height and width, not only the size it was traced at. (Avoid
    ``unflatten`` here: the TorchScript exporter gives its result the traced, static spatial sizes,
    and every later ``Shape`` of it is folded into a constant.)
    """
    ho, wo = offset.shape[2], offset.shape[3]
    k = kh * kw
    off = offset.reshape(-1, dg, k, 2, ho, wo)
    dev, dt = offset.device, offset.dtype
    tap_i = torch.arange(kh, device=dev, dtype=dt).repeat_interleave(kw) * dilation[0]
    tap_j = torch.arange(kw, device=dev, dtype=dt).repeat(kh) * dilation[1]
    row = torch.arange(ho, device=dev).to(dt) * stride[0] - padding[0]
    col = torch.arange(wo, device=dev).to(dt) * stride[1] - padding[1]
    base_y = row.view(1, 1, 1, -1, 1) + tap_i.view(1, 1, k, 1, 1)
    base_x = col.view(1, 1, 1, 1, -1) + tap_j.view(1, 1, k, 1, 1)
    return base_y + off[:, :, :, 0], base_x + off[:, :, :, 1]


def deform_conv2d_pure(x, offset, mask, weight, bias, stride=1, padding=0, dilation=1, deformable_groups=1):
    """Modulated deformable conv by explicit bilinear gathers (the eager reference).

    :param x: ``(N, C, H, W)``.
    :param offset: ``(N, dg * 2 * K, Ho, Wo)``, interleaved ``(dy, dx)`` per tap.
    :param mask: ``(N, dg * K, Ho, Wo)``, already passed through the sigmoid.
    :param weight: ``(O, C, kh, kw)``; ``bias``: ``(O,)`` or ``None``.
    :returns: ``(N, O, Ho, Wo)``.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    dg = int(deformable_groups)
    cg = c // dg
    k = kh * kw
    ho, wo = offset.shape[-2:]
    py, px = _tap_positions(offset, dg, kh, kw, stride, padding, dilation)
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0 = torch.floor(py)
    x0 = torch.floor(px)
    ly, lx = py - y0, px - x0
    hy, hx = 1 - ly, 1 - lx
    y0 = y0.long()
    x0 = x0.long()
    modulation = mask.reshape(n, dg, k, ho, wo) * inside.to(x.dtype)

    # Rows of ``table`` are (batch, group, pixel); a gather per corner reads Cg channels at once.
    table = x.reshape(n, dg, cg, h * w).permute(0, 1, 3, 2).reshape(n * dg * h * w, cg)
    plane = (torch.arange(n * dg, device=x.device) * (h * w)).view(n, dg, 1, 1, 1)
    cols = None
    for dy, dx, wgt in ((0, 0, hy * hx), (0, 1, hy * lx), (1, 0, ly * hx), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        idx = plane + yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)
        coef = (wgt * modulation * ok.to(x.dtype)).unsqueeze(-1)
        term = table.index_select(0, idx.reshape(-1)).view(n, dg, k, ho, wo, cg) * coef
        cols = term if cols is None else cols + term
    assert cols is not None  # the four bilinear corners were added
    # (N, dg, K, Ho, Wo, Cg) -> (N, Ho*Wo, K * C) with column k * C + c, matching the permuted weight.
    cols = cols.permute(0, 3, 4, 2, 1, 5).reshape(n, ho * wo, k * c)
    wmat = weight.permute(0, 2, 3, 1).reshape(o, k * c)
    out = cols @ wmat.t()
    if bias is not None:
        out = out + bias
    return out.permute(0, 2, 1).reshape(n, o, ho, wo)


def deform_conv2d_gridsample(x, offset, mask, weight, bias, stride=1, padding=0, dilation=1, deformable_groups=1):
    """The same operator as one ``grid_sample`` (bilinear, zero padding) over all taps plus a 1x1 conv.

    Exports to standard ONNX (GridSample, opset >= 16). Neither the batch nor the spatial dimensions
    are baked in: ``H``, ``W``, ``Ho`` and ``Wo`` are traced as shape values, so one graph serves
    every input size.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    c = int(x.shape[1])
    h, w = x.shape[2], x.shape[3]
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    dg = int(deformable_groups)
    cg = c // dg
    k = kh * kw
    ho, wo = offset.shape[2], offset.shape[3]
    py, px = _tap_positions(offset, dg, kh, kw, stride, padding, dilation)
    # align_corners=False normalisation: pixel p <-> (2p + 1) / size - 1 (also valid for size 1).
    gx = (2 * px + 1) / w - 1
    gy = (2 * py + 1) / h - 1
    grid = torch.stack((gx, gy), dim=-1).reshape(-1, k * ho, wo, 2)
    sampled = F.grid_sample(
        x.reshape(-1, cg, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    cols = sampled.reshape(-1, dg, cg, k, ho, wo) * mask.reshape(-1, dg, 1, k, ho, wo)
    cols = cols.reshape(-1, c * k, ho, wo)
    return F.conv2d(cols, weight.reshape(-1, c * k, 1, 1), bias)


def to_ascend_offsets(offset_mask: torch.Tensor, taps: int = 9) -> torch.Tensor:
    """``conv_offset_mask`` output -> the Ascend ``DeformableConv2D`` offsets ``[dx xK, dy xK, sigmoid(m) xK]``."""
    dy = offset_mask[:, 0 : 2 * taps : 2]
    dx = offset_mask[:, 1 : 2 * taps : 2]
    return torch.cat((dx, dy, torch.sigmoid(offset_mask[:, 2 * taps : 3 * taps])), dim=1)


def from_ascend_offsets(ascend_offset: torch.Tensor, taps: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`to_ascend_offsets`: interleaved ``(dy, dx)`` offsets and the (sigmoid) mask."""
    n, _, ho, wo = ascend_offset.shape
    dx = ascend_offset[:, :taps]
    dy = ascend_offset[:, taps : 2 * taps]
    offset = torch.stack((dy, dx), dim=2).reshape(n, 2 * taps, ho, wo)
    return offset, ascend_offset[:, 2 * taps : 3 * taps]


_ops: dict[str, Callable[..., torch.Tensor]] = {}
_ops_lock = threading.Lock()


def _out_shape(x, weight, offset) -> list[int]:
    return [x.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]]


def _custom_ops() -> dict[str, Callable[..., torch.Tensor]]:
    """Define (once per process) the custom ops used by the ``deformconv`` and ``ascend`` modes."""
    with _ops_lock:
        if _ops:
            return _ops
        lib = "zoo_centernet"

        @torch.library.custom_op(f"{lib}::modulated_deform_conv2d", mutates_args=())
        def modulated_deform_conv2d(
            x: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
            bias: torch.Tensor, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, dg: int,
        ) -> torch.Tensor:
            return deform_conv2d_pure(x, offset, mask, weight, bias, (sh, sw), (ph, pw), (dh, dw), dg)

        @modulated_deform_conv2d.register_fake
        def _(x, weight, offset, mask, bias, sh, sw, ph, pw, dh, dw, dg):
            return x.new_empty(_out_shape(x, weight, offset))

        @torch.library.custom_op(f"{lib}::ascend_deformable_conv2d", mutates_args=())
        def ascend_deformable_conv2d(
            x: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor, bias: torch.Tensor,
            sh: int, sw: int, ph: int, pw: int, dh: int, dw: int,
        ) -> torch.Tensor:
            interleaved, mask = from_ascend_offsets(offset, weight.shape[2] * weight.shape[3])
            return deform_conv2d_pure(x, interleaved, mask, weight, bias, (sh, sw), (ph, pw), (dh, dw), 1)

        @ascend_deformable_conv2d.register_fake
        def _(x, weight, offset, bias, sh, sw, ph, pw, dh, dw):
            return x.new_empty(_out_shape(x, weight, offset))

        from torch.onnx import register_custom_op_symbolic, symbolic_helper

        @symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i")
        def deformconv_symbolic(g, x, weight, offset, mask, bias, sh, sw, ph, pw, dh, dw, dg):
            return g.op(
                "DeformConv", x, weight, offset, bias, mask,
                strides_i=[sh, sw], pads_i=[ph, pw, ph, pw], dilations_i=[dh, dw],
                group_i=1, offset_group_i=dg,
            )

        @symbolic_helper.parse_args("v", "v", "v", "v", "i", "i", "i", "i", "i", "i")
        def ascend_symbolic(g, x, weight, offset, bias, sh, sw, ph, pw, dh, dw):
            return g.op(
                "DeformableConv2D", x, weight, offset, bias,
                strides_i=[sh, sw], pads_i=[ph, pw], dilations_i=[dh, dw],
                groups_i=1, deformable_groups_i=1,
            )

        register_custom_op_symbolic(f"{lib}::modulated_deform_conv2d", deformconv_symbolic, 19)
        register_custom_op_symbolic(f"{lib}::ascend_deformable_conv2d", ascend_symbolic, 9)
        _ops["deformconv"] = modulated_deform_conv2d
        _ops["ascend"] = ascend_deformable_conv2d
        return _ops


class DCN(nn.Module):
    """DCNv2 layer: ``conv_offset_mask`` predicts offsets and masks, then a modulated deformable conv.

    Parameter names match CenterNet's DCNv2 (``weight``, ``bias``, ``conv_offset_mask.{weight,bias}``).
    ``impl`` (``None`` = :func:`current_mode`) picks the forward mode, see :data:`MODES`.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation=1, deformable_groups=1):
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.deformable_groups = int(deformable_groups)
        if self.in_channels % self.deformable_groups:
            raise ValueError("in_channels must be divisible by deformable_groups")
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, kh, kw))
        self.bias = nn.Parameter(torch.empty(self.out_channels))
        self.conv_offset_mask = nn.Conv2d(
            self.in_channels, self.deformable_groups * 3 * kh * kw, self.kernel_size,
            stride=self.stride, padding=self.padding, dilation=self.dilation, bias=True,
        )
        self.impl: str | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DCNv2 init: weight U(+-1/sqrt(C*kh*kw)), zero bias, zero offset/mask conv."""
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset_mask.weight)
        offset_bias = self.conv_offset_mask.bias
        assert offset_bias is not None  # built with bias=True
        nn.init.zeros_(offset_bias)

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.impl or current_mode()
        om = self.conv_offset_mask(x)
        k2 = self.deformable_groups * 2 * self.taps
        args = (self.stride, self.padding, self.dilation)
        if mode == "ascend":
            if self.deformable_groups != 1:
                raise ValueError("the Ascend DeformableConv2D export supports deformable_groups=1 only")
            offset = to_ascend_offsets(om, self.taps)
            return _custom_ops()["ascend"](x, self.weight, offset, self.bias, *args[0], *args[1], *args[2])
        offset, mask = om[:, :k2], torch.sigmoid(om[:, k2:])
        if mode == "pure":
            return deform_conv2d_pure(x, offset, mask, self.weight, self.bias, *args, self.deformable_groups)
        if mode == "gridsample":
            return deform_conv2d_gridsample(x, offset, mask, self.weight, self.bias, *args, self.deformable_groups)
        if mode == "deformconv":
            return _custom_ops()["deformconv"](
                x, self.weight, offset, mask, self.bias, *args[0], *args[1], *args[2], self.deformable_groups
            )
        _check_mode(mode)
        raise AssertionError(mode)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, deformable_groups={self.deformable_groups}"
        )
