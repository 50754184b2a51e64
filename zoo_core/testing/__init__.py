"""Test kit for zoo plugins: contract checks and helpers (see docs/plugins.md)."""
from __future__ import annotations

import os
from pathlib import Path


def shared_dir() -> Path | None:
    """The project's shared data folder (golden data, WIDER ground truth), or None.

    ``ZOO_SHARED_DIR`` wins; otherwise a ``shared/`` folder beside the checkout that holds this
    file (CI clones the repo with ``shared/`` as its sibling).
    """
    env = os.environ.get("ZOO_SHARED_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared"
        if (cand / "REFERENCE.md").is_file() and (parent / "pyproject.toml").is_file():
            return cand
    cwd = Path.cwd().resolve()
    for parent in (cwd, *cwd.parents):
        cand = parent / "shared"
        if (cand / "REFERENCE.md").is_file():
            return cand
    return None


def golden_dir(*parts: str) -> Path:
    """``shared/golden/<parts>``; skips the calling test when shared data is absent."""
    root = shared_dir()
    if root is None:
        import pytest

        if os.environ.get("ZOO_REQUIRE_SHARED"):
            pytest.fail("shared/ golden data not found and ZOO_REQUIRE_SHARED is set (set ZOO_SHARED_DIR)")
        pytest.skip("shared/ golden data not found (set ZOO_SHARED_DIR)")
    return root.joinpath("golden", *parts)


def core_conf_dir() -> Path:
    """zoo-core's config tree (``conf/``: the dataset configs zoo-core ships live in ``dataset/``)."""
    from zoo_core.config.confpaths import core_conf_dir as conf_dir

    return conf_dir()
