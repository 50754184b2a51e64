"""Loading CenterNet ``.pth`` checkpoints safely (``weights_only=True``) and strictly (zoo_core.api.checkpoint)."""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from zoo_core.api import checkpoint
from zoo_core.api.errors import ZooError

if TYPE_CHECKING:
    import torch

#: The released ctdet_coco_dla_2x.pth carries the unused ImageNet classifier of its backbone.
IGNORED_PREFIXES = ("base.fc.",)


def _epoch(extras: dict[str, Any], path: str | os.PathLike[str]) -> int | None:
    """The checkpoint's ``epoch`` entry as an int (``None`` when absent); anything but a whole number
    (NaN, inf, 1.5, a string, a bigger tensor) is a :class:`ZooError` naming the file."""
    epoch = extras.get("epoch")
    if epoch is None:
        return None
    if hasattr(epoch, "numel") and epoch.numel() == 1:  # a one-element tensor
        epoch = epoch.item()
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch) \
            or epoch != int(epoch):
        shown = repr(epoch) if isinstance(epoch, (int, float, str)) else type(epoch).__name__
        raise ZooError(f"checkpoint entry 'epoch' is {shown[:40]}: expected a whole number (or no 'epoch' entry)",
                       path=path)
    return int(epoch)


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], int | None]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Accepts ``{'epoch': ..., 'state_dict': {...}, ...}`` (other top-level keys ignored) or a bare
    state dict. Strips a leading ``module.`` from every key and drops ``base.fc.*`` (the unused
    ImageNet classifier of the released file).

    :returns: ``(state_dict, epoch or None)``.
    :raises ZooError: the file is missing, is not a plain tensor checkpoint, holds no state dict, or
        its ``epoch`` is not a whole number.
    """
    state, extras = checkpoint.read_state_dict(path, drop_prefixes=IGNORED_PREFIXES)
    return state, _epoch(extras, path)


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike[str]) -> int | None:
    """Load a CenterNet checkpoint into ``model`` (key for key, no silent skips).

    :returns: the checkpoint's ``epoch``, or ``None`` if it has none.
    :raises ZooError: naming ``path`` and listing missing, unexpected and mis-shaped keys.
    """
    state, epoch = read_state_dict(path)  # the epoch is checked before anything is loaded
    checkpoint.load_state_dict_strict(model, state, path=path)
    return epoch
