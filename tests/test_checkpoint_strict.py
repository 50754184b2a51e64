"""zoo_core.api.checkpoint: strict state-dict loading shared by every plugin (weights_only=True)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from zoo_core.api.checkpoint import (  # noqa: E402
    MAX_LISTED,
    load_checkpoint,
    load_state_dict_strict,
    read_state_dict,
    state_dict_mismatch,
)
from zoo_core.api.errors import ZooError  # noqa: E402


def _net(width: int = 4) -> torch.nn.Module:
    torch.manual_seed(width)
    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(), torch.nn.Conv2d(width, 2, 1))


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_wrapped_prefixed_checkpoint_loads_and_returns_the_other_entries(tmp_path):
    src = _net()
    state = {"module." + k: v for k, v in src.state_dict().items()}
    path = _save(tmp_path / "a.pth", {"epoch": 7, "state_dict": state, "arch": "tiny"})
    dst = _net(4)
    torch.nn.init.zeros_(dst[0].weight)
    extras = load_checkpoint(dst, path)
    assert extras == {"epoch": 7, "arch": "tiny"}
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())


def test_bare_state_dict_and_dropped_prefixes(tmp_path):
    src = _net()
    path = _save(tmp_path / "b.pth", {**src.state_dict(), "fc.weight": torch.zeros(3)})
    state, extras = read_state_dict(path, drop_prefixes=("fc.",))
    assert extras == {} and sorted(state) == sorted(src.state_dict())
    load_checkpoint(_net(), path, drop_prefixes=("fc.",))
    with pytest.raises(ZooError, match=r"unexpected keys \(1\): fc.weight"):
        load_checkpoint(_net(), path)


def test_mismatch_lists_every_kind_of_key_and_loads_nothing(tmp_path):
    src = _net(8).state_dict()
    del src["2.bias"]
    src["extra.weight"] = torch.zeros(1)
    path = _save(tmp_path / "c.pth", {"state_dict": src})
    dst = _net(4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ZooError) as info:
        load_checkpoint(dst, path, network="the tiny network", hint="check the width")
    text = str(info.value)
    assert text.startswith(f"{path}: checkpoint does not match the tiny network: missing keys (1): 2.bias; "
                           "unexpected keys (1): extra.weight; mis-shaped keys (3): 0.weight [8, 3, 3, 3] "
                           "(model [4, 3, 3, 3]), 0.bias [8] (model [4]), 2.weight [2, 8, 1, 1] (model [2, 4, 1, 1])")
    assert text.endswith("hint: check the width")
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())


def test_long_listings_are_cut():
    expected = {f"k{i}": torch.zeros(1) for i in range(MAX_LISTED + 5)}
    problem = state_dict_mismatch(expected, {})
    assert problem is not None and problem.startswith(f"missing keys ({MAX_LISTED + 5}): k0, k1")
    assert problem.endswith("... and 5 more")
    assert state_dict_mismatch(expected, dict(expected)) is None


@pytest.mark.parametrize("obj, message", [
    ({"epoch": 1, "weights": [1, 2]}, "no state dict found"),
    ([torch.zeros(1)], "no state dict found"),
    ({}, "no state dict found"),
    ({"state_dict": {"a": torch.zeros(1), "b": 3, "c": "x"}}, r"state dict entries that are not tensors \(2\): b, c"),
])
def test_what_is_not_a_state_dict(tmp_path, obj, message):
    path = _save(tmp_path / "d.pth", obj)
    with pytest.raises(ZooError, match=message) as info:
        read_state_dict(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_state_dict_strict_on_an_in_memory_state():
    src = _net()
    dst = _net()
    load_state_dict_strict(dst, src.state_dict(), path="mem.pth")
    with pytest.raises(ZooError, match=r"^mem.pth: checkpoint does not match the model: missing keys"):
        load_state_dict_strict(dst, {}, path="mem.pth")


def test_centerface_checkpoint_with_non_tensor_values_is_one_line(tmp_path):
    from omegaconf import OmegaConf

    from zoo_centerface import plugin

    path = _save(tmp_path / "odd.pth", {"state_dict": {"hm.0.weight": [1.0, 2.0]}})
    cfg = OmegaConf.create({"model": {"variant": "ascend", "head_conv": 64}, "weights": None})
    with pytest.raises(ZooError, match=r"odd.pth: state dict entries that are not tensors \(1\): hm.0.weight"):
        plugin.build_model(cfg, str(path))


@pytest.mark.parametrize("first", ["plain", "prefixed"])
def test_keys_that_collide_once_the_prefix_is_stripped_are_refused(tmp_path, first):
    # 'k' and 'module.k' both map to 'k': loading either would silently drop the other one's values
    src = _net().state_dict()
    plain = dict(src)
    prefixed = {"module.0.weight": torch.zeros_like(src["0.weight"])}
    raw = {**plain, **prefixed} if first == "plain" else {**prefixed, **plain}
    path = _save(tmp_path / "dup.pth", {"state_dict": raw})
    dst = _net()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ZooError) as info:
        load_checkpoint(dst, path)
    text = str(info.value)
    assert text.startswith(f"{path}: ambiguous state dict: keys ")
    assert "'0.weight'" in text and "'module.0.weight'" in text and "\n" not in text
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_key(tmp_path, bad):
    state = {"module." + k: v.clone() for k, v in _net().state_dict().items()}
    state["module.2.bias"][1] = bad
    state["module.0.bias"] = state["module.0.bias"].half()
    state["module.0.bias"][0] = bad  # the first bad key in file order is named
    state["steps"] = torch.tensor([2**62])  # integer tensors are not checked (no NaN there)
    path = _save(tmp_path / "nan.pth", {"epoch": 3, "state_dict": state})
    with pytest.raises(ZooError) as info:
        read_state_dict(path, drop_prefixes=("steps",))
    assert str(info.value) == f"{path}: state dict entry 'module.0.bias' holds NaN or inf values; refusing to load it"


def test_non_finite_values_in_dropped_entries_do_not_matter(tmp_path):
    src = _net().state_dict()
    path = _save(tmp_path / "ok.pth", {**src, "fc.weight": torch.full((3,), float("nan"))})
    state, _ = read_state_dict(path, drop_prefixes=("fc.",))
    assert sorted(state) == sorted(src)


@pytest.mark.parametrize("n", [600_000_000, 4_000_000_000_000])
def test_an_expanded_view_is_refused_before_any_element_is_visited(tmp_path, n, monkeypatch):
    """Before: a 1.6 KB file holding ``torch.zeros(1).expand(n)`` loaded, then ``isfinite`` allocated n elements
    (4.4 GB RSS for 6e8; for 4e12 a 16 TB allocation error blamed on the plugin, exit 1)."""
    path = _save(tmp_path / "bomb.pth", {"state_dict": {"hm.0.weight": torch.zeros(1).expand(n)}})
    visited = []
    monkeypatch.setattr(torch, "isfinite", lambda t: visited.append(t) or torch.ones(1, dtype=torch.bool))
    with pytest.raises(ZooError) as info:
        load_checkpoint(_net(), path)
    assert str(info.value).splitlines()[0] == (f"{path}: state dict entry 'hm.0.weight' of shape [{n}] needs "
                                               f"{4 * n} bytes but its storage holds 4 (an expanded or overlapping "
                                               "view); refusing to load it")
    assert "clone()" in info.value.hint and info.value.exit_code == 2 and not visited


def test_tensors_sharing_one_storage_many_times_over_are_refused(tmp_path):
    big = torch.zeros(50_000)  # 200 KB stored once, read 100 times
    path = _save(tmp_path / "shared.pth", {f"w{i}": big for i in range(100)})
    with pytest.raises(ZooError) as info:
        read_state_dict(path)
    size = path.stat().st_size
    assert str(info.value).startswith(f"{path}: refused to load: its state dict tensors hold 20000000 bytes, ")
    assert f"its size of {size} bytes (limit 10x)" in str(info.value)
    assert "ZOO_MAX_CHECKPOINT_RATIO" in info.value.hint


def test_a_sparse_tensor_is_refused(tmp_path):
    sparse = torch.sparse_coo_tensor(torch.tensor([[0], [0]]), torch.tensor([1.0]), (10**6, 10**6))
    path = _save(tmp_path / "sparse.pth", {"w": sparse})
    with pytest.raises(ZooError) as info:
        read_state_dict(path)
    assert str(info.value) == f"{path}: state dict entry 'w' is a sparse_coo tensor; only dense tensors are loaded"


def test_views_into_a_larger_storage_and_tied_weights_still_load(tmp_path):
    src = _net()
    state = dict(src.state_dict())
    flat = torch.arange(200.0)
    state["extra.slice"] = flat[10:20]  # a slice: its storage is larger than itself
    state["extra.tied"] = state["0.weight"]  # the same tensor twice
    path = _save(tmp_path / "views.pth", state)
    loaded, _ = read_state_dict(path)
    assert torch.equal(loaded["extra.slice"], flat[10:20]) and torch.equal(loaded["extra.tied"], state["0.weight"])


def test_a_key_with_control_characters_cannot_erase_or_forge_the_error_line(tmp_path):
    """Before: a key `ESC]0;...BEL ESC[2K CR error: forged\\nsecond` was listed raw: the terminal erased zoo's error
    line, printed the forged one and a new line. Now its controls and newline are shown as escapes."""
    evil = "\x1b]0;PWNED-TITLE\x07\x1b[2K\rerror: forged key line\nsecond"
    path = _save(tmp_path / "evil.pth", {"state_dict": {**_net().state_dict(), evil: torch.zeros(2)}})
    with pytest.raises(ZooError) as info:
        load_checkpoint(_net(), path)
    text = str(info.value)
    assert text == (f"{path}: checkpoint does not match the model: unexpected keys (1): "
                    "\\x1b]0;PWNED-TITLE\\x07\\x1b[2K\\rerror: forged key line\\nsecond")
