"""Provenance of a run: config, versions and input hashes, used to detect stale artifacts."""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
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


def versions(model_dist: str | None = None) -> dict[str, str]:
    out = {"python": platform.python_version()}
    names = ["zoo-core", "onnxruntime", "onnx", "numpy", "opencv-python-headless", "hydra-core"]
    if model_dist:
        names.insert(1, model_dist)
    if "torch" in sys.modules:
        names.append("torch")
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out
