"""Loading CenterNet ``.pth`` checkpoints safely (``weights_only=True``) and strictly."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from zoo_core.api.errors import ZooError

IGNORED_PREFIXES = ("base.fc.",)
_MAX_LISTED = 20


def _strip_module(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _listing(title: str, keys: list[str]) -> str:
    shown = keys[:_MAX_LISTED]
    more = f" ... and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return f"{title} ({len(keys)}): {', '.join(shown)}{more}"


def read_state_dict(path) -> tuple[dict, int | None]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Accepts ``{'epoch': ..., 'state_dict': {...}, ...}`` (other top-level keys ignored) or a bare
    state dict. Strips a leading ``module.`` from every key and drops ``base.fc.*`` (the unused
    ImageNet classifier of the released file).

    :returns: ``(state_dict, epoch or None)``.
    :raises ZooError: the file is missing, is not a plain tensor checkpoint, or holds no state dict.
    """
    import torch

    from zoo_core.api.checkpoint import load_weights_only

    path = Path(path)
    obj = load_weights_only(path)

    epoch = None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        raw = obj["state_dict"]
        epoch = obj.get("epoch")
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raw = obj
    else:
        raise ZooError(
            "no state dict found: expected {'state_dict': {...}, ...} or a mapping of name -> tensor", path=path
        )
    bad = [str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ZooError(_listing("state dict entries that are not tensors", bad), path=path)
    state = {}
    for key, value in raw.items():
        key = _strip_module(str(key))
        if key.startswith(IGNORED_PREFIXES):
            continue
        state[key] = value
    if isinstance(epoch, torch.Tensor) and epoch.numel() == 1:
        epoch = epoch.item()
    return state, (int(epoch) if isinstance(epoch, (int, float)) else None)


def load_checkpoint(model, path) -> int | None:
    """Load a CenterNet checkpoint into ``model`` (key for key, no silent skips).

    :returns: the checkpoint's ``epoch``, or ``None`` if it has none.
    :raises ZooError: naming ``path`` and listing missing, unexpected and mis-shaped keys.
    """
    state, epoch = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {list(state[k].shape)} (model {list(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = [
            _listing(title, keys)
            for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                ("mis-shaped keys", misshaped))
            if keys
        ]
        raise ZooError("checkpoint does not match the model: " + "; ".join(parts), path=Path(path))
    model.load_state_dict(state, strict=True)
    return epoch
