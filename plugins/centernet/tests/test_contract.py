"""The zoo plugin contract (zoo_core.testing) on the installed centernet plugin.

Runs on the generated ``coco_sample`` dataset with the seeded random DLA-34 (no checkpoint): the
contract checks shapes, names, the oracle round trip and torch/onnxruntime agreement, not accuracy.
Exporting and running DLA-34 + DCN at 512x512 takes ~20 s, hence ``slow``.
"""
import pytest

from zoo_core.testing.contract import PluginContract


@pytest.mark.slow
class TestCenterNetContract(PluginContract):
    model = "centernet"
    overrides = ("dataset=coco_sample",)
    n_samples = 2
    atol = 1e-3
