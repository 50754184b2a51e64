"""Provenance of a run: config, versions and input hashes, used to detect stale artifacts."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import stat
import sys
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from zoo_core.api.checkpoint import file_kind
from zoo_core.api.errors import ZooError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (memoised per path, size and mtime within a process).

    An ``.onnx`` model whose tensors live in external data files (ONNX external data: a ``location`` beside the
    model) is one model with them: its digest covers the model's bytes and each data file it names
    (:func:`onnx_external_data`), so editing only a data file changes it. A model without external data keeps
    the plain sha256 of its bytes. An unreadable file is a :class:`ZooError` naming it and the reason (before:
    ``error: Input/output error``, naming nothing)."""
    if not str(path).endswith(".onnx"):
        return _cached_sha256(path, chunk)[0]
    digest, locations = _cached_sha256(path, chunk, onnx=True)
    if not locations:
        return digest
    h = hashlib.sha256(b"zoo onnx + external data v1\0" + digest.encode())
    for loc, data in _external_files(Path(path), locations):
        h.update(b"\0" + loc.encode("utf-8", "surrogateescape") + b"\0"
                 + _cached_sha256(data, chunk, data_of=Path(path))[0].encode())
    return h.hexdigest()


def files_with_sha256(path: str | Path) -> dict[Path, str]:
    """The files a model consists of, each with the plain sha256 of its bytes (what ``sha256sum`` prints): the
    file itself and, for an ``.onnx`` with external data, each data file it names, in first-use order."""
    path = Path(path)
    digest, locations = _cached_sha256(path, 1 << 20, onnx=str(path).endswith(".onnx"))
    out = {path: digest}
    for _loc, data in _external_files(path, locations):
        out[data] = _cached_sha256(data, 1 << 20, data_of=path)[0]
    return out


#: (resolved path, size, mtime_ns) -> (sha256 of the bytes, external data locations of an ``.onnx``)
_SHA_CACHE: dict[tuple, tuple[str, tuple[str, ...]]] = {}
#: The key of a tensor's external data file in an ONNX ``TensorProto.external_data``; a model without these
#: bytes anywhere names no external data (its protobuf is then not parsed).
_LOCATION_KEY = b"location"


def _cached_sha256(path: str | Path, chunk: int, onnx: bool = False,
                   data_of: Path | None = None) -> tuple[str, tuple[str, ...]]:
    what = f"the external data file of {data_of}" if data_of else "the file"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # (a FIFO blocked the read forever, /dev/zero never ended)
            raise _not_regular(path, st.st_mode, what)
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, onnx)
        if key not in _SHA_CACHE:
            digest, marked = _sha256(path, chunk, _LOCATION_KEY if onnx else None)
            _SHA_CACHE[key] = (digest, onnx_external_data(path) if marked else ())
        return _SHA_CACHE[key]
    except OSError as exc:
        raise _unreadable(path, exc, what) from exc


def _not_regular(path: str | Path, mode: int, what: str) -> ZooError:
    return ZooError(f"cannot hash {what}: it is {file_kind(mode)}, not a regular file", path=path)


def _unreadable(path: str | Path, exc: OSError, what: str = "the file") -> ZooError:
    """One line naming the file and the reason (a read error, EIO, names no file of itself)."""
    return ZooError(f"cannot read {what} to hash it ({exc.strerror or type(exc).__name__})", path=path)


def _sha256(path: str | Path, chunk: int, marker: bytes | None = None) -> tuple[str, bool]:
    """The sha256 of the file's bytes, and whether ``marker`` occurs in them (found while hashing: one read)."""
    h = hashlib.sha256()
    found, tail = False, b""
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # (swapped for a FIFO since the stat: the open does not block)
    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | nonblocking)) as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode, "the file")
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            if marker and not found:  # (one spanning two chunks included)
                found = marker in b or marker in tail + b[:len(marker) - 1]
                tail = b[-(len(marker) - 1):]
    return h.hexdigest(), found


def onnx_external_data(path: str | Path) -> tuple[str, ...]:
    """The distinct external data ``location`` s an ONNX model's tensors name, in first-use order (initializers,
    sparse initializers and node attribute tensors, subgraphs, functions and training graphs included), read
    with ``onnx.load(..., load_external_data=False)``; empty for a file onnx cannot parse (onnxruntime then
    refuses it itself, and its digest is its bytes')."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except OSError:
        raise
    except Exception:  # DecodeError: not an ONNX model (whatever its name)
        return ()
    found: dict[str, None] = {}
    graphs = [model.graph, *(g for info in model.training_info for g in (info.initialization, info.algorithm))]
    functions = (t for f in model.functions for t in _node_tensors(f.node))
    for t in [*(t for g in graphs for t in _graph_tensors(g)), *functions]:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for entry in t.external_data:
                if entry.key == "location":
                    found.setdefault(entry.value, None)
    return tuple(found)


def _graph_tensors(g) -> Iterator[Any]:
    """Every TensorProto of an ONNX graph: initializers, sparse initializers' parts, node attributes' (subgraphs
    included), in graph order."""
    yield from g.initializer
    for s in g.sparse_initializer:
        yield from (s.values, s.indices)
    yield from _node_tensors(g.node)


def _node_tensors(nodes) -> Iterator[Any]:
    for n in nodes:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for s in [*([a.sparse_tensor] if a.HasField("sparse_tensor") else []), *a.sparse_tensors]:
                yield from (s.values, s.indices)
            for sub in [*([a.g] if a.HasField("g") else []), *a.graphs]:
                yield from _graph_tensors(sub)


def _external_files(model: Path, locations: tuple[str, ...]) -> list[tuple[str, Path]]:
    """Each location with its file beside ``model``; a location that is absolute or leaves the model's folder
    is refused (onnx and onnxruntime refuse it too), naming the model."""
    out = []
    for loc in locations:
        norm = os.path.normpath(loc) if loc else ""
        if not loc or "\0" in loc or os.path.isabs(loc) or norm in (".", "..") or norm.startswith(".." + os.sep):
            raise ZooError(f"its external data location {loc!r} is not a file inside the model's folder "
                           f"(an absolute path, or one that leaves the folder): onnxruntime refuses it too",
                           path=model, hint="save the model with its external data beside it "
                                            "(onnx.save_model(..., location=<a file name>))")
        out.append((loc, model.parent / norm))
    return out


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


def core_version() -> str | None:
    """The installed zoo-core's version (None when it is not installed as a distribution)."""
    try:
        return metadata.version("zoo-core")
    except metadata.PackageNotFoundError:
        return None


#: The :func:`producer_versions` keys, as a fingerprint holds them.
PRODUCER_KEYS = ("plugin", "zoo_core")


def producer_versions(info: Any) -> dict[str, str | None]:
    """The code that turns images into numbers: ``{"plugin": "<the model plugin's distribution> <version>",
    "zoo_core": <zoo-core's version>}`` (``info``: the model's :class:`~zoo_core.plugins.manager.PluginInfo`).
    Part of the export, resume, INT8 and shard-merge fingerprints: an upgrade of either may change preprocess,
    decode or export, so an artifact made before it is not reused after it."""
    dist = getattr(info, "distribution", None)
    return {"plugin": f"{dist} {getattr(info, 'version', None)}" if dist else None, "zoo_core": core_version()}


def version_change(key: str, old: Mapping[str, Any], new: Mapping[str, Any],
                   older: str = "the interrupted run was made by an older zoo") -> str:
    """``zoo_core: '0.1.0' -> '0.2.0'``: how a fingerprint's version entry ``key`` changed, as INT8 rebuild and
    resume refusal messages name it; ``older`` says why an ``old`` record lacks it."""
    if key not in old:
        return f"{key}: not recorded ({older}) -> {new.get(key)!r}"
    return f"{key}: {old[key]!r} -> {new.get(key)!r}"


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
    try:
        st = p.stat()
    except OSError as exc:
        raise _unreadable(p, exc) from exc
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
