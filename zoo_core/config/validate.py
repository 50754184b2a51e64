"""Turn Hydra/OmegaConf composition errors into messages that list the valid choices or keys."""
from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from zoo_core.api.errors import ConfigError

if TYPE_CHECKING:
    from hydra._internal.hydra import Hydra

HYDRA_FLAGS_WITHOUT_VALIDATION = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc",
                                  "--version", "--resolve"}


#: A value Hydra's override grammar reads back unquoted as this very string: a path of these ASCII characters
#: (with a ``/``, so never a number, ``true`` or ``null``).
_PLAIN_PATH = re.compile(r"[\w./][\w./+@%-]*", re.ASCII)


def hydra_quote(value: str) -> str:
    """``value`` written in Hydra's override grammar so that Hydra reads back this very string: as it is when
    it is a plain path (:data:`_PLAIN_PATH`), else single-quoted, a quote and the backslashes before a quote
    or the end escaped (a path with a space, a non-ASCII letter, ``,``, ``:``, ``'``...). (``${...}`` stays an
    interpolation, as in any Hydra value.)"""
    if "/" in value and _PLAIN_PATH.fullmatch(value):
        return value
    body = re.sub(r"(\\*)('|\Z)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return f"'{body}'"


def shell_word(arg: str) -> str:
    """``arg`` quoted for a POSIX shell: as it is when it needs no quoting, in double quotes when nothing in
    it is special there (``"work_dir='/a b'"`` reads better than ``shlex.quote``'s ``'work_dir='"'"'/a b'"'"''``),
    else :func:`shlex.quote`."""
    import shlex

    quoted = shlex.quote(arg)
    if quoted == arg or any(c in arg for c in '"$`\\!'):
        return quoted
    return f'"{arg}"'


def parse_error(exc: Exception, overrides: list[str]) -> ConfigError:
    """The :class:`ConfigError` for overrides Hydra's parser refused (``exc``): Hydra's text, and when the
    first override it refuses is named, and when it parses once its value is quoted (a path with a space or a
    non-ASCII letter), a hint shows that form."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
            continue
        except Exception as refused:
            exc = refused
        reason = " ".join(str(exc).split())
        key, sep, value = o.partition("=")
        quoted = f"{key}={hydra_quote(value)}"
        if not sep or quoted == o or value[:1] in ("'", '"'):  # (quoted already: the quotes are what is wrong)
            return ConfigError(f"cannot parse override {o}: {reason}")
        try:
            parser.parse_override(quoted)
        except Exception:
            return ConfigError(f"cannot parse override {o}: {reason}")
        return ConfigError(f"cannot parse override {o}: {reason}",
                           hint=f"Hydra reads a value with a space, a non-ASCII letter or another character of its "
                                f"override grammar only when it is quoted: {quoted} (in a shell: {shell_word(quoted)})")
    return ConfigError(f"cannot parse overrides: {exc}")


def first_values(overrides: list[str]) -> list[str]:
    """Replace sweeps (``a=1,2``, ``range(0,3)``, ``choice(...)``) by their first value; drop hydra keys
    but ``hydra.searchpath``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as exc:
        raise parse_error(exc, overrides) from None
    out = []
    for o in parsed:
        key = o.get_key_element()
        if key.startswith("hydra") or key.lstrip("+~").startswith("hydra"):
            if key == "hydra.searchpath":  # more config files to compose (and check) like --config-dir
                out.append(o.input_line or f"{key}={o.get_value_element_as_str()}")
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
        raise parse_error(exc, overrides) from None
    out: list[str] = []
    for o in parsed:
        if o.get_key_element().lstrip("+~") == "model":
            out += list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
    return out


def compose(overrides: list[str], config_dir: str | None = None, config_name: str = "config") -> DictConfig:
    """Compose the run config for ``overrides`` (sweeps reduced to their first value), its ``model`` and
    ``dataset`` sections typed by their plugins' schemas (:mod:`zoo_core.config.plugin_schema`).
    ``config_dir``, ``config_name``: ``zoo run --config-dir`` (a directory added to Hydra's search
    path) and ``--config-name``.

    :raises ConfigError: an unknown key or choice (:func:`explain`), a config file that is not valid
        YAML (:func:`yaml_error`: file, line, column)."""
    from hydra import compose as hydra_compose
    from omegaconf import open_dict

    from zoo_core.api.errors import ZooError
    from zoo_core.config.plugin_schema import apply_schemas

    simple = first_values(overrides)
    precheck(overrides)
    try:
        with hydra_session(config_dir):
            cfg = hydra_compose(config_name, overrides=simple, return_hydra_config=True)
    except ZooError:
        raise
    except Exception as exc:
        raise composition_error(exc, simple) from None
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return apply_schemas(cfg, str(choices.get("model")), choices.get("dataset"))


@contextlib.contextmanager
def hydra_session(config_dir: str | None = None, job_name: str = "app") -> Iterator[Hydra]:
    """Hydra initialized on zoo's config dir (and the plugins' ``conf/`` trees), with ``config_dir``
    added where ``--config-dir`` puts it (before the structured schemas); cleared on exit.

    :raises ConfigError: ``config_dir`` is not a directory.
    """
    from hydra import initialize_config_dir
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    from zoo_core.config.confpaths import core_conf_dir

    extra = None
    if config_dir is not None:
        extra = os.path.abspath(os.path.expanduser(config_dir))
        if not os.path.isdir(extra):
            raise ConfigError("--config-dir: not a directory", path=extra)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(core_conf_dir()), version_base="1.3", job_name=job_name):
            if extra is not None:  # as hydra.main does for --config-dir
                search_path = create_config_search_path(str(core_conf_dir()))
                search_path.prepend(provider="command-line", path=f"file://{extra}",
                                    anchor=SearchPathQuery(provider="schema"))
                GlobalHydra.instance().clear()
                Hydra.create_main_hydra2(task_name=job_name, config_search_path=search_path)
            hydra = GlobalHydra.instance().hydra
            assert hydra is not None
            yield hydra
    finally:
        GlobalHydra.instance().clear()


def yaml_error(exc: BaseException) -> ConfigError | None:
    """A one-line :class:`ConfigError` naming the file, line and column when ``exc`` is (or was caused
    by) a YAML error in a config file Hydra read; ``None`` otherwise."""
    import yaml

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and not isinstance(cur, yaml.YAMLError):
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    if not isinstance(cur, yaml.YAMLError):
        return None
    mark = getattr(cur, "problem_mark", None) or getattr(cur, "context_mark", None)
    problem = getattr(cur, "problem", None) or getattr(cur, "context", None) or str(cur).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(cur, "context", None)
    if context and context != problem:
        problem = f"{problem} ({context})"
    note = ""
    if "python/" in problem:
        note = "; config files are read with a safe loader: Python tags are refused and nothing from the file ran"
    path = mark.name if mark is not None and mark.name and not mark.name.startswith("<") else None
    return ConfigError(f"invalid YAML{where}: {' '.join(problem.split())}{note}", path=path)


def composition_error(exc: Exception, overrides: list[str]) -> ConfigError:
    """The :class:`ConfigError` for an exception raised while Hydra composed the config: a YAML error
    (:func:`yaml_error`), else :func:`explain`'s message."""
    return yaml_error(exc) or ConfigError(explain(exc, overrides))


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
            # a case slip first (model.k -> model.K), then a close spelling, then (at the top level) a key of a
            # section (limit -> dataset.limit, iou_thresh -> model.iou_thresh)
            close = [v for v in valid if v.lower() == leaf.lower()] or difflib.get_close_matches(leaf, valid, n=1)
            guess = (parent + "." if parent else "") + close[0] if close else None
            if guess is None and not parent:
                guess = _section_key(leaf, overrides)
            if guess:
                lines.append(f"Did you mean {guess!r}?")
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
        return _unknown_choice(group, value, opts)
    if "You must specify 'model'" in text:
        return no_model_message()
    return text.replace("\n\n", "\n")


def _unknown_choice(group: str, value: str, opts: list[str]) -> str:
    """``unknown <group> <value>.`` with the closest valid choice, the choices, and for a model declared
    under a near-miss entry-point group a hint naming its distribution."""
    msg = f"unknown {group} {value!r}."
    if opts:
        close = difflib.get_close_matches(value, opts, n=1)
        if close:
            msg += f" Did you mean {group}={close[0]}?"
        msg += f"\nValid choices for {group}: {', '.join(opts)}"
    if group in ("model", "dataset"):
        from zoo_core.config.confpaths import misfiled_dataset, misfiled_model

        misfiled = misfiled_model(value) if group == "model" else misfiled_dataset(value)
        if misfiled:
            msg += f"\n  hint: {misfiled}"
    return msg


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


#: Sections a top-level key may belong to, in the order a typo's owner is looked for.
_SECTIONS = ("dataset", "model", "stage", "backend", "export", "atc", "quantize", "compare", "pin")


def _section_key(leaf: str, overrides: list[str]) -> str | None:
    """``<section>.<leaf>`` when a top-level ``leaf`` is a key of one of the config's sections (its exact or
    case-insensitive name), e.g. ``limit`` -> ``dataset.limit``; ``None`` otherwise."""
    try:
        cfg = _compose_quiet([o for o in overrides if not _touches_unknown(o, "")])
    except Exception:
        return None
    for exact in (True, False):
        for section in _SECTIONS:
            node = cfg.get(section)
            if isinstance(node, DictConfig):
                for k in map(str, node):
                    if k == leaf if exact else k.lower() == leaf.lower():
                        return f"{section}.{k}"
    return None


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


#: Models an example names when installed, in this order (the ones zoo-core's repository ships).
EXAMPLE_MODELS = ("centerface", "centernet")


def example_model() -> str | None:
    """The installed model an example command names: a shipped one (:data:`EXAMPLE_MODELS`), else the first."""
    from zoo_core.plugins import get_manager

    names = get_manager().model_names()
    return next((m for m in EXAMPLE_MODELS if m in names), names[0] if names else None)


def no_model_message(command: str = "run") -> str:
    from zoo_core.plugins import get_manager

    pm = get_manager()
    names = pm.model_names()
    msg = "no model given: add model=<name>."
    msg += f"\nInstalled models: {', '.join(names) if names else '(none: pip install a zoo-<model> plugin)'}"
    if pm.broken:
        msg += "\nBroken plugins (see `zoo list`): " + ", ".join(b.name for b in pm.broken)
    example = example_model()
    if example:
        msg += f"\nExample: zoo {command} model={example}" + (" stage=eval" if command == "run" else "")
    return msg
