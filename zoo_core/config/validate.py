"""Turn Hydra/OmegaConf composition errors into messages that list the valid choices or keys."""
from __future__ import annotations

import difflib
import re

from omegaconf import DictConfig, OmegaConf

from zoo_core.api.errors import ConfigError

HYDRA_FLAGS_WITHOUT_VALIDATION = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc",
                                  "--version", "--resolve"}


def first_values(overrides: list[str]) -> list[str]:
    """Replace sweeps (``a=1,2``, ``range(0,3)``, ``choice(...)``) by their first value; drop hydra keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(f"cannot parse overrides: {exc}") from None
    out = []
    for o in parsed:
        key = o.get_key_element()
        if key.startswith("hydra") or key.lstrip("+~").startswith("hydra"):
            continue
        if o.is_sweep_override():
            first = next(iter(o.sweep_string_iterator()), None)
            if first is None:
                raise ConfigError(f"override {o.input_line!r} sweeps over no values")
            out.append(f"{key}={first}")
        else:
            out.append(o.input_line or f"{key}={o.get_value_element_as_str()}")
    return out


def model_values(overrides: list[str]) -> list[str]:
    """Every model a run or sweep selects with ``model=`` (all values of a sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(f"cannot parse overrides: {exc}") from None
    out: list[str] = []
    for o in parsed:
        if o.get_key_element().lstrip("+~") == "model":
            out += list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
    return out


def compose(overrides: list[str]) -> DictConfig:
    """Compose the run config for ``overrides`` (sweeps reduced to their first value), its ``model`` and
    ``dataset`` sections typed by their plugins' schemas (:mod:`zoo_core.config.plugin_schema`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from zoo_core.api.errors import ZooError
    from zoo_core.config.confpaths import core_conf_dir
    from zoo_core.config.plugin_schema import apply_schemas

    simple = first_values(overrides)
    precheck(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(core_conf_dir()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=simple, return_hydra_config=True)
    except ZooError:
        raise
    except Exception as exc:
        raise ConfigError(explain(exc, simple)) from None
    finally:
        GlobalHydra.instance().clear()
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return apply_schemas(cfg, str(choices.get("model")), choices.get("dataset"))


def precheck(overrides: list[str]) -> None:
    """What is checked before composing: the structured schema registered, every selected model's
    config files free of conflicts with the other plugins' (:func:`~zoo_core.config.confpaths.check_choices`)."""
    from zoo_core.config import schema
    from zoo_core.config.confpaths import check_choices, scan_plugin_confs

    schema.register()
    scan = scan_plugin_confs()
    for model in model_values(overrides):
        check_choices(model=model, scan=scan)


def check_typed(cfg: DictConfig) -> None:
    """A ConfigError if a config composed with its ``hydra`` section has a value of the wrong type in
    ``model`` or ``dataset`` (checked on a copy; ``cfg`` is left as composed)."""
    import copy

    from zoo_core.config.plugin_schema import apply_schemas

    choices = cfg.hydra.runtime.choices
    apply_schemas(copy.deepcopy(cfg), str(choices.get("model")), choices.get("dataset"))


_NOT_IN_STRUCT = re.compile(r"Could not override '([^']+)'|Key '([^']+)' is not in struct")
_FULL_KEY = re.compile(r"full_key: ([\w.\[\]]+)")


def explain(exc: Exception, overrides: list[str]) -> str:
    """A message for a composition error: Hydra's own text, plus valid keys and a suggestion."""
    text = str(exc).strip()
    cause = exc.__cause__
    if cause is not None and "Invalid value" in str(cause):
        first = str(cause).splitlines()[0]
        full = _FULL_KEY.search(str(cause))
        return f"{full.group(1) if full else 'value'}: {first}"
    if cause is not None:
        text += "\n" + str(cause)
    m = _NOT_IN_STRUCT.search(text) or None
    key: str | None = None
    if m:
        key = m.group(1) or m.group(2)
    fk = _FULL_KEY.search(text)
    if fk:
        key = fk.group(1)
    if key and ("not in struct" in text or "Could not override" in text or "Key '" in text):
        key = key.lstrip("+~")
        parent, _, leaf = key.rpartition(".")
        valid = valid_keys_at(parent, overrides)
        lines = [f"unknown config key {key!r}."]
        if valid:
            close = difflib.get_close_matches(leaf, valid, n=1)
            if close:
                lines.append(f"Did you mean {(parent + '.' if parent else '') + close[0]!r}?")
            where = f"under '{parent}'" if parent else "at the top level"
            lines.append(f"Valid keys {where}: {', '.join(valid)}")
        lines.append("(use +key=value to add a new key on purpose)")
        return "\n".join(lines)
    m = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    if m:
        group, value = m.groups()
        opts = re.findall(r"^\s+(\S+)$", text, re.M)
        if group == "model":
            from zoo_core.config.confpaths import disabled_plugins

            if value in disabled_plugins():
                return (f"model plugin {value!r} is disabled by ZOO_DISABLE_PLUGINS; unset it (or remove "
                        f"{value!r} from it) to use this model. Enabled models: {', '.join(opts) or '(none)'}")
        disabled = _disabled_provider(group, value)
        if disabled:
            return (f"{group} {value!r} is provided by {disabled}, which is disabled by ZOO_DISABLE_PLUGINS; "
                    f"unset it (or remove that plugin from it) to use this {group}."
                    + (f"\nValid choices for {group}: {', '.join(opts)}" if opts else ""))
        msg = f"unknown {group} {value!r}."
        if opts:
            close = difflib.get_close_matches(value, opts, n=1)
            if close:
                msg += f" Did you mean {group}={close[0]}?"
            msg += f"\nValid choices for {group}: {', '.join(opts)}"
        return msg
    if "You must specify 'model'" in text:
        return no_model_message()
    return text.replace("\n\n", "\n")


def _disabled_provider(group: str, value: str) -> str | None:
    """``"distribution zoo-x (plugin 'x')"`` when only a disabled plugin ships ``conf/<group>/<value>.yaml``."""
    from zoo_core.config.confpaths import config_providers

    found = config_providers(group, value)
    if not found or not all(disabled for _, _, disabled in found):
        return None
    return " and ".join(f"distribution {dist or '?'} (plugin {name!r})" for name, dist, _ in found)
#: Hydra launcher configs provided by a plugin package: name -> (plugin module, the libraries it
#: runs on, what to pip install).
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", ("joblib",), "'zoo-core[joblib]'"),
    "ray": ("hydra_plugins.hydra_ray_launcher", ("ray",), "'zoo-core[ray]'"),
    "ray_aws": ("hydra_plugins.hydra_ray_launcher", ("ray",), "'zoo-core[ray]'"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", ("submitit",), "'zoo-core[submitit]'"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", ("submitit",), "'zoo-core[submitit]'"),
    "rq": ("hydra_plugins.hydra_rq_launcher", ("rq",), "hydra-rq-launcher"),
}


def launcher_choice(args: list[str]) -> str | None:
    """The ``hydra/launcher=<name>`` chosen on the command line (the last one wins), if any."""
    name = None
    for a in args:
        key, sep, value = a.partition("=")
        if sep and key.lstrip("+~") == "hydra/launcher":
            name = value
    return name


def check_launcher(args: list[str]) -> None:
    """Refuse a ``hydra/launcher=`` whose Hydra plugin is not installed, naming what to install."""
    import importlib
    import importlib.util

    name = launcher_choice(args)
    if name is None or name == "basic":
        return
    if name in LAUNCHER_PLUGINS:
        module, libraries, package = LAUNCHER_PLUGINS[name]
        try:
            importlib.import_module(module)
            missing = [lib for lib in libraries if importlib.util.find_spec(lib) is None]
        except (ImportError, ValueError):
            missing = [module]
        if missing:
            raise ConfigError(f"hydra/launcher={name} needs Hydra's {name.split('_')[0]} launcher plugin "
                              f"({', '.join(missing)} is not installed): pip install {package}")
        return
    known = sorted({"basic", *LAUNCHER_PLUGINS} | set(_launcher_configs()))
    if name not in known:
        close = [k for k in known if name in k] or difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean hydra/launcher={close[0]}?" if close else ""
        raise ConfigError(f"unknown hydra/launcher {name!r}.{hint} Launchers: {', '.join(known)}")


def _launcher_configs() -> list[str]:
    """Names in Hydra's ``hydra/launcher`` config group (installed plugins and zoo's config dir)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from zoo_core.config.confpaths import core_conf_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(core_conf_dir()), version_base="1.3"):
            return list(GlobalHydra.instance().config_loader().get_group_options("hydra/launcher"))
    except Exception:
        return []
    finally:
        GlobalHydra.instance().clear()


def valid_keys_at(parent: str, overrides: list[str]) -> list[str]:
    """Keys of the config node ``parent`` composed without the offending override."""
    try:
        cfg = _compose_quiet([o for o in overrides if not _touches_unknown(o, parent)])
    except Exception:
        return []
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig):
        return sorted(str(k) for k in node)
    return []


def _touches_unknown(override: str, parent: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    groups = ("model", "dataset", "backend", "stage", "quantize")
    return ("." in key and key.rpartition(".")[0] == parent) or (not parent and "." not in key and "/" not in key
                                                                and key not in groups)


def _compose_quiet(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from zoo_core.config.confpaths import core_conf_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(core_conf_dir()), version_base="1.3"):
            return hydra_compose("config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def no_model_message() -> str:
    from zoo_core.plugins import get_manager

    pm = get_manager()
    names = pm.model_names()
    msg = "no model given: add model=<name>."
    msg += f"\nInstalled models: {', '.join(names) if names else '(none: pip install a zoo-<model> plugin)'}"
    if pm.broken:
        msg += "\nBroken plugins (see `zoo list`): " + ", ".join(b.name for b in pm.broken)
    if names:
        msg += f"\nExample: zoo run model={names[0]} stage=eval"
    return msg
