"""The CenterFace MobileNetV2-FPN torch network: layout, options and output shapes."""
from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from zoo_centerface.mobilenet_fpn import HEADS, CenterFaceNet, build_ascend_model, build_starclouds_model  # noqa: E402

torch.set_num_threads(2)


def _forward(model, n, h, w):
    with torch.no_grad():
        return model(torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(1)) * 4 - 2)


@pytest.mark.parametrize("head_conv", [64, 24])
def test_ascend_model_output_shapes(head_conv):
    model = build_ascend_model(head_conv=head_conv)
    outs = _forward(model, 2, 256, 256)
    assert isinstance(outs, tuple)
    assert [tuple(o.shape) for o in outs] == [(2, c, 64, 64) for c in HEADS.values()]
    hm = outs[0]
    assert float(hm.min()) > 0.0 and float(hm.max()) < 1.0  # sigmoid is inside the model
    assert model.dla_up.conv_last[0].out_channels == head_conv
    assert not model.training


def test_ascend_model_at_800_gives_200x200_grid():
    outs = _forward(build_ascend_model(), 1, 800, 800)
    assert [tuple(o.shape) for o in outs] == [(1, 1, 200, 200), (1, 2, 200, 200), (1, 2, 200, 200), (1, 10, 200, 200)]


def test_backbone_taps_strides_and_channels():
    model = build_ascend_model()
    with torch.no_grad():
        taps = model.base(torch.zeros(1, 3, 64, 64))
    assert [tuple(t.shape[1:]) for t in taps] == [(24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2)]
    assert [len(getattr(model.base, f"feature_{i}")) for i in (1, 2, 4, 6)] == [4, 3, 7, 4]


def test_cj_state_dict_layout():
    sd = build_ascend_model(64).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    expected = {
        "base.feature_1.0.0.weight": (32, 3, 3, 3),           # features.0 conv
        "base.feature_1.0.1.running_var": (32,),
        "base.feature_1.1.conv.0.0.weight": (32, 1, 3, 3),    # t=1 block: depthwise first
        "base.feature_1.1.conv.1.weight": (16, 32, 1, 1),
        "base.feature_1.1.conv.2.bias": (16,),
        "base.feature_1.2.conv.0.0.weight": (96, 16, 1, 1),   # expand
        "base.feature_1.2.conv.1.0.weight": (96, 1, 3, 3),    # depthwise
        "base.feature_1.2.conv.2.weight": (24, 96, 1, 1),     # linear
        "base.feature_1.2.conv.3.weight": (24,),
        "base.feature_2.2.conv.2.weight": (32, 192, 1, 1),
        "base.feature_4.6.conv.2.weight": (96, 576, 1, 1),
        "base.feature_6.3.conv.2.weight": (320, 960, 1, 1),
        "dla_up.conv.0.weight": (64, 320, 1, 1),
        "dla_up.up_0.conv.0.weight": (64, 96, 1, 1),
        "dla_up.up_1.conv.0.weight": (64, 32, 1, 1),
        "dla_up.up_2.conv.0.weight": (64, 24, 1, 1),
        "dla_up.up_0.up.0.weight": (64, 1, 2, 2),             # depthwise deconv (groups = out)
        "dla_up.up_2.up.1.running_mean": (64,),
        "dla_up.conv_last.0.weight": (64, 64, 3, 3),
        "hm.0.weight": (1, 64, 1, 1),
        "wh.weight": (2, 64, 1, 1),
        "hm_offset.bias": (2,),
        "landmarks.weight": (10, 64, 1, 1),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert "dla_up.up_0.up.0.bias" not in sd  # transposed convs have no bias


def test_activation_deconv_and_bn_eps_options():
    asc, sc = build_ascend_model(), build_starclouds_model()
    asc_base = {type(m) for m in asc.base.modules()}
    assert nn.ReLU6 in asc_base and nn.ReLU not in asc_base
    assert nn.ReLU6 not in {type(m) for m in sc.modules()}
    assert asc.dla_up.up_1.up[0].groups == 64
    assert sc.dla_up.up_1.up[0].groups == 1
    assert tuple(sc.dla_up.up_1.up[0].weight.shape) == (24, 24, 2, 2)
    for model in (asc, sc):
        assert model.dla_up.conv[1].eps == 1e-3
        assert model.dla_up.up_0.up[1].eps == 1e-3 and model.dla_up.up_0.conv[1].eps == 1e-3
        assert model.dla_up.conv_last[1].eps == 1e-5
    outs = _forward(sc, 1, 64, 96)
    assert [tuple(o.shape) for o in outs] == [(1, c, 16, 24) for c in HEADS.values()]


def test_relu6_clamps_where_relu_does_not():
    relu = CenterFaceNet(24, "relu", "depthwise").eval()
    relu6 = CenterFaceNet(24, "relu6", "depthwise").eval()
    x = torch.full((1, 3, 64, 64), 0.5)
    with torch.no_grad():
        for m in relu.base.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(20)  # drive activations above 6
        relu6.load_state_dict(relu.state_dict())
        taps_relu, taps_relu6 = relu.base(x), relu6.base(x)
    assert float(taps_relu[0].max()) > 6.0
    assert not torch.allclose(taps_relu[3], taps_relu6[3])


@pytest.mark.parametrize("kwargs", [{"activation": "gelu"}, {"deconv": "grouped"}, {"head_conv": 0}])
def test_bad_options_raise(kwargs):
    with pytest.raises(ValueError):
        CenterFaceNet(**kwargs)


def test_numpy_side_modules_do_not_import_torch():
    code = ("import sys; import zoo_centerface.weights_file, zoo_centerface.onnx_prepare, "
            "zoo_centerface.export, zoo_centerface.convert_weights; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
