"""Image decoding with OpenCV's default colour flag (what every reference pipeline used)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zoo_core.api.errors import ConfigError, InputError

#: File suffixes :func:`list_images` picks up (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: Default largest image (in pixels) decoded without complaint; bigger files are refused before
#: decoding so memory stays bounded (a 20000x20000 RGB image would need 1.2 GB).
#: ``ZOO_MAX_IMAGE_PIXELS`` overrides it (see :func:`max_image_pixels`).
MAX_PIXELS = 100_000_000
#: The environment variable that overrides :data:`MAX_PIXELS`.
PIXELS_ENV = "ZOO_MAX_IMAGE_PIXELS"
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
    channels, alpha dropped, EXIF orientation applied, 16-bit reduced to 8 bits (``>> 8``).

    Raises :class:`InputError` naming the file for a missing, empty, undecodable (corrupt,
    truncated, not an image) or oversized file. The size limit (:func:`max_image_pixels`) is checked
    from the PNG / JPEG / BMP header before any pixel is decoded, so memory stays bounded; other
    formats rely on OpenCV's ``OPENCV_IO_MAX_IMAGE_PIXELS`` (set to the same limit). Raises
    :class:`ConfigError` when ``ZOO_MAX_IMAGE_PIXELS`` is invalid.
    """
    limit = max_image_pixels()  # before OpenCV's first decode (it reads its own variable then)
    import cv2

    p = Path(path)
    if not p.is_file():
        raise InputError("image file not found", path=p)
    size = p.stat().st_size
    if size == 0:
        raise InputError("image file is empty (0 bytes)", path=p)
    data = p.read_bytes()
    _check_dimensions(data, p, limit)
    buf = np.frombuffer(data, np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # OpenCV's own checks, for what _header_dims cannot read (TIFF, WebP...)
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise InputError(f"image is larger than the limit of {os.environ.get(OPENCV_PIXELS_ENV, limit)} pixels "
                             f"(OpenCV refused to decode it)", path=p,
                             hint="resize it, or raise ZOO_MAX_IMAGE_PIXELS") from None
        reason = " ".join(str(exc).split())[:200]
        raise InputError(f"not a decodable image (OpenCV: {reason})", path=p) from None
    if img is None:
        raise InputError("not a decodable image (corrupt, truncated or not an image file)", path=p)
    return img


def _check_dimensions(head: bytes, p: Path, limit: int) -> None:
    """Refuse images whose header announces more than ``limit`` pixels before allocating them."""
    dims = _header_dims(head)
    if dims and dims[0] * dims[1] > limit:
        raise InputError(
            f"image is {dims[1]}x{dims[0]} = {dims[0] * dims[1]} pixels, over the limit of {limit}",
            path=p, hint="resize it, or raise ZOO_MAX_IMAGE_PIXELS",
        )


def _header_dims(head: bytes) -> tuple[int, int] | None:
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


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (or the file itself), sorted by name: regular files whose name
    ends with one of :data:`IMAGE_EXTENSIONS`, case-insensitive (a file named just ``.jpg`` too)."""
    p = Path(folder)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise InputError("no such file or directory", path=p)
    return sorted(q for q in p.iterdir() if q.name.lower().endswith(IMAGE_EXTENSIONS) and q.is_file())
