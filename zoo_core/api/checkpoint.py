"""Reading untrusted PyTorch checkpoints: ``torch.load(weights_only=True)`` with one-line errors.

``weights_only=True`` unpickles tensors and plain containers only; a file that references any other
Python callable (the way a malicious pickle runs code) is refused before anything is called.

A plugin's ``build_model`` loads its weights with :func:`load_checkpoint`: the checkpoint must fit
the network key for key (nothing silently skipped or left at its initial value); otherwise one
:class:`ZooError` names the file and lists the missing, unexpected and mis-shaped keys. Two keys that
are one once ``module.`` is stripped (``k`` and ``module.k``) and NaN/inf values in a floating-point
tensor are refused too, naming the key, and so are tensors whose elements take more bytes than their
storage holds (an expanded view: a few bytes on disk, terabytes once ``isfinite`` visits every element).

Before ``torch.load`` reads anything, the file must be a regular file (not a directory, FIFO or
device such as ``/dev/zero``: :func:`regular_file`), and a zip checkpoint may not decompress to more
than ``ZOO_MAX_CHECKPOINT_RATIO`` times its own size (default :data:`DEFAULT_MAX_RATIO`), read from
its central directory, so a small deflate bomb is refused before anything is inflated
(:func:`check_inflation`). ``torch.save`` stores its entries uncompressed (ratio <= 1).
"""
from __future__ import annotations

import math
import os
import stat
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo_core.api.errors import ConfigError, ZooError
from zoo_core.printable import printable

if TYPE_CHECKING:
    import torch

#: Keys listed per kind in a mismatch message (then "... and N more").
MAX_LISTED = 20

#: Default bound of (bytes a zip checkpoint decompresses to) / (its size on disk).
DEFAULT_MAX_RATIO = 10.0
#: The environment variable that overrides :data:`DEFAULT_MAX_RATIO`.
RATIO_ENV = "ZOO_MAX_CHECKPOINT_RATIO"
_ZIP_MAGIC = b"PK\x03\x04"

#: The most bytes :func:`read_at_most` reads of one of zoo's own JSON / YAML records (``run.json``, ``metrics.json``,
#: ``perf.json``, ``detections/state.json``, Hydra's ``.hydra/*.yaml``): they take kilobytes.
MAX_RECORD_BYTES = 64 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a ``st_mode`` that is not a regular file's is, for an error message: ``"a directory"``,
    ``"a FIFO (named pipe)"``, ``"a character device"``... (``"not a regular file"`` for any other)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def regular_file(path: str | os.PathLike[str], what: str = "weights file",
                 error: type[ZooError] = ZooError, missing_hint: str | None = None) -> Path:
    """``path`` if it is a regular file (symlinks followed); ``error`` (a :class:`ZooError`) naming it otherwise.

    Directories, FIFOs and devices (``/dev/zero``) are refused from ``stat`` alone, without opening
    them, so nothing blocks or reads forever. ``error=InputError`` for one input of many (a dump's output
    file), which ``on_error=skip`` may skip. ``missing_hint``: the error's hint when nothing is at ``path``
    (which file it should be, where to get it).
    """
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise error(f"{what} not found", path=p, hint=missing_hint) from None
    except OSError as exc:
        raise error(f"cannot read the {what}: {exc.strerror or exc}", path=p) from None
    if not stat.S_ISREG(mode):
        raise error(f"{what} is {file_kind(mode)}, not a regular file", path=p)
    return p


def read_at_most(path: str | os.PathLike[str], limit: int, what: str = "file", error: type[ZooError] = ZooError,
                 hint: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` when it holds at most ``limit`` bytes; ``error`` naming it otherwise.

    A directory, FIFO or device (``/dev/zero``) is refused by :func:`regular_file`, unopened; a larger file by
    its size, unread: ``"<path>: not read: it is N bytes, over the limit of M MiB for a <what>"`` (``hint``:
    how to raise the limit, when it can be). A file growing meanwhile is never read past ``limit``.
    """
    p = regular_file(path, what, error)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # (swapped for a FIFO since: no block)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise error(f"{what} is not a regular file", path=p)
            data = f.read(st.st_size) if st.st_size <= limit else b""  # (read(n) allocates n bytes first)
            while st.st_size <= limit and len(data) <= limit:  # grown since: to its end, or past the limit
                more = f.read(min(1 << 20, limit + 1 - len(data)))
                if not more:
                    break
                data += more
            if st.st_size > limit or len(data) > limit:
                raise error(f"not read: it is {max(st.st_size, len(data))}{'' if st.st_size > limit else '+'} "
                            f"bytes, over the limit of {_mib(limit)} for a {what}", path=p, hint=hint)
            return data
    except OSError as exc:
        raise error(f"cannot read the {what} ({exc.strerror or exc})", path=p) from None


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n} bytes"


def max_checkpoint_ratio() -> float:
    """``ZOO_MAX_CHECKPOINT_RATIO`` (default :data:`DEFAULT_MAX_RATIO`); :class:`ConfigError` if it is not a
    number >= 1."""
    raw = os.environ.get(RATIO_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_RATIO
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise ConfigError(f"{RATIO_ENV}={raw!r} is invalid: it must be a number >= 1 (default {DEFAULT_MAX_RATIO:g})")
    return value


def check_inflation(path: str | os.PathLike[str]) -> None:
    """Refuse a zip checkpoint whose entries decompress to more than :func:`max_checkpoint_ratio` times the
    file's size (sizes from the central directory, nothing is decompressed); other files pass."""
    p = Path(path)
    with open(p, "rb") as f:
        if f.read(4) != _ZIP_MAGIC:
            return  # the legacy (pre-1.6) torch format reads its storages from the file itself
    size = p.stat().st_size
    try:
        with zipfile.ZipFile(p) as zf:
            total = sum(max(info.file_size, 0) for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ZooError(f"not a PyTorch checkpoint (unreadable zip: {exc})", path=p) from None
    ratio = max_checkpoint_ratio()
    if total > ratio * max(size, 1):
        raise ZooError(f"refused to load: its zip entries decompress to {total} bytes, {total / max(size, 1):.0f}x "
                       f"its size of {size} bytes (limit {ratio:g}x); nothing was decompressed", path=p,
                       hint=f"a legitimate, highly compressed checkpoint: raise {RATIO_ENV}")


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


def load_weights_only(path: str | os.PathLike[str]) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)``; :class:`ZooError` naming the file.

    A pickle that references anything but tensors and containers is refused (nothing in it runs);
    bytes that are no checkpoint at all get "not a PyTorch checkpoint"; a directory, FIFO or device
    is refused unopened (:func:`regular_file`), and so is a zip that would inflate past
    :func:`max_checkpoint_ratio` times its size (:func:`check_inflation`).
    """
    import pickle

    from zoo_core.api.optional import require_torch

    torch = require_torch("loading a PyTorch checkpoint")

    path = regular_file(path)
    if path.stat().st_size == 0:
        raise ZooError("weights file is empty (0 bytes)", path=path)
    check_inflation(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = unpickling_reason(exc)
        if "GLOBAL" in reason or "global" in reason:
            raise ZooError("refused to load (weights_only=True): the checkpoint references Python code, "
                           f"not only tensors ({reason}); nothing from it was executed", path=path) from None
        raise ZooError(f"not a PyTorch checkpoint ({reason})", path=path) from None
    except Exception as exc:  # zip / EOF / ValueError / RuntimeError on non-checkpoint bytes
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ZooError(f"not a PyTorch checkpoint ({type(exc).__name__}: {text})", path=path) from None


def _listing(title: str, keys: Sequence[str]) -> str:
    """``title (n): k1, k2 ... and m more``; a key's control characters and newlines shown as escapes (a key is
    the checkpoint's text, not zoo's: it must not erase the error line or start one of its own)."""
    shown = [printable(k, newlines=False) for k in keys[:MAX_LISTED]]
    more = f" ... and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return f"{title} ({len(keys)}): {', '.join(shown)}{more}"


def read_state_dict(path: str | os.PathLike[str], *, strip_prefix: str = "module.",
                    drop_prefixes: Sequence[str] = ()) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: ``(state_dict, other top-level entries)``.

    Accepts ``{'state_dict': {...}, 'epoch': ..., ...}`` (the other entries are returned as the
    second item) or a bare mapping of name -> tensor (then the second item is ``{}``). A leading
    ``strip_prefix`` (``module.``, what ``DataParallel`` adds) is removed from every key, and keys
    starting with any of ``drop_prefixes`` (parts of a released file the network does not have,
    e.g. an unused classifier) are dropped.

    :raises ZooError: naming the file: missing, empty, not a checkpoint, references Python code,
        holds no state dict, holds state-dict entries that are not tensors, holds two keys that
        are the same once ``strip_prefix`` is removed (``k`` and ``module.k``), holds a tensor that is
        not dense or whose elements take more bytes than its storage (an expanded view such as
        ``torch.zeros(1).expand(10**12)``: a few bytes on disk, terabytes once visited), tensors adding up
        to more than :func:`max_checkpoint_ratio` times the file's size, or a floating-point tensor with
        a NaN or inf value (the first such key is named). The sizes are checked before any element is read.
    """
    import torch

    path = Path(path)
    obj = load_weights_only(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        raw: Mapping[Any, Any] = obj["state_dict"]
        extras = {str(k): v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raw, extras = obj, {}
    else:
        raise ZooError("no state dict found: expected {'state_dict': {...}, ...} or a mapping of name -> tensor",
                       path=path)
    bad = [str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ZooError(_listing("state dict entries that are not tensors", bad), path=path)
    state: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}  # stripped name -> the key it came from
    for key, value in raw.items():
        name = str(key)
        if strip_prefix and name.startswith(strip_prefix):
            name = name[len(strip_prefix):]
        if name.startswith(tuple(drop_prefixes)):
            continue
        if name in source:
            raise ZooError(f"ambiguous state dict: keys {source[name]!r} and {str(key)!r} both name {name!r} once "
                           f"the {strip_prefix!r} prefix is removed; refusing to pick one", path=path)
        source[name] = str(key)
        state[name] = value
    _check_tensor_sizes(state, source, path)  # before any operation that visits every element
    for name, value in state.items():
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise ZooError(f"state dict entry {source[name]!r} holds NaN or inf values; refusing to load it",
                           path=path)
    return state, extras


def _check_tensor_sizes(state: Mapping[str, torch.Tensor], source: Mapping[str, str], path: Path) -> None:
    """Refuse entries that would make a full-tensor operation allocate more than the file holds.

    ``torch.load(weights_only=True)`` accepts a tensor whose strides overlap (``torch.zeros(1).expand(N)``,
    a few bytes in the file); ``isfinite`` / ``copy_`` on it then visit, and allocate for, all N elements.
    Refused: a tensor that is not dense (sparse, ...), one whose elements take more bytes than its storage
    holds (an expanded or overlapping view), and entries whose elements add up to more than
    :func:`max_checkpoint_ratio` times the file's size. Sizes are Python ints (no wrap-around).
    """
    import torch

    total = 0
    for name, value in state.items():
        if value.layout != torch.strided:
            raise ZooError(f"state dict entry {source[name]!r} is a {str(value.layout).replace('torch.', '')} tensor; "
                           "only dense tensors are loaded", path=path)
        need = math.prod(int(d) for d in value.shape) * value.element_size()
        held = value.untyped_storage().nbytes()
        if need > held:
            raise ZooError(f"state dict entry {source[name]!r} of shape {list(value.shape)} needs {need} bytes but "
                           f"its storage holds {held} (an expanded or overlapping view); refusing to load it",
                           path=path, hint="save a plain copy of the tensor (tensor.clone()), not an expanded view")
        total += need
    size = path.stat().st_size
    ratio = max_checkpoint_ratio()
    if total > ratio * max(size, 1):
        raise ZooError(f"refused to load: its state dict tensors hold {total} bytes, {total / max(size, 1):.0f}x its "
                       f"size of {size} bytes (limit {ratio:g}x)", path=path,
                       hint=f"tensors sharing one storage many times over; if legitimate, raise {RATIO_ENV}")


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading strictly into a network whose ``state_dict()`` is ``expected``.

    ``"missing keys (n): ...; unexpected keys (n): ...; mis-shaped keys (n): k [3, 256] (model [80, 256])"``
    (only the non-empty kinds, in the network's key order), or ``None`` when every key and shape fits.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {list(state[k].shape)} (model {list(v.shape)})"
                 for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = [_listing(title, keys) for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                      ("mis-shaped keys", misshaped)) if keys]
    return "; ".join(parts) or None


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *,
                           path: str | os.PathLike[str], network: str = "the model", hint: str | None = None) -> None:
    """``model.load_state_dict(state, strict=True)`` after checking every key and shape.

    :param path: the checkpoint the state came from (named in the error).
    :param network: how the message names the model (e.g. ``"the centerface ascend network (head_conv=64)"``).
    :raises ZooError: ``<path>: checkpoint does not match <network>: missing keys (n): ...`` (see
        :func:`state_dict_mismatch`), with ``hint``.
    """
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        raise ZooError(f"checkpoint does not match {network}: {problem}", path=Path(path), hint=hint)
    model.load_state_dict(state, strict=True)


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike[str], *, strip_prefix: str = "module.",
                    drop_prefixes: Sequence[str] = (), network: str = "the model",
                    hint: str | None = None) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``model`` strictly (:func:`read_state_dict` then
    :func:`load_state_dict_strict`); returns the checkpoint's other top-level entries (``epoch``...)."""
    state, extras = read_state_dict(path, strip_prefix=strip_prefix, drop_prefixes=drop_prefixes)
    load_state_dict_strict(model, state, path=path, network=network, hint=hint)
    return extras
