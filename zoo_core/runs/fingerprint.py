"""Provenance of a run: config, versions and input hashes, used to detect stale artifacts."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (memoised per path, size and mtime within a process)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = _sha256(path, chunk)
    return _SHA_CACHE[key]


_SHA_CACHE: dict[tuple, str] = {}


def _sha256(path: str | Path, chunk: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def config_hash(section) -> str:
    """Stable hash of a config section (resolved, keys sorted)."""
    data = OmegaConf.to_container(section, resolve=True, enum_to_str=True) if not isinstance(section, dict) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: Backend keys that change where or how fast a run computes, not its outputs: left out of the resume
#: fingerprint (a sweep job pinned to 1 thread resumes in a run given 4) and of a shard merge's check.
#: onnxruntime's thread counts are (its outputs were found bit-identical across them); torch's
#: ``threads`` is not: torch splits its sums by thread count, so its outputs change in the last bits
#: with it (up to 3e-4 px on CenterFace), and it stays in both (see :func:`backend_section`).
RUNTIME_BACKEND_KEYS = ("device_id", "intra_op_threads", "inter_op_threads")


def backend_section(backend_cfg, describe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The backend section as it decides a run's outputs: without :data:`RUNTIME_BACKEND_KEYS`, and for
    ``backend=torch`` with ``threads`` the count torch computed with, from the backend's ``describe()``
    (``threads: 0`` is torch's default, which depends on the machine and ``OMP_NUM_THREADS``)."""
    data = OmegaConf.to_container(backend_cfg, resolve=True, enum_to_str=True) \
        if not isinstance(backend_cfg, dict) else dict(backend_cfg)
    assert isinstance(data, dict)
    out = {str(k): v for k, v in data.items() if k not in RUNTIME_BACKEND_KEYS}
    ran = (describe or {}).get("threads")
    if str(out.get("name")) == "torch" and isinstance(ran, int) and not isinstance(ran, bool):
        out["threads"] = ran
    return out


def backend_config_hash(backend_cfg, describe: Mapping[str, Any] | None = None) -> str:
    """:func:`config_hash` of :func:`backend_section`."""
    return config_hash(backend_section(backend_cfg, describe))


#: Model keys that only change what ``predict`` shows (never the network, its export or its outputs):
#: left out of the export and resume fingerprints.
DISPLAY_ONLY_MODEL_KEYS = ("predict_threshold", "class_names")


def model_config_hash(model_cfg) -> str:
    """:func:`config_hash` of the model section without :data:`DISPLAY_ONLY_MODEL_KEYS`."""
    data: Any = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True) \
        if not isinstance(model_cfg, dict) else dict(model_cfg)
    return config_hash({k: v for k, v in data.items() if k not in DISPLAY_ONLY_MODEL_KEYS})


def versions(model_dist: str | None = None) -> dict[str, str]:
    """Installed versions of Python, zoo-core, the model's plugin dist, onnxruntime, ... (torch if imported)."""
    out = {"python": platform.python_version()}
    names = ["zoo-core", "onnxruntime", "onnx", "numpy", "opencv-python-headless", "hydra-core"]
    if model_dist:
        names.insert(1, model_dist)
    if "torch" in sys.modules:
        names.append("torch")
    for n in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    return out


#: Annotation files bigger than this are recorded by size and mtime only (hashing would be slow).
MAX_HASHED_BYTES = 512 << 20


def file_record(path: str | Path) -> dict:
    """``{"path", "bytes", "sha256"}`` of one input file (sha256 omitted above MAX_HASHED_BYTES)."""
    p = Path(path)
    st = p.stat()
    rec = {"path": str(p), "bytes": st.st_size}
    if st.st_size <= MAX_HASHED_BYTES:
        rec["sha256"] = sha256_file(p)
    else:
        rec["mtime_ns"] = st.st_mtime_ns
    return rec


def dataset_files(dataset) -> list[Path]:
    """The annotation / ground-truth files a dataset object was built from.

    Uses the dataset's ``annotation_files()`` when it has one, else its ``ann_path`` (a file) and
    ``gt_dir`` (its ``.mat`` / ``.json`` / ``.txt`` files) attributes; images are not listed.
    """
    fn = getattr(dataset, "annotation_files", None)
    if callable(fn):
        return [Path(p) for p in fn() if Path(p).is_file()]
    out = []
    ann = getattr(dataset, "ann_path", None)
    if ann is not None and Path(ann).is_file():
        out.append(Path(ann))
    gt = getattr(dataset, "gt_dir", None)
    if gt is not None and Path(gt).is_dir():
        out += sorted(q for q in Path(gt).iterdir() if q.suffix in (".mat", ".json", ".txt") and q.is_file())
    return out
