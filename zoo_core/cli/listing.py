"""``zoo list``: models, backends, broken and disabled plugins. Imports neither torch nor Hydra."""
from __future__ import annotations

from zoo_core.api.hookspecs import CORE_HOOKS
from zoo_core.config.confpaths import scan_plugin_confs
from zoo_core.plugins import get_manager


def print_listing() -> int:
    pm = get_manager()
    print("models:")
    if not pm.models:
        print("  (none installed: pip install a zoo-<model> plugin, e.g. plugins/centerface)")
    for name in pm.model_names():
        info = pm.models[name]
        missing = [h for h in CORE_HOOKS if h not in info.hooks]
        dist = f"{info.distribution or '?'} {info.version or ''}".strip()
        print(f"  {name:<14} {dist:<24} hooks: {', '.join(info.hooks)}")
        if missing:
            print(f"  {'':<14} {'':<24} (does not implement: {', '.join(missing)})")
    if pm.extras:
        print("plugins:")
        for name, info in sorted(pm.extras.items()):
            print(f"  {name:<14} {info.distribution or '?'} {info.version or ''}  hooks: {', '.join(info.hooks)}")
    print("backends:")
    for name, ep in sorted(pm.backends.items()):
        ep_dist = getattr(ep, "dist", None)
        owner = f"{ep_dist.metadata['Name']} {ep_dist.version}" if ep_dist is not None else "?"
        print(f"  {name:<14} {owner:<24} {ep.value}")
    if pm.broken:
        print("broken:")
        for b in pm.broken:
            owner = f" [{b.distribution}]" if b.distribution else ""
            print(f"  {b.name:<14} ({b.group}: {b.entry_point}){owner} {b.error}")
    problems = scan_plugin_confs().problems
    if problems:
        print("config conflicts (a run selecting one of these fails with this error):")
        for (group, name), message in sorted(problems.items()):
            print(f"  {group} {name}: {message}")
    if pm.blocked:
        print(f"disabled by ZOO_DISABLE_PLUGINS: {', '.join(pm.blocked)}")
    return 0
