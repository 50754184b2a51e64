"""ais_bench file conventions: raw ``.bin`` inputs, ``<stem>_<i>.bin`` outputs, dump discovery.

Inputs are raw little-endian C-order arrays with no header (what ``ais_bench --input`` reads).
Outputs follow ``{stem}_{index}.bin``; ais_bench numbers from 0, the legacy ``benchmark`` tool
from 1. Files are matched to images by stem, never by position.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from zoo_core.api.errors import InputError
from zoo_core.api.types import TensorSpec

_SUFFIX = re.compile(r"^(?P<stem>.+)_(?P<idx>\d+)\.(?P<ext>bin|npy)$")


def write_bin(path: Path, array: np.ndarray) -> None:
    """Write one array as raw little-endian C-order bytes, no header (atomic)."""
    from zoo_core.api.atomic import write_bytes

    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    write_bytes(path, memoryview(a).cast("B"))


def read_bin(path: Path, spec: TensorSpec, allow_fp16: bool = True) -> np.ndarray:
    """Read a raw ``.bin`` (or ``.npy``) as ``spec.shape``; float16 dumps (TorchAIE) are upcast.

    Raises :class:`InputError` naming the file when its size fits neither dtype.
    """
    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.size != int(np.prod(spec.shape)):
            raise InputError(f"has {arr.size} values, expected {int(np.prod(spec.shape))} for {spec.name} {spec.shape}",
                             path=path)
        return arr.reshape(spec.shape).astype(spec.dtype, copy=False)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    n = int(np.prod(spec.shape))
    dtype = np.dtype(spec.dtype)
    if size == n * dtype.itemsize:
        return np.fromfile(path, dtype=dtype.newbyteorder("<")).reshape(spec.shape).astype(dtype, copy=False)
    if allow_fp16 and dtype == np.float32 and size == n * 2:
        return np.fromfile(path, dtype="<f2").reshape(spec.shape).astype(np.float32)
    raise InputError(
        f"is {size} bytes; tensor {spec.name} {spec.shape} {spec.dtype} needs {n * dtype.itemsize}"
        + (f" (or {n * 2} as float16)" if dtype == np.float32 else ""),
        path=path,
    )


def output_path(out_dir: Path, stem: str, index: int, ext: str = "bin") -> Path:
    """``<out_dir>/<stem>_<index>.<ext>``: where ais_bench writes output ``index`` of image ``stem``."""
    return Path(out_dir) / f"{stem}_{index}.{ext}"


class DumpDir:
    """An ais_bench (or legacy benchmark) output directory, indexed by stem.

    ``base`` is 0 for ais_bench (``_0.._n-1``) and 1 for the legacy tool (``_1.._n``), detected
    from the files present. Sub-directories are searched too (ais_bench nests timestamped dirs).
    """

    def __init__(self, root: str | os.PathLike, n_outputs: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError("output directory not found", path=self.root)
        self.n_outputs = n_outputs
        files: dict[str, dict[int, Path]] = {}
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                m = _SUFFIX.match(name)
                if m:
                    files.setdefault(m["stem"], {})[int(m["idx"])] = Path(dirpath) / name
        self._files = files
        indices = {i for d in files.values() for i in d}
        if not files:
            raise InputError("contains no <stem>_<i>.bin files", path=self.root)
        self.base = 1 if (0 not in indices and n_outputs in indices) else 0

    def __contains__(self, stem: str) -> bool:
        return stem in self._files

    def stems(self) -> list[str]:
        """Every image stem with at least one output file, sorted."""
        return sorted(self._files)

    def paths(self, stem: str) -> list[Path]:
        """The output files of one image, in output order; InputError if any is missing."""
        d = self._files.get(stem)
        if d is None:
            raise InputError(f"no output files for image {stem!r}", path=self.root)
        out = []
        for i in range(self.base, self.base + self.n_outputs):
            if i not in d:
                raise InputError(f"missing output {stem}_{i}.bin for image {stem!r}", path=self.root)
            out.append(d[i])
        return out

    def read(self, stem: str, specs: list[TensorSpec]) -> list[np.ndarray]:
        """The outputs of image ``stem`` as arrays shaped by ``specs`` (``output_spec`` order), via :func:`read_bin`."""
        return [read_bin(p, s) for p, s in zip(self.paths(stem), specs)]
