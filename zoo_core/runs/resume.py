"""Resumable artifact dirs: a fingerprinted ``state.json`` and a ledger of verified finished items.

``resume=true`` continues a killed run: an item counts as done only when the ledger lists it *and*
every file it wrote is still there with the recorded size and CRC-32; the rest is redone. A changed
fingerprint (config, weights, model file, ``save_outputs``, the plugin's and zoo-core's versions...) refuses to
resume, naming what changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from zoo_core.api.atomic import write_json, write_text
from zoo_core.api.checkpoint import MAX_RECORD_BYTES, read_at_most
from zoo_core.api.errors import InputError, ZooError
from zoo_core.json_numbers import long_integer
from zoo_core.runs.context import RunContext
from zoo_core.runs.fingerprint import (
    PRODUCER_KEYS,
    config_hash,
    model_config_hash,
    producer_versions,
    sha256_file,
    version_change,
)

log = logging.getLogger("zoo")

#: How every refusal to resume starts (after the state file's path); the sweep report's re-run commands
#: leave out ``resume=true`` for a job that failed with it.
RESUME_REFUSED = "cannot resume:"


class ResumeRefused(ZooError):
    """``resume=true`` over artifacts that cannot be resumed (changed fingerprint, unreadable state)."""


def artifact_fingerprint(ctx: RunContext, model_file: str | None = None, **parts: Any) -> dict[str, Any]:
    """What must not change between an interrupted run and its resumption: config and file hashes, and the
    model plugin's distribution and version and zoo-core's version (:func:`producer_versions`: an upgrade may
    change preprocess or decode, and a resume would mix its results with the old code's)."""
    w = ctx.weights()
    fp = {
        **producer_versions(ctx.hooks.info),
        "model": model_config_hash(ctx.cfg.model),
        "dataset": config_hash(ctx.cfg.dataset),
        "weights_sha256": sha256_file(w) if w else None,
        "model_file_sha256": sha256_file(model_file) if model_file and Path(model_file).is_file() else None,
    }
    fp.update(parts)
    return fp


def start_resumable(ctx: RunContext, state_path: Path, fingerprint: dict[str, Any],
                    reset: Callable[[], None], backend: str | None = None,
                    backend_config: dict[str, Any] | None = None) -> bool:
    """Open a resumable artifact dir; True when resuming it (``resume=true`` and a matching state).

    When not resuming, ``reset()`` clears the old artifacts *before* the new state is written, so a
    kill in between never pairs old artifacts with a new fingerprint. ``state.json`` records the
    fingerprint (plus the model and dataset config, for ``evaluate``'s provenance check, ``backend``:
    the backend that made the model outputs, when known, and the config sections a refusal names the
    changed keys of: ``backend_config``, the backend section the fingerprint hashed
    (:func:`~zoo_core.runs.fingerprint.backend_section`), and the ``quantize`` section) and
    ``complete: false`` until :func:`mark_complete`.
    """
    state_path = Path(state_path)
    resuming = False
    if bool(ctx.cfg.resume) and state_path.is_file():
        try:
            state = json.loads(read_at_most(state_path, MAX_RECORD_BYTES, "state file"))
            old = state.get("fingerprint", {})
            if not isinstance(old, dict):
                raise ValueError
        except ZooError as exc:  # (too large: unread; or no longer a regular file)
            raise ResumeRefused(f"{RESUME_REFUSED} the state file is unreadable "
                                f"({str(exc).removeprefix(f'{state_path}: ')})", path=state_path,
                                hint="run again without resume=true to start over") from None
        except (ValueError, AttributeError, RecursionError):
            raise ResumeRefused(f"{RESUME_REFUSED} the state file is unreadable (not a JSON object with a "
                                f"\"fingerprint\" object)", path=state_path,
                                hint="run again without resume=true to start over") from None
        if old != fingerprint:
            changed = sorted(k for k in set(fingerprint) | set(old) if fingerprint.get(k) != old.get(k))
            now = {**ctx.resolved_config(), "backend": backend_config}
            keys = _changed_versions(old, fingerprint, changed) + _changed_keys(state, now, changed)
            hint = "run again without resume=true to start over"
            ran, now_backend = state.get("backend_config"), backend_config or {}
            if isinstance(ran, dict) and now_backend.get("name") == "torch" == ran.get("name") \
                    and type(ran.get("threads")) is int and ran["threads"] != now_backend.get("threads"):
                hint = (f"torch's outputs depend on its thread count: pass backend.threads={ran['threads']} "
                        f"to resume, or {hint}")
            raise ResumeRefused(f"{RESUME_REFUSED} {', '.join(changed)} changed since the interrupted run"
                           + (f" ({'; '.join(keys)})" if keys else ""), path=state_path, hint=hint)
        resuming = True
    elif bool(ctx.cfg.resume):
        log.info("resume=true but %s does not exist: starting from the beginning", state_path)
    if not resuming:
        state_path.unlink(missing_ok=True)
        reset()
    cfg = ctx.resolved_config()
    record = {"stage": ctx.stage, "model_name": ctx.model_name, "fingerprint": fingerprint, "backend": backend,
              "model_config": cfg["model"], "dataset_config": cfg["dataset"]}
    if backend_config is not None:
        record["backend_config"] = backend_config
    if isinstance(cfg.get("quantize"), dict):
        record["quantize_config"] = cfg["quantize"]
    write_json(state_path, {**record, "complete": False})
    return resuming


def refuse_changed_quantize(ctx: RunContext, state_path: Path) -> None:
    """Before the backend opens (and builds the INT8 model): ``resume=true`` over a state whose ``quantize``
    settings differ from this run's is refused, naming the keys. The fingerprint check of
    :func:`start_resumable` refuses it too, but only after the model was rebuilt with the new settings, which can
    take minutes of calibration. Only the keys that decide the model count (:func:`_deciding`), and only for
    ``backend=onnxruntime``, the backend that builds it (an OM is checked against its own record). A state
    unreadable or without a copy of the section is left to that check."""
    if not bool(ctx.cfg.resume) or str(ctx.cfg.backend.get("name")) != "onnxruntime" or not Path(state_path).is_file():
        return
    try:
        state = json.loads(read_at_most(state_path, MAX_RECORD_BYTES, "state file"))
    except (ZooError, ValueError, RecursionError):  # (left to start_resumable, which refuses it)
        return
    before = state.get("quantize_config") if isinstance(state, dict) else None
    keys = quantize_changes(ctx, before, ctx.resolved_config().get("quantize"))[:8]
    if keys:
        raise ResumeRefused(f"{RESUME_REFUSED} the quantize settings changed since the interrupted run "
                            f"({'; '.join(keys)})", path=state_path,
                            hint="run again without resume=true to start over")


def quantize_changes(ctx: RunContext, before: Any, now: Any) -> list[str]:
    """``quantize.seed: 0 -> 1`` for each ``quantize`` key that decides the model (:func:`_deciding`) and differs
    between the section ``before`` (a state file's copy) and ``now``; none when either is not a section or both
    are the FP32 model (``name: none``)."""
    if not isinstance(before, dict) or not isinstance(now, dict) or before.get("name") == now.get("name") == "none":
        return []
    plugin_ops = [str(t) for t in (ctx.cfg.model.get("quantize_exclude_op_types") or [])]
    return [f"quantize.{k}: {a!r} -> {b!r}"
            for k, a, b in _diff_flat(_deciding(before, plugin_ops), _deciding(now, plugin_ops))]


def _deciding(quantize: dict[str, Any], plugin_ops: list[str]) -> dict[str, Any]:
    """The ``quantize`` keys that decide the INT8 model, as :func:`zoo_core.quantize.calibration.settings` reads them:
    ``percentile`` only with ``method: percentile``; ``exclude_op_types`` merged with the plugin's
    ``model.quantize_exclude_op_types`` (``plugin_ops``) without repeats (naming an op type the plugin keeps in FP32
    already changes nothing; a changed one is shown merged, as the INT8 record holds it); ``exclude_nodes`` as
    names."""
    out = dict(quantize)
    if str(quantize.get("method", "")).split(".")[-1] != "percentile":
        out.pop("percentile", None)
    ops = quantize.get("exclude_op_types")
    if isinstance(ops, list):
        out["exclude_op_types"] = list(dict.fromkeys([*plugin_ops, *(str(t) for t in ops)]))
    nodes = quantize.get("exclude_nodes")
    if isinstance(nodes, list):
        out["exclude_nodes"] = [str(n) for n in nodes]
    return out


#: ``{config section: the fingerprint entry a change of it shows in}``; state.json keeps a copy of each
#: (``<section>_config``) to name the changed keys. (The quantize settings change the INT8 model file.)
_NAMED_SECTIONS = {"model": "model", "dataset": "dataset", "backend": "backend", "quantize": "model_file_sha256"}


def _changed_versions(old: dict[str, Any], new: dict[str, Any], changed: list[str]) -> list[str]:
    """``zoo_core: '0.1.0' -> '0.2.0'`` for each changed :data:`PRODUCER_KEYS` entry (as a re-export names it);
    a state written before zoo recorded them says so."""
    return [version_change(k, old, new) for k in PRODUCER_KEYS if k in changed]


def _changed_keys(state: Any, cfg: dict[str, Any], changed: list[str]) -> list[str]:
    """``model.threshold: 0.05 -> 0.3`` for each key of a section whose fingerprint entry changed that the
    state file's copy of that section says changed (nested keys dotted; at most 8). A state file written
    before zoo kept a copy of a section names none of its keys."""
    out: list[str] = []
    if not isinstance(state, dict):
        return out
    for section, entry in _NAMED_SECTIONS.items():
        before, now = state.get(f"{section}_config"), cfg.get(section)
        if entry not in changed or not isinstance(before, dict) or not isinstance(now, dict):
            continue
        if section == "quantize" and before.get("name") == now.get("name") == "none":
            continue  # the FP32 model: no quantize key made it
        out += [f"{section}.{k}: {a!r} -> {b!r}" for k, a, b in _diff_flat(before, now)]
    return out[:8]


def _diff_flat(a: dict, b: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    diffs: list[tuple[str, Any, Any]] = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k, "<unset>"), b.get(k, "<unset>")
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _diff_flat(va, vb, f"{prefix}{k}.")
        elif va != vb:
            diffs.append((f"{prefix}{k}", va, vb))
    return diffs


def mark_complete(state_path: Path, pinned: Any = None, **extra: Any) -> None:
    """Flag a resumable artifact dir as finished (every item written); ``extra`` keys are added to its state.
    ``pinned``: the dir's :class:`~zoo_core.runs.layout.PinnedDir`, checked first (a dir replaced during the run
    is an error, not written through)."""
    state_path = Path(state_path)
    if pinned is not None:
        pinned.check()
    state = json.loads(state_path.read_text())
    state["complete"] = True
    state.update(extra)
    write_json(state_path, state)


def crc32(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def file_crc32(path: Path, chunk: int = 1 << 20) -> int:
    c = 0
    with open(path, "rb") as f:
        while b := f.read(chunk):
            c = zlib.crc32(b, c)
    return c & 0xFFFFFFFF


def file_identity(path: str | os.PathLike[str], inode: bool = False) -> list[int] | None:
    """``[size, mtime_ns, ctime_ns]`` of a dataset file (``inode``: and its inode number), or None when it cannot
    be stat'ed. Recorded with each finished image (taken before the image is read), so ``resume=true`` redoes an
    image whose file changed since. The inode's change time is in it because a tool can restore a rewritten file's
    size and mtime (``touch -r``, ``rsync -t``, ``cp -p``), but no tool sets ctime: writing or replacing the file
    moves it."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, *([st.st_ino] if inode else [])]


def dump_fingerprint(backend: Any) -> dict[str, str]:
    """``{"replay_dump_files": digest}`` for a backend that replays a dump (``backend=replay``, its
    ``dump_files()``): the sha256 of each output file's path in the dump and :func:`file_identity` with its inode,
    from the listing the backend reads (no file is read), so ``resume=true`` over a dump whose files were rewritten,
    replaced, added or removed since the interrupted run is refused. ``{}`` for any other backend."""
    files = getattr(backend, "dump_files", None)
    if not callable(files):
        return {}
    root = Path(getattr(backend, "dir", "."))
    rows = [[os.path.relpath(p, root), file_identity(p, inode=True)] for p in files()]
    return {"replay_dump_files": hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]}


def source_changed(recorded: Any, path: str | os.PathLike[str]) -> bool:
    """The file at ``path`` is no longer the one whose :func:`file_identity` was ``recorded`` (a recorded
    value not shaped as zoo writes it counts as changed: the item is redone, not trusted). A record of an older
    zoo, ``[size, mtime_ns]``, is compared on those two."""
    if not (isinstance(recorded, list) and len(recorded) in (2, 3) and all(type(v) is int for v in recorded)):
        return True
    now = file_identity(path)
    return now is None or now[:len(recorded)] != recorded


#: The largest JSON-lines list :func:`read_jsonl` reads (``detections/index.jsonl``: ~100 bytes an image,
#: ``meta.jsonl``: ~400): millions of images; a larger one is an :class:`InputError` naming it, unread.
MAX_JSONL_BYTES = 256 << 20


def read_jsonl(path: Path, drop_torn_tail: bool = False) -> list[tuple[int, dict]]:
    """``(line number, object)`` per line of a JSON-lines file written by zoo.

    A line that is not a JSON object is an :class:`InputError` naming the file and line; so is a last
    line without its newline (a killed writer) unless ``drop_torn_tail`` (resuming that writer), and a file
    larger than :data:`MAX_JSONL_BYTES`.
    """
    out: list[tuple[int, dict]] = []
    if not path.is_file():
        return out
    data = read_at_most(path, MAX_JSONL_BYTES, "JSON-lines list", InputError)  # (not past the limit)
    lines = data.split(b"\n")
    torn = lines.pop() if lines else b""
    if torn.strip():
        if not drop_torn_tail:
            raise InputError("ends with an incomplete line: the run that wrote it was interrupted",
                             path=path, hint="run that stage again (resume=true continues it)")
        log.info("%s: dropping the incomplete last line of an interrupted run", path)
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError as e:
            where = long_integer(e, raw)
            why = f"holds an integer of {where[1]} digits" if where else "is not valid JSON"
            raise InputError(f"line {n} {why}", path=path) from None
        except RecursionError:
            raise InputError(f"line {n} is JSON nested too deeply to read", path=path) from None
        if not isinstance(rec, dict):
            raise InputError(f"line {n} is not a JSON object", path=path)
        out.append((n, rec))
    return out


def read_own_jsonl(path: Path) -> list[tuple[int, dict]]:
    """:func:`read_jsonl` (torn tail dropped) of a list zoo wrote in a run dir and is about to rewrite.

    Anything there but a regular file (a symbolic link, a FIFO...) is not read: zoo does not follow links
    inside a run directory. It is logged and counts as an empty list, so every item is redone and the
    caller's atomic rewrite replaces the entry itself, never what it points to.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return []
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        log.warning("%s is %s: not read (zoo does not follow links inside a run directory); it is replaced "
                    "and every item is redone", path, kind)
        return []
    return read_jsonl(path, drop_torn_tail=True)


def open_for_append(path: Path) -> TextIO:
    """``path`` (a JSON-lines list zoo writes in a run dir) opened for appending, after cutting a killed
    writer's incomplete last line off it so appended lines stay whole.

    Opened without following a symbolic link, and it must be a regular file with no other hard link:
    anything else is a :class:`ZooError` naming it, so nothing planted in a run dir makes zoo truncate
    or write another file. (The stages rewrite these lists atomically, or clear them, before appending.)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    hint = "remove it (zoo writes this file itself)"
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if path.is_symlink():
            raise ZooError("is a symbolic link, which zoo does not follow inside a run directory", path=path,
                           hint=hint) from None
        raise ZooError(f"cannot open for writing: {exc.strerror or exc}", path=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ZooError("is not a regular file", path=path, hint=hint)
        if st.st_nlink > 1:
            raise ZooError(f"has {st.st_nlink} hard links: zoo does not write a file it shares with another path",
                           path=path, hint=hint)
        data = b""
        while chunk := os.pread(fd, 1 << 20, len(data)):
            data += chunk
        if data and not data.endswith(b"\n"):
            os.ftruncate(fd, data.rfind(b"\n") + 1)
        return os.fdopen(fd, "a")
    except BaseException:
        os.close(fd)
        raise


class Ledger:
    """``<dir>/index.jsonl``: one line per finished item with the files it wrote (size, CRC-32)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f: Any = None

    def reset(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def append(self, item_id: str, files: list[tuple[Path, int, int]], **extra: Any) -> None:
        """Record ``item_id`` as finished; ``files`` are ``(path, bytes, crc32)`` already written; ``extra``
        keys go on its line too (kept by :meth:`verified`)."""
        if self._f is None:
            self._f = open_for_append(self.path)
        rel = [[os.path.relpath(p, self.path.parent), n, c] for p, n, c in files]
        self._f.write(json.dumps({"id": item_id, "files": rel, **extra}) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def verified(self) -> set[str]:
        """Ids whose every recorded file still has its recorded size and CRC-32; the ledger is rewritten
        (atomically) with their lines only, so a link planted in its place is replaced, never written through."""
        ok: set[str] = set()
        keep: list[dict] = []
        for n, rec in read_own_jsonl(self.path):
            files = rec.get("files") or []
            if not (isinstance(files, list) and all(_is_file_entry(f) for f in files)):
                log.warning('%s: line %d: "files" is not a list of [path, bytes, crc32] as zoo writes it; %r will '
                            'be redone', self.path, n, rec.get("id"))
                continue
            good = True
            for rel, size, c in files:
                p = self.path.parent / rel
                try:
                    st = p.stat()
                    if not stat.S_ISREG(st.st_mode) or st.st_size != size or file_crc32(p) != c:
                        good = False
                except OSError:
                    good = False
                if not good:
                    log.info("resume: %s is missing or changed; %s will be redone", p, rec.get("id"))
                    break
            if good and isinstance(rec.get("id"), str):
                ok.add(rec["id"])
                keep.append(rec)
        self.close()
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        return ok


def _is_file_entry(entry: Any) -> bool:
    """``[relative path, bytes, crc32]``: one file of a ledger line."""
    return (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
            and all(type(v) is int for v in entry[1:]))
