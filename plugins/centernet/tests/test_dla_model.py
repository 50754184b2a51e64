"""DLA-34 ctdet model: checkpoint layout, golden forward parity and strict, safe weight loading."""
from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zoo_centernet.dcn import DCN, dcn_mode  # noqa: E402
from zoo_centernet.dla import build_dla34_ctdet  # noqa: E402
from zoo_centernet.weights import load_checkpoint  # noqa: E402
from zoo_core.api.errors import ZooError  # noqa: E402
from zoo_core.testing import golden_dir  # noqa: E402

REL_TOL = 1e-4
HEADS = ("hm", "wh", "reg")


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def manifest():
    return json.loads(golden_dir("centernet", "checkpoint_manifest.json").read_text())


@pytest.fixture(scope="module")
def raw_checkpoint(golden_ckpt):
    return torch.load(golden_ckpt, map_location="cpu", weights_only=True)


def test_state_dict_matches_manifest(manifest):
    model = build_dla34_ctdet()
    sd = model.state_dict()
    want = [e for e in manifest["entries"] if not e[0].startswith("base.fc.")]
    got = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sd.items()]
    assert len(got) == 398
    assert got == want
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 19_675_892
    assert sum(isinstance(m, DCN) for m in model.modules()) == 16
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 55
    assert not hasattr(model.base, "fc")
    assert not model.training


def test_random_init_facts():
    model = build_dla34_ctdet()
    assert torch.all(model.hm[2].bias == -2.19)
    assert torch.all(model.wh[2].bias == 0) and torch.all(model.reg[0].bias == 0)
    up = model.ida_up.up_2.weight
    assert up.shape == (64, 1, 8, 8)
    f, c = 4, (2 * 4 - 1 - 4 % 2) / 8
    k = np.array([[(1 - abs(i / f - c)) * (1 - abs(j / f - c)) for j in range(8)] for i in range(8)])
    np.testing.assert_allclose(up[5, 0].detach().numpy(), k, rtol=1e-6)


def test_golden_forward(ctdet_model, model_io):
    x = torch.from_numpy(model_io["x"])
    with torch.no_grad():
        out = ctdet_model(x)
    assert isinstance(out, tuple) and len(out) == 3
    for name, tensor in zip(HEADS, out):
        assert rel_err(tensor.numpy(), model_io[name]) <= REL_TOL, name


def test_golden_debug_taps(ctdet_model, model_io):
    with torch.no_grad():
        feats = ctdet_model.features(torch.from_numpy(model_io["x"]))
    taps = [f"base_level{i}" for i in (2, 3, 4, 5)] + ["dla_up_0", "dla_up_1", "dla_up_2", "head_input"]
    for tap in taps:
        assert rel_err(feats[tap].numpy(), model_io[f"feat_{tap}"]) <= REL_TOL, tap


def test_golden_forward_gridsample_mode(ctdet_model, model_io):
    with torch.no_grad(), dcn_mode("gridsample"):
        out = ctdet_model(torch.from_numpy(model_io["x"]))
    for name, tensor in zip(HEADS, out):
        assert rel_err(tensor.numpy(), model_io[name]) <= REL_TOL, name


def test_load_returns_epoch_and_all_weights(golden_ckpt, raw_checkpoint):
    model = build_dla34_ctdet()
    assert load_checkpoint(model, golden_ckpt) == 230
    sd = model.state_dict()
    for k, v in raw_checkpoint["state_dict"].items():
        if k.startswith("base.fc."):
            assert k not in sd
        else:
            assert torch.equal(sd[k], v), k


def test_module_prefixed_checkpoint_loads_identically(golden_ckpt_module_prefix, ctdet_model):
    raw = torch.load(golden_ckpt_module_prefix, map_location="cpu", weights_only=True)["state_dict"]
    assert all(k.startswith("module.") for k in raw)
    model = build_dla34_ctdet()
    assert load_checkpoint(model, golden_ckpt_module_prefix) == 230
    ref = ctdet_model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_bare_and_prefixed_state_dicts(tmp_path, raw_checkpoint, ctdet_model):
    prefixed = OrderedDict(("module." + k, v) for k, v in raw_checkpoint["state_dict"].items())
    for obj in (raw_checkpoint["state_dict"], {"epoch": 3, "state_dict": prefixed, "optimizer": {}}):
        model = build_dla34_ctdet()
        epoch = load_checkpoint(model, _save(tmp_path / "c.pth", obj))
        assert epoch == (3 if "epoch" in obj else None)
        ref = ctdet_model.state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("change,expect", [
    ("missing", "dla_up.ida_1.node_2.conv.conv_offset_mask.bias"),
    ("extra", "head.extra.weight"),
    ("shape", "wh.2.weight [3, 256, 1, 1]"),
])
def test_mismatched_checkpoint_lists_the_key(tmp_path, raw_checkpoint, change, expect):
    sd = OrderedDict(raw_checkpoint["state_dict"])
    if change == "missing":
        del sd[expect]
    elif change == "extra":
        sd[expect] = torch.zeros(2)
    else:
        sd["wh.2.weight"] = torch.zeros(3, 256, 1, 1)
    path = _save(tmp_path / f"{change}.pth", {"epoch": 1, "state_dict": sd})
    with pytest.raises(ZooError) as err:
        load_checkpoint(build_dla34_ctdet(), path)
    msg = str(err.value)
    assert str(path) in msg and expect in msg
    kinds = {"missing": "missing keys (1)", "extra": "unexpected keys (1)", "shape": "mis-shaped keys (1)"}
    assert kinds[change] in msg


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("this is not a checkpoint\n")
    for path in (bad, tmp_path / "absent.pth"):
        with pytest.raises(ZooError) as err:
            load_checkpoint(build_dla34_ctdet(), path)
        assert str(path) in str(err.value)
    odd = _save(tmp_path / "odd.pth", {"epoch": 1, "weights": [1, 2]})
    with pytest.raises(ZooError, match="no state dict"):
        load_checkpoint(build_dla34_ctdet(), odd)


class _Payload:
    """Unpickling this would create a file (``open(marker, 'w')``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"epoch": 1, "state_dict": {"x": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(ZooError) as err:
        load_checkpoint(build_dla34_ctdet(), path)
    assert str(path) in str(err.value) and "weights_only" in str(err.value)
    assert not marker.exists()
