"""Reading an untrusted MATLAB 5 ``.mat`` file with ``scipy.io.loadmat``, safely.

``loadmat`` trusts what a file declares: a cell array's dimensions are allocated before its cells are read
(a 192-byte file declaring 300 million cells took 2.4 GB), an element's type code indexes a C table unchecked
and a size that overruns its parent misaligns the rest (one changed byte of a valid file segfaulted the
process), an unknown class raised ``UnboundLocalError``. So :func:`read_mat` first reads the file (at most
:func:`max_mat_bytes` bytes) and walks the elements ``loadmat`` would read, in the order it reads them:

* the 128-byte MATLAB 5 header (a v4 or v7.3 file is refused, the latter with its own message);
* each top-level variable: a matrix or a zlib-compressed matrix that fits in the file, decompressed only up
  to the size it declares (never more than the limit);
* for the requested variables, every element of every nested matrix: its declared size within its parent,
  the matrix's elements filling it exactly, cells, strings and numbers only (no struct, object, sparse,
  function or opaque class), known type codes, a cell count its bytes can hold, numbers that fill the
  declared dimensions, at most :data:`MAX_DEPTH` levels of nesting;
* for the other variables, the header ``loadmat`` reads before skipping them.

The memory ``loadmat`` would then use (about :data:`MATRIX_COST` bytes per matrix plus the data) must stay
below ``ZOO_MAX_MAT_MB`` MiB (default :data:`DEFAULT_MAX_MAT_MB`). Anything else is a :class:`ZooError` naming
the file, "not a readable MATLAB .mat file (<what>)". ``loadmat`` then reads the same bytes (not the path
again), and any exception it still raises becomes that error too.
"""
from __future__ import annotations

import io
import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from zoo_core.api.checkpoint import read_at_most
from zoo_core.api.errors import ConfigError, ZooError

#: Default of ``ZOO_MAX_MAT_MB``: the memory (MiB) reading one ``.mat`` file may take. The official WIDER FACE
#: val files need at most 8 MiB each; at the limit, checking and reading take a few seconds.
DEFAULT_MAX_MAT_MB = 256
#: The environment variable that overrides :data:`DEFAULT_MAX_MAT_MB`.
MAT_MB_ENV = "ZOO_MAX_MAT_MB"
#: Deepest nesting of matrices read (WIDER ground truth: a cell of cells of arrays, 3).
MAX_DEPTH = 32
#: Bytes one matrix costs once ``loadmat`` made it a numpy array, about (the data not counted; measured with
#: scipy 1.17: 1 million 1x1 arrays in a cell took 350 MB, 1 million empty ones 190 MB).
MATRIX_COST = 400
#: The same for an empty matrix (a tag declaring 0 bytes).
EMPTY_MATRIX_COST = 200
#: Longest variable name accepted (MATLAB's own limit is 63 characters).
MAX_NAME = 1024

_V73_HINT = "save it again from MATLAB with save(..., '-v7'), as the official files are"
_miINT8, _miINT32, _miUINT32, _miMATRIX, _miCOMPRESSED, _miUTF8 = 1, 5, 6, 14, 15, 16
#: Data type codes of numbers, with their item size.
_NUMBER_TYPES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8}
#: Data type codes ``loadmat`` decodes as characters, with the fewest bytes one character takes.
_CHAR_TYPES = {1: 1, 2: 1, 4: 2, 16: 1, 17: 2, 18: 4}
_CELL, _CHAR, _OPAQUE = 1, 4, 17
_NUMERIC_CLASSES = range(6, 16)
_CLASS_NAMES = {2: "struct", 3: "object", 5: "sparse", 16: "function", 17: "opaque"}
#: The most bytes a matrix header can take (tag, flags, 32 dims, a name of MAX_NAME): what is decompressed of a
#: variable that is not read.
_HEADER_BYTES = 8 + 16 + 8 + 128 + 8 + MAX_NAME + 8


class _Bad(Exception):
    """What makes the file unreadable; becomes the ZooError's reason."""


def max_mat_bytes() -> int:
    """``ZOO_MAX_MAT_MB`` (default :data:`DEFAULT_MAX_MAT_MB`) in bytes; :class:`ConfigError` if it is not a
    whole number >= 1."""
    raw = os.environ.get(MAT_MB_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_MAT_MB << 20
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) < 2**40:
        raise ConfigError(f"{MAT_MB_ENV}={raw!r} is invalid: it must be a whole number of MiB >= 1 "
                          f"(default {DEFAULT_MAX_MAT_MB})")
    return int(text) << 20


def read_mat(path: str | os.PathLike[str], variable_names: Sequence[str]) -> dict:
    """``scipy.io.loadmat(path, variable_names=...)`` after :func:`check_mat` found the file safe to read.

    :raises ZooError: naming the file: not a regular file, over the limit, a v4 or v7.3 file, or an element
        tree ``loadmat`` could not read safely or at all ("not a readable MATLAB .mat file (...)").
    """
    from zoo_core.datasets.deps import require

    sio = require("scipy.io", "reading WIDER FACE .mat files")
    limit = max_mat_bytes()
    data = read_at_most(path, limit, "WIDER FACE ground-truth file",  # a FIFO or a device: refused unopened
                        hint=f"a legitimate file this large: raise {MAT_MB_ENV}")
    p = Path(path).expanduser()
    check_mat(data, variable_names, limit, p)
    try:
        return sio.loadmat(io.BytesIO(data), variable_names=list(variable_names))
    except Exception as exc:  # what the walk let through is still scipy's error, never a traceback
        text = " ".join(str(exc).split())[:200]
        raise ZooError(f"not a readable MATLAB .mat file ({type(exc).__name__}: {text})", path=p) from None


def check_mat(data: bytes, variable_names: Sequence[str], limit: int, path: Path) -> None:
    """Refuse (:class:`ZooError` naming ``path``) MATLAB 5 bytes that ``loadmat`` could not read safely when
    asked for ``variable_names`` within ``limit`` bytes of memory; see the module docstring."""
    if len(data) < 128:
        raise ZooError(f"not a readable MATLAB .mat file (it is {len(data)} bytes, shorter than the 128-byte "
                       f"MATLAB header)", path=path)
    if 0 in data[:4]:
        raise ZooError("not a readable MATLAB .mat file (its first bytes are those of a MATLAB v4 file or of no .mat "
                       "file at all; WIDER FACE ground truth is a MATLAB 5 file)", path=path)
    version = data[124:128]
    major = version[int(version[2] == ord("I"))]  # the byte scipy reads the version from
    if major == 2:
        raise ZooError("a MATLAB v7.3 (HDF5) .mat file, which scipy cannot read", path=path, hint=_V73_HINT)
    if major != 1 or version[2:] not in (b"IM", b"MI"):
        raise ZooError(f"not a readable MATLAB .mat file (no MATLAB 5 version and endian mark: {version!r})",
                       path=path)
    walk = _Walk("<" if version[2:] == b"IM" else ">", limit)
    try:
        walk.file(data, list(variable_names))
    except _Bad as exc:
        raise ZooError(f"not a readable MATLAB .mat file ({exc})", path=path,
                       hint=f"a legitimate file that needs more memory: raise {MAT_MB_ENV}"
                       if "memory" in str(exc) else None) from None


def _inflate(d: zlib._Decompress, n: int) -> bytes:
    """The next ``n`` bytes (or fewer) ``d`` inflates; never more (zlib's ``max_length=0`` means no limit)."""
    return d.decompress(d.unconsumed_tail, n) if n > 0 else b""


class _Walk:
    def __init__(self, order: str, limit: int):
        self.u32x2 = struct.Struct(order + "II")
        self.dims = [struct.Struct(f"{order}{n}i") for n in range(33)]
        self.limit = limit
        self.cost = 0
        self.where = ""

    def charge(self, n: int) -> None:
        self.cost += n
        if self.cost > self.limit:
            raise _Bad(f"{self.where}: reading it would take more than the {self.limit >> 20} MiB of memory allowed "
                       f"by {MAT_MB_ENV}")

    def file(self, data: bytes, wanted: list[str]) -> None:
        """The top-level loop of ``loadmat``: until every wanted variable was read (or the file ends)."""
        pos, size = 128, len(data)
        while pos < size and wanted:
            self.where = f"the variable at byte {pos}"
            if pos + 8 > size:
                raise _Bad(f"{self.where}: the file ends inside its tag (truncated)")
            mdtype, count = self.u32x2.unpack_from(data, pos)
            if count == 0:
                raise _Bad(f"{self.where}: an empty element")
            end = pos + 8 + count
            if end > size:
                raise _Bad(f"{self.where} declares {count} bytes, but the file ends {size - pos - 8} bytes later "
                           "(truncated)")
            if mdtype == _miCOMPRESSED:
                buf = self.inflate(data, pos + 8, end, wanted)
                top, top_end = 0, len(buf)
            elif mdtype == _miMATRIX:
                buf, top, top_end = data, pos, end
            else:
                raise _Bad(f"{self.where}: type {mdtype} where a matrix or compressed matrix belongs")
            name = self.header(buf, top, top_end)[2]
            self.where = f"variable {name!r}"
            if name in wanted:  # loadmat reads the first variable of a wanted name, only the header of others
                wanted.remove(name)
                self.matrix(buf, top, top_end, 1)
            pos = end

    def inflate(self, data: bytes, start: int, end: int, wanted: list[str]) -> bytes:
        """The decompressed matrix of a compressed variable: all of it for a wanted variable (refused when it
        declares more than the memory limit), its header only for another."""
        d = zlib.decompressobj()
        try:
            buf = d.decompress(memoryview(data)[start:end], 8)
            if len(buf) < 8:
                raise _Bad(f"{self.where}: its compressed data ends before the matrix tag")
            mdtype, count = self.u32x2.unpack_from(buf, 0)
            if mdtype != _miMATRIX:
                raise _Bad(f"{self.where}: compressed type {mdtype} where a matrix belongs")
            head = buf + _inflate(d, min(count, _HEADER_BYTES))
            name = self.header(head, 0, min(len(head), 8 + count))[2]
            if name not in wanted:
                return head
            self.where = f"variable {name!r}"
            self.charge(8 + count)
            buf = head + _inflate(d, 8 + count - len(head))
            more = _inflate(d, 1)  # loadmat would inflate what follows in blocks of up to ~130 MB, then refuse it
        except zlib.error as exc:
            raise _Bad(f"{self.where}: its compressed data is corrupt ({exc})") from None
        if len(buf) != 8 + count:
            raise _Bad(f"{self.where}: its compressed data ends after {len(buf) - 8} of the {count} bytes its "
                       "matrix declares")
        if more:
            raise _Bad(f"{self.where}: its compressed data holds more than the {count} bytes its matrix declares")
        self.cost -= 8 + count  # the inflated copy is freed before loadmat runs
        return buf

    def tag(self, buf: bytes, pos: int, end: int, what: str) -> tuple[int, int, int, int]:
        """``(type, byte count, data start, next element)`` of the element at ``pos``, which must end by ``end``
        (a small data element holds up to 4 bytes in its tag)."""
        if pos + 8 > end:
            raise _Bad(f"{self.where}: its {what} runs past the end of its matrix")
        word, count = self.u32x2.unpack_from(buf, pos)
        if word >> 16:
            if word >> 16 > 4:
                raise _Bad(f"{self.where}: its {what} is a malformed small data element")
            return word & 0xFFFF, word >> 16, pos + 4, pos + 8
        nxt = pos + 8 + count + (-count % 8)
        if nxt > end:
            raise _Bad(f"{self.where}: its {what} element declares {count} bytes, more than its matrix holds")
        return word, count, pos + 8, nxt

    def header(self, buf: bytes, pos: int, end: int) -> tuple[int, int, str, list[int], int]:
        """``(class, flags, name, dims, next element)`` of the matrix at ``pos`` (a non-empty one), as
        ``read_header`` reads it."""
        if pos + 8 > end:
            raise _Bad(f"{self.where}: the data ends inside a matrix tag")
        mdtype, count = self.u32x2.unpack_from(buf, pos)
        if mdtype != _miMATRIX:
            raise _Bad(f"{self.where}: type {mdtype} where a matrix belongs")
        end = min(end, pos + 8 + count)
        if pos + 24 > end:
            raise _Bad(f"{self.where}: a matrix too short for its array flags")
        flag_tag = self.u32x2.unpack_from(buf, pos + 8)
        if flag_tag != (_miUINT32, 8):
            raise _Bad(f"{self.where}: malformed array flags {flag_tag}")
        flags = self.u32x2.unpack_from(buf, pos + 16)[0]
        cls, p = flags & 0xFF, pos + 24
        dims: list[int] = []
        if cls != _OPAQUE:
            mdtype, count, start, p = self.tag(buf, p, end, "dimensions")
            if mdtype not in (_miINT32, _miUINT32) or count % 4 or count > 128:
                raise _Bad(f"{self.where}: malformed dimensions (type {mdtype}, {count} bytes)")
            dims = list(self.dims[count // 4].unpack_from(buf, start))
            if dims and min(dims) < 0:
                raise _Bad(f"{self.where}: negative dimensions {dims}")
        mdtype, count, start, p = self.tag(buf, p, end, "name")
        raw = bytes(buf[start:start + count])
        if mdtype not in (_miINT8, _miUTF8) or count > MAX_NAME or (mdtype == _miUTF8 and not raw.isascii()):
            raise _Bad(f"{self.where}: malformed name (type {mdtype}, {count} bytes)")
        name = raw.decode("latin1") or "__function_workspace__"
        return cls, flags, name, dims, p

    def matrix(self, buf: bytes, pos: int, end: int, depth: int) -> int:
        """Check the matrix at ``pos`` (which must end by ``end``) and all it holds; return where it ends."""
        if pos + 8 > end:
            raise _Bad(f"{self.where}: a cell runs past the end of its parent")
        mdtype, size = self.u32x2.unpack_from(buf, pos)
        if mdtype != _miMATRIX:
            raise _Bad(f"{self.where}: type {mdtype} where a matrix belongs")
        mend = pos + 8 + size
        if mend > end:
            raise _Bad(f"{self.where}: a matrix declares {size} bytes, more than its parent holds")
        if size == 0:
            self.charge(EMPTY_MATRIX_COST)
            return mend
        self.charge(MATRIX_COST)
        if depth > MAX_DEPTH:
            raise _Bad(f"{self.where}: matrices nested more than {MAX_DEPTH} deep")
        cls, flags, _name, dims, p = self.header(buf, pos, mend)
        n = math.prod(dims)
        if cls == _CELL:
            if n * 8 > mend - p:
                raise _Bad(f"{self.where}: a cell array declares {n} cells ({'x'.join(map(str, dims))}), more than "
                           f"its {mend - p} bytes can hold")
            self.charge(8 * n)
            for _ in range(n):
                p = self.matrix(buf, p, mend, depth + 1)
        elif cls == _CHAR:
            mdtype, count, _start, p = self.tag(buf, p, mend, "characters")
            width = _CHAR_TYPES.get(mdtype)
            if width is None or n * width > count:
                raise _Bad(f"{self.where}: a {'x'.join(map(str, dims))} string stored as {count} bytes of type "
                           f"{mdtype}")
            self.charge(count + 16 * n)
        elif cls in _NUMERIC_CLASSES:
            complex_ = flags >> 11 & 1
            for part in ("real part", "imaginary part")[:1 + complex_]:
                mdtype, count, _start, p = self.tag(buf, p, mend, part)
                item = _NUMBER_TYPES.get(mdtype)
                if item is None or count != n * item:
                    raise _Bad(f"{self.where}: a {'x'.join(map(str, dims))} array whose {part} is {count} bytes of "
                               f"type {mdtype}")
                self.charge(count)
            self.charge(16 * n * complex_)  # the complex array made of the two parts
        else:
            raise _Bad(f"{self.where}: a {_CLASS_NAMES.get(cls, f'class {cls}')} matrix, which zoo does not read "
                       "(WIDER FACE ground truth holds cells, strings and numbers)")
        if p != mend:
            raise _Bad(f"{self.where}: a matrix declares {size} bytes but its elements end {mend - p} bytes "
                       "earlier")
        return mend
