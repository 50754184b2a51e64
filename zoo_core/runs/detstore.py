"""Detections on disk: append-only chunks of ``.npz`` (lossless float32, no pickle), atomic per chunk.

A run appends detections as images finish; a killed run leaves only complete chunks, so
``resume=true`` reloads them and recomputes the rest, and every image is counted once.
"""
from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np

from zoo_core.api.atomic import write_bytes, write_text
from zoo_core.api.checkpoint import regular_file
from zoo_core.api.errors import ZooError
from zoo_core.api.types import Detections
from zoo_core.runs.layout import PinnedDir


def class_count(cfg) -> int | None:
    """How many classes the run's model has, as far as zoo-core knows: ``len(model.category_ids)`` (default the
    80 COCO ids) on a COCO dataset; ``None`` otherwise (labels then only have to be >= 0)."""
    from zoo_core.datasets import kind_of

    if cfg is None or kind_of(cfg.get("dataset")) != "coco":
        return None
    from zoo_core.datasets.coco import category_ids

    return len(category_ids(cfg.get("model")))


def detections_problem(det: Detections, num_classes: int | None = None) -> str | None:
    """What makes one image's detections unfit to store or score, or None: a box coordinate or a score that is
    NaN or infinite, a label below 0 or (with ``num_classes``) not below ``num_classes``."""
    return _rows_problem(det.boxes, det.scores, det.labels, num_classes)


def _rows_problem(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, num_classes: int | None) -> str | None:
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        return f"box {i} [{', '.join(f'{v:g}' for v in boxes[i].tolist())}] holds a NaN or an infinity"
    bad = ~np.isfinite(scores)
    if bad.any():
        i = int(np.argmax(bad))
        return f"the score of box {i} is {float(scores[i])}"
    bad = labels < 0 if num_classes is None else (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        classes = "a class index >= 0" if num_classes is None else f"one of the model's classes 0..{num_classes - 1}"
        return f"the label of box {i} is {int(labels[i])}, not {classes}"
    return None


#: A detections dir's list of its chunks, one line per chunk once written: its size and CRC-32
#: (a :class:`~zoo_core.runs.resume.Ledger`), checked by ``resume=true`` and by a sweep's shard merge.
INDEX = "index.jsonl"


class DetectionStore:
    """Detections of a run's images in ``directory``.

    :param num_classes: labels must be below it (:func:`class_count`); ``None``: only >= 0.
    :param sources: each image's :func:`~zoo_core.runs.resume.file_identity` (size, mtime, ctime) taken before it was
        read; recorded with its chunk in ``index.jsonl`` (``"sources"``) for :meth:`drop_changed_images`.
    """

    def __init__(self, directory: str | Path, flush_every: int = 64, flush_seconds: float = 5.0,
                 num_classes: int | None = None, sources: dict[str, list[int] | None] | None = None):
        self.dir = Path(directory)
        #: the dir as opened (:meth:`reset`, :meth:`drop_unverified` or the first flush): checked before each
        #: chunk is written, so a dir replaced during the run (a link to elsewhere) is an error, never written through
        self.pinned = PinnedDir(self.dir)
        self.num_classes = num_classes
        self.sources = sources if sources is not None else {}
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._pending: list[tuple[str, Detections]] = []
        self._last_flush = time.monotonic()
        self._next = 0

    def reset(self) -> None:
        self.pinned.pin()
        if self.dir.is_dir():
            for p in self.dir.glob("chunk-*.npz"):
                p.unlink()
            (self.dir / INDEX).unlink(missing_ok=True)
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
        self.pinned.check()
        while (self.dir / f"chunk-{self._next:06d}.npz").exists():
            self._next += 1
        sources = {i: self.sources[i] for i, _ in items if self.sources.get(i) is not None}
        self._write_listed(self.dir / f"chunk-{self._next:06d}.npz", buf.getvalue(), sources)
        self._next += 1

    def load(self) -> dict[str, Detections]:
        """All stored detections by sample id (a later chunk wins on a repeated id). A chunk that does
        not hold what :meth:`flush` writes (an id per count, counts >= 0 that add up to the boxes, boxes
        of 4 columns, one score and label per box, extras of one row per box; finite boxes and scores,
        labels >= 0 and below ``num_classes``) is a ZooError naming it and the image."""
        out: dict[str, Detections] = {}
        if not self.dir.is_dir():
            return out
        for p in sorted(self.dir.glob("chunk-*.npz")):
            out.update(self._load_chunk(p))
        return out

    def _load_chunk(self, p: Path) -> dict[str, Detections]:
        """One chunk's detections by sample id (see :meth:`load`)."""
        out: dict[str, Detections] = {}
        regular_file(p, "detections chunk")  # unopened: a FIFO would block np.load forever, /dev/zero never end
        problem = _zip_problem(p)
        if problem:
            raise ZooError(f"not a detections chunk as zoo writes it: {problem}", path=p)
        try:
            with np.load(p, allow_pickle=False) as z:
                ids, counts = z["ids"], z["counts"]
                extras = {k[len("extra__"):]: z[k] for k in z.files if k.startswith("extra__")}
                boxes, scores, labels = z["boxes"], z["scores"], z["labels"]
        except Exception as exc:
            raise ZooError(f"unreadable detections chunk ({exc})", path=p) from exc
        problem = _chunk_problem(ids, counts, boxes, scores, labels, extras)
        if problem:
            raise ZooError(f"not a detections chunk as zoo writes it: {problem}", path=p)
        ends = np.cumsum(counts.astype(np.int64))  # each count is <= the box count now
        starts = ends - counts
        for i, sid in enumerate(ids):
            a, b = starts[i], ends[i]
            problem = _rows_problem(boxes[a:b], scores[a:b], labels[a:b], self.num_classes)
            if problem:
                raise ZooError(f"detections of image {str(sid)!r}: {problem}", path=p,
                               hint="zoo never stores such detections: this chunk was changed or made "
                                    "elsewhere; run stage=postprocess or stage=eval again")
            out[str(sid)] = Detections(boxes[a:b], scores[a:b], labels[a:b],
                                       {k: v[a:b] for k, v in extras.items()})
        return out

    def _write_listed(self, path: Path, data: bytes, sources: dict | None = None) -> None:
        """Write a chunk (atomically), then list it in ``index.jsonl`` (with its images' ``sources`` when
        known): a kill in between leaves it unlisted."""
        from zoo_core.runs.resume import Ledger, crc32

        write_bytes(path, data)
        ledger = Ledger(self.dir / INDEX)
        try:
            ledger.append(path.name, [(path, len(data), crc32(data))], **({"sources": sources} if sources else {}))
        finally:
            ledger.close()

    def drop_unverified(self) -> int:
        """Resuming: remove every chunk that ``index.jsonl`` does not list with its current size and CRC-32
        (damaged, changed, or written by a run killed before listing it), with a warning naming it, so that
        its images are redone; the index keeps the lines of the chunks kept. Returns how many were removed."""
        import logging

        from zoo_core.runs.resume import Ledger

        if not self.dir.is_dir() and not self.dir.is_symlink():
            return 0
        self.pinned.pin()
        if self._unindexed():
            return self._index_readable_chunks()
        good = Ledger(self.dir / INDEX).verified()
        dropped = [p for p in sorted(self.dir.glob("chunk-*.npz")) if p.name not in good]
        for p in dropped:
            logging.getLogger("zoo").warning(
                "resume: %s is not listed in %s with its current size and CRC-32 (damaged, changed, or its run was "
                "killed while writing it): removed, its images are redone", p, INDEX)
            p.unlink()
        return len(dropped)

    def drop_changed_images(self, paths: dict[str, Path]) -> list[str]:
        """Resuming (after :meth:`drop_unverified`): remove every chunk holding an image whose file (``paths``:
        the run's image of each id) changed since its detections were made, i.e. its size or mtime differs from
        the ``"sources"`` its ``index.jsonl`` line recorded, so those images (and the chunk's others) are redone
        on the current files. Chunks listed without sources (an older zoo) are kept as before. Returns the ids
        of the changed images, in chunk order."""
        from zoo_core.runs.resume import read_own_jsonl, source_changed

        index = self.dir / INDEX
        if not self.dir.is_dir() or not index.is_file():
            return []
        changed: list[str] = []
        keep: list[dict] = []
        dropped: set[str] = set()
        for _n, rec in read_own_jsonl(index):
            sources = rec.get("sources")
            bad = [i for i, ident in sources.items() if i in paths and source_changed(ident, paths[i])] \
                if isinstance(sources, dict) else []
            if bad and isinstance(rec.get("id"), str):
                changed += bad
                dropped.add(rec["id"])
            else:
                keep.append(rec)
        if not changed:
            return []
        for p in sorted(self.dir.glob("chunk-*.npz")):
            if p.name in dropped:
                p.unlink()
        write_text(index, "".join(json.dumps(r) + "\n" for r in keep))
        return changed

    def _unindexed(self) -> bool:
        """Chunks without any ``index.jsonl``: detections written by a zoo from before the index."""
        index = self.dir / INDEX
        return not index.exists() and not index.is_symlink() and any(self.dir.glob("chunk-*.npz"))

    def _index_readable_chunks(self) -> int:
        """Detections written by a zoo from before ``index.jsonl`` (resuming): each chunk that reads as
        :meth:`load` reads it is kept and listed, one that does not is removed (its images are redone)."""
        import logging

        from zoo_core.runs.resume import Ledger, file_crc32

        log = logging.getLogger("zoo")
        ledger = Ledger(self.dir / INDEX)
        dropped = 0
        try:
            for p in sorted(self.dir.glob("chunk-*.npz")):
                try:
                    self._load_chunk(p)
                except ZooError as exc:
                    log.warning("resume: %s: removed, its images are redone", exc)
                    p.unlink()
                    dropped += 1
                    continue
                ledger.append(p.name, [(p, p.stat().st_size, file_crc32(p))])
        finally:
            ledger.close()
        log.info("resume: %s was written by a zoo without %s: its readable chunks are kept and now listed",
                 self.dir, INDEX)
        return dropped

    def chunk_problem(self) -> str | None:
        """Why the chunks are not those the run wrote, or None: a chunk whose size or CRC-32 differs from
        ``index.jsonl``, one it does not list, or one it lists that is gone. Only reads. Detections written by
        a zoo from before the index (chunks, no ``index.jsonl`` at all) have nothing to compare with: None
        (:meth:`load` still checks what each chunk holds, and a merge the images it covers)."""
        import stat

        from zoo_core.api.errors import InputError
        from zoo_core.runs.resume import file_crc32, read_jsonl

        if self._unindexed():
            return None
        index = self.dir / INDEX
        listed: dict[str, list] = {}
        if index.is_symlink() or (index.exists() and not index.is_file()):
            return f"{index} is not a regular file"
        try:
            lines = read_jsonl(index, drop_torn_tail=True)
        except InputError as exc:
            return str(exc)
        for n, rec in lines:
            files = rec.get("files")
            if not (isinstance(files, list) and len(files) == 1 and isinstance(files[0], list) and len(files[0]) == 3
                    and isinstance(files[0][0], str) and all(type(v) is int for v in files[0][1:])):
                return f"{index}: line {n} is not a chunk's [file, bytes, crc32] as zoo writes it"
            listed[files[0][0]] = files[0][1:]
        chunks = sorted(self.dir.glob("chunk-*.npz")) if self.dir.is_dir() else []
        for p in chunks:
            if p.name not in listed:
                return f"{p.name} is not listed in {index} (zoo did not finish writing it, or it was put there)"
            try:
                st = p.lstat()
                same = stat.S_ISREG(st.st_mode) and [st.st_size, file_crc32(p)] == listed[p.name]
            except OSError:
                same = False
            if not same:
                return f"{p.name} changed since it was written (its size or CRC-32 differs from {index})"
        gone = sorted(set(listed) - {p.name for p in chunks})
        return f"{gone[0]}, listed in {index}, is missing" if gone else None


def _zip_problem(p: Path) -> str | None:
    """What makes ``p`` another zip than :meth:`DetectionStore.flush` writes (``np.savez``: members stored
    uncompressed, so they add up to less than the file), from its central directory alone; None if nothing
    (or not a zip: np.load then says so).
    A deflated member (a 2.9 MB chunk inflating to 3 GB) is refused before anything is inflated."""
    size = p.stat().st_size
    try:
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None  # np.load says what it is not
    packed = next((i for i in infos if i.compress_type != zipfile.ZIP_STORED), None)
    if packed is not None:
        return (f"its member {packed.filename!r} is compressed (zip method {packed.compress_type}), and zoo "
                "stores chunk members uncompressed; nothing was decompressed")
    total = sum(i.file_size for i in infos)
    if total > size:
        return f"its members declare {total} bytes, more than the file's {size}"
    return None


def _chunk_problem(ids: np.ndarray, counts: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                   labels: np.ndarray, extras: dict[str, np.ndarray]) -> str | None:
    """What is wrong with a chunk's arrays, or None."""
    if ids.ndim != 1 or ids.dtype.kind != "U":
        return f"ids must be a list of strings, got {ids.dtype} {ids.shape}"
    if counts.shape != ids.shape or counts.dtype.kind not in "iu":
        return f"{ids.size} ids but counts {counts.dtype} {counts.shape}"
    if counts.size and counts.min() < 0:
        return f"a negative count ({int(counts.min())})"
    n = sum(counts.tolist())  # Python ints: uint64 / int64 counts may not wrap around to the box count
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype.kind != "f":
        return f"boxes must be float (N, 4), got {boxes.dtype} {boxes.shape}"
    if boxes.shape[0] != n:
        return f"the counts add up to {n} boxes but the chunk holds {boxes.shape[0]}"
    if scores.shape != (n,) or scores.dtype.kind != "f":
        return f"scores must be float ({n},), got {scores.dtype} {scores.shape}"
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        return f"labels must be integer ({n},), got {labels.dtype} {labels.shape}"
    for k, v in extras.items():
        if v.ndim < 1 or v.shape[0] != n or v.dtype.kind != "f":
            return f"extra {k!r} must be float with {n} rows, got {v.dtype} {v.shape}"
    return None
