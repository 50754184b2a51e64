"""``zoo list [--json]`` and ``zoo --version``. Import neither torch nor Hydra."""
from __future__ import annotations

import json
from importlib import metadata
from typing import Any

from zoo_core import __version__
from zoo_core.api.errors import ConfigError
from zoo_core.api.hookspecs import CORE_HOOKS
from zoo_core.config.confpaths import BACKENDS_GROUP, MODELS_GROUP, core_conf_dir, plugin_conf_dirs, scan_plugin_confs
from zoo_core.datasets.hooks import DEFAULT_HOOKS
from zoo_core.plugins import get_manager
from zoo_core.plugins.manager import EXTRA_GROUP, ZooPluginManager

#: Entry-point groups a zoo distribution may provide, and what ``zoo --version`` calls each.
GROUPS = {MODELS_GROUP: "models", EXTRA_GROUP: "plugins", BACKENDS_GROUP: "backends"}


def _owner(ep) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    return (dist.metadata["Name"], dist.version) if dist is not None else (None, None)


def datasets() -> list[dict[str, str]]:
    """Dataset config groups: ``{"name", "model"}`` per ``conf/dataset/<name>.yaml``; ``model`` is
    ``zoo-core`` for the datasets zoo-core ships (its dataset API) and the plugin's model otherwise."""
    core = {p.stem for p in (core_conf_dir() / "dataset").glob("*.yaml")}
    out = [{"name": n, "model": "zoo-core"} for n in sorted(core - {"none"})]
    for model, conf in sorted(plugin_conf_dirs().items()):
        for p in sorted((conf / "dataset").glob("*.yaml")):
            if p.stem not in core:
                out.append({"name": p.stem, "model": model})
    return out


def collect_listing(pm: ZooPluginManager | None = None) -> dict[str, Any]:
    """Everything ``zoo list`` shows, as JSON-able data (the ``zoo list --json`` object)."""
    pm = pm or get_manager()
    models = []
    for name in pm.model_names():
        info = pm.models[name]
        models.append({"name": name, "distribution": info.distribution, "version": info.version,
                       "entry_point": info.entry_point, "hooks": list(info.hooks),
                       "missing_hooks": [h for h in CORE_HOOKS if h not in info.hooks and h not in DEFAULT_HOOKS],
                       "from_zoo_core": [h for h in DEFAULT_HOOKS if h not in info.hooks]})
    plugins = [{"name": name, "distribution": info.distribution, "version": info.version,
                "entry_point": info.entry_point, "hooks": list(info.hooks)}
               for name, info in sorted(pm.extras.items())]
    backends = []
    for name, ep in sorted(pm.backends.items()):
        dist, version = _owner(ep)
        backends.append({"name": name, "distribution": dist, "version": version, "entry_point": ep.value})
    broken = [{"name": b.name, "group": b.group, "entry_point": b.entry_point, "distribution": b.distribution,
               "error": b.error} for b in pm.broken]
    conflicts = [{"group": group, "name": name, "error": message}
                 for (group, name), message in sorted(scan_plugin_confs().problems.items())]
    return {"zoo_core": __version__, "models": models, "plugins": plugins, "backends": backends,
            "datasets": datasets(), "broken": broken, "conflicts": conflicts, "disabled": list(pm.blocked)}


def print_listing(as_json: bool = False) -> int:
    data = collect_listing()
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    print("models:")
    if not data["models"]:
        print("  (none installed: pip install a zoo-<model> plugin, e.g. plugins/centerface)")
    for m in data["models"]:
        dist = f"{m['distribution'] or '?'} {m['version'] or ''}".strip()
        print(f"  {m['name']:<14} {dist:<24} hooks: {', '.join(m['hooks'])}")
        if m["from_zoo_core"]:
            print(f"  {'':<14} {'':<24} ({', '.join(m['from_zoo_core'])}: zoo-core's dataset API, "
                  f"for datasets with a kind)")
        if m["missing_hooks"]:
            print(f"  {'':<14} {'':<24} (does not implement: {', '.join(m['missing_hooks'])})")
    if data["plugins"]:
        print("plugins:")
        for p in data["plugins"]:
            print(f"  {p['name']:<14} {p['distribution'] or '?'} {p['version'] or ''}  hooks: {', '.join(p['hooks'])}")
    print("backends:")
    for b in data["backends"]:
        owner = f"{b['distribution']} {b['version']}" if b["distribution"] else "?"
        print(f"  {b['name']:<14} {owner:<24} {b['entry_point']}")
    if data["datasets"]:
        print("datasets:")
        for d in data["datasets"]:  # zoo-core's own (its dataset API), or shipped by a model plugin
            print(f"  {d['name']:<20} ({'zoo-core' if d['model'] == 'zoo-core' else 'model ' + d['model']})")
    _print_problems(data)
    return 0


def _print_problems(data: dict[str, Any]) -> None:
    """The ``broken:``, ``config conflicts`` and ``disabled`` parts of ``zoo list``."""
    if data["broken"]:
        print("broken:")
        for b in data["broken"]:
            owner = f" [{b['distribution']}]" if b["distribution"] else ""
            print(f"  {b['name']:<14} ({b['group']}: {b['entry_point']}){owner} {b['error']}")
    if data["conflicts"]:
        print("config conflicts (a run selecting one of these fails with this error):")
        for c in data["conflicts"]:
            print(f"  {c['group']} {c['name']}: {c['error']}")
    if data["disabled"]:
        print(f"disabled by ZOO_DISABLE_PLUGINS: {', '.join(data['disabled'])}")


LIST_HELP = """usage: zoo list [--json]

Lists the installed models (with the hooks each implements), cross-cutting plugins, backends and
datasets, then broken plugins and config conflicts.

  --json   the same as one JSON object"""


def cli_list(argv: list[str]) -> int:
    """``zoo list [--json]``."""
    if any(a in ("-h", "--help") for a in argv):
        print(LIST_HELP)
        return 0
    unknown = [a for a in argv if a != "--json"]
    if unknown:
        raise ConfigError(f"zoo list takes only --json, not {' '.join(unknown)}")
    return print_listing(as_json="--json" in argv)


def installed_versions() -> list[dict[str, Any]]:
    """zoo-core first, then every distribution with a zoo entry point: ``{"name", "version", "models", ...}``.

    Read from the installed metadata only: no plugin is imported (a broken one is listed too).
    """
    dists: dict[str, dict[str, Any]] = {}
    for group, kind in GROUPS.items():
        for ep in metadata.entry_points(group=group):
            name, version = _owner(ep)
            if name is None or name == "zoo-core":
                continue
            entry = dists.setdefault(name, {"name": name, "version": version})
            entry.setdefault(kind, []).append(ep.name)
    core = {"name": "zoo-core", "version": __version__}
    return [core] + [dists[k] for k in sorted(dists)]


def print_versions() -> int:
    """``zoo --version``: ``zoo-core 0.1.0``, then one line per plugin distribution with what it provides."""
    for d in installed_versions():
        provides = "; ".join(f"{kind}: {', '.join(sorted(d[kind]))}" for kind in GROUPS.values() if d.get(kind))
        print(f"{d['name']} {d['version']}" + (f"  ({provides})" if provides else ""))
    return 0
