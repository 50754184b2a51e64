"""Was an artifact dir made under this run's settings? The producer's ``state.json`` against this run's config.

Every zoo stage that writes an artifact dir (``inputs/``, ``outputs/``, ``detections/``) copies the model and
dataset config it ran with into the dir's ``state.json``. A stage that reads the dir compares those copies with
its own config through :func:`config_differences`: ``evaluate`` warns about every difference (re-scoring under
other evaluation settings is legitimate), and so do ``infer`` and ``postprocess`` reading ``inputs/`` (the keys that
decide a preprocessed input are not declared by plugins, and a network-only key such as ``head_conv`` must stay this
run's choice); ``postprocess`` refuses ``outputs/`` made by another model, or under other values of the keys the
plugin declares as deciding the network or its input (:func:`refuse_other_producer`), since its detections, and the
config their ``state.json`` records, would otherwise describe a network the outputs did not come from.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from zoo_core.api.errors import ZooError
from zoo_core.runs.export_keys import aipp_values, declared_export_keys, export_values
from zoo_core.runs.layout import artifact_state

log = logging.getLogger("zoo")

#: Dataset keys that only select images; differing values are not worth a warning.
SELECTION_KEYS = ("limit", "shard", "num_shards", "images_required")


def config_differences(state: dict, cfg: dict) -> list[tuple[str, str, Any, Any]]:
    """``(section, key, recorded, now)`` for each top-level key of the ``model`` and ``dataset`` sections whose
    value in a ``state.json``'s copies (``model_config``, ``dataset_config``) differs from ``cfg`` (a resolved
    config); the dataset's :data:`SELECTION_KEYS` are not compared; a state without a copy compares nothing."""
    out: list[tuple[str, str, Any, Any]] = []
    for section, ignore in (("model", ()), ("dataset", SELECTION_KEYS)):
        old, new = state.get(f"{section}_config") or {}, cfg.get(section) or {}
        if not isinstance(old, dict) or not isinstance(new, dict):
            continue
        keys = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
        out += [(section, k, old.get(k), new.get(k)) for k in keys]
    return out


def describe(diffs: list[tuple[str, str, Any, Any]]) -> list[str]:
    """``model.threshold: 0.05 -> 0.3`` for each of :func:`config_differences`."""
    return [f"{section}.{k}: {old!r} -> {new!r}" for section, k, old, new in diffs]


def deciding_model_keys(model_cfg: Any) -> set[str]:
    """The top-level model keys that decide the network or its input, as the plugin declares them: its
    ``export_keys`` (with every target's ``export_keys_by_target``) and ``aipp_keys``; none when it declares no
    ``export_keys`` (a difference is then only warned about: nothing says which keys only change the decode)."""
    if declared_export_keys(model_cfg) is None:
        return set()
    return {k.split(".")[1] for k in [*export_values(model_cfg), *aipp_values(model_cfg)]}


#: A string value Hydra's override grammar reads back unquoted as this very string (not a number, bool or null).
_PLAIN_WORD = re.compile(r"[A-Za-z_][\w.-]*", re.ASCII)


def _overrides(key: str, value: Any) -> list[str]:
    """Command-line overrides setting ``key`` to ``value``: one per leaf of a mapping (Hydra cannot parse a JSON
    object as a value), each a single shell word (:func:`~zoo_core.config.validate.shell_word`): the values come
    from a ``state.json`` anyone may have written, and a hint pasted into a shell must run nothing but ``zoo``. A
    string that is not a plain word is quoted for Hydra too (:func:`~zoo_core.config.validate.hydra_quote`)."""
    from zoo_core.config.validate import shell_word

    if isinstance(value, dict) and value:
        return [o for k, v in value.items() for o in _overrides(f"{key}.{k}", v)]
    return [shell_word(f"{key}={_hydra_value(value)}")]


def _hydra_value(value: Any) -> str:
    """A JSON value in Hydra's override grammar, read back as this very value: strings that are not plain words
    quoted (:func:`~zoo_core.config.validate.hydra_quote`), inside lists and mappings too (``json.dumps`` wrote
    ``"\\u00e9"``, which Hydra reads as those six characters)."""
    from zoo_core.config.validate import hydra_quote

    if isinstance(value, str):
        plain = _PLAIN_WORD.fullmatch(value) and value.lower() not in ("true", "false", "null", "nan", "inf")
        return value if plain else hydra_quote(value)
    if isinstance(value, list):
        return "[" + ", ".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_hydra_value(str(k))}: {_hydra_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def refuse_other_producer(ctx: Any, directory: Path, producer: str, what: str) -> None:
    """Refuse (exit 2) to read ``directory`` (``what``: "inputs", "outputs") when its ``state.json`` says another
    model made it, or, for "outputs", when the model keys that decide the network or its input
    (:func:`deciding_model_keys`) had other values; other differences are warned about, as ``evaluate`` does. A dir
    without a zoo ``state.json`` (a seed or ais_bench dump) is read as it is. ``producer``: the stage that writes
    such a dir, named in the hint."""
    state = artifact_state(directory)
    if not state:
        return
    path = Path(directory) / "state.json"
    made_by = state.get("model_name")
    if isinstance(made_by, str) and made_by != ctx.model_name:
        from zoo_core.config.validate import shell_word

        raise ZooError(f"these {what} were made by model {made_by!r}, not {ctx.model_name!r}", path=path,
                       hint=f"pass {shell_word(f'model={made_by}')}, or run stage={producer} again with "
                            f"{shell_word(f'model={ctx.model_name}')}")
    diffs = config_differences(state, ctx.resolved_config())
    deciding = deciding_model_keys(ctx.cfg.model) if what == "outputs" else set()
    bad = [d for d in diffs if d[0] == "model" and d[1] in deciding]
    if bad:
        said = "; ".join(f"model.{k}: {old!r} there, {new!r} in this run" for _s, k, old, new in bad)
        theirs = " ".join(o for _s, k, old, _new in bad for o in _overrides(f"model.{k}", old))
        raise ZooError(f"these {what} were made with other model settings than this run's ({said})", path=path,
                       hint=f"pass the settings they were made with ({theirs}), or run stage={producer} again "
                            f"with this run's")
    if diffs:
        log.warning("%s: reading %s made under a different setup:\n  %s", path, what, "\n  ".join(describe(diffs)))
