"""DCN (modulated deformable conv) against an independent float64 port of DCNv2's im2col rule."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from zoo_centernet import dcn as dcn_mod  # noqa: E402
from zoo_centernet.dcn import DCN, dcn_mode, deform_conv2d_gridsample, deform_conv2d_pure  # noqa: E402


def _bilinear_or_zero(img, h, w):
    """DCNv2 ``dmcn_im2col_bilinear`` on a (C, H, W) map: out-of-map corners count as 0."""
    height, width = img.shape[1:]
    h_low, w_low = int(np.floor(h)), int(np.floor(w))
    h_high, w_high = h_low + 1, w_low + 1
    lh, lw = h - h_low, w - w_low
    hh, hw = 1 - lh, 1 - lw
    zero = np.zeros(img.shape[0])
    v1 = img[:, h_low, w_low] if h_low >= 0 and w_low >= 0 else zero
    v2 = img[:, h_low, w_high] if h_low >= 0 and w_high <= width - 1 else zero
    v3 = img[:, h_high, w_low] if h_high <= height - 1 and w_low >= 0 else zero
    v4 = img[:, h_high, w_high] if h_high <= height - 1 and w_high <= width - 1 else zero
    return hh * hw * v1 + hh * lw * v2 + lh * hw * v3 + lh * lw * v4


def im2col_oracle(x, offset, mask, weight, bias, stride, pad, dil, dg):
    """Literal float64 port of ``modulated_deformable_im2col`` followed by the GEMM and the bias."""
    x, offset, mask, weight, bias = (np.asarray(a, np.float64) for a in (x, offset, mask, weight, bias))
    n, c, height, width = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    cg = c // dg
    cols = np.zeros((n, c, kh * kw, ho * wo))
    for b in range(n):
        for g in range(dg):
            img = x[b, g * cg:(g + 1) * cg]
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    for y in range(ho):
                        for xo in range(wo):
                            dy = offset[b, g * 2 * kh * kw + 2 * k, y, xo]
                            dx = offset[b, g * 2 * kh * kw + 2 * k + 1, y, xo]
                            m = mask[b, g * kh * kw + k, y, xo]
                            h_im = y * stride - pad + i * dil + dy
                            w_im = xo * stride - pad + j * dil + dx
                            val = np.zeros(cg)
                            if -1 < h_im < height and -1 < w_im < width:
                                val = _bilinear_or_zero(img, h_im, w_im)
                            cols[b, g * cg:(g + 1) * cg, k, y * wo + xo] = val * m
    out = np.einsum("ok,nkl->nol", weight.reshape(o, c * kh * kw), cols.reshape(n, c * kh * kw, ho * wo))
    return (out + bias[None, :, None]).reshape(n, o, ho, wo)


VARIANTS = [  # stride, pad, dil, deformable_groups, H, W
    (1, 1, 1, 1, 7, 9),
    (2, 1, 1, 2, 9, 8),
    (1, 2, 2, 1, 8, 7),
    (2, 0, 1, 1, 9, 9),
]


def _random_case(seed, stride, pad, dil, dg, h, w, c=4, o=3, n=2, offset_std=3.0):
    rng = np.random.default_rng(seed)
    ho = (h + 2 * pad - dil * 2 - 1) // stride + 1
    wo = (w + 2 * pad - dil * 2 - 1) // stride + 1
    x = rng.standard_normal((n, c, h, w))
    offset = rng.standard_normal((n, dg * 18, ho, wo)) * offset_std
    mask = rng.uniform(0, 1, (n, dg * 9, ho, wo))
    weight = rng.standard_normal((o, c, 3, 3))
    bias = rng.standard_normal(o)
    return x, offset, mask, weight, bias


@pytest.mark.parametrize("stride,pad,dil,dg,h,w", VARIANTS)
@pytest.mark.parametrize("fn", [deform_conv2d_pure, deform_conv2d_gridsample], ids=["pure", "gridsample"])
def test_functional_matches_im2col_oracle(fn, stride, pad, dil, dg, h, w):
    case = _random_case(stride * 100 + pad * 10 + dil + dg, stride, pad, dil, dg, h, w)
    ref = im2col_oracle(*case, stride, pad, dil, dg)
    t = [torch.from_numpy(a) for a in case]
    x, off, m, wt, b = t
    out64 = fn(x, off, m, wt, b, stride, pad, dil, dg).numpy()
    assert out64.shape == ref.shape
    np.testing.assert_allclose(out64, ref, rtol=0, atol=1e-9 * np.abs(ref).max())
    out32 = fn(*(a.float() for a in t), stride, pad, dil, dg).numpy()
    assert np.abs(out32 - ref).max() <= 2e-5 * np.abs(ref).max()


def test_borders_exact_sample_positions():
    """Offsets on the half-pixel lattice hit the (-1, H) x (-1, W) limits and the corner rules exactly."""
    rng = np.random.default_rng(7)
    x, _, mask, weight, bias = _random_case(7, 1, 1, 1, 1, 5, 6)
    offset = rng.integers(-8, 9, size=(2, 18, 5, 6)) * 0.5
    ref = im2col_oracle(x, offset, mask, weight, bias, 1, 1, 1, 1)
    for fn in (deform_conv2d_pure, deform_conv2d_gridsample):
        out = fn(*(torch.from_numpy(a) for a in (x, offset, mask, weight, bias)), 1, 1, 1, 1).numpy()
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9 * np.abs(ref).max())


def test_dcn_module_splits_offsets_and_sigmoid_mask():
    """``DCN.forward``: channels 0-17 are the interleaved offsets as is, 18-26 go through a sigmoid."""
    torch.manual_seed(0)
    m = DCN(4, 3, 3, 1, 1).double()
    with torch.no_grad():
        m.conv_offset_mask.weight.normal_(0, 0.5)
        m.conv_offset_mask.bias.normal_(0, 2.0)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        om = m.conv_offset_mask(x).numpy()
        out = m(x).numpy()
    ref = im2col_oracle(x.numpy(), om[:, :18], 1 / (1 + np.exp(-om[:, 18:])), m.weight.detach().numpy(),
                        m.bias.detach().numpy(), 1, 1, 1, 1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9 * np.abs(ref).max())


@pytest.mark.parametrize("cin, kernel", [(64, 3), (16, (3, 1))])
def test_fresh_dcn_init_is_the_dcnv2_one(cin, kernel):
    """REFERENCE 2.3 (DCN module): ``weight`` uniform +-1/sqrt(in*kh*kw), ``bias`` 0, ``conv_offset_mask`` zero:
    what a randomly initialised test checkpoint holds. A bound of 1/sqrt(in) drew 3x (or sqrt(kh*kw)x) too wide."""
    torch.manual_seed(0)
    m = DCN(cin, 64, kernel, 1, 1)
    kh, kw = m.kernel_size
    bound = 1.0 / np.sqrt(cin * kh * kw)
    w = m.weight.detach().double()
    assert 0.9 * bound < w.abs().max().item() <= bound
    assert abs(w.var().item() - bound ** 2 / 3) <= 0.1 * bound ** 2 / 3
    assert not m.bias.detach().any()
    assert not m.conv_offset_mask.weight.detach().any() and not m.conv_offset_mask.bias.detach().any()


def test_zero_offsets_equal_half_conv():
    """Fresh DCN (zero offset/mask conv): mask = sigmoid(0) = 0.5, so DCN = 0.5 * conv2d + bias."""
    torch.manual_seed(1)
    m = DCN(8, 5, (3, 3), stride=1, padding=1)
    with torch.no_grad():
        m.bias.normal_()
        x = torch.randn(2, 8, 10, 12)
        ref = 0.5 * F.conv2d(x, m.weight, None, 1, 1) + m.bias[None, :, None, None]
        for mode in dcn_mod.MODES:
            with dcn_mode(mode):
                out = m(x)
            assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item(), mode


@pytest.mark.parametrize("mode", ["gridsample", "deformconv", "ascend"])
def test_modes_agree_with_pure_in_eager(mode):
    torch.manual_seed(2)
    m = DCN(6, 4, 3, 1, 1).double()
    with torch.no_grad():
        m.conv_offset_mask.weight.normal_(0, 0.3)
        m.conv_offset_mask.bias.normal_(0, 2.0)
        x = torch.randn(2, 6, 9, 8, dtype=torch.float64)
        ref = m(x)
        m.impl = mode
        out = m(x)
    assert (out - ref).abs().max().item() < 1e-12


def test_ascend_offset_layout():
    om = torch.arange(27, dtype=torch.float32).view(1, 27, 1, 1).repeat(2, 1, 3, 4)
    asc = dcn_mod.to_ascend_offsets(om)
    got = asc[0, :, 0, 0].numpy()
    expect = np.concatenate([np.arange(1, 18, 2), np.arange(0, 18, 2), 1 / (1 + np.exp(-np.arange(18, 27.0)))])
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    back, mask = dcn_mod.from_ascend_offsets(asc)
    assert torch.equal(back, om[:, :18])
    assert torch.allclose(mask, torch.sigmoid(om[:, 18:]))


def test_mode_context_and_validation():
    m = DCN(2, 2, 3, 1, 1)
    with pytest.raises(ValueError), dcn_mode("cuda"):
        pass
    m.impl = "nope"
    with pytest.raises(ValueError):
        m(torch.zeros(1, 2, 4, 4))
    with dcn_mode("gridsample"):
        assert dcn_mod.current_mode() == "gridsample"
        with dcn_mode("pure"):
            assert dcn_mod.current_mode() == "pure"
        assert dcn_mod.current_mode() == "gridsample"
    assert dcn_mod.current_mode() == "pure"
    assert [n for n, _ in DCN(3, 5, 3, 1, 1).named_parameters()] == [
        "weight", "bias", "conv_offset_mask.weight", "conv_offset_mask.bias"]


class _Wrap(torch.nn.Module):
    def __init__(self, dcn):
        super().__init__()
        self.dcn = dcn

    def forward(self, x):
        return self.dcn(x)


@pytest.mark.parametrize("impl", ["deformconv", "gridsample"])
@pytest.mark.parametrize("stride,pad,dil,dg", [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1)])
def test_single_dcn_onnx_in_onnxruntime(tmp_path, impl, stride, pad, dil, dg):
    """The exported DeformConv / GridSample graphs reproduce the pure DCN (offsets std ~3 px)."""
    import warnings

    ort = pytest.importorskip("onnxruntime")
    from zoo_centernet.export import DEFAULT_OPSET, ort_supports_deformconv

    if impl == "deformconv" and not ort_supports_deformconv():
        pytest.skip("this onnxruntime has no DeformConv kernel")
    torch.manual_seed(3)
    m = DCN(8, 6, 3, stride, pad, dil, dg)
    with torch.no_grad():
        m.conv_offset_mask.weight.normal_(0, 0.3)
        m.conv_offset_mask.bias.normal_(0, 3.0)
        m.bias.normal_()
    x = torch.randn(2, 8, 11, 13)
    with torch.no_grad():
        ref = m(x).numpy()
        om = m.conv_offset_mask(x)
    assert om[:, : 18 * dg].std() > 2.0
    m.impl = impl
    path = tmp_path / "dcn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Wrap(m), (x[:1],), str(path), dynamo=False, opset_version=DEFAULT_OPSET[impl],
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": x.numpy()})
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
