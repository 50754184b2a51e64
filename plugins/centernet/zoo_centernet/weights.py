"""Loading CenterNet ``.pth`` checkpoints safely (``weights_only=True``) and strictly (zoo_core.api.checkpoint)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from zoo_core.api import checkpoint

if TYPE_CHECKING:
    import torch

#: The released ctdet_coco_dla_2x.pth carries the unused ImageNet classifier of its backbone.
IGNORED_PREFIXES = ("base.fc.",)


def _epoch(extras: dict[str, Any]) -> int | None:
    epoch = extras.get("epoch")
    if epoch is not None and hasattr(epoch, "numel") and epoch.numel() == 1:  # a one-element tensor
        epoch = epoch.item()
    return int(epoch) if isinstance(epoch, (int, float)) else None


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], int | None]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Accepts ``{'epoch': ..., 'state_dict': {...}, ...}`` (other top-level keys ignored) or a bare
    state dict. Strips a leading ``module.`` from every key and drops ``base.fc.*`` (the unused
    ImageNet classifier of the released file).

    :returns: ``(state_dict, epoch or None)``.
    :raises ZooError: the file is missing, is not a plain tensor checkpoint, or holds no state dict.
    """
    state, extras = checkpoint.read_state_dict(path, drop_prefixes=IGNORED_PREFIXES)
    return state, _epoch(extras)


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike[str]) -> int | None:
    """Load a CenterNet checkpoint into ``model`` (key for key, no silent skips).

    :returns: the checkpoint's ``epoch``, or ``None`` if it has none.
    :raises ZooError: naming ``path`` and listing missing, unexpected and mis-shaped keys.
    """
    return _epoch(checkpoint.load_checkpoint(model, path, drop_prefixes=IGNORED_PREFIXES))
