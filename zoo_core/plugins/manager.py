"""Plugin discovery and dispatch.

Model plugins come from the entry-point group ``zoo.models`` (entry-point name = model name),
backends from ``zoo.backends``, and optional cross-cutting plugins (observers, wrappers) from
``zoo.plugins``. ``ZOO_DISABLE_PLUGINS=a,b`` blocks any of them by name. A plugin that fails to
import, asks for another hook-API (or dataset-API) version, or implements an unknown hook is recorded
as *broken* with its error; every other plugin keeps working.

zoo-core's dataset API (:mod:`zoo_core.datasets.hooks`) is registered too: its ``trylast``
``dataset`` / ``evaluate`` implementations answer for a model plugin that does not implement them
when the run's dataset config has a ``kind`` zoo-core reads.

A process normally needs one manager: :func:`zoo_core.plugins.get_manager` builds it once.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import pluggy

from zoo_core import HOOK_API_VERSION
from zoo_core.api import hookspecs
from zoo_core.api.errors import PluginError, PluginHookError, ZooError
from zoo_core.config.confpaths import BACKENDS_GROUP, MODELS_GROUP, disabled_plugins, duplicate_models, is_blocked
from zoo_core.datasets import DATASET_API_VERSION
from zoo_core.runs.storage import storage_error

log = logging.getLogger("zoo")

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import numpy as np
    import torch
    from omegaconf import DictConfig

    from zoo_core.api.types import (
        Dataset,
        Detections,
        DetectionsRead,
        EvalResult,
        ExportResult,
        Inputs,
        Meta,
        Reference,
        Sample,
        TensorSpec,
    )

EXTRA_GROUP = "zoo.plugins"

#: Longest reason (the escaping exception's first line) quoted in a :class:`PluginHookError`.
MAX_REASON_CHARS = 400


@dataclass
class PluginInfo:
    name: str
    module: Any
    distribution: str | None
    version: str | None
    entry_point: str
    hooks: list[str] = field(default_factory=list)
    group: str = MODELS_GROUP

    @property
    def label(self) -> str:
        """``plugin zoo-centerface (model centerface)``: how errors name this plugin."""
        role = f"model {self.name}" if self.group == MODELS_GROUP else self.name
        return f"plugin {self.distribution or getattr(self.module, '__name__', self.entry_point)} ({role})"


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


#: The versioned APIs a plugin module may declare: attribute, what it is called, this zoo-core's version.
_APIS = (("ZOO_HOOK_API", "hook API", HOOK_API_VERSION), ("ZOO_DATASET_API", "dataset API", DATASET_API_VERSION))


def accepted_api_versions(module: object, attr: str = "ZOO_HOOK_API") -> list[str] | None:
    """The API versions a plugin module declares in ``attr`` (a string, or a list, tuple or set of them), or
    None when it declares none."""
    wanted = getattr(module, attr, None)
    if wanted is None:
        return None
    if isinstance(wanted, (set, frozenset)):
        wanted = sorted(wanted, key=str)
    return [str(w) for w in (wanted if isinstance(wanted, (list, tuple)) else [wanted])]


def api_mismatch(module: object) -> str | None:
    """Why ``module`` cannot be used with this zoo-core (``ZOO_HOOK_API`` / ``ZOO_DATASET_API``), or None.

    Only the major number counts. A module that declares neither is accepted (the plugin manager warns when it
    loads one without ``ZOO_HOOK_API``, and the contract kit asks plugins to declare it). The one place the
    version rule lives: the plugin manager and :mod:`zoo_core.testing.checks` both call it. The declared value
    is shown as written (``' 1'``, ``[]``).
    """
    for attr, what, have in _APIS:
        accepted = accepted_api_versions(module, attr)
        if accepted is None:
            continue
        major = have.split(".")[0]
        if not any(a.split(".")[0] == major for a in accepted):
            return (f"plugin needs zoo {what} {getattr(module, attr)!r} (its {attr}), this zoo-core provides "
                    f"{have!r}; install a zoo-core release for that API or upgrade the plugin")
    return None


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: the hook called sys.exit({exc.code!r}); a plugin must raise, not exit"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if len(text) > MAX_REASON_CHARS:
        text = text[:MAX_REASON_CHARS] + "..."
    return f"{type(exc).__name__}: {text}"


def _raising_plugin(exc: BaseException, impls: Iterable[pluggy.HookImpl]) -> object | None:
    """The plugin whose hook implementation the exception passed through last (innermost), if any."""
    codes = {}
    for impl in impls:
        code = getattr(impl.function, "__code__", None)
        if code is not None:
            codes[code] = impl.plugin
    found = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        plugin = codes.get(tb.tb_frame.f_code)
        if plugin is not None:
            found = plugin
        tb = tb.tb_next
    return found


def _model_hooks_answered(pm: pluggy.PluginManager, module: object) -> list[str]:
    """The model hooks ``module`` answers (implements without ``wrapper=True`` / ``hookwrapper=True``).

    Only a ``zoo.models`` plugin may answer a model hook: :meth:`ZooPluginManager.subset_caller` keeps
    every non-model plugin, so a cross-cutting plugin's answer would take over every model's hook."""
    taken = []
    for caller in pm.get_hookcallers(module) or []:
        if caller.name not in hookspecs.MODEL_HOOKS:
            continue
        if any(impl.plugin is module and not (impl.wrapper or impl.hookwrapper) for impl in caller.get_hookimpls()):
            taken.append(caller.name)
    return sorted(taken)


class ZooPluginManager:
    """A pluggy ``PluginManager`` for project ``zoo`` plus bookkeeping for ``zoo list``.

    Build one with :func:`zoo_core.plugins.get_manager` (cached per process); construct it
    directly only when a fresh, independent manager is needed (tests).
    """

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
        self._subset_cache: dict[tuple[str, str], pluggy.HookCaller] = {}
        if autoload:
            self.load_entry_points()

    # -- loading ---------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        blocked = disabled_plugins()
        for name in sorted(blocked):
            self.pm.set_blocked(name)
        for group, target in ((MODELS_GROUP, self.models), (EXTRA_GROUP, self.extras)):
            eps = []
            for ep in sorted(md.entry_points(group=group), key=lambda e: e.name):
                if is_blocked(ep, blocked):
                    self.blocked.append(ep.name)
                else:
                    eps.append(ep)
            # one name, two distributions: neither is used, both are named
            duplicates = duplicate_models(eps, "model" if group == MODELS_GROUP else "plugin")
            for ep in eps:
                if ep.name in duplicates:
                    self.broken.append(BrokenPlugin(ep.name, group, ep.value, duplicates[ep.name], _dist_of(ep)[0]))
                elif ep.name not in target:
                    self._load_one(ep, group, target)
        if "zoo-terminal" not in blocked:
            from zoo_core.reports.terminal import TerminalReporter

            self.pm.register(TerminalReporter(), name="zoo-terminal")
        for ep in sorted(md.entry_points(group=BACKENDS_GROUP), key=lambda e: e.name):
            if is_blocked(ep, blocked):
                self.blocked.append(f"backend:{ep.name}")
            else:
                self.backends.setdefault(ep.name, ep)

    def register_module(self, name: str, module: ModuleType, group: str = MODELS_GROUP,
                        dist: tuple[str | None, str | None] = (None, None)) -> None:
        """Register an already imported plugin module (used by tests and the scaffold)."""
        target = self.models if group == MODELS_GROUP else self.extras
        self._register(name, module, group, target, f"{module.__name__}", dist)
        self._subset_cache.clear()

    def _load_one(self, ep: md.EntryPoint, group: str, target: dict[str, PluginInfo]) -> None:
        dist = _dist_of(ep)
        try:
            module = ep.load()
        except BaseException as exc:  # a plugin's import must never take the CLI down
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.broken.append(BrokenPlugin(ep.name, group, ep.value, f"{type(exc).__name__}: {exc}", dist[0]))
            return
        self._register(ep.name, module, group, target, ep.value, dist)
        if ep.name in target and accepted_api_versions(module) is None:
            log.warning("%s declares no ZOO_HOOK_API: loaded as written against zoo hook API %s; add "
                        "ZOO_HOOK_API = %r to %s", target[ep.name].label, HOOK_API_VERSION, HOOK_API_VERSION,
                        ep.value)

    def _register(self, name: str, module: Any, group: str, target: dict[str, PluginInfo], ep_value: str,
                  dist: tuple[str | None, str | None]) -> None:
        problem = api_mismatch(module)
        if problem:
            self.broken.append(BrokenPlugin(name, group, ep_value, problem, dist[0]))
            return
        try:
            self.pm.register(module, name=name)
        except Exception as exc:  # pluggy's validation message spans lines ("Plugin '<id>' for hook ...")
            text = "; ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip()) or str(exc)
            self.broken.append(BrokenPlugin(name, group, ep_value, f"{type(exc).__name__}: {text}", dist[0]))
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(module)
            self.broken.append(BrokenPlugin(name, group, ep_value, f"invalid hook implementation: {exc}", dist[0]))
            return
        hooks = sorted(caller.name for caller in self.pm.get_hookcallers(module) or [])
        if group != MODELS_GROUP:
            taken = _model_hooks_answered(self.pm, module)
            if taken:
                self.pm.unregister(module)
                self.broken.append(BrokenPlugin(name, group, ep_value, (
                    f"implements model hook{'s' if len(taken) > 1 else ''} {', '.join(taken)} without wrapper=True; "
                    f"model hooks belong in the {MODELS_GROUP} group (a {group} plugin may only observe or wrap "
                    f"them with wrapper=True)"), dist[0]))
                return
        target[name] = PluginInfo(name, module, dist[0], dist[1], ep_value, hooks, group)

    # -- dispatch --------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        return sorted(self.models)

    def hooks_for(self, model: str) -> ModelHooks:
        """Hook callers that reach only ``model``'s plugin (plus cross-cutting wrappers)."""
        if model not in self.models:
            broken = {b.name: b for b in self.broken if b.group == MODELS_GROUP}
            if model in broken:
                err = broken[model].error
                raise PluginError(err if err.startswith(f"model {model!r} is registered by")
                                  else f"model plugin {model!r} is installed but broken: {err}")
            if model in self.blocked:
                raise PluginError(f"model plugin {model!r} is disabled by ZOO_DISABLE_PLUGINS")
            from zoo_core.config.confpaths import misfiled_model

            raise PluginError(
                f"unknown model {model!r}; installed models: {', '.join(self.model_names()) or '(none)'}",
                hint=misfiled_model(model))
        return ModelHooks(self, model)

    def subset_caller(self, hook: str, model: str) -> pluggy.HookCaller:
        key = (hook, model)
        if key not in self._subset_cache:
            others = [p.module for n, p in self.models.items() if n != model]
            self._subset_cache[key] = self.pm.subset_hook_caller(hook, remove_plugins=others)
        return self._subset_cache[key]

    def plugin_info(self, plugin: object) -> PluginInfo | None:
        """The :class:`PluginInfo` of a registered model or cross-cutting plugin module (None for others)."""
        for info in (*self.models.values(), *self.extras.values()):
            if info.module is plugin:
                return info
        return None

    def hook_failed(self, exc: BaseException, hook: str, caller: pluggy.HookCaller, default: object,
                    context: str = "") -> NoReturn:
        """Re-raise ``exc`` that escaped ``caller``.

        A :class:`ZooError` (deliberate) passes unchanged, and so does an exception raised by no
        installed plugin's code (a core bug; ``default`` is the plugin blamed when no hook frame is
        in the traceback). A full disk, a read-only or forbidden path (:mod:`zoo_core.runs.storage`) is the
        storage's error, not the plugin's: a :class:`ZooError` naming the file (exit 2). Anything else,
        ``SystemExit`` included, becomes one :class:`PluginHookError` line naming the plugin, the hook and
        the reason."""
        if isinstance(exc, (ZooError, KeyboardInterrupt, GeneratorExit)):
            raise exc
        stored = storage_error(exc, f"hook {hook}{f' ({context})' if context else ''}")
        if stored is not None:
            raise stored from exc
        info = self.plugin_info(_raising_plugin(exc, caller.get_hookimpls()) or default)
        if info is None:  # raised by no plugin's code, or by one the core registered itself
            raise exc
        where = f"hook {hook}{f' ({context})' if context else ''}"
        raise PluginHookError(f"{info.label}, {where}: {_first_line(exc)}") from exc

    def notify_stage_finished(self, *, cfg: DictConfig, stage: str, run_dir: Path, result: dict[str, Any]) -> list[str]:
        """Call ``zoo_stage_finished`` on every plugin, each on its own (one that raises does not keep the
        others from being called). The stage's records are complete by then, so a failure does not fail
        the run: it is returned, one line naming the plugin and the hook, for the caller to warn about and
        record (:func:`zoo_core.runs.run_stage.run_stage`). A Ctrl-C passes through."""
        caller = self.pm.hook.zoo_stage_finished
        impls = [i for i in caller.get_hookimpls() if not (i.wrapper or i.hookwrapper)]
        errors: list[str] = []
        for impl in reversed(impls):  # (pluggy's order: the last registered is called first)
            one = self.pm.subset_hook_caller("zoo_stage_finished",
                                             remove_plugins=[i.plugin for i in impls if i.plugin is not impl.plugin])
            try:
                one(cfg=cfg, stage=stage, run_dir=run_dir, result=result)
            except (KeyboardInterrupt, GeneratorExit):
                raise
            except BaseException as exc:  # (SystemExit too)
                info = self.plugin_info(impl.plugin)
                who = info.label if info is not None else f"observer {self.pm.get_name(impl.plugin)}"
                errors.append(f"{who}, hook zoo_stage_finished: {_first_line(exc)}")
        return errors

    def backend_class(self, name: str) -> Any:
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
    """The model hooks of one selected model, one typed method per hook spec.

    ``hooks.preprocess(cfg=..., image=..., sample=...)`` calls the hook on the selected model's
    plugin only (cross-cutting wrappers still see the call). ``dataset`` and ``evaluate`` fall back
    to zoo-core's dataset API when the plugin does not implement them (or its ``dataset`` returns
    ``None``) and ``cfg.dataset`` has a ``kind``. Failures are always a :class:`PluginError`: a hook
    nobody answers, a hook that returned ``None``, and any exception escaping the plugin
    (``SystemExit`` included) as one line naming the distribution, the hook and the reason
    (:class:`PluginHookError`, the original kept as ``__cause__``). A :class:`ZooError` the plugin
    raises on purpose passes unchanged.
    """

    def __init__(self, manager: ZooPluginManager, model: str):
        self._manager = manager
        self.model = model
        self.info = manager.models[model]
        self._spec_memo: dict[tuple[int, int], tuple[Any, Any, list[TensorSpec]]] = {}
        #: (cfg, [(name, dtype, rank, shape)] of its input_spec, or None without an input_spec hook), by id(cfg)
        self._input_memo: tuple[Any, list[tuple[str, Any, int, tuple[int, ...]]] | None] | None = None

    def implements(self, hook: str) -> bool:
        """The model's own plugin implements ``hook``."""
        return hook in self.info.hooks

    def provider(self, hook: str, cfg: Any = None) -> str | None:
        """Who answers ``hook`` for this model under ``cfg``: ``"plugin"``, ``"zoo-core"`` (the dataset API,
        for ``dataset`` / ``evaluate`` with a ``cfg.dataset.kind``) or ``None``."""
        from zoo_core.datasets import kind_of
        from zoo_core.datasets.hooks import DEFAULT_HOOKS

        if self.implements(hook):
            return "plugin"
        if hook in DEFAULT_HOOKS and cfg is not None and kind_of(cfg.get("dataset")) is not None:
            return "zoo-core"
        return None

    def _call(self, hook: str, context: str = "", **kwargs: Any) -> Any:
        from zoo_core.datasets.hooks import DEFAULT_HOOKS

        default = hook in DEFAULT_HOOKS
        if not default and not self.implements(hook):
            raise PluginError(f"model {self.model!r} does not implement the {hook!r} hook "
                              f"(its plugin {self.info.entry_point} implements: {', '.join(self.info.hooks)})")
        caller = self._manager.subset_caller(hook, self.model)
        try:
            result = caller(**kwargs)
        except BaseException as exc:
            self._manager.hook_failed(exc, hook, caller, self.info.module, context)
        if result is None:
            if default:
                self._no_default(hook, kwargs)
            raise PluginHookError(f"{self.info.label}: hook {hook!r} returned None")
        return result

    def _wrong(self, hook: str, what: str, got: Any) -> PluginHookError:
        """The plugin's hook returned something else than its spec says: a plugin bug (exit 1) naming the plugin."""
        if isinstance(got, (list, tuple)):
            kinds = sorted({type(x).__name__ for x in got}) or ["nothing"]
            shown = f"a {type(got).__name__} of {', '.join(kinds)}"
        else:
            shown = type(got).__name__
        return PluginHookError(f"{self.info.label}: hook {hook!r} must return {what}, got {shown}")

    def dataset(self, *, cfg: DictConfig) -> Dataset:
        ds = self._call("dataset", cfg=cfg)
        if not callable(getattr(ds, "samples", None)):
            raise self._wrong("dataset", "a dataset object with a samples() method", ds)
        return ds

    def _specs(self, hook: str, specs: Any) -> list[TensorSpec]:
        from zoo_core.api.types import TensorSpec

        if not isinstance(specs, (list, tuple)) or not all(isinstance(s, TensorSpec) for s in specs):
            raise self._wrong(hook, "a list of zoo_core.api.types.TensorSpec", specs)
        return list(specs)

    def input_spec(self, *, cfg: DictConfig) -> list[TensorSpec]:
        return self._specs("input_spec", self._call("input_spec", cfg=cfg))

    def preprocess(self, *, cfg: DictConfig, image: np.ndarray, sample: Sample) -> tuple[Inputs, Meta]:
        out = self._call("preprocess", f"image {sample.path}", cfg=cfg, image=image, sample=sample)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Mapping) and isinstance(out[1], dict)):
            raise self._wrong("preprocess", "a tuple (inputs: dict of arrays, meta: dict)", out)
        self._check_meta(out[1], sample)
        self._check_inputs(out[0], cfg, sample)
        return out

    def _input_checks(self, cfg: Any) -> list[tuple[str, Any, int, tuple[int, ...]]] | None:
        """The model's ``input_spec`` under ``cfg`` as (name, dtype, rank, shape), asked once per cfg object
        (a worker preprocesses every image with one cfg); ``None`` when the plugin has no ``input_spec``."""
        memo = self._input_memo
        if memo is not None and memo[0] is cfg:
            return memo[1]
        import numpy as np

        checks = ([(s.name, np.dtype(s.dtype), len(s.shape), tuple(s.shape)) for s in self.input_spec(cfg=cfg)]
                  if self.implements("input_spec") else None)
        self._input_memo = (cfg, checks)
        return checks

    def _check_inputs(self, inputs: Mapping[str, Any], cfg: Any, sample: Sample) -> None:
        """The prepared inputs have the names, dtypes and ranks of the model's ``input_spec`` (the dims are
        not compared: ``input_spec`` gives the nominal size and a plugin may keep each image's own, e.g.
        ``keep_res``). Refused here, naming the plugin and the image, instead of a ``.bin`` of the wrong
        dtype or a backend error blaming the model file."""
        checks = self._input_checks(cfg)
        if checks is None:
            return
        import numpy as np

        if len(inputs) != len(checks) or any(name not in inputs for name, _, _, _ in checks):
            got = f"inputs {sorted(map(str, inputs))}; input_spec names {[c[0] for c in checks]}"
        else:
            for name, dtype, rank, shape in checks:
                a = inputs[name]
                if not isinstance(a, np.ndarray):
                    got = f"input {name!r} as {type(a).__name__}; input_spec says a {dtype} array {shape}"
                elif a.dtype != dtype or a.ndim != rank:
                    got = f"input {name!r} {a.dtype} {a.shape}; input_spec says {dtype} {shape}"
                else:
                    continue
                break
            else:
                return
        raise PluginHookError(f"{self.info.label}: hook 'preprocess' (image {sample.path}) must return inputs "
                              f"matching the model's input_spec (names, dtypes, ranks; no batch dimension), got {got}")

    def _check_meta(self, meta: dict[str, Any], sample: Sample) -> None:
        """``meta`` is written to ``inputs/meta.jsonl`` as JSON (stage=preprocess) and read back by ``infer`` /
        ``postprocess``: refuse one that is not JSON-able, or that the read-back would refuse (a NaN or infinite
        number, which ``json`` writes as the non-JSON ``NaN``; sizes or a scale that are not positive), here,
        naming the plugin, the image and the key, whatever the stage."""
        from zoo_core.pipeline.sources import meta_problem

        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            bad = []
            for key, value in meta.items():
                try:
                    json.dumps(value)
                except (TypeError, ValueError):
                    bad.append(f"meta[{key!r}] is {type(value).__name__}")
            raise PluginHookError(
                f"{self.info.label}: hook 'preprocess' (image {sample.path}) must return a JSON-serializable meta "
                f"dict (lists, numbers, strings; it is written to inputs/meta.jsonl), got "
                f"{'; '.join(bad) or _first_line(exc)}") from exc
        problem = meta_problem(meta)
        if problem is not None:
            raise PluginHookError(
                f"{self.info.label}: hook 'preprocess' (image {sample.path}) must return a meta that infer and "
                f"postprocess can read back from inputs/meta.jsonl (finite numbers, positive sizes), got {problem}")

    def build_model(self, *, cfg: DictConfig, weights: str | Path | None) -> torch.nn.Module:
        return self._call("build_model", cfg=cfg, weights=weights)

    def export(self, *, cfg: DictConfig, weights: str | Path | None, output: Path, target: str) -> ExportResult:
        from zoo_core.api.types import ExportResult

        result = self._call("export", cfg=cfg, weights=weights, output=output, target=target)
        if not isinstance(result, ExportResult):
            raise self._wrong("export", "a zoo_core.api.types.ExportResult", result)
        return result

    def atc_args(self, *, cfg: DictConfig, onnx_path: str | Path, batch_size: int | list[int], soc_version: str,
                 output: str, image_sizes: list[list[int]] | None = None) -> list[str]:
        return self._call("atc_args", cfg=cfg, onnx_path=onnx_path, batch_size=batch_size,
                          soc_version=soc_version, output=output, image_sizes=image_sizes)

    #: How many (cfg, meta) answers of ``output_spec`` are remembered (a few batches' worth).
    SPEC_MEMO_SIZE = 1024

    def output_spec(self, *, cfg: DictConfig, meta: Meta) -> list[TensorSpec]:
        """The hook's answer, computed once per (cfg, meta) object pair: the backend (replay) and the
        stream's shape check ask for the same item's specs; the hook runs once. Keyed by identity (the
        objects are kept with the answer, so an id cannot be reused while remembered)."""
        memo = self._spec_memo
        key = (id(cfg), id(meta))
        hit = memo.get(key)
        if hit is not None and hit[0] is cfg and hit[1] is meta:
            return list(hit[2])
        specs = self._specs("output_spec", self._call("output_spec", cfg=cfg, meta=meta))
        if len(memo) >= self.SPEC_MEMO_SIZE:
            memo.clear()
        memo[key] = (cfg, meta, list(specs))
        return specs

    def postprocess(self, *, cfg: DictConfig, outputs: Sequence[np.ndarray], metas: Sequence[Meta]) -> list[Detections]:
        from zoo_core.api.types import Detections

        dets = self._call("postprocess", cfg=cfg, outputs=outputs, metas=metas)
        if not isinstance(dets, (list, tuple)) or not all(isinstance(d, Detections) for d in dets):
            raise self._wrong("postprocess", "a list of zoo_core.api.types.Detections (one per item)", dets)
        if len(dets) != len(metas):  # a plugin bug, not bad input: exit 1 like an exception escaping the hook
            raise PluginHookError(f"{self.info.label}, hook postprocess: returned {len(dets)} Detections for a batch "
                                  f"of {len(metas)} (one per item, in order)")
        return list(dets)

    def evaluate(self, *, cfg: DictConfig, detections: Mapping[str, Detections], dataset: Dataset,
                 samples: Sequence[Sample], out_dir: Path) -> EvalResult:
        """The hook's :class:`EvalResult`, checked (:mod:`zoo_core.plugins.results`, the contract kit's rule)
        before anything of it is written: a bad one is a :class:`PluginHookError` naming the plugin."""
        from zoo_core.api.types import EvalResult
        from zoo_core.plugins.results import EvalResultError, checked_eval_result

        result = self._call("evaluate", cfg=cfg, detections=detections, dataset=dataset, samples=samples,
                            out_dir=out_dir)
        if not isinstance(result, EvalResult):
            raise self._wrong("evaluate", "a zoo_core.api.types.EvalResult", result)
        try:
            return checked_eval_result(result)
        except EvalResultError as exc:
            who = (self.info.label if self.implements("evaluate")
                   else f"zoo-core's evaluator for dataset kind {cfg.dataset.get('kind')!r} (model {self.model})")
            raise PluginHookError(f"{who}: hook 'evaluate' returned an EvalResult zoo cannot record: {exc}") from None

    def oracle_outputs(self, *, cfg: DictConfig, sample: Sample, meta: Meta, dataset: Dataset) -> list[np.ndarray]:
        return self._call("oracle_outputs", f"image {sample.path}", cfg=cfg, sample=sample, meta=meta,
                          dataset=dataset)

    def references(self, *, cfg: DictConfig) -> list[Reference]:
        """The plugin's declared references; ``[]`` when it does not implement the hook (optional)."""
        if not self.implements("references"):
            return []
        refs = self._call("references", cfg=cfg)
        from zoo_core.api.types import Reference

        if not isinstance(refs, (list, tuple)) or not all(isinstance(r, Reference) for r in refs):
            raise self._wrong("references", "a list of zoo_core.api.types.Reference", refs)
        return list(refs)

    def read_detections(self, *, cfg: DictConfig, path: Path, dataset: Dataset,
                        samples: Sequence[Sample]) -> DetectionsRead | None:
        """The model's reader, then zoo-core's for the dataset's kind; ``None`` when neither reads ``path``
        (unlike the other hooks, ``None`` is an answer here: "not a format I read")."""
        caller = self._manager.subset_caller("read_detections", self.model)
        try:
            return caller(cfg=cfg, path=path, dataset=dataset, samples=samples)
        except BaseException as exc:
            self._manager.hook_failed(exc, "read_detections", caller, self.info.module, str(path))

    def _no_default(self, hook: str, kwargs: dict[str, Any]) -> None:
        from zoo_core.datasets import kinds

        ds = (kwargs.get("cfg") or {}).get("dataset") or {}
        name = ds.get("name")
        why = (f"dataset {name!r} has no 'kind' zoo-core reads (kinds: {', '.join(kinds())})" if not ds.get("kind")
               else f"dataset {name!r} (kind {ds.get('kind')!r}) could not be opened")
        if self.implements(hook):
            raise PluginError(f"model {self.model!r}: hook {hook!r} returned None and {why}")
        raise PluginError(f"model {self.model!r} does not implement the {hook!r} hook and {why}; implement "
                          f"{hook!r} in {self.info.entry_point}, or select a dataset whose config sets a kind")
