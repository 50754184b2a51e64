"""Plugin discovery and dispatch (:mod:`.manager`) and the generated hook reference (:mod:`.hookdoc`).

:func:`get_manager` is how the core gets its plugin manager: entry points are scanned and plugin
modules imported once per process (a spawned worker process builds its own, once).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo_core.plugins.manager import ZooPluginManager

_lock = threading.Lock()
_cached: tuple[frozenset[str], ZooPluginManager] | None = None


def get_manager() -> ZooPluginManager:
    """The process's plugin manager, built on first use and reused afterwards.

    It is rebuilt only when ``ZOO_DISABLE_PLUGINS`` changed since it was built (the set of
    blocked plugins is part of what a manager is). Tests that need an independent manager (to
    register a fake plugin or monitor calls) construct ``ZooPluginManager()`` themselves.
    """
    global _cached
    from zoo_core.config.confpaths import disabled_plugins
    from zoo_core.plugins.manager import ZooPluginManager

    key = frozenset(disabled_plugins())
    with _lock:
        if _cached is None or _cached[0] != key:
            _cached = (key, ZooPluginManager())
        return _cached[1]


def reset_manager() -> None:
    """Forget the cached manager (the next :func:`get_manager` loads the entry points again)."""
    global _cached
    with _lock:
        _cached = None


__all__ = ["get_manager", "reset_manager"]
