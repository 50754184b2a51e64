"""Sinks: where a stream's finished items go.

Each sink writes atomically per file and, for resumable artifacts, records the item in a ledger only
after its files are complete (size and CRC-32), so ``resume=true`` can verify what it trusts.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import numpy as np

from zoo_core.api.aisbench import input_file, output_path, safe_stem, write_bin
from zoo_core.api.errors import ZooError
from zoo_core.api.types import Detections
from zoo_core.pipeline.stream import Result
from zoo_core.runs.detstore import DetectionStore, detections_problem
from zoo_core.runs.layout import PinnedDir
from zoo_core.runs.resume import Ledger, crc32, open_for_append


def _raw(array: np.ndarray) -> memoryview:
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return memoryview(a).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers


class DetectionSink:
    """Appends each item's detections to a :class:`DetectionStore`; detections with a NaN or infinite box or
    score, or a label outside the store's classes, are a :class:`ZooError` naming the image."""

    def __init__(self, store: DetectionStore):
        self.store = store

    def write(self, result: Result) -> None:
        assert result.detections is not None, "DetectionSink needs a stream with decode"
        problem = detections_problem(result.detections, self.store.num_classes)
        if problem:
            raise ZooError(f"postprocess gave detections zoo cannot store or score (image {result.sample.id!r}): "
                           f"{problem}", path=result.sample.path,
                           hint="the model's outputs were finite: check the image's preprocess meta and the "
                                "model's postprocess")
        self.store.add(result.sample.id, result.detections)

    def close(self) -> None:
        self.store.flush()


class OutputBinSink:
    """Raw outputs as ais_bench files ``<dir>/<stem>_<i>.bin``, listed in ``<dir>/index.jsonl``. The dir is
    pinned when the sink is made (:class:`~zoo_core.runs.layout.PinnedDir`) and checked before each item's files."""

    def __init__(self, out_dir: Path, ledger: Ledger | None = None):
        self.dir = Path(out_dir)
        self.pinned = PinnedDir(self.dir)
        self.pinned.pin()
        self.ledger = ledger or Ledger(self.dir / "index.jsonl")

    def write(self, result: Result) -> None:
        assert result.outputs is not None, "OutputBinSink needs a stream with keep_outputs=True"
        self.pinned.check()
        files = []
        for i, o in enumerate(result.outputs):
            p = output_path(self.dir, safe_stem(result.sample.id, result.sample.path), i)
            raw = _raw(o)
            write_bin(p, o)
            files.append((p, raw.nbytes, crc32(raw)))
        self.ledger.append(result.sample.id, files)

    def close(self) -> None:
        self.ledger.close()


class InputBinSink:
    """Preprocessed inputs as ``.bin`` files plus one ``meta.jsonl`` line per item (written last,
    with each file's size and CRC-32), so after a kill every listed item is complete. ``sources``: each
    item's image :func:`~zoo_core.runs.resume.file_identity`, recorded on its line as ``"source"``. The dir (and
    each ``<input>/`` sub-dir) is pinned when first used (:class:`~zoo_core.runs.layout.PinnedDir`) and checked
    before each item's files."""

    def __init__(self, inputs_dir: Path, sources: dict[str, list[int] | None] | None = None):
        self.dir = Path(inputs_dir)
        self.pinned = PinnedDir(self.dir)
        self.pinned.pin()
        self._subdirs: dict[Path, PinnedDir] = {}
        self.sources = sources or {}
        self.meta_path = self.dir / "meta.jsonl"
        self._f: TextIO | None = None

    def write(self, result: Result) -> None:
        assert result.inputs is not None
        multi = len(result.inputs) > 1
        shapes = {}
        self.pinned.check()
        for name, arr in result.inputs.items():
            raw = _raw(arr)
            path = input_file(self.dir, name, result.sample.id, multi)
            if multi:
                self._subdirs.setdefault(path.parent, PinnedDir(path.parent)).check()
            write_bin(path, arr)
            shapes[name] = {"shape": list(arr.shape), "dtype": arr.dtype.name, "bytes": raw.nbytes,
                            "crc32": crc32(raw)}
        if self._f is None:
            self._f = open_for_append(self.meta_path)
        source = self.sources.get(result.sample.id)
        self._f.write(json.dumps({"id": result.sample.id, "meta": result.meta, "inputs": shapes,
                                  **({"source": source} if source is not None else {})}) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class CallbackSink:
    """Hands each finished item to a function (predict's drawer, tests)."""

    def __init__(self, fn: Callable[[Result], None]):
        self.fn = fn

    def write(self, result: Result) -> None:
        self.fn(result)

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps detections (and outputs) in memory: for tests and small in-process runs."""

    def __init__(self) -> None:
        self.detections: dict[str, Detections] = {}
        self.outputs: dict[str, list[np.ndarray]] = {}

    def write(self, result: Result) -> None:
        if result.detections is not None:
            self.detections[result.sample.id] = result.detections
        if result.outputs is not None:
            self.outputs[result.sample.id] = [np.array(o) for o in result.outputs]

    def close(self) -> None:
        pass
