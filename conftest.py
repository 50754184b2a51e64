"""Repository-wide pytest hook: tests marked ``needs_torch`` skip, saying why, where PyTorch is not installed.

torch is an optional extra (README, "Tests"): on a Python for which no CPU wheel is at hand (3.12, 3.13 here),
``make test-venv TORCH=none`` builds the test venv without it and the suite runs everything else. Mark a
test ``@pytest.mark.needs_torch`` (or a module with ``pytestmark``) when it builds, exports or loads a model
through torch, in-process or through a ``zoo`` subprocess; a fixture that does calls
``pytest.importorskip("torch")``.
"""
from __future__ import annotations

import importlib.util

import pytest

TORCH_MISSING = importlib.util.find_spec("torch") is None
SKIP_REASON = "needs torch, which is not installed (pip install 'zoo-core[torch]'; README: Tests)"


def pytest_collection_modifyitems(config, items):
    if not TORCH_MISSING:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("needs_torch"):
            item.add_marker(skip)
