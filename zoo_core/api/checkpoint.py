"""Reading untrusted PyTorch checkpoints: ``torch.load(weights_only=True)`` with one-line errors.

``weights_only=True`` unpickles tensors and plain containers only; a file that references any other
Python callable (the way a malicious pickle runs code) is refused before anything is called.
"""
from __future__ import annotations

from pathlib import Path

from zoo_core.api.errors import ZooError


def unpickling_reason(exc: BaseException) -> str:
    """The informative part of torch's ``weights_only`` refusal (its advice to retry unsafely dropped)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Trying to load unsupported GLOBAL", "Unsupported global", "Unsupported operand")):
            return ln.rstrip(".")
    for ln in lines:
        if "WeightsUnpickler error" in ln:
            return ln.split("WeightsUnpickler error:", 1)[-1].strip() or ln
    return type(exc).__name__


def load_weights_only(path) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)``; :class:`ZooError` naming the file.

    A pickle that references anything but tensors and containers is refused (nothing in it runs);
    bytes that are no checkpoint at all get "not a PyTorch checkpoint".
    """
    import pickle

    from zoo_core.api.optional import require_torch

    torch = require_torch("loading a PyTorch checkpoint")

    path = Path(path)
    if not path.is_file():
        raise ZooError("weights file not found", path=path)
    if path.stat().st_size == 0:
        raise ZooError("weights file is empty (0 bytes)", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = unpickling_reason(exc)
        if "GLOBAL" in reason or "global" in reason:
            raise ZooError(f"refused to load (weights_only=True): the checkpoint references Python code, not only tensors "
                           f"({reason}); nothing from it was executed", path=path) from None
        raise ZooError(f"not a PyTorch checkpoint ({reason})", path=path) from None
    except Exception as exc:  # zip / EOF / ValueError / RuntimeError on non-checkpoint bytes
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ZooError(f"not a PyTorch checkpoint ({type(exc).__name__}: {text})", path=path) from None
