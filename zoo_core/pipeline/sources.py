"""Sources: where a stream's items come from.

* :class:`ImageSource`: dataset images decoded and preprocessed by worker processes;
* :class:`BinInputSource`: a ``.bin`` inputs dir (zoo's ``preprocess`` layout with ``meta.jsonl``, or a
  seed ``prep_dataset`` of ``<stem>.bin`` files);
* :class:`MetaSource`: items that carry only their preprocess meta (``postprocess`` of a dump).

Every source lists its items up front (``total``) and refuses an id seen twice, naming both files.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.aisbench import input_file, read_bin, safe_stem
from zoo_core.api.errors import InputError, ZooError
from zoo_core.api.types import Sample, TensorSpec
from zoo_core.json_numbers import finite_number, shown
from zoo_core.pipeline.workers import Prepared, WorkerPool
from zoo_core.runs.resume import file_crc32, read_jsonl

#: Groups meta-only items into batches (e.g. by the output shapes their meta implies).
KeyFn = Callable[[dict], tuple]


def check_unique(samples: Sequence[Sample]) -> None:
    """Two samples with one id would share every per-image file and be scored twice: an error naming both
    files, whether they are two paths, one path listed twice or the very same ``Sample`` object listed twice."""
    seen: dict[str, Sample] = {}
    for s in samples:
        other = seen.get(s.id)
        if other is None:
            seen[s.id] = s
            continue
        if str(other.path) == str(s.path):
            raise InputError(f"the id {s.id!r} is listed twice, both times for {s.path}", path=s.path,
                             hint="each image must be listed once: ids are file stems, unique within a dataset")
        raise InputError(f"two items share the id {s.id!r}: {other.path} and {s.path}", path=s.path,
                         hint="ids are file stems and must be unique within a dataset")


class ImageSource:
    """Dataset images through the model's ``preprocess`` hook in a :class:`WorkerPool`.

    ``drop_inputs`` keeps only the metas (``postprocess`` recomputing them); ``key`` then groups items.
    """

    def __init__(self, samples: Sequence[Sample], pool: WorkerPool, window: int | None = None,
                 drop_inputs: bool = False, key: KeyFn | None = None):
        check_unique(samples)
        self.samples = list(samples)
        self.total = len(self.samples)
        self.pool = pool
        self.window = window or max(2 * max(pool.num_workers, 1) + 2, 4)
        self.drop_inputs, self.key = drop_inputs, key

    def plan_batches(self, batch_size: int) -> None:
        """The stream batches ``batch_size`` items (the pool sizes its shared memory for it)."""
        if not self.drop_inputs:
            self.pool.plan(batch_size)

    def stop(self) -> None:
        """The run is being stopped (Ctrl-C): wake :meth:`items` waiting on a worker (it raises)."""
        self.pool.stop()

    def items(self) -> Iterator[Prepared]:
        for prep in self.pool.prepared(self.samples, self.window):
            if self.drop_inputs and prep.error is None:
                prep = Prepared(prep.sample, {}, prep.meta, None, prep.host_s,
                                key=self.key(prep.meta or {}) if self.key else None)
            yield prep


@dataclass
class BinItem:
    """One item of a ``.bin`` inputs dir: its files, their specs and its preprocess meta."""

    sample: Sample
    files: dict[str, Path]
    specs: dict[str, TensorSpec]
    meta: dict[str, Any]
    crc: dict[str, int]


def list_bin_inputs(inputs_dir: Path, input_specs: Sequence[TensorSpec]) -> list[BinItem]:
    """Every item of ``inputs_dir``: from its ``meta.jsonl`` (zoo's layout) or its ``*.bin`` files."""
    meta_path = inputs_dir / "meta.jsonl"
    multi = len(input_specs) > 1
    items: list[BinItem] = []
    if meta_path.is_file():
        first_line: dict[str, int] = {}
        for n, rec in read_jsonl(meta_path):
            item = _bin_item(inputs_dir, meta_path, n, rec)
            sid = item.sample.id
            if sid in first_line:
                raise InputError(f"id {sid!r} appears twice (lines {first_line[sid]} and {n})", path=meta_path)
            first_line[sid] = n
            items.append(item)
        return items
    if multi:
        raise ZooError("no meta.jsonl: a model with several inputs needs the preprocess stage's layout",
                       path=inputs_dir)
    spec = input_specs[0]
    for p in sorted(inputs_dir.glob("*.bin")):
        sid = safe_stem(p.stem, p)
        items.append(BinItem(Sample(sid, p), {spec.name: p}, {spec.name: spec}, {"id": sid}, {}))
    return items


def meta_problem(meta: dict) -> str | None:
    """What is wrong with a preprocess meta read back from ``meta.jsonl``, or None: a number anywhere in it that
    is NaN or infinite (JSON's ``NaN`` / ``Infinity``) or an integer beyond the float range; an ``orig_hw`` or
    ``input_shape`` that is not a list of positive integers; a letterbox scale ``s`` (:mod:`zoo_core.api.geometry`)
    that is not a positive number or a list of them. Such values would map finite outputs to NaN or meaningless
    boxes, scored without a word (or make a plugin's float conversion fail). A plugin's own keys are its decode's
    to check (CenterFace's ``scale_h`` / ``scale_w`` must be what its preprocess writes)."""
    stack: list[tuple[str, Any]] = [(repr(k), v) for k, v in meta.items()]
    while stack:
        where, v = stack.pop()
        if _is_number(v) and not finite_number(v):
            return f"meta[{where}] is {shown(v)}" + ("" if isinstance(v, float) else ", beyond the float range")
        if isinstance(v, dict):
            stack.extend((f"{where}][{k!r}", x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((f"{where}][{i}", x) for i, x in enumerate(v))
    for key in ("orig_hw", "input_shape"):
        v = meta.get(key)
        if v is not None and not (isinstance(v, list) and v and all(_is_int(d) and d > 0 for d in v)):
            return f"meta[{key!r}] {v!r} is not a list of positive integers"
    s = meta.get("s")
    if s is not None and not all(_is_number(x) and x > 0 for x in (s if isinstance(s, list) and s else [s])):
        return f"meta['s'] {s!r} is not a positive letterbox scale"
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bin_item(inputs_dir: Path, meta_path: Path, n: int, rec: dict) -> BinItem:
    """One ``meta.jsonl`` record (line ``n``) checked: a safe id, an inputs object with shapes and dtypes, a meta
    without NaN / infinity and with sane sizes and scale (:func:`meta_problem`)."""
    if rec.get("id") is None:
        raise InputError(f"line {n} has no \"id\"", path=meta_path)
    sid = safe_stem(rec["id"], f"{meta_path}:{n}")
    inputs, meta = rec.get("inputs"), rec.get("meta", {"id": sid})
    if not isinstance(inputs, dict) or not inputs or not isinstance(meta, dict):
        raise InputError(f"line {n} ({sid!r}) needs an \"inputs\" object and a \"meta\" object", path=meta_path)
    problem = meta_problem(meta)
    if problem:
        raise InputError(f"line {n} ({sid!r}): {problem}", path=meta_path,
                         hint="preprocess never writes such a value: this file was changed; run stage=preprocess "
                              "again")
    files, specs, crc = {}, {}, {}
    for name, v in inputs.items():
        shape = v.get("shape") if isinstance(v, dict) else None
        try:
            if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
                raise TypeError
            specs[name] = TensorSpec(name, tuple(shape), str(np.dtype(v["dtype"])))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"line {n} ({sid!r}): input {name!r} needs a shape (a list of sizes >= 0) and a dtype",
                             path=meta_path) from None
        files[name] = input_file(inputs_dir, name, sid, len(inputs) > 1)
        if "crc32" in v:
            if type(v["crc32"]) is not int:
                raise InputError(f"line {n} ({sid!r}): input {name!r} has a \"crc32\" that is not an integer: "
                                 f"{v['crc32']!r}", path=meta_path)
            crc[name] = v["crc32"]
    return BinItem(Sample(sid, files[next(iter(files))]), files, specs, meta, crc)


class BinInputSource:
    """Reads each item's ``.bin`` inputs as it is needed (in the stream's feeder thread)."""

    def __init__(self, items: Sequence[BinItem]):
        check_unique([it.sample for it in items])
        self.list = list(items)
        self.total = len(self.list)

    def items(self) -> Iterator[Prepared]:
        for it in self.list:
            t0 = time.process_time()
            try:
                arrays = {}
                for name, path in it.files.items():
                    arrays[name] = read_bin(path, it.specs[name])
                    if name in it.crc and file_crc32(path) != it.crc[name]:
                        raise InputError("changed since preprocess wrote it (CRC-32 differs from meta.jsonl)",
                                         path=path)
                yield Prepared(it.sample, arrays, it.meta, None, time.process_time() - t0)
            except InputError as exc:
                yield Prepared(it.sample, None, None, str(exc), time.process_time() - t0)


class MetaSource:
    """Items that carry only a preprocess meta (outputs come from a dump through the replay backend)."""

    def __init__(self, pairs: Sequence[tuple[Sample, dict]], key: KeyFn):
        check_unique([s for s, _ in pairs])
        self.pairs = list(pairs)
        self.total = len(self.pairs)
        self.key = key

    def items(self) -> Iterator[Prepared]:
        for sample, meta in self.pairs:
            try:
                yield Prepared(sample, {}, meta, key=self.key(meta))
            except InputError as exc:
                yield Prepared(sample, None, None, str(exc))
