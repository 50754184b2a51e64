"""Where configuration lives: the core's ``conf/`` tree and each model plugin's ``conf/`` tree.

A model plugin ships ``<top package>/conf/{model,dataset}/*.yaml`` next to the module named by its
``zoo.models`` entry point. The search-path plugin adds those trees to Hydra's search path without
importing the plugin (so a plugin that fails to import still cannot break configuration).
"""
from __future__ import annotations

import importlib.util
import os
from importlib.metadata import entry_points
from pathlib import Path

MODELS_GROUP = "zoo.models"
BACKENDS_GROUP = "zoo.backends"


def core_conf_dir() -> Path:
    """The core's config tree: inside the installed package (wheel) or the source checkout."""
    here = Path(__file__).resolve().parents[1]  # the zoo_core package
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"zoo-core config tree not found next to {here}")


def disabled_plugins() -> set[str]:
    """Names listed in ``ZOO_DISABLE_PLUGINS`` (comma separated)."""
    return {n.strip() for n in os.environ.get("ZOO_DISABLE_PLUGINS", "").split(",") if n.strip()}


def _conf_dir_of(ep) -> Path | None:
    top = ep.value.split(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        conf = Path(loc) / "conf"
        if conf.is_dir():
            return conf
    return None


def plugin_conf_dirs() -> dict[str, Path]:
    """``{model name: conf dir}`` for every installed, non-disabled model plugin that ships one."""
    out: dict[str, Path] = {}
    blocked = disabled_plugins()
    for ep in sorted(entry_points(group=MODELS_GROUP), key=lambda e: e.name):
        if ep.name in blocked or ep.name in out:
            continue
        conf = _conf_dir_of(ep)
        if conf is not None:
            out[ep.name] = conf
    return out


def config_providers(group: str, name: str) -> list[tuple[str, str | None, bool]]:
    """Installed model plugins whose ``conf/<group>/<name>.yaml`` exists, disabled ones included.

    Returns ``[(entry-point name, distribution name or None, disabled)]``: used to say which
    distribution provides a config (e.g. a dataset) that composition cannot find.
    """
    blocked = disabled_plugins()
    out = []
    seen = set()
    for ep in sorted(entry_points(group=MODELS_GROUP), key=lambda e: e.name):
        if ep.name in seen:
            continue
        seen.add(ep.name)
        conf = _conf_dir_of(ep)
        if conf is not None and (conf / group / f"{name}.yaml").is_file():
            dist = getattr(ep, "dist", None)
            out.append((ep.name, dist.metadata["Name"] if dist is not None else None, ep.name in blocked))
    return out


def add_plugin_search_paths(search_path) -> None:
    """Append ``zoo-plugin:<name>`` providers to a Hydra ``ConfigSearchPath`` (idempotent)."""
    present = {p.provider for p in search_path.get_path()}
    for name, conf in plugin_conf_dirs().items():
        provider = f"zoo-plugin:{name}"
        if provider not in present:
            search_path.append(provider=provider, path=f"file://{conf}")
