"""Optional third-party modules of the dataset API, imported on first use with an install hint."""
from __future__ import annotations

import importlib
from types import ModuleType

from zoo_core.api.errors import ZooError

#: The zoo-core extra that brings every optional module of the dataset API.
EXTRA = "eval"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`ZooError` saying which extra installs it.

    :param module: the importable name (``"scipy.io"``, ``"skimage.data"``...).
    :param purpose: what needs it, for the message (``"reading WIDER FACE .mat files"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise ZooError(f"{purpose} needs the Python package {top!r}, which is not installed ({exc})",
                       hint=f"pip install 'zoo-core[{EXTRA}]'") from None
