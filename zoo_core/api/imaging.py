"""Image decoding with OpenCV's default colour flag (what every reference pipeline used)."""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, overload

import numpy as np

from zoo_core.api.checkpoint import regular_file
from zoo_core.api.errors import ConfigError, InputError

#: File suffixes :func:`list_images` picks up (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: Default largest image (in pixels) decoded without complaint; bigger files are refused before
#: decoding so memory stays bounded (a 20000x20000 RGB image would need 1.2 GB).
#: ``ZOO_MAX_IMAGE_PIXELS`` overrides it (see :func:`max_image_pixels`).
MAX_PIXELS = 100_000_000
#: The environment variable that overrides :data:`MAX_PIXELS`.
PIXELS_ENV = "ZOO_MAX_IMAGE_PIXELS"
#: The largest JPEG without an end-of-image marker (cut short or corrupt) decoded from memory; a bigger one is
#: refused as not decodable.
_WHOLE_JPEG_MAX = 64 << 20
#: OpenCV's own guard for formats whose header is not parsed here; OpenCV reads it at its first decode
#: and aborts the process on a value it cannot parse, so zoo sets it only from a checked value.
OPENCV_PIXELS_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"


def _positive_int(name: str, raw: str) -> int:
    text = raw.strip().replace("_", "")
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) < 2**63:
        raise ConfigError(f"{name}={raw!r} is invalid: it must be a whole number of pixels from 1 to 2**63-1, "
                          f"written with digits only (e.g. {MAX_PIXELS})")
    return int(text)


def max_image_pixels() -> int:
    """The pixel limit: ``ZOO_MAX_IMAGE_PIXELS`` (default :data:`MAX_PIXELS`).

    Also checks ``OPENCV_IO_MAX_IMAGE_PIXELS`` when the user set it, and sets it to the limit when
    not, so OpenCV never sees a value it would abort on.

    :raises ConfigError: either variable is not a whole number >= 1 (``-1``, ``abc``, ``1e9``).
    """
    raw = os.environ.get(PIXELS_ENV)
    limit = MAX_PIXELS if raw is None or raw.strip() == "" else _positive_int(PIXELS_ENV, raw)
    cv = os.environ.get(OPENCV_PIXELS_ENV)
    if cv is None:
        os.environ[OPENCV_PIXELS_ENV] = str(limit)
    else:
        _positive_int(OPENCV_PIXELS_ENV, cv)
    return limit


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Return what ``cv2.imread(path)`` returns: HxWx3 BGR uint8, grayscale expanded to 3 equal
    channels, alpha dropped, EXIF orientation applied, 16-bit reduced to 8 bits (``>> 8``). One exception: a
    JPEG whose image data stops early (cut short) or is corrupt, whose rows ``cv2.imread`` fills with gray
    (or garbage) and returns, is refused, with or without its end-of-image marker: libjpeg's warning on
    stderr is captured for every decode and a "premature end", "bad Huffman code", "bad arithmetic code" or
    missing restart marker refuses the file (a JPEG whose image data is whole but whose end-of-image marker
    is missing reads as ``cv2.imread`` reads it). libjpeg prints only its first warning, and damage that
    decodes to valid codes makes none: such a file is read as ``cv2.imread`` reads it.

    Raises :class:`InputError` naming the file for a missing, unreadable (permissions), empty, undecodable
    (corrupt, truncated, not an image, or a format OpenCV cannot decode: OpenCV's logged reason is in the
    message), oversized or not regular (a FIFO, a device, a directory) file. The size
    limit (:func:`max_image_pixels`) is checked from the PNG / JPEG / BMP header before any pixel is
    decoded, so memory stays bounded; other formats rely on OpenCV's ``OPENCV_IO_MAX_IMAGE_PIXELS`` (set to
    the same limit). The file is not read whole into memory: the header check reads the bytes it needs and
    ``cv2.imread`` decodes the open file (a 64x64 JPEG followed by gigabytes of anything reads as
    ``cv2.imread`` reads it, in a few MB). Only a JPEG that has no end-of-image marker where libjpeg would look
    for it (cut short, corrupt, or only missing its last 2 bytes) is decoded from memory with
    ``cv2.imdecode`` and the marker added (the pixels ``cv2.imread`` gives); over 64 MiB it is refused unread.
    What OpenCV and libjpeg print while decoding is captured (fd 2 goes to an in-memory file for the call)
    and, unless it is folded into an error, written back to stderr.
    Raises :class:`ConfigError` when ``ZOO_MAX_IMAGE_PIXELS`` is invalid.
    """
    limit = max_image_pixels()  # before OpenCV's first decode (it reads its own variable then)
    import cv2

    p = regular_file(path, "image file", InputError)  # unopened: a FIFO would block, /dev/zero never end
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:  # (removed since regular_file looked)
        raise InputError("image file not found", path=p) from None
    except OSError as exc:  # unreadable (permissions), an I/O error: this image's error, like a corrupt one
        raise InputError(f"cannot read the image file: {exc.strerror or exc}", path=p) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise InputError("image file is empty (0 bytes)", path=p)
        head = _FileBytes(f, size)
        _check_dimensions(head, p, limit)
        jpeg = head[:3] == b"\xff\xd8\xff"
        lines: list[str] = []
        # (the file on fd 2, the process having started without a stderr: redirecting fd 2 would hide the image)
        capture = _captured if f.fileno() > 2 else _uncaptured
        try:
            if not jpeg or _jpeg_ends(head):
                img, lines = capture(lambda: _decode(cv2, f, p))
            elif size <= _WHOLE_JPEG_MAX:  # libjpeg would run out of data: decoded from memory with an end marker
                f.seek(0)
                buf = np.frombuffer(f.read() + b"\xff\xd9", np.uint8)
                img, lines = capture(lambda: cv2.imdecode(buf, cv2.IMREAD_COLOR))
            else:
                img = None
        except cv2.error as exc:  # OpenCV's own checks, for what _header_dims cannot read (TIFF, WebP...)
            if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
                raise InputError(f"image is larger than the limit of {os.environ.get(OPENCV_PIXELS_ENV, limit)} "
                                 f"pixels (OpenCV refused to decode it)", path=p,
                                 hint="resize it, or raise ZOO_MAX_IMAGE_PIXELS") from None
            reason = " ".join(str(exc).split())[:200]
            raise InputError(f"not a decodable image (OpenCV: {reason})", path=p) from None
        fd_name = f"/proc/self/fd/{f.fileno()}"
    lines = [ln.replace(fd_name, os.fspath(p)) for ln in lines]
    if img is None:
        _write_back([ln for ln in lines if not _decoder_line(ln)])  # (another thread's output, kept)
        reason = _opencv_reason([ln for ln in lines if _decoder_line(ln)])
        raise InputError(f"not a decodable image: OpenCV could not decode it: {reason}" if reason else
                         "not a decodable image (corrupt, truncated or not an image file)", path=p)
    if jpeg:
        damaged = next((ln for ln in lines if _JPEG_REFUSED.match(ln.strip())), None)
        if damaged is not None:
            _write_back([ln for ln in lines if ln is not damaged])
            _refuse_damaged_jpeg(damaged.strip(), p)
    _write_back(lines)  # what cv2.imread would have printed too (a harmless libjpeg warning), or another thread's
    return img


def _write_back(lines: list[str]) -> None:
    """Print ``lines`` on fd 2, as the decoder (or the thread that wrote them) would have; a stderr nobody reads
    (a closed pipe, ``/dev/full``) loses them quietly, as the decoder's own write did."""
    if lines:
        with contextlib.suppress(OSError):
            os.write(2, ("\n".join(lines) + "\n").encode())


def _uncaptured(decode: Callable[[], _T]) -> tuple[_T, list[str]]:
    """``decode()`` with fd 2 left as it is (nothing captured)."""
    return decode(), []


_T = TypeVar("_T")
#: fd 2 is the process's: one capture at a time.
_CAPTURE_LOCK = threading.Lock()


def _captured(decode: Callable[[], _T]) -> tuple[_T, list[str]]:
    """``decode()`` and the lines written on file descriptor 2 meanwhile: libjpeg prints its warnings there
    (that a JPEG's data stops early or is corrupt), OpenCV its log (why ``cv2.imread`` gave None), and neither
    can be asked otherwise. fd 2 goes to an in-memory file for the call (a few microseconds); a process without
    an fd 2 decodes uncaptured."""
    with _CAPTURE_LOCK:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, or replaced by something odd
            sys.stderr.flush()
        try:
            sink = os.memfd_create("zoo-imread-stderr", os.MFD_CLOEXEC) if hasattr(os, "memfd_create") else None
        except OSError:
            sink = None
        if sink is None:
            with tempfile.TemporaryFile() as tmp:
                sink = os.dup(tmp.fileno())
        try:
            try:
                saved = os.dup(2)
            except OSError:  # no fd 2
                return decode(), []
            try:
                os.dup2(sink, 2)
                try:
                    result = decode()
                finally:
                    os.dup2(saved, 2)
            finally:
                os.close(saved)
            n = os.fstat(sink).st_size
            text = os.pread(sink, n, 0).decode("utf-8", "replace") if n else ""
        finally:
            os.close(sink)
    return result, [ln for ln in text.splitlines() if ln.strip()]


#: The start of an OpenCV log line: ``[ERROR:0@0.019] global loadsave.cpp:612 imread_ ``.
_LOG_PREFIX = re.compile(r"^\[[A-Z]+:[^\]]*\]\s+(?:global\s+)?\S+:\d+\s+\S+\s+")
#: What names the decoder's call, not the reason: ``imread_('<name>'): `` and
#: ``OpenCV(5.0.0) <source>:604: error: (-2:Unspecified error) in function '<signature>'``.
_LOG_NOISE = re.compile(r"imread_\('[^']*'\):\s*|OpenCV\([^)]*\)\s+\S+:\d+:\s+error:\s+\([^)]*\)"
                        r"(?:\s+in function '[^']*')?\s*")


def _opencv_reason(lines: list[str]) -> str:
    """What the lines OpenCV and its decoders (libjpeg, libpng, libtiff) printed say about why a decode gave None,
    on one line: log prefixes, the file name it was read by and OpenCV's source locations left out."""
    parts: list[str] = []
    for ln in lines:
        text = _LOG_NOISE.sub("", _LOG_PREFIX.sub("", ln.strip()))
        if ln.lstrip().startswith(">") and parts:  # continuation of the last log message
            parts[-1] = f"{parts[-1]} {text.lstrip('> ')}"
        elif text:
            parts.append(text)
    reason = "; ".join(" ".join(part.split()) for part in parts)
    return reason if len(reason) <= 300 else reason[:297] + "..."


#: libjpeg's warnings after which ``cv2.imread`` returns rows it did not decode (gray, or garbage), as libjpeg writes
#: them (a whole line, so another thread's line that quotes one, e.g. zoo's own "skipped <image>: ..." log line,
#: is not taken for one): the data stops early ("premature end of data segment", "Premature end of JPEG file"), a
#: code is invalid, or a restart marker is missing. Warnings that leave the pixels as the encoder made them
#: (extraneous bytes before a marker, a bad ICC profile, an unknown JFIF version) are not among them.
_JPEG_REFUSED = re.compile(r"^(?:Premature end of JPEG file|Corrupt JPEG data: (?:premature end of data segment|"
                           r"bad Huffman code|bad arithmetic code|found marker 0x[0-9a-fA-F]{2} instead of RST\d))$")
#: What OpenCV and the decoders under it write on fd 2 (an OpenCV log line and its ``>`` continuations, libjpeg's
#: warnings and errors, libpng's, libtiff's, libwebp's): the lines an undecodable image's reason is taken from.
_DECODER_LINE = re.compile(r"^\s*(?:\[\s*(?:ERROR|WARN|INFO|DEBUG|FATAL)[:\]]|>|OpenCV\(|Corrupt JPEG data|"
                           r"Premature end|Not a JPEG|Invalid JPEG|Bogus|Unsupported|Improper|libpng|TIFF|WebP|Error|"
                           r"Warning)")


def _decoder_line(line: str) -> bool:
    return bool(_DECODER_LINE.match(line))


def _refuse_damaged_jpeg(warning: str, p: Path) -> None:
    """Refuse a JPEG whose decode made libjpeg print ``warning`` (one of :data:`_JPEG_REFUSED`): image data is
    missing or corrupt (libjpeg prints only its first warning)."""
    if "premature end" in warning.lower():
        raise InputError(f"not a decodable image: a JPEG cut short, its image data stops before the last row "
                         f"(libjpeg: {warning}; cv2.imread would fill the rest with gray)", path=p)
    raise InputError(f"not a decodable image: a corrupt JPEG, its image data is damaged (libjpeg: {warning}; "
                     f"cv2.imread would decode wrong or gray rows from there)", path=p)


def _decode(cv2: Any, f: BinaryIO, p: Path) -> np.ndarray | None:
    """``cv2.imread`` of the open file ``f`` (so the file checked is the file decoded): through
    ``/proc/self/fd`` where there is one, a name OpenCV can take for any path (OpenCV crashes on a
    ``str`` that is not valid UTF-8, which a Linux file name may be); else the path, or for a name OpenCV
    cannot take, ``cv2.imdecode`` of the bytes."""
    fd_path = f"/proc/self/fd/{f.fileno()}"
    if os.path.exists(fd_path):
        return cv2.imread(fd_path, cv2.IMREAD_COLOR)
    name = os.fspath(p)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # no /proc and a name OpenCV cannot take: decode the bytes from memory
        return cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
    return cv2.imread(name, cv2.IMREAD_COLOR)


class _FileBytes:
    """The bytes of an open file as :func:`_header_dims` indexes and searches them, read on demand in blocks:
    a header check never reads the whole file. Bytes past the end read as 0."""

    BLOCK = 1 << 16

    def __init__(self, f: BinaryIO, size: int):
        self.f, self.size = f, size
        self.blocks: dict[int, bytes] = {}

    def __len__(self) -> int:
        return self.size

    def _block(self, n: int) -> bytes:
        b = self.blocks.get(n)
        if b is None:
            if len(self.blocks) >= 8:
                self.blocks.clear()
            self.f.seek(n * self.BLOCK)
            b = self.blocks[n] = self.f.read(self.BLOCK)
        return b

    @overload
    def __getitem__(self, key: int) -> int: ...

    @overload
    def __getitem__(self, key: slice) -> bytes: ...

    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, slice):
            start, stop, _ = key.indices(self.size)
            out = bytearray()
            while start < stop:
                chunk = self._block(start // self.BLOCK)[start % self.BLOCK:start % self.BLOCK + stop - start]
                if not chunk:
                    break
                out += chunk
                start += len(chunk)
            return bytes(out)
        block = self._block(key // self.BLOCK)
        return block[key % self.BLOCK] if key % self.BLOCK < len(block) else 0

    def search(self, pattern: re.Pattern, start: int) -> int:
        """Where the first match of the 2-byte ``pattern`` from ``start`` begins, or -1."""
        while start < self.size:
            n = start // self.BLOCK
            block = self._block(n)
            whole = len(block) == self.BLOCK
            m = pattern.search(block + self._block(n + 1)[:1] if whole else block, start % self.BLOCK)
            if m:
                return n * self.BLOCK + m.start()
            if not whole:
                break
            start = (n + 1) * self.BLOCK
        return -1

    def find(self, byte: bytes, start: int) -> int:
        """Where the single byte ``byte`` first occurs from ``start``, or -1."""
        while start < self.size:
            n = start // self.BLOCK
            block = self._block(n)
            i = block.find(byte, start % self.BLOCK)
            if i >= 0:
                return n * self.BLOCK + i
            if len(block) < self.BLOCK:
                break
            start = (n + 1) * self.BLOCK
        return -1


def _check_dimensions(head: bytes | _FileBytes, p: Path, limit: int) -> None:
    """Refuse images whose header announces more than ``limit`` pixels before allocating them."""
    dims = _header_dims(head)
    if dims and dims[0] * dims[1] > limit:
        raise InputError(
            f"image is {dims[1]}x{dims[0]} = {dims[0] * dims[1]} pixels, over the limit of {limit}",
            path=p, hint="resize it, or raise ZOO_MAX_IMAGE_PIXELS",
        )


def _header_dims(head: bytes | _FileBytes) -> tuple[int, int] | None:
    """(height, width) from a PNG, JPEG or BMP header, without decoding; None if unknown.

    A JPEG's frame header may follow any number of APPn segments (EXIF, ICC profiles of 64 KiB
    each), so its segments are walked until the frame header or the first scan; pass the whole file."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if head[:2] == b"BM" and len(head) >= 26:
        if int.from_bytes(head[14:18], "little") == 12:  # OS/2 core header: 16-bit dimensions
            return int.from_bytes(head[20:22], "little"), int.from_bytes(head[18:20], "little")
        return (abs(int.from_bytes(head[22:26], "little", signed=True)),
                abs(int.from_bytes(head[18:22], "little", signed=True)))
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i = head.find(b"\xff", i)
                if i < 0:
                    break
                continue
            marker = head[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(head[i + 5:i + 7], "big"), int.from_bytes(head[i + 7:i + 9], "big")
            if marker in (0xDA, 0xD9):  # start of scan / end of image: no frame header before it
                break
            if marker == 0xFF:  # fill byte before a marker
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            i += 2 + int.from_bytes(head[i + 2:i + 4], "big")
    return None


#: A JPEG marker in entropy-coded data: 0xFF not followed by 0x00 (a stuffed 0xFF), a restart marker or 0xFF (fill).
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _search(data: bytes, start: int) -> int:
    m = _MARKER.search(data, start)
    return m.start() if m else -1


def _jpeg_ends(head: bytes | _FileBytes) -> bool:
    """Whether the JPEG in ``head`` reaches an end-of-image marker the way libjpeg reads it: segments skipped by
    their length, entropy-coded data (where 0xFF is followed by 0x00 or a restart marker) scanned for the next
    marker. Then libjpeg stops there, before running out of data, and ``cv2.imread`` and ``cv2.imdecode`` give
    the same pixels; a file cut short has no such marker."""
    i, n = 2, len(head)
    while i + 1 < n:
        if head[i] != 0xFF:  # entropy-coded data (or garbage): on to the next marker
            i = head.search(_MARKER, i) if isinstance(head, _FileBytes) else _search(head, i)
            if i < 0:
                return False
            continue
        marker = head[i + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # stuffed 0xFF, standalone markers
            i += 2
        else:
            i += 2 + int.from_bytes(head[i + 2:i + 4], "big")
    return False


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (or the file itself), sorted by name: regular files whose name
    ends with one of :data:`IMAGE_EXTENSIONS`, case-insensitive (a file named just ``.jpg`` too)."""
    p = Path(folder)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise InputError("no such file or directory", path=p)
    return sorted(q for q in p.iterdir() if q.name.lower().endswith(IMAGE_EXTENSIONS) and q.is_file())
