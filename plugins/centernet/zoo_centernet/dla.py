"""DLA-34 backbone, DLAUp / IDAUp neck with DCN, and the CenterNet ctdet heads (REFERENCE 2.3).

Module and parameter names reproduce CenterNet's ``DLASeg`` state dict exactly (398 entries for
``heads={'hm': 80, 'wh': 2, 'reg': 2}``, ``head_conv=256``), so the released checkpoint loads 1:1
once ``base.fc.*`` is dropped. The model is always built without ImageNet weights: nothing is ever
downloaded.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .dcn import DCN

DLA34_LEVELS = (1, 1, 1, 2, 2, 1)
DLA34_CHANNELS = (16, 32, 64, 128, 256, 512)
CTDET_HEADS = {"hm": 80, "wh": 2, "reg": 2}
HM_BIAS_INIT = -2.19


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.1)


class BasicBlock(nn.Module):
    """conv3x3(stride) - BN - ReLU - conv3x3 - BN, plus the residual, then ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, bias=False, dilation=dilation)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=dilation, bias=False, dilation=dilation)
        self.bn2 = _bn(planes)

    def forward(self, x, residual=None):
        if residual is None:
            residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Root(nn.Module):
    """1x1 conv over the channel concat of its inputs, BN, ReLU (no residual in DLA-34)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, bias=False,
                              padding=(kernel_size - 1) // 2)
        self.bn = _bn(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, *xs):
        return self.relu(self.bn(self.conv(torch.cat(xs, 1))))


class Tree(nn.Module):
    """A DLA aggregation tree of ``levels`` depth built from :class:`BasicBlock`."""

    def __init__(self, levels: int, in_channels: int, out_channels: int, stride: int = 1,
                 level_root: bool = False, root_dim: int = 0):
        super().__init__()
        if root_dim == 0:
            root_dim = 2 * out_channels
        if level_root:
            root_dim += in_channels
        self.tree1: nn.Module
        self.tree2: nn.Module
        if levels == 1:
            self.tree1 = BasicBlock(in_channels, out_channels, stride)
            self.tree2 = BasicBlock(out_channels, out_channels, 1)
            self.root = Root(root_dim, out_channels)
        else:
            self.tree1 = Tree(levels - 1, in_channels, out_channels, stride, root_dim=0)
            self.tree2 = Tree(levels - 1, out_channels, out_channels, 1, root_dim=root_dim + out_channels)
        self.level_root = level_root
        self.levels = levels
        self.downsample = nn.MaxPool2d(stride, stride=stride) if stride > 1 else None
        self.project = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=1, bias=False), _bn(out_channels))
            if in_channels != out_channels else None
        )

    def forward(self, x, residual=None, children=None):
        children = [] if children is None else children
        bottom = self.downsample(x) if self.downsample is not None else x
        residual = self.project(bottom) if self.project is not None else bottom
        if self.level_root:
            children.append(bottom)
        x1 = self.tree1(x, residual)
        if self.levels == 1:
            x2 = self.tree2(x1)
            return self.root(x2, x1, *children)
        children.append(x1)
        return self.tree2(x1, children=children)


def _conv_level(inplanes: int, planes: int, convs: int, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(inplanes, planes, 3, stride=stride if i == 0 else 1, padding=1, bias=False),
            _bn(planes),
            nn.ReLU(inplace=True),
        ]
        inplanes = planes
    return nn.Sequential(*layers)


class DLA(nn.Module):
    """DLA backbone; ``forward`` returns the six level outputs (strides 1, 2, 4, 8, 16, 32)."""

    def __init__(self, levels: Sequence[int] = DLA34_LEVELS, channels: Sequence[int] = DLA34_CHANNELS):
        super().__init__()
        self.channels = list(channels)
        self.base_layer = nn.Sequential(
            nn.Conv2d(3, channels[0], 7, stride=1, padding=3, bias=False), _bn(channels[0]), nn.ReLU(inplace=True)
        )
        self.level0 = _conv_level(channels[0], channels[0], levels[0])
        self.level1 = _conv_level(channels[0], channels[1], levels[1], stride=2)
        self.level2 = Tree(levels[2], channels[1], channels[2], 2, level_root=False)
        self.level3 = Tree(levels[3], channels[2], channels[3], 2, level_root=True)
        self.level4 = Tree(levels[4], channels[3], channels[4], 2, level_root=True)
        self.level5 = Tree(levels[5], channels[4], channels[5], 2, level_root=True)

    def forward(self, x):
        x = self.base_layer(x)
        out = []
        for i in range(6):
            x = getattr(self, f"level{i}")(x)
            out.append(x)
        return out


class DeformConv(nn.Module):
    """3x3 DCN followed by BN and ReLU (``actf``); ``actf`` is registered first, as in CenterNet."""

    def __init__(self, chi: int, cho: int):
        super().__init__()
        self.actf = nn.Sequential(_bn(cho), nn.ReLU(inplace=True))
        self.conv = DCN(chi, cho, kernel_size=(3, 3), stride=1, padding=1, dilation=1, deformable_groups=1)

    def forward(self, x):
        return self.actf(self.conv(x))


def _fill_up_weights(up: nn.ConvTranspose2d) -> None:
    """Bilinear upsampling kernel copied to every channel."""
    w = up.weight.data
    f = math.ceil(w.size(2) / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    for i in range(w.size(2)):
        for j in range(w.size(3)):
            w[0, 0, i, j] = (1 - abs(i / f - c)) * (1 - abs(j / f - c))
    w[1:, 0] = w[0, 0]


class IDAUp(nn.Module):
    """Iterative deep aggregation: ``layers[i] = node(up(proj(layers[i])) + layers[i-1])``, in place."""

    def __init__(self, o: int, channels: Sequence[int], up_f: Sequence[int]):
        super().__init__()
        for i in range(1, len(channels)):
            f = int(up_f[i])
            up = nn.ConvTranspose2d(o, o, f * 2, stride=f, padding=f // 2, output_padding=0, groups=o, bias=False)
            _fill_up_weights(up)
            setattr(self, f"proj_{i}", DeformConv(int(channels[i]), o))
            setattr(self, f"up_{i}", up)
            setattr(self, f"node_{i}", DeformConv(o, o))

    def forward(self, layers: list, startp: int, endp: int) -> None:
        for i in range(startp + 1, endp):
            j = i - startp
            up = getattr(self, f"up_{j}")(getattr(self, f"proj_{j}")(layers[i]))
            layers[i] = getattr(self, f"node_{j}")(up + layers[i - 1])


class DLAUp(nn.Module):
    """Runs ``ida_0..`` from the deepest level up; returns ``[64@1/4, 128@1/8, 256@1/16, 512@1/32]`` for DLA-34."""

    def __init__(self, startp: int, channels: Sequence[int], scales: Sequence[int]):
        super().__init__()
        self.startp = startp
        channels = list(channels)
        in_channels = list(channels)
        scales = [int(s) for s in scales]
        for i in range(len(channels) - 1):
            j = len(channels) - i - 2
            setattr(self, f"ida_{i}", IDAUp(channels[j], in_channels[j:], [s // scales[j] for s in scales[j:]]))
            scales[j + 1:] = [scales[j]] * (len(scales) - j - 1)
            in_channels[j + 1:] = [channels[j]] * (len(in_channels) - j - 1)

    def forward(self, layers: list) -> list:
        out = [layers[-1]]
        layers = list(layers)
        for i in range(len(layers) - self.startp - 1):
            getattr(self, f"ida_{i}")(layers, len(layers) - i - 2, len(layers))
            out.insert(0, layers[-1])
        return out


def _head(in_channels: int, head_conv: int, classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, head_conv, 3, padding=1, bias=True),
        nn.ReLU(inplace=True),
        nn.Conv2d(head_conv, classes, 1, stride=1, padding=0, bias=True),
    )


class DLASeg(nn.Module):
    """CenterNet DLA-34 detector (``down_ratio`` 4, ``last_level`` 5, ``final_kernel`` 1).

    ``forward(x)`` returns a tuple of head outputs in ``heads`` order, e.g. ``(hm, wh, reg)``
    with ``hm`` as raw logits (no sigmoid), each ``(N, C, H/4, W/4)``.
    """

    first_level = 2
    last_level = 5

    def __init__(self, heads: Mapping[str, int], head_conv: int = 256):
        super().__init__()
        if head_conv <= 0:
            raise ValueError("head_conv must be positive (CenterNet ctdet uses 256)")
        self.heads = dict(heads)
        self.base = DLA()
        channels = self.base.channels
        fl, ll = self.first_level, self.last_level
        self.dla_up = DLAUp(fl, channels[fl:], [2 ** i for i in range(len(channels) - fl)])
        self.ida_up = IDAUp(channels[fl], channels[fl:ll], [2 ** i for i in range(ll - fl)])
        for name, classes in self.heads.items():
            head = _head(channels[fl], head_conv, int(classes))
            if name == "hm":
                last = head[-1]
                assert isinstance(last, nn.Conv2d) and last.bias is not None
                nn.init.constant_(last.bias, HM_BIAS_INIT)
            else:
                for m in head.modules():
                    if isinstance(m, nn.Conv2d) and m.bias is not None:
                        nn.init.zeros_(m.bias)
            setattr(self, name, head)

    def features(self, x) -> dict[str, torch.Tensor]:
        """Intermediate tensors: ``base_level{0..5}``, ``dla_up_{0..3}`` and ``head_input``."""
        levels = self.base(x)
        up = self.dla_up(levels)
        y = [up[i].clone() for i in range(self.last_level - self.first_level)]
        self.ida_up(y, 0, len(y))
        feats = {f"base_level{i}": t for i, t in enumerate(levels)}
        feats.update({f"dla_up_{i}": t for i, t in enumerate(up)})
        feats["head_input"] = y[-1]
        return feats

    def forward(self, x):
        levels = self.base(x)
        up = self.dla_up(levels)
        y = [up[i].clone() for i in range(self.last_level - self.first_level)]
        self.ida_up(y, 0, len(y))
        return tuple(getattr(self, name)(y[-1]) for name in self.heads)


def build_dla34_ctdet(heads: Mapping[str, int] | None = None, head_conv: int = 256) -> DLASeg:
    """CenterNet ``ctdet`` DLA-34 with random init (eval mode); load weights with :mod:`.weights`."""
    model = DLASeg(CTDET_HEADS if heads is None else heads, head_conv)
    return model.eval()
