"""Plugin discovery and dispatch.

Model plugins come from the entry-point group ``zoo.models`` (entry-point name = model name),
backends from ``zoo.backends``, and optional cross-cutting plugins (observers, wrappers) from
``zoo.plugins``. ``ZOO_DISABLE_PLUGINS=a,b`` blocks any of them by name. A plugin that fails to
import, asks for another hook-API (or dataset-API) version, or implements an unknown hook is recorded
as *broken* with its error; every other plugin keeps working.

zoo-core's dataset API (:mod:`zoo_core.datasets.hooks`) is registered too: its ``trylast``
``dataset`` / ``evaluate`` implementations answer for a model plugin that does not implement them
when the run's dataset config has a ``kind`` zoo-core reads.
"""
from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass, field
from typing import Any

import pluggy

from zoo_core import HOOK_API_VERSION
from zoo_core.api import hookspecs
from zoo_core.datasets import DATASET_API_VERSION
from zoo_core.config.confpaths import BACKENDS_GROUP, MODELS_GROUP, disabled_plugins
from zoo_core.api.errors import PluginError

EXTRA_GROUP = "zoo.plugins"


@dataclass
class PluginInfo:
    name: str
    module: Any
    distribution: str | None
    version: str | None
    entry_point: str
    hooks: list[str] = field(default_factory=list)


@dataclass
class BrokenPlugin:
    name: str
    group: str
    entry_point: str
    error: str
    distribution: str | None = None


def _dist_of(ep: md.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _api_mismatch(module) -> str | None:
    """Why ``module`` cannot be used with this zoo-core (``ZOO_HOOK_API`` / ``ZOO_DATASET_API``), or None."""
    for attr, what, have in (("ZOO_HOOK_API", "hook API", HOOK_API_VERSION),
                             ("ZOO_DATASET_API", "dataset API", DATASET_API_VERSION)):
        wanted = getattr(module, attr, None)
        if wanted is None:
            continue
        accepted = [str(w) for w in (wanted if isinstance(wanted, (list, tuple)) else [wanted])]
        major = have.split(".")[0]
        if not any(a.split(".")[0] == major for a in accepted):
            return (f"plugin needs zoo {what} {', '.join(accepted)}, this zoo-core provides {have}; "
                    f"install a zoo-core release for that API or upgrade the plugin")
    return None


class ZooPluginManager:
    """A pluggy ``PluginManager`` for project ``zoo`` plus bookkeeping for ``zoo list``."""

    def __init__(self, autoload: bool = True):
        self.pm = pluggy.PluginManager("zoo")
        self.pm.add_hookspecs(hookspecs)
        from zoo_core.datasets import hooks as dataset_hooks

        self.pm.register(dataset_hooks, name=dataset_hooks.PLUGIN_NAME)
        self.models: dict[str, PluginInfo] = {}
        self.extras: dict[str, PluginInfo] = {}
        self.broken: list[BrokenPlugin] = []
        self.blocked: list[str] = []
        self.backends: dict[str, md.EntryPoint] = {}
        self._subset_cache: dict[tuple[str, str], Any] = {}
        if autoload:
            self.load_entry_points()

    # -- loading ---------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        blocked = disabled_plugins()
        for name in sorted(blocked):
            self.pm.set_blocked(name)
        for group, target in ((MODELS_GROUP, self.models), (EXTRA_GROUP, self.extras)):
            for ep in sorted(md.entry_points(group=group), key=lambda e: e.name):
                if ep.name in blocked:
                    self.blocked.append(ep.name)
                    continue
                if ep.name in target:
                    continue
                self._load_one(ep, group, target)
        for ep in sorted(md.entry_points(group=BACKENDS_GROUP), key=lambda e: e.name):
            if ep.name in blocked:
                self.blocked.append(f"backend:{ep.name}")
            else:
                self.backends.setdefault(ep.name, ep)

    def register_module(self, name: str, module, group: str = MODELS_GROUP, dist=(None, None)) -> None:
        """Register an already imported plugin module (used by tests and the scaffold)."""
        target = self.models if group == MODELS_GROUP else self.extras
        self._register(name, module, group, target, f"{module.__name__}", dist)

    def _load_one(self, ep: md.EntryPoint, group: str, target: dict) -> None:
        dist = _dist_of(ep)
        try:
            module = ep.load()
        except BaseException as exc:  # a plugin's import must never take the CLI down
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.broken.append(BrokenPlugin(ep.name, group, ep.value, f"{type(exc).__name__}: {exc}", dist[0]))
            return
        self._register(ep.name, module, group, target, ep.value, dist)

    def _register(self, name, module, group, target, ep_value, dist) -> None:
        problem = _api_mismatch(module)
        if problem:
            self.broken.append(BrokenPlugin(name, group, ep_value, problem, dist[0]))
            return
        try:
            self.pm.register(module, name=name)
        except Exception as exc:
            self.broken.append(BrokenPlugin(name, group, ep_value, f"{type(exc).__name__}: {exc}", dist[0]))
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(module)
            self.broken.append(BrokenPlugin(name, group, ep_value, f"invalid hook implementation: {exc}", dist[0]))
            return
        hooks = sorted(caller.name for caller in self.pm.get_hookcallers(module) or [])
        target[name] = PluginInfo(name, module, dist[0], dist[1], ep_value, hooks)

    # -- dispatch --------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        return sorted(self.models)

    def hooks_for(self, model: str) -> "ModelHooks":
        """Hook callers that reach only ``model``'s plugin (plus cross-cutting wrappers)."""
        if model not in self.models:
            broken = {b.name: b for b in self.broken if b.group == MODELS_GROUP}
            if model in broken:
                raise PluginError(f"model plugin {model!r} is installed but broken: {broken[model].error}")
            if model in self.blocked:
                raise PluginError(f"model plugin {model!r} is disabled by ZOO_DISABLE_PLUGINS")
            raise PluginError(
                f"unknown model {model!r}; installed models: {', '.join(self.model_names()) or '(none)'}")
        return ModelHooks(self, model)

    def subset_caller(self, hook: str, model: str):
        key = (hook, model)
        if key not in self._subset_cache:
            others = [p.module for n, p in self.models.items() if n != model]
            self._subset_cache[key] = self.pm.subset_hook_caller(hook, remove_plugins=others)
        return self._subset_cache[key]

    def notify_stage_finished(self, **kwargs) -> None:
        self.pm.hook.zoo_stage_finished(**kwargs)

    def backend_class(self, name: str):
        ep = self.backends.get(name)
        if ep is None:
            if f"backend:{name}" in self.blocked:
                raise PluginError(f"backend {name!r} is disabled by ZOO_DISABLE_PLUGINS")
            raise PluginError(f"unknown backend {name!r}; installed backends: {', '.join(sorted(self.backends))}")
        try:
            return ep.load()
        except Exception as exc:
            raise PluginError(f"backend {name!r} failed to import: {type(exc).__name__}: {exc}") from exc


class ModelHooks:
    """``hooks.preprocess(cfg=..., ...)`` calls the hook on the selected model's plugin only.

    ``dataset`` and ``evaluate`` fall back to zoo-core's dataset API when the plugin does not
    implement them (or its ``dataset`` returns ``None``) and ``cfg.dataset`` has a ``kind``. A hook
    nobody answers raises :class:`PluginError` naming it, instead of silently returning ``None``.
    """

    def __init__(self, manager: ZooPluginManager, model: str):
        self._manager = manager
        self.model = model
        self.info = manager.models[model]

    def implements(self, hook: str) -> bool:
        """The model's own plugin implements ``hook``."""
        return hook in self.info.hooks

    def provider(self, hook: str, cfg=None) -> str | None:
        """Who answers ``hook`` for this model under ``cfg``: ``"plugin"``, ``"zoo-core"`` (the dataset API,
        for ``dataset`` / ``evaluate`` with a ``cfg.dataset.kind``) or ``None``."""
        from zoo_core.datasets import kind_of
        from zoo_core.datasets.hooks import DEFAULT_HOOKS

        if self.implements(hook):
            return "plugin"
        if hook in DEFAULT_HOOKS and cfg is not None and kind_of(cfg.get("dataset")) is not None:
            return "zoo-core"
        return None

    def __getattr__(self, hook: str):
        if hook not in hookspecs.MODEL_HOOKS:
            raise AttributeError(hook)
        from zoo_core.datasets.hooks import DEFAULT_HOOKS

        caller = self._manager.subset_caller(hook, self.model)

        def call(**kwargs):
            if hook in DEFAULT_HOOKS:
                return self._call_with_default(hook, caller, kwargs)
            if not self.implements(hook):
                raise PluginError(f"model {self.model!r} does not implement the {hook!r} hook "
                                  f"(its plugin {self.info.entry_point} implements: {', '.join(self.info.hooks)})")
            result = caller(**kwargs)
            if result is None:
                raise PluginError(f"model {self.model!r}: hook {hook!r} returned None")
            return result

        call.__name__ = hook
        return call

    def _call_with_default(self, hook: str, caller, kwargs):
        result = caller(**kwargs)
        if result is not None:
            return result
        from zoo_core.datasets import kinds

        ds = (kwargs.get("cfg") or {}).get("dataset") or {}
        name = ds.get("name")
        why = (f"dataset {name!r} has no 'kind' zoo-core reads (kinds: {', '.join(kinds())})" if not ds.get("kind")
               else f"dataset {name!r} (kind {ds.get('kind')!r}) could not be opened")
        if self.implements(hook):
            raise PluginError(f"model {self.model!r}: hook {hook!r} returned None and {why}")
        raise PluginError(f"model {self.model!r} does not implement the {hook!r} hook and {why}; implement "
                          f"{hook!r} in {self.info.entry_point}, or select a dataset whose config sets a kind")
