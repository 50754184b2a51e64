"""Optional dependencies: import them where a feature needs them, or fail with the pip line that adds them.

PyTorch is an *extra* (``zoo-core[torch]``, ``zoo-centerface[torch]``, ...): the main job, ONNX Runtime
inference of an already-exported model, never imports it. Only building a model from its weights needs it
(the ``torch`` backend, ``stage=export``, checkpoints). Call :func:`require_torch` at the top of such
code instead of ``import torch``::

    torch = require_torch("building the mydet model", dist="zoo-mydet")

A missing torch then stops the run with one line naming the extra to install (exit code 2), not a
``ModuleNotFoundError`` traceback.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from zoo_core.api.errors import ZooError

#: PyTorch's index of CPU-only wheels (no CUDA packages): ``pip install torch --index-url <this>``.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class MissingDependencyError(ZooError):
    """An optional package that the requested feature needs is not installed."""


def require(module: str, feature: str, dist: str, extra: str) -> ModuleType:
    """Import and return ``module``, or raise :class:`MissingDependencyError` naming ``pip install '<dist>[<extra>]'``.

    Only a missing ``module`` (or one of its parent packages) is turned into that error; an installed
    but broken package raises its own error unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        parts = module.split(".")
        if exc.name not in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            raise  # something inside an installed package is missing: not ours to explain
        raise MissingDependencyError(
            f"{feature} needs {parts[0]}, which is not installed: pip install '{dist}[{extra}]'") from None


def require_torch(feature: str, dist: str = "zoo-core") -> ModuleType:
    """Import and return ``torch`` for ``feature`` (e.g. ``"the torch backend"``, ``"exporting centernet"``).

    :param feature: what needs torch, as the start of the sentence "<feature> needs torch, ...".
    :param dist: the distribution whose ``[torch]`` extra installs it (``zoo-core``, ``zoo-<model>``).
    :raises MissingDependencyError: torch is not installed (one line: ``pip install '<dist>[torch]'``).
    """
    return require("torch", feature, dist, "torch")
