"""CenterFace MobileNetV2-FPN network (PyTorch), in the chenjun2hao (CJ) ``state_dict`` layout.

One configurable network serves both families (REFERENCE 3.1-3.3):

* ``build_ascend_model`` - the CJ / Ascend network: ReLU6 in the backbone, neck width ``head_conv``
  (64 by default), depthwise 2x2 transposed convolutions (``groups = out``).
* ``build_starclouds_model`` - the same tree adapted to the Star-Clouds ``centerface.onnx``: ReLU
  everywhere, neck width 24, full 24->24 transposed convolutions (``convert_weights`` fills it).

Module names follow REFERENCE 3.2: ``base.feature_{1,2,4,6}`` (torchvision MobileNetV2 blocks,
``conv.0`` / ``conv.1`` ConvBNAct then ``conv.2`` / ``conv.3`` linear conv + BN), ``dla_up.conv``,
``dla_up.up_{0,1,2}.{up,conv}`` (``up`` = transposed conv + BN + ReLU on the running map,
``conv`` = 1x1 lateral + BN + ReLU), ``dla_up.conv_last``, heads ``hm.0`` (+ sigmoid), ``wh``,
``hm_offset``, ``landmarks``. ``forward`` returns ``(hm, wh, hm_offset, landmarks)``.

torch is imported when this module is imported; import it only where a model is built.
"""
from __future__ import annotations

from torch import nn

HEADS: dict[str, int] = {"hm": 1, "wh": 2, "hm_offset": 2, "landmarks": 10}
"""Output heads in output order (``output1..4``) and their channel counts."""

# torchvision MobileNetV2 settings: (expand ratio t, channels c, repeats n, first stride s),
# grouped into the four CJ stages.
_STAGES: dict[str, list[tuple[int, int, int, int]]] = {
    "feature_1": [(1, 16, 1, 1), (6, 24, 2, 2)],
    "feature_2": [(6, 32, 3, 2)],
    "feature_4": [(6, 64, 4, 2), (6, 96, 3, 1)],
    "feature_6": [(6, 160, 3, 2), (6, 320, 1, 1)],
}
_ACTIVATIONS = {"relu6": nn.ReLU6, "relu": nn.ReLU}
_DECONVS = ("depthwise", "full")
NECK_BN_EPS = 1e-3
LAST_BN_EPS = 1e-5


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int, groups: int, act: type[nn.Module],
                 eps: float = 1e-5) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=eps),
        act(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block in the torchvision layout (``conv`` = [expand,] depthwise, linear conv, BN)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: type[nn.Module]):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_act(cin, hidden, 1, 1, 1, act))
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride, hidden, act),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res else y


class MobileNetV2Base(nn.Module):
    """MobileNetV2 (width 1.0) split into the stride-4/8/16/32 taps C2 (24), C3 (32), C4 (96), C5 (320)."""

    feature_1: nn.Sequential
    feature_2: nn.Sequential
    feature_4: nn.Sequential
    feature_6: nn.Sequential

    def __init__(self, act: type[nn.Module]):
        super().__init__()
        cin = 32
        for name, settings in _STAGES.items():
            blocks: list[nn.Module] = []
            if name == "feature_1":
                blocks.append(_conv_bn_act(3, cin, 3, 2, 1, act))
            for t, c, n, s in settings:
                for i in range(n):
                    blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t, act))
                    cin = c
            setattr(self, name, nn.Sequential(*blocks))

    def forward(self, x):
        c2 = self.feature_1(x)
        c3 = self.feature_2(c2)
        c4 = self.feature_4(c3)
        c5 = self.feature_6(c4)
        return c2, c3, c4, c5


class IDAUp(nn.Module):
    """``ReLU(BN(ConvT 2x2 s2)(x)) + ReLU(BN(Conv1x1)(lateral))``."""

    def __init__(self, width: int, lateral_channels: int, deconv_groups: int):
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(width, width, 2, 2, 0, groups=deconv_groups, bias=False),
            nn.BatchNorm2d(width, eps=NECK_BN_EPS),
            nn.ReLU(inplace=True),
        )
        self.conv = _conv_bn_act(lateral_channels, width, 1, 1, 1, nn.ReLU, eps=NECK_BN_EPS)

    def forward(self, x, lateral):
        return self.up(x) + self.conv(lateral)


class MobileNetUp(nn.Module):
    """FPN neck: C5 -> width, then three ``IDAUp`` merges with C4, C3, C2, then a 3x3 conv."""

    def __init__(self, width: int, deconv_groups: int):
        super().__init__()
        self.conv = _conv_bn_act(320, width, 1, 1, 1, nn.ReLU, eps=NECK_BN_EPS)
        self.up_0 = IDAUp(width, 96, deconv_groups)
        self.up_1 = IDAUp(width, 32, deconv_groups)
        self.up_2 = IDAUp(width, 24, deconv_groups)
        self.conv_last = _conv_bn_act(width, width, 3, 1, 1, nn.ReLU, eps=LAST_BN_EPS)

    def forward(self, c2, c3, c4, c5):
        x = self.conv(c5)
        x = self.up_0(x, c4)
        x = self.up_1(x, c3)
        x = self.up_2(x, c2)
        return self.conv_last(x)


class CenterFaceNet(nn.Module):
    """MobileNetV2-FPN CenterFace; ``forward(x)`` -> ``(hm, wh, hm_offset, landmarks)`` at stride 4."""

    def __init__(self, head_conv: int = 64, activation: str = "relu6", deconv: str = "depthwise"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if deconv not in _DECONVS:
            raise ValueError(f"deconv must be one of {list(_DECONVS)}, got {deconv!r}")
        if int(head_conv) < 1:
            raise ValueError(f"head_conv must be a positive int, got {head_conv!r}")
        head_conv = int(head_conv)
        self.head_conv, self.activation, self.deconv = head_conv, activation, deconv
        self.base = MobileNetV2Base(_ACTIVATIONS[activation])
        self.dla_up = MobileNetUp(head_conv, head_conv if deconv == "depthwise" else 1)
        self.hm = nn.Sequential(nn.Conv2d(head_conv, HEADS["hm"], 1), nn.Sigmoid())
        self.wh = nn.Conv2d(head_conv, HEADS["wh"], 1)
        self.hm_offset = nn.Conv2d(head_conv, HEADS["hm_offset"], 1)
        self.landmarks = nn.Conv2d(head_conv, HEADS["landmarks"], 1)

    def forward(self, x):
        y = self.dla_up(*self.base(x))
        return self.hm(y), self.wh(y), self.hm_offset(y), self.landmarks(y)


def build_ascend_model(head_conv: int = 64) -> CenterFaceNet:
    """The CJ / Ascend CenterFace network (ReLU6 backbone, depthwise deconvs), in eval mode."""
    return CenterFaceNet(head_conv, "relu6", "depthwise").eval()


def build_starclouds_model() -> CenterFaceNet:
    """The network that holds the Star-Clouds weights (ReLU, width 24, full deconvs), in eval mode."""
    return CenterFaceNet(24, "relu", "full").eval()
