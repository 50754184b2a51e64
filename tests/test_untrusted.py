"""Untrusted files: a malicious pickle never runs; the product code has no eval/exec/shell/unsafe loaders.

(``atc`` receiving config values literally, without a shell, is tested with the fake ``atc`` in
test_stages_cli.py / the convert tests.)
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT_DIRS = [REPO / "zoo_core", REPO / "hydra_plugins", *sorted((REPO / "plugins").glob("*/zoo_*")),
                REPO / "tests" / "fixtures" / "zoo-fixture" / "zoo_fixture"]


class Payload:
    """Unpickling this calls ``os.system`` (what a booby-trapped checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"state_dict": {"conv.weight": Payload(marker)}, "epoch": 1}, path)
    return path


@pytest.mark.needs_torch
@pytest.mark.parametrize("model", ["fixture", "centernet"])
def test_malicious_pickle_through_the_cli_never_runs(zoo, model):
    marker = zoo.cwd / "PWNED"
    evil = _evil_checkpoint(zoo.cwd / "evil.pth", marker)
    extra = ["dataset=coco_sample"] if model == "centernet" else []
    rc, out, err = zoo("run", f"model={model}", *extra, "stage=export", f"weights={evil}", "work_dir=run")
    assert rc != 0 and "Traceback" not in err, err
    assert str(evil) in err and "refused to load" in err and "nothing from it was executed" in err
    assert "posix.system" in err or "os.system" in err
    assert not marker.exists()
    assert not list((zoo.cwd / "run").glob("model/*.onnx"))


@pytest.mark.needs_torch
def test_malicious_pickle_for_centerface_ascend_weights(tmp_path):
    from omegaconf import OmegaConf

    from zoo_centerface.plugin import build_model
    from zoo_core.api.errors import ZooError

    marker = tmp_path / "PWNED"
    evil = _evil_checkpoint(tmp_path / "evil.pth", marker)
    cfg = OmegaConf.create({"model": {"name": "centerface", "variant": "ascend", "head_conv": 64, "input_hw": None}})
    with pytest.raises(ZooError, match="refused to load"):
        build_model(cfg=cfg, weights=str(evil))
    assert not marker.exists()


@pytest.mark.needs_torch
def test_checkpoint_error_messages_are_one_line(tmp_path):
    from zoo_core.api.checkpoint import load_weights_only
    from zoo_core.api.errors import ZooError

    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("hello\n")
    for name, text in (("empty.pth", "empty (0 bytes)"), ("text.pth", "not a PyTorch checkpoint"),
                       ("absent.pth", "not found")):
        with pytest.raises(ZooError) as ei:
            load_weights_only(tmp_path / name)
        assert text in str(ei.value) and "\n" not in str(ei.value) and name in str(ei.value)


# -- static checks over the product code ----------------------------------------------------------------

def _product_files() -> list[Path]:
    files = [p for d in PRODUCT_DIRS for p in d.rglob("*.py") if "/tests/" not in p.as_posix()]
    assert len(files) > 40
    return files


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _violations(tree: ast.AST) -> list[str]:
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        line = f"line {node.lineno}: {name}"
        if name in ("eval", "exec", "compile", "os.system", "os.popen", "pickle.load", "pickle.loads",
                    "marshal.loads", "subprocess.getoutput", "subprocess.getstatusoutput",
                    "asyncio.create_subprocess_shell"):
            bad.append(line)
        shell = _kw(node, "shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            bad.append(f"{line}(shell=...)")
        if name.endswith(("yaml.load", "yaml.full_load")) or name == "yaml.unsafe_load":
            loader = _dotted(_kw(node, "Loader")) if _kw(node, "Loader") is not None else ""
            if not loader.endswith("SafeLoader"):
                bad.append(f"{line} without SafeLoader")
        if name.endswith("torch.load"):
            wo = _kw(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                bad.append(f"{line} without weights_only=True")
        if name.endswith(("np.load", "numpy.load")):
            ap = _kw(node, "allow_pickle")
            if not (isinstance(ap, ast.Constant) and ap.value is False):
                bad.append(f"{line} without allow_pickle=False")
    return bad


def test_scanner_catches_what_it_looks_for():
    src = ("import os, yaml, subprocess, torch, numpy as np\neval('1')\nos.system('x')\n"
           "subprocess.run('ls', shell=True)\nyaml.load(s)\nnp.load(f, allow_pickle=True)\ntorch.load(f)\n"
           "yaml.load(s, Loader=yaml.SafeLoader)\nnp.load(f, allow_pickle=False)\nmodel.eval()\n")
    bad = _violations(ast.parse(src))
    assert sorted(int(b.split()[1].rstrip(":")) for b in bad) == [2, 3, 4, 5, 6, 7], bad


def test_product_code_has_no_eval_exec_shell_or_unsafe_loading():
    found = {}
    for p in _product_files():
        bad = _violations(ast.parse(p.read_text(), str(p)))
        text = p.read_text()
        if "shell=True" in text or "allow_pickle=True" in text:
            bad.append("text: shell=True / allow_pickle=True")
        if bad:
            found[str(p.relative_to(REPO))] = bad
    assert not found, found


def test_config_files_are_read_with_safe_loaders():
    """Hydra / OmegaConf read YAML with a safe loader; no product module reads YAML any other way
    (a module may import yaml for its error types only)."""
    import re

    for p in _product_files():
        for call in re.findall(r"yaml\.\w*load\w*\([^)]*\)?", p.read_text()):
            assert call.startswith("yaml.safe_load") or "SafeLoader" in call, (p, call)
