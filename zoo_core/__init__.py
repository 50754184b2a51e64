"""zoo core: hook specs, plugin discovery, configuration, stage runner and backends."""

import pluggy

#: The zoo-core release.
__version__ = "0.1.0"

#: Version of the hook API that plugins are written against. A plugin module may declare
#: ``ZOO_HOOK_API = "1"`` (or a list of accepted versions); another major version makes it
#: "broken" at load with a message saying which versions differ.
HOOK_API_VERSION = "1"

#: Decorator for hook implementations: ``@hookimpl`` on a function named like a hook spec.
hookimpl = pluggy.HookimplMarker("zoo")

__all__ = ["HOOK_API_VERSION", "__version__", "hookimpl"]
