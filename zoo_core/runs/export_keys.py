"""Which model-config keys change an exported graph: the plugin's ``model.export_keys`` list.

A model plugin lists, in its model yaml, the keys of ``cfg.model`` that change what its ``export``
hook writes (architecture, head widths, the traced input size, export options)::

    model:
      export_keys: [num_classes, head_conv, input_h, input_w, export.*]

Entries are dotted paths relative to ``model`` with shell-style wildcards (``fnmatch``); an entry
naming a section (``export``) covers every key below it, as ``export.*`` does. Only these keys (plus
the run-level ``export`` section, the weights and the target, see
:func:`zoo_core.runs.model_files.export_fingerprint`) decide whether an existing export is reused, so
changing an evaluation-only key (``model.threshold``, ``model.iou_thresh``...) never re-exports.

Keys that change the export for one target only go under ``export_keys_by_target``, added to
``export_keys`` when that target is exported (CenterNet's onnxruntime graph has dynamic height and
width, its Ascend graph is fixed at ``input_h x input_w``)::

    model:
      export_keys: [num_classes, head_conv, export.*]
      export_keys_by_target: {ascend: [input_h, input_w]}

A model config without ``export_keys`` keeps the safe behaviour: every key of ``model`` counts.
An entry that matches no key is a configuration error (a typo would otherwise silently let a stale
export through).

``aipp_keys`` lists, in the same syntax, the keys an OM's AIPP config (ATC ``--insert_op_conf``) is computed
from, e.g. CenterFace's ``[mean, std]``: they change the OM, not the ONNX, so they never re-export; the OM's
record stores their values when its ATC line inserts AIPP (:mod:`zoo_core.runs.om_record`, :func:`aipp_values`).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from zoo_core.api.errors import ConfigError

#: The model-config keys holding the lists (never part of the fingerprint themselves).
EXPORT_KEYS = "export_keys"
EXPORT_KEYS_BY_TARGET = "export_keys_by_target"
AIPP_KEYS = "aipp_keys"


def flatten(section: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": [1, 2]}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in section.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def declared_export_keys(model_cfg: Any, list_key: str = EXPORT_KEYS) -> list[str] | None:
    """The ``export_keys`` list (or another list of key names, ``list_key``) of a model config, or ``None`` when
    the plugin declares none.

    :raises ConfigError: the list is not a list of strings.
    """
    keys = model_cfg.get(list_key) if model_cfg is not None else None
    if keys is None:
        return None
    if isinstance(keys, ListConfig):
        keys = OmegaConf.to_container(keys, resolve=True)
    if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(f"model.{list_key} must be a list of key names (e.g. [head_conv, input_h, export.*]), "
                          f"got {keys!r}")
    return list(keys)


def _by_target(model_cfg: Any, target: str | None) -> list[str]:
    """The ``export_keys_by_target`` entries for ``target`` (every target's when ``target`` is ``None``).

    :raises ConfigError: ``export_keys_by_target`` is not a mapping of target -> list of key names.
    """
    section = model_cfg.get(EXPORT_KEYS_BY_TARGET) if model_cfg is not None else None
    if section is None:
        return []
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)
    if not isinstance(section, Mapping) or not all(
            isinstance(v, (list, tuple)) and all(isinstance(k, str) and k for k in v) for v in section.values()):
        raise ConfigError(f"model.{EXPORT_KEYS_BY_TARGET} must map an export target to a list of key names "
                          f"(e.g. {{ascend: [input_h, input_w]}}), got {section!r}")
    if target is None:
        return [k for keys in section.values() for k in keys]
    return list(section.get(target) or [])


def _matches(path: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(path, pattern) or path.startswith(pattern + ".")


def export_values(model_cfg: Any, target: str | None = None) -> dict[str, Any]:
    """The values of the model-config keys that change the export, as ``{"model.<path>": value}``.

    With ``model.export_keys`` declared, only the keys it matches, plus those
    ``model.export_keys_by_target`` lists for ``target`` (``None``: for every target); without it,
    every key of the model section (except ``name``, which the fingerprint records on its own).

    :raises ConfigError: an ``export_keys`` / ``export_keys_by_target`` entry matches no key of the
        model config, or either is not shaped as documented.
    """
    patterns = declared_export_keys(model_cfg)
    if patterns is not None:
        patterns += _by_target(model_cfg, target)
    return _selected(model_cfg, patterns, EXPORT_KEYS)


def aipp_values(model_cfg: Any) -> dict[str, Any]:
    """The values of the keys ``model.aipp_keys`` names (what an OM's AIPP config is computed from), as
    ``{"model.<path>": value}``; ``{}`` when the plugin declares none.

    :raises ConfigError: an ``aipp_keys`` entry matches no key of the model config, or it is not a list.
    """
    patterns = declared_export_keys(model_cfg, AIPP_KEYS)
    return _selected(model_cfg, patterns, AIPP_KEYS) if patterns else {}


def _selected(model_cfg: Any, patterns: list[str] | None, list_key: str) -> dict[str, Any]:
    """``{"model.<path>": value}`` of the keys ``patterns`` match (every key but the lists and ``name``: ``None``)."""
    data: dict[str, Any]
    if isinstance(model_cfg, DictConfig):
        data = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)  # type: ignore[assignment]
    else:
        data = dict(model_cfg or {})
    for key in (EXPORT_KEYS, EXPORT_KEYS_BY_TARGET, AIPP_KEYS, "name"):
        data.pop(key, None)
    flat = flatten(data)
    if patterns is None:
        return {f"model.{k}": v for k, v in sorted(flat.items())}
    unmatched = [p for p in patterns if not any(_matches(k, p) for k in flat)]
    if unmatched:
        raise ConfigError(f"model.{list_key} lists {', '.join(map(repr, unmatched))} but no key of the model "
                          f"config matches (its keys: {', '.join(sorted(flat))})")
    return {f"model.{k}": v for k, v in sorted(flat.items()) if any(_matches(k, p) for p in patterns)}


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs (or that is only in one of the two)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            out.append(f"{key}: (not recorded) -> {new[key]!r}")
        elif key not in new:
            out.append(f"{key}: {old[key]!r} -> (not an export key now)")
        elif old[key] != new[key]:
            out.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    return out
