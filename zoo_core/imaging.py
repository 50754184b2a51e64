"""Image decoding with OpenCV's default colour flag (what every reference pipeline used)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: Largest image (in pixels) decoded without complaint; bigger files are refused before decoding
#: so memory stays bounded (a 20000x20000 RGB image would need 1.2 GB).
MAX_PIXELS = int(os.environ.get("ZOO_MAX_IMAGE_PIXELS", 100_000_000))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Return ``cv2.imread(path)``: HxWx3 BGR uint8, grayscale expanded, alpha dropped, EXIF applied.

    16-bit files are reduced to 8 bits exactly as ``cv2.imread`` does. Raises :class:`InputError`
    naming the file for a missing, empty, undecodable or oversized file.
    """
    import cv2

    p = Path(path)
    if not p.is_file():
        raise InputError("image file not found", path=p)
    size = p.stat().st_size
    if size == 0:
        raise InputError("image file is empty (0 bytes)", path=p)
    data = p.read_bytes()
    _check_dimensions(data[:65536], p)
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise InputError("not a decodable image (corrupt or unsupported format)", path=p)
    return img


def _check_dimensions(head: bytes, p: Path) -> None:
    """Refuse images whose header announces more than MAX_PIXELS before allocating them."""
    dims = _header_dims(head)
    if dims and dims[0] * dims[1] > MAX_PIXELS:
        raise InputError(
            f"image is {dims[1]}x{dims[0]} = {dims[0] * dims[1]} pixels, over the limit of {MAX_PIXELS}",
            path=p, hint="resize it, or raise ZOO_MAX_IMAGE_PIXELS",
        )


def _header_dims(head: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG or JPEG header, without decoding; None if unknown."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i += 1
                continue
            marker = head[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(head[i + 5:i + 7], "big"), int.from_bytes(head[i + 7:i + 9], "big")
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            i += 2 + int.from_bytes(head[i + 2:i + 4], "big")
    return None


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (or the file itself), sorted by name."""
    p = Path(folder)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise InputError("no such file or directory", path=p)
    return sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())
