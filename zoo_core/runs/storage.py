"""Errors of the storage, not of zoo nor of a plugin: a full disk, a read-only or forbidden path."""
from __future__ import annotations

import errno

from zoo_core.api.errors import ZooError

#: Errors of the storage, not of zoo: one line naming the file, exit 2.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                            errno.ENAMETOOLONG})


def storage_error(exc: BaseException, where: str = "") -> ZooError | None:
    """A ZooError naming the file for a full disk, a read-only or forbidden path (``None`` for anything else).
    ``where`` is said after the reason when the error names no file (a ``write`` that found the disk full)."""
    if isinstance(exc, OSError) and not isinstance(exc, ZooError) and exc.errno in STORAGE_ERRNOS:
        reason = exc.strerror or str(exc)
        if exc.filename is None and where:
            reason += f" ({where})"
        return ZooError(reason, path=exc.filename)
    return None
