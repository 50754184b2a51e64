"""Detections on disk: append-only chunks of ``.npz`` (lossless float32, no pickle), atomic per chunk.

A run appends detections as images finish; a killed run leaves only complete chunks, so
``resume=true`` reloads them and recomputes the rest, and every image is counted once.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from zoo_core.api.atomic import write_bytes
from zoo_core.api.errors import ZooError
from zoo_core.api.types import Detections


class DetectionStore:
    def __init__(self, directory: str | Path, flush_every: int = 64, flush_seconds: float = 5.0):
        self.dir = Path(directory)
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._pending: list[tuple[str, Detections]] = []
        self._last_flush = time.monotonic()
        self._next = 0

    def reset(self) -> None:
        from zoo_core.runs.layout import refuse_symlink

        refuse_symlink(self.dir)
        if self.dir.is_dir():
            for p in self.dir.glob("chunk-*.npz"):
                p.unlink()
        self._next = 0

    def add(self, sample_id: str, det: Detections) -> None:
        self._pending.append((sample_id, det))
        if len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        items, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        dets = [d for _, d in items]
        arrays = {
            "ids": np.array([i for i, _ in items], dtype=str),
            "counts": np.array([len(d) for d in dets], np.int64),
            "boxes": np.concatenate([d.boxes for d in dets]).astype(np.float32),
            "scores": np.concatenate([d.scores for d in dets]).astype(np.float32),
            "labels": np.concatenate([d.labels for d in dets]).astype(np.int32),
        }
        for k in sorted({k for d in dets for k in d.extras}):
            tail = next(d.extras[k].shape[1:] for d in dets if k in d.extras)
            arrays["extra__" + k] = np.concatenate(
                [d.extras[k] if k in d.extras else np.zeros((len(d), *tail), np.float32) for d in dets]
            ).astype(np.float32)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        while (self.dir / f"chunk-{self._next:06d}.npz").exists():
            self._next += 1
        write_bytes(self.dir / f"chunk-{self._next:06d}.npz", buf.getvalue())
        self._next += 1

    def load(self) -> dict[str, Detections]:
        """All stored detections by sample id (a later chunk wins on a repeated id)."""
        out: dict[str, Detections] = {}
        if not self.dir.is_dir():
            return out
        for p in sorted(self.dir.glob("chunk-*.npz")):
            try:
                z = np.load(p, allow_pickle=False)
                ids, counts = z["ids"], z["counts"]
                ends = np.cumsum(counts)
                starts = ends - counts
                extras = {k[len("extra__"):]: z[k] for k in z.files if k.startswith("extra__")}
                boxes, scores, labels = z["boxes"], z["scores"], z["labels"]
            except Exception as exc:
                raise ZooError(f"unreadable detections chunk ({exc})", path=p) from exc
            for i, sid in enumerate(ids):
                a, b = starts[i], ends[i]
                out[str(sid)] = Detections(boxes[a:b], scores[a:b], labels[a:b],
                                           {k: v[a:b] for k, v in extras.items()})
        return out
