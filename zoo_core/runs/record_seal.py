"""The seal on the records of the model files zoo builds and later reuses (the export's, the onnxruntime INT8
model's, AMCT's deploy model's and the OM's ``.json``).

A record's fingerprint and sha256 only say the record and the file agree with each other: anyone who can write
``model_dir`` can plant other weights with a record that agrees (the sha256 of a public checkpoint is public).
So every such record zoo writes carries ``"seal"``: the HMAC-SHA256, under a per-user secret key, of the record's
canonical JSON (sorted keys, compact separators, the ``seal`` field left out). A record is trusted for reuse only
with a valid seal; one without (an older zoo's, a hand-written one) or with a wrong one (edited, or written by
another user's zoo) makes zoo rebuild the file (an OM, which needs ``atc``, is loaded with a warning as an OM
without a record).

The key is ``$ZOO_CACHE_DIR/record-seal.key`` (else ``~/.cache/zoo/record-seal.key``), 32 random bytes made on
first use with mode 0600. The jobs of a sweep, run as the same user, share it. A key file that is a symbolic
link, not a regular file, not owned by the user, or readable or writable by group or others is refused.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from zoo_core.api.errors import ZooError

log = logging.getLogger("zoo")
#: the key path whose creation failed and was said (said once per process)
_unmade: str | None = None

#: The record field holding the seal.
SEAL = "seal"
KEY_NAME = "record-seal.key"
_KEY_BYTES = 32
_HINT = ("remove it and let zoo make a new one (mode 0600, owned by you); records sealed with the old key are "
         "then rebuilt once")


def key_path() -> Path:
    """``$ZOO_CACHE_DIR/record-seal.key``, else ``~/.cache/zoo/record-seal.key``."""
    base = os.environ.get("ZOO_CACHE_DIR")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "zoo"
    return root / KEY_NAME


def _read_key(path: Path) -> bytes | None:
    """The key's bytes; ``None`` when there is no key file. Refuses a file another user could read or plant."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):  # (a cache "dir" that is a file: no key there, none makeable)
        if path.is_symlink():
            raise ZooError("the record seal key is a symbolic link (to a missing file), not zoo's own key file",
                           path=path, hint=_HINT) from None
        return None
    except OSError as exc:
        if path.is_symlink():
            raise ZooError("the record seal key is a symbolic link, not zoo's own key file", path=path,
                           hint=_HINT) from None
        raise ZooError(f"cannot read the record seal key: {exc.strerror}", path=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ZooError("the record seal key is not a regular file", path=path, hint=_HINT)
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise ZooError(f"the record seal key is owned by uid {st.st_uid}, not by you (uid {os.getuid()})",
                           path=path, hint=_HINT)
        if st.st_mode & 0o077:
            raise ZooError(f"the record seal key has mode {stat.S_IMODE(st.st_mode):04o}: group or others may read "
                           "or write it (it must be 0600)", path=path, hint=_HINT)
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if len(data) < _KEY_BYTES:
        raise ZooError(f"the record seal key holds {len(data)} bytes, not the {_KEY_BYTES} zoo writes", path=path,
                       hint=_HINT)
    return data


def _create_key(path: Path) -> None:
    """Write a new key: a 0600 temp file linked onto ``path`` (atomic; a concurrent job's key wins if first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            os.write(fd, os.urandom(_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another zoo process made it first: its key is the one
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def key() -> bytes | None:
    """This user's record seal key, made on first use; ``None`` (said once) when it cannot be made (a read-only
    or full cache dir): records are then written without a seal and nothing is reused."""
    global _unmade
    path = key_path()
    data = _read_key(path)
    if data is None:
        try:
            _create_key(path)
        except OSError as exc:
            if _unmade != str(path):
                _unmade = str(path)
                log.warning("cannot make the record seal key %s (%s): model files are rebuilt by every run, not "
                            "reused (set ZOO_CACHE_DIR to a writable directory)", path, exc.strerror or exc)
            return None
        data = _read_key(path)
    if data is None:
        raise ZooError("the record seal key vanished while zoo made it", path=path)
    return data


def _digest(record: dict[str, Any], secret: bytes) -> str:
    body = {k: v for k, v in record.items() if k != SEAL}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hmac.new(secret, text.encode("ascii"), hashlib.sha256).hexdigest()


def sealed(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its ``seal`` (computed on its JSON form, as a reader will see it); without one when no key
    can be made (:func:`key`)."""
    body = json.loads(json.dumps({k: v for k, v in record.items() if k != SEAL}, allow_nan=False))
    secret = key()
    return {**body, SEAL: _digest(body, secret)} if secret is not None else body


def seal_problem(record: dict[str, Any]) -> str | None:
    """``None`` when ``record``'s seal is valid under this user's key, else why not, in words."""
    given = record.get(SEAL)
    if not isinstance(given, str) or not given:
        return "it has no seal: written by an older zoo, or not by zoo"
    secret = key()
    if secret is None:
        return f"there is no record seal key to check it with ({key_path()} could not be made)"
    if not hmac.compare_digest(given, _digest(record, secret)):
        return "its seal does not match: the record was edited, or written by another user's zoo"
    return None
