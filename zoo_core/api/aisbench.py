"""ais_bench file conventions: raw ``.bin`` inputs, ``<stem>_<i>.bin`` outputs, dump discovery.

Inputs are raw little-endian C-order arrays with no header (what ``ais_bench --input`` reads).
Outputs follow ``{stem}_{index}.bin``; ais_bench numbers from 0, the legacy ``benchmark`` tool
from 1. Files are matched to images by stem, never by position.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from zoo_core.api.checkpoint import regular_file
from zoo_core.api.errors import InputError, ZooError
from zoo_core.api.types import TensorSpec

_SUFFIX = re.compile(r"^(?P<stem>.+)_(?P<idx>\d+)\.(?P<ext>bin|npy)$")


def write_bin(path: Path, array: np.ndarray) -> None:
    """Write one array as raw little-endian C-order bytes, no header (atomic)."""
    from zoo_core.api.atomic import write_bytes

    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    write_bytes(path, a.data.cast("B"))


#: Longest id accepted as a file stem (bytes, UTF-8): leaves room for ``_<index>.bin`` in 255.
MAX_STEM_BYTES = 200


def safe_stem(item_id: object, where: str | os.PathLike[str] | None = None, what: str = "id") -> str:
    """``item_id`` checked for use as a file stem; every id that becomes a file name goes through here.

    Refused (``InputError`` naming ``where`` and the id, never silently rewritten): non-strings, empty,
    ``.``/``..``, path separators, NUL or other control characters (a newline would break line-based
    files), lone surrogates no file name can hold, and ids longer than :data:`MAX_STEM_BYTES` bytes.
    ``what`` names the id in the message (``"id"``, ``"image stem"``, ``"event name"``...).
    """
    if not isinstance(item_id, str):
        raise InputError(f"{what} {item_id!r} is not a string", path=where)
    reason = stem_problem(item_id)
    if reason:
        raise InputError(f"unsafe {what} {item_id!r}: it {reason}, so it cannot name a file", path=where)
    return item_id


def stem_problem(item_id: str) -> str | None:
    """Why ``item_id`` cannot be a file stem (the reasons of :func:`safe_stem`), or ``None``."""
    if item_id in ("", ".", ".."):
        return "is empty or a relative path"
    if "/" in item_id or "\\" in item_id:
        return "contains a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in item_id):
        return "contains a control character"
    if not _encodable(item_id):
        return "contains a lone surrogate (not text a file name can hold)"
    if len(item_id.encode("utf-8", "surrogateescape")) > MAX_STEM_BYTES:
        return f"is longer than {MAX_STEM_BYTES} bytes"
    return None


def _encodable(text: str) -> bool:
    """``text`` encodes as a file name (UTF-8, or the undecodable bytes of one: ``surrogateescape``)."""
    try:
        os.fsencode(text)
    except UnicodeError:
        return False
    return True


def input_file(inputs_dir: str | os.PathLike[str], name: str, stem: str, multi: bool) -> Path:
    """Where one image's raw input tensor ``name`` lives in an inputs directory.

    A single-input model: ``<inputs_dir>/<stem>.bin`` (what ``ais_bench --input <inputs_dir>``
    reads). Several inputs (``multi``): one folder per graph input, ``<inputs_dir>/<name>/<stem>.bin``
    (``ais_bench --input <dir>/<name1>,<dir>/<name2>`` pairs the files by name). The name and stem
    go through :func:`safe_stem`.
    """
    d = Path(inputs_dir)
    return (d / safe_stem(name, d) / f"{safe_stem(stem, d)}.bin") if multi else d / f"{safe_stem(stem, d)}.bin"


def read_bin(path: str | os.PathLike[str], spec: TensorSpec, file_dtype: str | None = None) -> np.ndarray:
    """Read a raw ``.bin`` (or ``.npy``) holding ``spec.shape`` values, returned as ``spec.dtype``.

    A ``.npy`` must hold real numbers (float, int) in ``spec.shape``, leading axes of size 1 aside (the
    batch axis of one item that ais_bench keeps): an array of the right size in another shape (HWC for
    CHW) is an error naming the file, never reshaped into the spec.

    The file's element type is ``file_dtype`` (e.g. ``"float16"`` for a TorchAIE dump) or, by default,
    ``spec.dtype``: a file whose size does not match it exactly is an :class:`InputError` naming the
    file (a float32 file of half the size is never guessed to be float16).
    """
    path = regular_file(path, "file", InputError)  # a FIFO would block the read forever
    n = math.prod(int(d) for d in spec.shape)  # Python ints: no int64 wrap-around
    if path.suffix == ".npy":
        arr = _load_npy(path, spec)
        return arr.reshape(spec.shape).astype(spec.dtype, copy=False)
    size = path.stat().st_size
    dtype = np.dtype(file_dtype or spec.dtype)
    if size == n * dtype.itemsize:
        return np.fromfile(path, dtype=dtype.newbyteorder("<")).reshape(spec.shape).astype(spec.dtype, copy=False)
    hint = None
    if file_dtype is None and dtype == np.float32 and size == n * 2:
        hint = "if this dump holds float16 values, pass dump_dtype=float16"
    raise InputError(f"is {size} bytes; tensor {spec.name} {tuple(spec.shape)} as {dtype.name} needs "
                     f"{n * dtype.itemsize}", path=path, hint=hint)


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its leading axes of size 1 (an ais_bench ``.npy`` keeps the batch axis of one item)."""
    i = 0
    while i < len(shape) and shape[i] == 1:
        i += 1
    return tuple(int(d) for d in shape[i:])


def _load_npy(path: Path, spec: TensorSpec | None) -> np.ndarray:
    """``np.load`` without pickles, with its failures (garbage, object arrays, absurd headers) as InputError.

    The data size the header announces is compared with the file's before anything is allocated (a header
    announcing 40 GB in a 128-byte file is an error naming it, not a ``MemoryError``); with a ``spec``, so are
    the header's dtype and shape (a header announcing 600M values of the wrong shape is refused without
    loading 2.4 GB). Without one (zoo_core.compare's Ascend dump files) any non-object array is returned.
    """
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _order, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise InputError(f".npy format version {version} is not supported", path=path)
            if dtype.hasobject:
                raise InputError("holds Python objects (pickles are never loaded)", path=path)
            need = math.prod(int(d) for d in shape) * dtype.itemsize  # Python ints: no int64 wrap-around
            have = os.fstat(f.fileno()).st_size - f.tell()
            if need != have:
                announced = need if need < 10**30 else f"a {len(str(need))}-digit number of"
                raise InputError(f"its header announces {announced} bytes of data but the file holds {have}",
                                 path=path)
            if spec is not None and dtype.kind not in "fiu":
                raise InputError(f"holds {dtype} values; tensor {spec.name} needs real numbers ({spec.dtype})",
                                 path=path)
            if spec is not None and _strip_ones(tuple(shape)) != _strip_ones(tuple(spec.shape)):
                raise InputError(f"has shape {tuple(shape)}; tensor {spec.name} is {tuple(spec.shape)} (a leading "
                                 f"batch axis of 1 may be added; the axes are not reordered)", path=path)
            f.seek(0)  # the file whose header was checked, not one renamed into its place since
            return np.load(f, allow_pickle=False)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"not a valid .npy file ({exc})", path=path) from None


def output_path(out_dir: str | os.PathLike[str], stem: str, index: int, ext: str = "bin") -> Path:
    """``<out_dir>/<stem>_<index>.<ext>``: output ``index`` of one image, as ais_bench names it."""
    return Path(out_dir) / f"{stem}_{index}.{ext}"


def list_dump(root: str | os.PathLike) -> dict[str, dict[int, Path]]:
    """The output files of a dump, ``{stem: {index: path}}``: every ``<stem>_<i>.bin`` / ``.npy`` under ``root``,
    sub-directories included (listed, not opened). An output found twice is an :class:`InputError`."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("output directory not found", path=root)
    files: dict[str, dict[int, Path]] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            m = _SUFFIX.match(name)
            if not m:
                continue
            slot = files.setdefault(m["stem"], {})
            idx, here = int(m["idx"]), Path(dirpath) / name
            if idx in slot:
                raise InputError(f"output {name} appears twice: {slot[idx]} and {here} (two ais_bench "
                                 f"runs in one folder?); pass the run's own sub-directory", path=root)
            slot[idx] = here
    return files


class DumpDir:
    """An ais_bench (or legacy benchmark) output directory, indexed by stem.

    ``base`` is 0 for ais_bench (``_0.._n-1``) and 1 for the legacy tool (``_1.._n``), detected
    from the files present. Sub-directories are searched too (ais_bench nests timestamped dirs). An image
    whose stem holds a dot is found under ais_bench's name for it too (the stem cut at the first dot). Two images
    of one run that find the same files (``a.b`` and ``a.c``, or ``a`` and ``a.v2``: ais_bench wrote both as
    ``a_<i>.bin``, one over the other) are a :class:`ZooError` whichever is read first, never skipped by
    ``on_error=skip``: the first one may have been read with the other's outputs. ``files``: the dump's
    :func:`list_dump` listing when the caller made it already (the folder is then not walked again).
    """

    def __init__(self, root: str | os.PathLike, n_outputs: int, files: dict[str, dict[int, Path]] | None = None):
        self.root = Path(root)
        if files is None:
            files = list_dump(self.root)
        self.n_outputs = n_outputs
        self._files = files
        self._claims: dict[str, str] = {}  # dump stem -> the image stem that read its files
        indices = {i for d in files.values() for i in d}
        if not files:
            raise InputError("contains no <stem>_<i>.bin files", path=self.root)
        self.base = 1 if (0 not in indices and n_outputs in indices) else 0

    def _key(self, stem: str) -> str | None:
        """The stem the dump files of image ``stem`` carry: ``stem`` itself, or, as ais_bench names its outputs
        ``{basename.split('.')[0]}_{i}`` (REFERENCE 5.1), the part before the first dot; ``None`` if neither.
        Every image that finds files claims them, by an exact match too, so a second image finding the same ones
        is refused whichever of the two comes first."""
        if stem in self._files:
            key = stem
        else:
            key = stem.split(".")[0]
            if key == stem or key not in self._files:
                return None
        other = self._claims.setdefault(key, stem)
        if other != stem:
            raise ZooError(f"images {other!r} and {stem!r} both map to the outputs {key}_<i>.bin (ais_bench cuts "
                           "file names at the first '.'), so this dump cannot tell them apart", path=self.root,
                           hint="rename the images (no '.' in their stems) and run ais_bench again")
        return key

    def __contains__(self, stem: str) -> bool:
        return self._key(stem) is not None

    def stems(self) -> list[str]:
        """Every image stem with at least one output file, sorted."""
        return sorted(self._files)

    def paths(self, stem: str) -> list[Path]:
        """The output files of one image, in output order; InputError if any is missing or not a regular file."""
        key = self._key(stem)
        d = self._files.get(key) if key is not None else None
        if d is None:
            raise InputError(f"no output files for image {stem!r} ({len(self._files)} images have outputs there)",
                             path=self.root, hint="if preprocess/infer ran on a subset, repeat its dataset.limit / "
                                                  "dataset.shard here, or pass on_error=skip")
        out = []
        for i in range(self.base, self.base + self.n_outputs):
            if i not in d:
                raise InputError(f"missing output {key}_{i}.bin for image {stem!r}", path=self.root)
            out.append(regular_file(d[i], "output file", InputError))  # unopened: a FIFO would block forever
        return out

    def read(self, stem: str, specs: list[TensorSpec], file_dtype: str | None = None) -> list[np.ndarray]:
        """The outputs of one image as ``specs`` (see :func:`read_bin` for ``file_dtype``)."""
        return [read_bin(p, s, file_dtype) for p, s in zip(self.paths(stem), specs)]
