"""The run directory: what lives where (docs/run-directory.md).

A *run root* holds the artifacts that chain stages together; each stage run keeps its own records
in ``<root>/<stage>/``, which no other stage writes::

    <root>/                 work_dir (single run) or the sweep job's dir
      .zoo.lock             held by the run writing this root
      inputs/               preprocess: <stem>.bin (+ <input>/<stem>.bin), meta.jsonl, state.json
      outputs/              infer, eval save_outputs=true: <stem>_<i>.bin, index.jsonl, state.json
      detections/           eval, postprocess: chunk-*.npz, index.jsonl, state.json
      model/                model_dir (default): exports, OMs, atc_*.sh
      <stage>/              run.json, perf.json, metrics.json, plugin files, .hydra/, zoo.log
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

#: Files in a record dir that Hydra writes before the stage starts (kept when the dir is cleared).
HYDRA_FILES = (".hydra", "zoo.log")


def refuse_symlink(path: Path, hint: str = "remove the link, or point work_dir= at the other place instead") -> None:
    """A ZooError when ``path`` (a directory zoo owns inside a run) is a symbolic link: zoo clears and
    rewrites these directories, and a link would make it delete or write files elsewhere."""
    if path.is_symlink():
        from zoo_core.api.errors import ZooError

        raise ZooError(f"is a symbolic link (to {os.readlink(path)}); zoo clears and rewrites this directory "
                       f"and does not follow links inside a run directory", path=path, hint=hint)


class PinnedDir:
    """A directory zoo writes during a run (``inputs/``, ``outputs/``, ``detections/``, the record dir), remembered
    by its identity (device, inode) when first used; every later :meth:`check` (one ``lstat``, before each write
    into it) compares. A directory moved away and replaced while the run writes it (by a symbolic link to
    elsewhere, or another directory) is a ZooError naming it, so nothing is written through the new path.

    A check and the write after it are not one atomic step: a swap in between is caught by the next check
    (the run still ends with the error), but its one write may land in the new place."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._ident: tuple[int, int] | None = None

    def pin(self) -> Path:
        """(Re)remember the directory, creating it; a symbolic link there is refused (:func:`refuse_symlink`)."""
        refuse_symlink(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        st = os.lstat(self.path)
        if not stat.S_ISDIR(st.st_mode):  # (a link planted between the check and the mkdir)
            refuse_symlink(self.path)
            from zoo_core.api.errors import ZooError

            raise ZooError("is not a directory", path=self.path)
        self._ident = (st.st_dev, st.st_ino)
        return self.path

    def check(self) -> Path:
        """The directory, after making sure it is still the one pinned (pinned now if it was not yet)."""
        if self._ident is None:
            return self.pin()
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == self._ident:
            return self.path
        from zoo_core.api.errors import ZooError

        if st is None:
            now = "now missing"
        elif stat.S_ISLNK(st.st_mode):
            now = f"now a symbolic link to {os.readlink(self.path)}"
        elif stat.S_ISDIR(st.st_mode):
            now = "now another directory"
        else:
            now = "now not a directory"
        raise ZooError(f"was replaced during the run ({now}); zoo stops here and does not write "
                       f"through it", path=self.path,
                       hint="leave a run directory alone while a run writes it; run the stage again "
                            "(without resume=true)")


def refuse_linked_file(path: Path) -> None:
    """A ZooError when ``path`` (a file zoo or Hydra rewrites in place, e.g. ``zoo.log``) is a symbolic link or a
    regular file with another hard link: writing it would truncate or write the other file."""
    refuse_symlink(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        from zoo_core.api.errors import ZooError

        raise ZooError(f"has {st.st_nlink} hard links: this file is rewritten in place, which would truncate the "
                       f"file it shares with another path", path=path, hint="remove it (it is rewritten anyway)")


def refuse_links(record_dir: Path) -> None:
    """Before Hydra writes a stage's records: neither the record dir nor its ``.hydra/``, the files in it or
    ``zoo.log`` may be a symbolic link, and none of those files may have another hard link (Hydra would
    write or truncate, and the stage runner clear, whatever they point at). ``zoo run`` checks a single
    run's before Hydra starts; zoo's job-log handler (:class:`~zoo_core.runs.lock.RunLogHandler`) checks each
    sweep job's."""
    refuse_symlink(record_dir)
    for name in HYDRA_FILES:
        refuse_linked_file(record_dir / name)
    hydra_dir = record_dir / ".hydra"
    if hydra_dir.is_dir():
        for p in sorted(hydra_dir.iterdir()):
            refuse_linked_file(p)


def clear_dir(path: Path, keep: tuple[str, ...] = ()) -> None:
    """Remove everything inside ``path`` except the names in ``keep`` (the dir itself stays).
    Links inside it are removed, not followed; ``path`` itself must not be a link (:func:`refuse_symlink`)."""
    refuse_symlink(path)
    if not path.is_dir():
        return
    for p in path.iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


#: The keys of an artifact dir's ``state.json`` that zoo reads, with the JSON type every zoo version wrote them as
#: (``None``: JSON ``null`` allowed too; a key may be absent: older zoos wrote fewer).
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "complete": (bool,), "inputs_complete": (bool,), "model_name": (str,), "fingerprint": (dict,),
    "model_config": (dict, type(None)), "dataset_config": (dict, type(None)), "backend": (str, type(None))}


def artifact_state(directory: Path) -> dict:
    """``<directory>/state.json`` as a zoo stage wrote it (``inputs/``, ``outputs/``: the fingerprint, the model
    and the settings that made the dir, the backend that made the outputs, ``complete``); ``{}`` when there is
    none (a dir zoo did not write: a seed or ais_bench dump).

    One that is there but cannot be read as zoo wrote it is a :class:`~zoo_core.api.errors.ZooError` naming it
    and why: not a regular file (a FIFO, a device: refused unopened), larger than
    :data:`~zoo_core.api.checkpoint.MAX_RECORD_BYTES` (unread), not JSON, not an object, or one of the keys zoo
    reads of another type (:data:`_STATE_TYPES`). Reading it as absent would drop the checks it feeds (another
    model's outputs, an unfinished preprocess)."""
    import json

    from zoo_core.api.checkpoint import MAX_RECORD_BYTES, read_at_most
    from zoo_core.api.errors import ZooError

    path = Path(directory) / "state.json"
    if not path.exists() and not path.is_symlink():
        return {}
    hint = (f"run the stage that writes {Path(directory).name}/ again, or remove this file to read the folder as "
            f"a dump zoo did not write (nothing is then checked)")
    if not path.exists():
        raise ZooError(f"unreadable state file: a symbolic link to a missing file ({os.readlink(path)})", path=path,
                       hint=hint)
    try:
        data = read_at_most(path, MAX_RECORD_BYTES, "state file")
    except ZooError as exc:  # (not a regular file; too large: unread)
        raise ZooError(str(exc).removeprefix(f"{path}: "), path=path, hint=hint) from None
    try:
        state = json.loads(data)
    except RecursionError:
        raise ZooError("unreadable state file: its JSON is nested too deeply to read", path=path,
                       hint=hint) from None
    except ValueError as exc:
        raise ZooError(f"unreadable state file: not JSON ({exc})", path=path, hint=hint) from None
    if not isinstance(state, dict):
        raise ZooError(f"unreadable state file: a JSON {_json_kind(state)}, not an object", path=path, hint=hint)
    for key, kinds in _STATE_TYPES.items():
        if key in state and not isinstance(state[key], kinds):
            want = " or ".join({bool: "true/false", str: "a string", dict: "an object"}.get(k, "null")
                               for k in kinds)
            raise ZooError(f"unreadable state file: its {key!r} is {json.dumps(state[key])[:40]}, not {want}",
                           path=path, hint=hint)
    return state


def _json_kind(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
