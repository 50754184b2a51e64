"""Shared fixtures for the CenterNet tests: the seeded golden checkpoint and the loaded model."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from zoo_core.testing import golden_dir


def make_golden_checkpoint(out, seed: int = 0, module_prefix: bool = False):
    """Run the golden ``make_checkpoint.py`` (stdlib + numpy + torch) and return the written path."""
    pytest.importorskip("torch", reason="the golden checkpoint is written by torch, which is not installed")
    script = golden_dir("centernet", "make_checkpoint.py")
    cmd = [sys.executable, str(script), "--seed", str(seed), "--out", str(out)]
    if module_prefix:
        cmd.append("--module-prefix")
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def golden_ckpt(tmp_path_factory):
    """The seed-0 synthetic ``ctdet_coco_dla_2x.pth`` stand-in (built once per session)."""
    return make_golden_checkpoint(tmp_path_factory.mktemp("centernet_ckpt") / "ckpt.pth")


@pytest.fixture(scope="session")
def golden_ckpt_module_prefix(tmp_path_factory):
    """The same seed-0 checkpoint with every key prefixed by ``module.`` (DataParallel style)."""
    out = tmp_path_factory.mktemp("centernet_ckpt_module") / "ckpt.pth"
    return make_golden_checkpoint(out, module_prefix=True)


@pytest.fixture(scope="session")
def model_io():
    """``model_io.npz``: input ``x``, reference ``hm``/``wh``/``reg`` and the ``feat_*`` debug taps."""
    with np.load(golden_dir("centernet", "model_io.npz")) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="session")
def ctdet_model(golden_ckpt):
    """DLA-34 ctdet with the seed-0 checkpoint loaded, in eval mode (do not mutate in tests)."""
    import torch

    from zoo_centernet.dla import build_dla34_ctdet
    from zoo_centernet.weights import load_checkpoint

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = build_dla34_ctdet()
    load_checkpoint(model, golden_ckpt)
    return model.eval()

