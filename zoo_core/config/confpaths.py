"""Where configuration lives: the core's ``conf/`` tree and each model plugin's ``conf/`` tree.

A model plugin ships ``<top package>/conf/{model,dataset}/*.yaml`` next to the module named by its
``zoo.models`` entry point. The search-path plugin adds those trees to Hydra's search path without
importing the plugin (so a plugin that fails to import still cannot break configuration).

Hydra takes the first file of a name on the search path, so who may ship what is checked here
(:func:`scan_plugin_confs`), never left to the search order:

* a plugin may ship ``conf/model/<name>.yaml`` only for the model(s) its distribution registers,
  and ``conf/dataset/<name>.yaml`` only for a dataset no other distribution (nor the core) defines;
  nothing else (no ``stage/``, ``backend/``, ``hydra/`` files);
* a model name registered by two distributions is a conflict.

A plugin breaking the first rule is left off the search path; every conflict is an error naming
both distributions when a run selects the model or dataset involved (:func:`check_choices`), and is
listed by ``zoo list``. Other models keep working.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, distributions, entry_points
from pathlib import Path

MODELS_GROUP = "zoo.models"
BACKENDS_GROUP = "zoo.backends"
CORE_DIST = "zoo-core"


def core_conf_dir() -> Path:
    """The core's config tree: inside the installed package (wheel) or the source checkout."""
    here = Path(__file__).resolve().parents[1]  # the zoo_core package
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"zoo-core config tree not found next to {here}")


def disabled_plugins() -> set[str]:
    """Names listed in ``ZOO_DISABLE_PLUGINS`` (comma separated): entry-point or distribution names."""
    return {n.strip() for n in os.environ.get("ZOO_DISABLE_PLUGINS", "").split(",") if n.strip()}


def distribution_of(ep: EntryPoint) -> str | None:
    """The name of the distribution that declares ``ep`` (None when unknown)."""
    dist = getattr(ep, "dist", None)
    return None if dist is None else str(dist.metadata["Name"])


def is_blocked(ep: EntryPoint, blocked: set[str]) -> bool:
    """``ZOO_DISABLE_PLUGINS`` names the entry point or its distribution."""
    return ep.name in blocked or distribution_of(ep) in blocked


def all_entry_points() -> Iterator[EntryPoint]:
    """Every installed distribution's entry points, of every group (each knows its distribution)."""
    for dist in distributions():
        yield from dist.entry_points


def misfiled_model(name: str) -> str | None:
    """Why model ``name`` is unknown when a distribution declared it under another ``zoo*`` entry-point group
    (``zoo.model``, ``zoo_models``, ``zoo-models``, ``zoo.plugins``...) instead of ``zoo.models``; else None."""
    found = []
    for ep in all_entry_points():
        if ep.name == name and ep.group != MODELS_GROUP and ep.group.lower().startswith("zoo"):
            found.append(f"distribution {distribution_of(ep) or '(unknown)'} declares {name!r} under the "
                         f"entry-point group {ep.group!r}")
    if not found:
        return None
    return (f"{'; '.join(sorted(set(found)))}, not {MODELS_GROUP!r}: a model plugin's entry point belongs in "
            f"[project.entry-points.\"{MODELS_GROUP}\"] (fix its pyproject.toml and reinstall it)")


def misfiled_dataset(name: str) -> str | None:
    """Why dataset ``name`` is unknown when a distribution ships ``conf/dataset/<name>.yaml`` next to an entry
    point of another ``zoo*`` group than ``zoo.models`` (a dataset-only ``zoo.plugins`` distribution): zoo
    reads the ``conf/`` trees of model plugins only. ``None`` otherwise."""
    found = set()
    for ep in all_entry_points():
        if ep.group == MODELS_GROUP or not ep.group.lower().startswith("zoo"):
            continue
        conf = _conf_dir(ep)
        if conf is not None and (conf / "dataset" / f"{name}.yaml").is_file():
            found.add(f"distribution {distribution_of(ep) or '(unknown)'} ships {conf / 'dataset' / (name + '.yaml')} "
                      f"but declares no {MODELS_GROUP!r} entry point (only {ep.group!r})")
    if not found:
        return None
    return (f"{'; '.join(sorted(found))}: zoo reads the conf/ trees of model plugins only, so a dataset file ships "
            f"in a model plugin's conf/dataset/ (or pass its directory with zoo run --config-dir <dir>, "
            f"the file in <dir>/dataset/)")


def _label(ep: EntryPoint) -> str:
    return f"{distribution_of(ep) or '(unknown distribution)'} ({ep.value})"


def duplicate_models(eps: list[EntryPoint], kind: str = "model") -> dict[str, str]:
    """``{name: message}`` for every entry-point name registered by more than one distribution."""
    by_name: dict[str, list[EntryPoint]] = {}
    for ep in eps:
        group = by_name.setdefault(ep.name, [])
        if all(distribution_of(o) != distribution_of(ep) or o.value != ep.value for o in group):
            group.append(ep)
    out = {}
    for name, group in by_name.items():
        if len(group) > 1:
            dists = sorted(_label(ep) for ep in group)
            out[name] = (f"{kind} {name!r} is registered by {len(group)} distributions: {' and '.join(dists)}; "
                         f"uninstall one, or hide it with ZOO_DISABLE_PLUGINS=<its distribution name>")
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
        conf = _conf_dir(ep)
        if conf is not None and (conf / group / f"{name}.yaml").is_file():
            out.append((ep.name, distribution_of(ep), is_blocked(ep, blocked)))
    return out


def _conf_dir(ep: EntryPoint) -> Path | None:
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


@dataclass
class ConfScan:
    """What the installed model plugins' ``conf/`` trees may contribute.

    ``dirs``: ``{model name: conf dir}`` put on the search path; ``problems``:
    ``{("model" | "dataset", name): message}``; ``dataset_owner``: ``{dataset: model name of the
    plugin shipping it, or "" for the core}``.
    """

    dirs: dict[str, Path] = field(default_factory=dict)
    problems: dict[tuple[str, str], str] = field(default_factory=dict)
    dataset_owner: dict[str, str] = field(default_factory=dict)


def _yaml_files(conf: Path) -> list[Path]:
    return sorted(p.relative_to(conf) for p in conf.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def _offence(conf: Path, dist: str, mine: list[str], all_models: dict[str, str]) -> tuple[str, str | None] | None:
    """``(message, victim model)`` for the first file of ``conf`` the plugin may not ship, or None."""
    for rel in _yaml_files(conf):
        group, stem = (rel.parts[0], rel.stem) if len(rel.parts) == 2 else ("", "")
        if group == "model" and stem not in mine:
            whose = (f"the config of model {stem!r} of {all_models[stem]}" if stem in all_models
                     else f"but registers model {', '.join(mine)}")
            victim = stem if stem in all_models and all_models[stem] != dist else None
            return f"plugin {dist} ships {conf / rel}, {whose}: a plugin may define only its own model's config", victim
        if group not in ("model", "dataset"):
            return (f"plugin {dist} ships {conf / rel}: a model plugin's conf/ may hold only "
                    f"model/<its model>.yaml and dataset/<name>.yaml"), None
    return None


def scan_plugin_confs() -> ConfScan:
    """Check every enabled model plugin's ``conf/`` tree against the ownership rules (module docstring)."""
    blocked = disabled_plugins()
    eps = sorted((ep for ep in entry_points(group=MODELS_GROUP) if not is_blocked(ep, blocked)), key=lambda e: e.name)
    scan = ConfScan()
    for name, message in duplicate_models(eps).items():
        scan.problems[("model", name)] = message
    clean = [ep for ep in eps if ("model", ep.name) not in scan.problems]
    all_models = {ep.name: distribution_of(ep) or ep.value for ep in clean}
    trees: dict[Path, list[EntryPoint]] = {}  # one conf dir may serve several models of one distribution
    for ep in clean:
        conf = _conf_dir(ep)
        if conf is not None:
            trees.setdefault(conf, []).append(ep)
    datasets: dict[str, list[tuple[str, str]]] = {
        p.stem: [(CORE_DIST, "")] for p in (core_conf_dir() / "dataset").glob("*.yaml")}
    for conf, owners in trees.items():
        dist = distribution_of(owners[0]) or owners[0].value
        mine = sorted(ep.name for ep in owners)
        offence = _offence(conf, dist, mine, all_models)
        if offence is not None:  # left off the search path; an error for its models and the one it shadows
            message, victim = offence
            for m in mine:
                scan.problems[("model", m)] = message
            if victim:
                scan.problems[("model", victim)] = f"{message}; hide it with ZOO_DISABLE_PLUGINS={dist}"
            continue
        for m in mine:
            scan.dirs[m] = conf
        for rel in _yaml_files(conf):
            if rel.parts[0] == "dataset":
                datasets.setdefault(rel.stem, []).append((dist, mine[0]))
    for name, defs in datasets.items():
        if len(defs) > 1 and defs[0][0] == CORE_DIST:  # zoo-core cannot be disabled: name the plugins only
            plugins = sorted({d for d, _m in defs[1:]})
            scan.problems[("dataset", name)] = (
                f"dataset {name!r} is defined by {' and '.join(d for d, _m in defs)}: a plugin must not ship a "
                f"dataset zoo-core defines; remove dataset/{name}.yaml from {' and '.join(plugins)}, or hide it "
                f"with ZOO_DISABLE_PLUGINS={','.join(plugins)}")
        elif len(defs) > 1:
            scan.problems[("dataset", name)] = (
                f"dataset {name!r} is defined by {' and '.join(d for d, _m in defs)}: a plugin may define only "
                f"datasets nobody else defines; uninstall one, or hide it with ZOO_DISABLE_PLUGINS=<its distribution>")
        else:
            scan.dataset_owner[name] = defs[0][1]
    return scan


def plugin_conf_dirs() -> dict[str, Path]:
    """``{model name: conf dir}`` of every enabled model plugin whose ``conf/`` follows the rules."""
    return scan_plugin_confs().dirs


def check_choices(model: str | None = None, dataset: str | None = None, scan: ConfScan | None = None) -> None:
    """Raise :class:`ConfigError` when the selected model or dataset is involved in a config conflict."""
    from zoo_core.api.errors import ConfigError

    scan = scan or scan_plugin_confs()
    for group, name in (("model", model), ("dataset", dataset)):
        if name is not None and (group, name) in scan.problems:
            raise ConfigError(scan.problems[(group, name)])


def add_plugin_search_paths(search_path) -> None:
    """Append ``zoo-plugin:<name>`` providers to a Hydra ``ConfigSearchPath`` (idempotent)."""
    present = {p.provider for p in search_path.get_path()}
    added: set[Path] = set()
    for name, conf in plugin_conf_dirs().items():
        provider = f"zoo-plugin:{name}"
        if provider not in present and conf not in added:
            search_path.append(provider=provider, path=f"zoo-plugin://{conf}")  # searchpath.ZooPluginConfigSource
            added.add(conf)
