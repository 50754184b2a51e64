"""Typed ``model`` and ``dataset`` sections: each composed section is merged into its owner's schema.

The owner is the model plugin that ships the config file (see :mod:`zoo_core.config.confpaths`);
its schema is the dataclass its entry-point module declares in ``ZOO_CONFIG_SCHEMAS`` (see
:mod:`zoo_core.api.config`), else the base :class:`~zoo_core.api.config.ModelConfig` /
:class:`~zoo_core.api.config.DatasetConfig`. zoo-core's own dataset files are typed by
:data:`zoo_core.config.dataset_schemas.CORE_DATASET_SCHEMAS`.

Where a new key is declared: a key of ``conf/model/<model>.yaml`` in that plugin's schema class
(``zoo_<model>/config.py``); a key of a zoo-core dataset file in
:mod:`zoo_core.config.dataset_schemas`; a model key every model may have (read by the core's stages)
in :class:`~zoo_core.api.config.ModelConfig`; a model key read by zoo-core's WIDER FACE / COCO
evaluator in :class:`~zoo_core.api.config.WiderFaceModelConfig` /
:class:`~zoo_core.api.config.CocoModelConfig`. A value of the wrong type is one
:class:`~zoo_core.api.errors.ConfigError` line naming the key and the declared type, raised at
composition, before anything is written.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from zoo_core.api.config import LENGTH_KEY, MULTIPLE_KEY, RANGE_KEY, DatasetConfig, ModelConfig
from zoo_core.api.errors import ConfigError, PluginError
from zoo_core.config.confpaths import ConfScan, check_choices, scan_plugin_confs
from zoo_core.config.dataset_schemas import CORE_DATASET_SCHEMAS

SCHEMAS_ATTRIBUTE = "ZOO_CONFIG_SCHEMAS"


def schema_for(group: str, name: str, scan: ConfScan, manager: Any) -> tuple[type, str]:
    """``(schema class, whose)`` for config file ``<group>/<name>``: the owner's declared schema or the base."""
    base: type = ModelConfig if group == "model" else DatasetConfig
    owner = name if group == "model" else scan.dataset_owner.get(name, "")
    if group == "dataset" and not owner and name in CORE_DATASET_SCHEMAS:
        core_cls = CORE_DATASET_SCHEMAS[name]
        return core_cls, f"zoo-core's {core_cls.__qualname__}"
    info = manager.models.get(owner) if owner else None
    if info is None:  # the core's own file, or a plugin that is broken (its error comes when it is used)
        return base, "zoo-core"
    declared = getattr(info.module, SCHEMAS_ATTRIBUTE, None) or {}
    if not isinstance(declared, dict):
        raise PluginError(f"{info.label}: {SCHEMAS_ATTRIBUTE} must be a dict {{'<group>/<name>': <dataclass>}}, "
                          f"got {type(declared).__name__}")
    cls = declared.get(f"{group}/{name}")
    whose = f"{info.distribution or info.entry_point}'s {cls.__qualname__ if cls else base.__name__}"
    if cls is None:
        return base, whose
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"{info.label}: {SCHEMAS_ATTRIBUTE}[{group + '/' + name!r}] must be a dataclass "
                          f"deriving from zoo_core.api.config.{base.__name__}")
    return cls, whose


def complete_with_schema(config: Any, config_path: str, package: str | None) -> None:
    """Add to a model plugin's ``model/<name>`` or ``dataset/<name>`` file, as Hydra loaded it (``config``;
    ``package``: its ``# @package`` header), every key its schema declares and the file leaves out, at the
    declared default (``"???"`` for a mandatory one), so that ``model.<key>=value`` overrides a declared key
    without ``+`` (Hydra checks overrides against the files, before :func:`apply_schemas`). Anything that
    goes wrong (a broken plugin or schema) leaves the file as it is: :func:`apply_schemas` names it.

    A file whose ``defaults`` list names another config (``defaults: [extds, _self_]``) is left as it is: it is
    merged after its parent, so a declared default added here would replace the value the parent sets (a
    ``kind: widerface`` inherited from zoo-core's ``widerface_sample``, a ``class_names`` list). Its keys are
    typed all the same by :func:`apply_schemas` after composition."""
    group, _, name = config_path.removesuffix(".yaml").partition("/")
    if group not in ("model", "dataset") or not name or "/" in name or not isinstance(config, DictConfig):
        return
    if _inherits(config.get("defaults"), group):
        return
    if package == "_global_":
        section = config.get(group)
    elif package in (None, group):
        section = config
    else:
        return
    if not isinstance(section, DictConfig):
        return
    try:
        from zoo_core.plugins import get_manager

        cls, _whose = schema_for(group, name, scan_plugin_confs(), get_manager())
        declared = OmegaConf.to_container(OmegaConf.structured(cls), enum_to_str=True)
    except Exception:
        return
    assert isinstance(declared, dict)
    for key, value in declared.items():
        if key not in section:
            section[key] = value


def _inherits(defaults: Any, group: str) -> bool:
    """A ``defaults`` list that merges another config of ``group`` into the file (``- extds``, ``- /model: x``);
    ``override /dataset: squares`` in a model file selects another group and does not."""
    if defaults is None:
        return False
    if not OmegaConf.is_list(defaults):
        return True
    for entry in defaults:
        if isinstance(entry, str):
            if entry != "_self_":
                return True
        elif OmegaConf.is_dict(entry):
            for key in entry:
                words = str(key).split()
                if words and words[-1].lstrip("/").split("/")[0] == group:
                    return True
        else:
            return True
    return False


def _declared_type(cls: type, field: str) -> str:
    try:
        hint = typing.get_type_hints(cls).get(field)
    except Exception:
        return "?"
    if hint is None:
        return "?"
    text = getattr(hint, "__name__", None) if isinstance(hint, type) else None
    return text or str(hint).replace("typing.", "")


def typed_section(section: DictConfig, cls: type, group: str, whose: str) -> DictConfig:
    """``section`` merged into ``cls`` (declared keys typed and converted; ``+`` extras kept, untyped)."""
    try:
        typed = OmegaConf.structured(cls)
    except OmegaConfBaseException as exc:  # the schema itself is broken: the plugin's bug, named
        reason = str(getattr(exc, "msg", None) or exc).strip().splitlines()[0]
        key = str(getattr(exc, "full_key", "") or "")
        raise PluginError(f"{whose}: the config schema of {group} cannot be built"
                          f"{f' (field {key})' if key else ''}: {reason}") from None
    OmegaConf.set_struct(typed, False)
    try:
        merged = OmegaConf.merge(typed, section)
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "")
        reason = str(getattr(exc, "msg", None) or exc).strip().splitlines()[0]
        top = key.split(".")[0].split("[")[0]
        where = f"{group}.{key}" if key else group
        declared = f" ({group}.{top} is declared {_declared_type(cls, top)} in {whose})" if top else ""
        raise ConfigError(f"{where}: {reason}{declared}") from None
    check_values(merged, group, cls)  # type: ignore[arg-type]
    OmegaConf.set_struct(merged, True)
    return merged  # type: ignore[return-value]


def _bad_float(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def check_values(section: DictConfig, group: str, cls: type | None = None) -> None:
    """A ConfigError for a NaN or infinite number anywhere in ``section`` and for a value outside the
    range its field declares with :func:`~zoo_core.api.config.in_range` (interpolations are skipped:
    they are checked where they point)."""
    for value, where in _concrete(section, group):
        if _bad_float(value):
            raise ConfigError(f"{where}={value}: not a finite number")
    if cls is None or not dataclasses.is_dataclass(cls):
        return
    for f in dataclasses.fields(cls):
        bounds = f.metadata.get(RANGE_KEY)
        if bounds is None or f.name not in section or OmegaConf.is_interpolation(section, f.name):
            continue
        value = section[f.name]
        if isinstance(value, ListConfig):
            length = f.metadata.get(LENGTH_KEY)
            if length is not None and len(value) != length:
                shown = OmegaConf.to_container(value, resolve=False)
                raise ConfigError(f"{group}.{f.name}={shown}: needs exactly {length} "
                                  f"value{'s' if length != 1 else ''}, got {len(value)}")
            for i in range(len(value)):
                if not (OmegaConf.is_interpolation(value, i) or OmegaConf.is_missing(value, i)):
                    _check_bounds(value[i], f"{group}.{f.name}[{i}]", bounds, f.metadata.get(MULTIPLE_KEY))
            continue
        _check_bounds(value, f"{group}.{f.name}", bounds, f.metadata.get(MULTIPLE_KEY))


def _check_bounds(value: Any, where: str, bounds: tuple[Any, Any, bool, bool], multiple: int | None = None) -> None:
    """A ConfigError for a number ``value`` outside ``bounds`` or not a whole multiple of ``multiple``
    (:func:`~zoo_core.api.config.in_range`'s)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if multiple and value % multiple:
        raise ConfigError(f"{where}={value}: not a multiple of {multiple}")
    lo, hi, lo_open, hi_open = bounds
    if (lo is not None and (value <= lo if lo_open else value < lo)) or \
            (hi is not None and (value >= hi if hi_open else value > hi)):
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        shown = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{where}={value}: outside {shown}")


def _concrete(node: Any, where: str) -> typing.Iterator[tuple[Any, str]]:
    """``(value, dotted path)`` of every leaf of ``node`` that is not an interpolation or missing."""
    if isinstance(node, DictConfig):
        keys: typing.Iterable[Any] = node.keys()
    elif isinstance(node, ListConfig):
        keys = range(len(node))
    else:
        return
    for k in keys:
        if OmegaConf.is_interpolation(node, k) or OmegaConf.is_missing(node, k):
            continue
        child = node._get_node(k)  # the node, without resolving anything
        value = child._value() if child is not None and not isinstance(child, (DictConfig, ListConfig)) else child
        path = f"{where}[{k}]" if isinstance(node, ListConfig) else f"{where}.{k}"
        if isinstance(value, (DictConfig, ListConfig)):
            yield from _concrete(value, path)
        else:
            yield value, path


def check_run_values(cfg: DictConfig) -> None:
    """The ranges the run-level schema declares with :func:`~zoo_core.api.config.in_range` (``device_id >= 0``),
    and ``backend.device_id`` when set to a value of its own (the backend section is untyped): a whole number >= 0,
    not ``abc``, ``-1`` or ``1.5`` (which the device would refuse with a traceback, or silently truncate)."""
    from zoo_core.config.schema import ZooSchema

    for f in dataclasses.fields(ZooSchema):
        bounds = f.metadata.get(RANGE_KEY)
        if bounds is None or f.name not in cfg or OmegaConf.is_interpolation(cfg, f.name) \
                or OmegaConf.is_missing(cfg, f.name):
            continue
        _check_bounds(cfg[f.name], f.name, bounds)
    backend = cfg.get("backend")
    if isinstance(backend, DictConfig) and "device_id" in backend and not OmegaConf.is_interpolation(backend,
                                                                                                      "device_id"):
        value = backend._get_node("device_id")._value()  # type: ignore[union-attr]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"backend.device_id={value!r}: must be a whole number >= 0 (the NPU's index)")


def apply_schemas(cfg: DictConfig, model: str, dataset: str | None) -> DictConfig:
    """Check the selected model and dataset for config conflicts, then type ``cfg.model`` and
    ``cfg.dataset`` in place with their owners' schemas; returns ``cfg``."""
    from zoo_core.plugins import get_manager

    scan = scan_plugin_confs()
    check_choices(model, dataset, scan)
    manager = get_manager()
    for group, name in (("model", model), ("dataset", dataset or "")):
        cls, whose = schema_for(group, name, scan, manager)
        cfg[group] = typed_section(cfg[group], cls, group, whose)
    check_run_values(cfg)
    for key in (str(k) for k in cfg):
        if key not in ("model", "dataset", "hydra"):
            node = cfg._get_node(key)  # unresolved
            if isinstance(node, DictConfig):
                check_values(node, key)
            elif not OmegaConf.is_interpolation(cfg, key) and not OmegaConf.is_missing(cfg, key) \
                    and _bad_float(cfg[key]):
                raise ConfigError(f"{key}={cfg[key]}: not a finite number")
    return cfg
