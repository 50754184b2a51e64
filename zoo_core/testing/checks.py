"""Contract checks for an installed model plugin, in plain Python (no pytest needed).

:func:`check_plugin` runs every check against the *installed* plugin (entry point
``zoo.models:<model>``), its Hydra config (``zoo_core.config.validate.compose``) and a few samples of its
dataset, and returns each outcome. :class:`zoo_core.testing.contract.PluginContract` runs the same
checks as pytest tests.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo_core import HOOK_API_VERSION
from zoo_core.api.errors import ZooError
from zoo_core.api.hookspecs import MODEL_HOOKS
from zoo_core.api.optional import require_torch
from zoo_core.api.types import Detections, EvalResult, ExportResult, TensorSpec
from zoo_core.datasets import DATASET_API_VERSION, kinds

#: Hooks the core's stages need for ``zoo run model=<it> stage=eval`` and ``stage=export``. ``dataset`` and
#: ``evaluate`` may come from zoo-core's dataset API (a dataset config with a ``kind``). ``atc_args`` is not
#: among them: only ``stage=convert`` needs it (a plugin without an Ascend path leaves it out, and
#: :func:`check_atc_args` is skipped), nor are ``build_model`` (``backend=torch``), ``oracle_outputs``
#: (``backend=oracle``), ``references`` and ``read_detections``.
REQUIRED_HOOKS = ("dataset", "input_spec", "preprocess", "export", "output_spec", "postprocess", "evaluate")

#: Odd image sizes (h, w) the preprocess / postprocess round trip is checked on.
SYNTHETIC_SHAPES = ((37, 53), (240, 180))


if TYPE_CHECKING:
    from zoo_core.plugins.manager import ZooPluginManager


class ContractError(AssertionError):
    """A plugin does not honour the zoo hook contract (the message says which hook and how)."""


def _fail(hook: str, message: str) -> ContractError:
    return ContractError(f"hook {hook!r}: {message}")


def _check_spec_list(hook: str, specs) -> list[TensorSpec]:
    if not isinstance(specs, (list, tuple)) or not specs or not all(isinstance(s, TensorSpec) for s in specs):
        raise _fail(hook, f"must return a non-empty list of zoo_core.api.types.TensorSpec, got {specs!r}")
    return list(specs)


def check_detections(hook: str, dets, n: int) -> list[Detections]:
    """``dets`` is ``n`` :class:`Detections` with finite boxes and descending scores.

    Inverted boxes (``x2 < x1``) are allowed: a reference decoder may emit them for negative sizes.
    """
    if not isinstance(dets, (list, tuple)) or len(dets) != n:
        raise _fail(hook, f"must return a list of {n} Detections (one per batch item), got {type(dets).__name__} "
                          f"of length {len(dets) if hasattr(dets, '__len__') else '?'}")
    for d in dets:
        if not isinstance(d, Detections):
            raise _fail(hook, f"items must be zoo_core.api.types.Detections, got {type(d).__name__}")
        if not (np.isfinite(d.boxes).all() and np.isfinite(d.scores).all()):
            raise _fail(hook, "returned non-finite boxes or scores")
        if len(d) > 1 and np.any(np.diff(d.scores) > 0):
            raise _fail(hook, "boxes must be sorted by descending score")
    return list(dets)


def check_eval_result(result) -> EvalResult:
    """``result`` is an :class:`EvalResult` the run can record: a flat non-empty ``{str: number}`` metrics dict
    (numpy scalars count, NaN / inf are recorded as null), relative ``bytes`` files, JSON-able ``info``,
    ``(lo, hi)`` intervals; the rule :mod:`zoo_core.plugins.results` applies to a run too. Returns it with
    plain-Python numbers."""
    from zoo_core.plugins.results import EvalResultError, checked_eval_result

    try:
        return checked_eval_result(result)
    except EvalResultError as exc:
        raise _fail("evaluate", str(exc)) from None


def stack_batch(items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-item input dicts into one batch (the core's batching rule)."""
    from zoo_core.pipeline.batching import stack

    return stack(items)


class PluginUnderTest:
    """An installed model plugin with its composed config and lazily computed artefacts.

    ``overrides`` are extra Hydra overrides (e.g. a smaller dataset); ``work_dir`` receives
    exported ONNX files; ``n_samples`` dataset samples are used by the data checks.
    """

    def __init__(self, model: str, overrides: Sequence[str] = (), work_dir: str | Path | None = None,
                 n_samples: int = 2, manager: ZooPluginManager | None = None):
        self.model = model
        self._manager = manager
        self.overrides = list(overrides)
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=f"zoo-contract-{model}-"))
        self.n_samples = n_samples
        self._exports: dict[tuple[str, ...], ExportResult] = {}

    @cached_property
    def manager(self) -> ZooPluginManager:
        """The manager given, else the process's (:func:`zoo_core.plugins.get_manager`)."""
        from zoo_core.plugins import get_manager

        return self._manager if self._manager is not None else get_manager()

    @cached_property
    def hooks(self):
        broken = {b.name: b.error for b in self.manager.broken}
        if self.model in broken:
            raise ContractError(f"plugin {self.model!r} is installed but broken: {broken[self.model]}")
        if self.model not in self.manager.models:
            raise ContractError(f"no model plugin {self.model!r} in entry-point group zoo.models "
                                f"(installed: {', '.join(self.manager.model_names()) or 'none'}); "
                                f"is the package pip-installed?")
        return self.manager.hooks_for(self.model)

    @cached_property
    def cfg(self):
        from zoo_core.config.validate import compose

        return compose([f"model={self.model}", *self.overrides])

    @cached_property
    def dataset(self):
        return self.hooks.dataset(cfg=self.cfg)

    @cached_property
    def samples(self):
        """The first ``n_samples`` samples of the dataset; on a zoo-core COCO dataset, the first ``n_samples``
        images holding non-crowd ground truth of one of the model's categories (``model.category_ids``), in the
        annotation file's order, so the round trip has something of the model's to beat empty detections with
        (a :class:`ContractError` names the file and the ids when no image has)."""
        from zoo_core.datasets.coco import CocoDataset, category_ids

        samples = list(self.dataset.samples())
        if not isinstance(self.dataset, CocoDataset):
            return samples[: self.n_samples]
        ids = set(category_ids(self.cfg.get("model")))
        held = [s for s in samples if any(a["category_id"] in ids and not a.get("iscrowd")
                                          for a in self.dataset.annotations(s.key))]
        if not held:
            raise ContractError(f"{self.dataset.ann_path}: no image holds (non-crowd) ground truth of the model's "
                                f"categories, model.category_ids {sorted(ids)}: the contract needs images of "
                                "the model's classes; check model.category_ids, or select a dataset that has them")
        return held[: self.n_samples]

    @cached_property
    def prepared(self) -> list:
        """``prepare_one`` on the first samples: exactly what the core's workers produce."""
        from zoo_core.pipeline.workers import prepare_one

        out = []
        for s in self.samples:
            p = prepare_one(self.hooks, self.cfg, s)
            if p.error:
                raise _fail("preprocess", f"failed on {s.path}: {p.error}")
            out.append(p)
        return out

    @cached_property
    def weights(self) -> str | None:
        """What the hooks get as ``weights``: the ``weights=`` file, else ``None`` (the plugin's defaults or
        its seeded random initial weights: the contract checks shapes and agreement, not accuracy)."""
        from zoo_core.runs.weights import user_weights

        return user_weights(self.cfg)

    def call(self, hook: str, **kwargs):
        """Call model hook ``hook`` with this plugin's ``cfg`` (zoo-core's dataset API answers as in a run)."""
        return getattr(self.hooks, hook)(cfg=self.cfg, **kwargs)

    def implements(self, hook: str) -> bool:
        """The plugin itself implements ``hook``."""
        return self.hooks.implements(hook)

    def config(self, overrides: Sequence[str] = ()):
        """The plugin's config with ``overrides`` added to its own (``cfg`` when there are none)."""
        if not overrides:
            return self.cfg
        from zoo_core.config.validate import compose

        return compose([f"model={self.model}", *self.overrides, *overrides])

    def export(self, target: str = "onnxruntime", overrides: Sequence[str] = ()) -> ExportResult:
        """Export once per (target, overrides) into ``work_dir`` and check the returned :class:`ExportResult`."""
        key = (target, *overrides)
        if key not in self._exports:
            tag = f"_{len(self._exports)}" if overrides else ""
            out = self.work_dir / f"{self.model}_{target}{tag}.onnx"
            out.parent.mkdir(parents=True, exist_ok=True)
            cfg = self.config(overrides)
            res = self.hooks.export(cfg=cfg, weights=self.weights, output=out, target=target)
            if not isinstance(res, ExportResult):
                raise _fail("export", f"must return zoo_core.api.types.ExportResult, got {type(res).__name__}")
            if not Path(res.path).is_file():
                raise _fail("export", f"returned path {res.path} which does not exist")
            self._exports[key] = res
        return self._exports[key]

    def item_batches(self) -> list[list]:
        """The prepared items grouped into batches of equal input shapes."""
        groups: dict[tuple, list] = {}
        for p in self.prepared:
            key = tuple((k, v.shape) for k, v in sorted(p.inputs.items()))
            groups.setdefault(key, []).append(p)
        return list(groups.values())

    def run_onnx(self, path: Path, batch: list) -> list[np.ndarray]:
        """Outputs of the ONNX at ``path`` on ``batch``, through the onnxruntime backend's session."""
        from zoo_core.backends.onnxruntime_backend import make_session

        sess = make_session(path, {"intra_op_threads": 2})
        inputs = stack_batch([p.inputs for p in batch])
        names = [i.name for i in sess.get_inputs()]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise _fail("preprocess", f"produces {sorted(inputs)} but the exported graph needs {names}")
        return sess.run(None, {n: inputs[n] for n in names})


# -- individual checks (each raises ContractError) ---------------------------------------------

def check_registration(p: PluginUnderTest) -> None:
    """Loaded from ``zoo.models``, not broken, implements the hooks the stages need (``dataset`` and
    ``evaluate`` may come from zoo-core's dataset API when the plugin's dataset config has a ``kind``)."""
    missing = [h for h in REQUIRED_HOOKS if p.hooks.provider(h, p.cfg) is None]
    if missing:
        hint = (f"; or select a dataset with a kind zoo-core reads ({', '.join(kinds())})"
                if set(missing) & {"dataset", "evaluate"} else "")
        raise ContractError(f"plugin {p.model!r} does not implement {', '.join(missing)} "
                            f"(implements: {', '.join(p.hooks.info.hooks)}){hint}")
    unknown = [h for h in p.hooks.info.hooks if h not in MODEL_HOOKS and not h.startswith("zoo_")]
    if unknown:
        raise ContractError(f"plugin {p.model!r} implements unknown hooks {unknown}")


def check_api_version(p: PluginUnderTest) -> None:
    """The plugin module declares ``ZOO_HOOK_API`` and it matches this zoo-core's major version; a plugin
    whose ``dataset`` or ``evaluate`` comes from zoo-core's dataset API declares ``ZOO_DATASET_API`` too."""
    from zoo_core.plugins.manager import accepted_api_versions, api_mismatch

    module = p.hooks.info.module
    try:
        uses_datasets = any(p.hooks.provider(h, p.cfg) == "zoo-core" for h in ("dataset", "evaluate"))
    except ZooError:  # a module registered by hand, without a config: only the hook API applies
        uses_datasets = False
    for attr, have, required in (("ZOO_HOOK_API", HOOK_API_VERSION, True),
                                 ("ZOO_DATASET_API", DATASET_API_VERSION, uses_datasets)):
        if required and accepted_api_versions(module, attr) is None:
            raise ContractError(f"{module.__name__} should declare {attr} = {have!r}")
    problem = api_mismatch(module)
    if problem:
        raise ContractError(f"{module.__name__}: {problem}")


def check_config(p: PluginUnderTest) -> None:
    """``model=<name>`` composes; ``model.name`` equals the entry-point name; a dataset is selected;
    ``model.export_keys`` and ``model.aipp_keys``, when declared, are lists naming keys the model config has;
    every key of its model file (and of the dataset files it ships) has a declared type (:func:`check_schemas`)."""
    from zoo_core.api.errors import ConfigError
    from zoo_core.runs.export_keys import aipp_values, export_values

    cfg = p.cfg
    try:
        export_values(cfg.model)
        aipp_values(cfg.model)
    except ConfigError as exc:
        raise ContractError(f"conf/model/{p.model}.yaml: {exc}") from None
    if str(cfg.model.get("name")) != p.model:
        raise ContractError(f"conf/model/{p.model}.yaml must set model.name: {p.model} "
                            f"(got {cfg.model.get('name')!r})")
    if not cfg.dataset.get("name") or str(cfg.dataset.name) == "none":
        raise ContractError(f"conf/model/{p.model}.yaml should select a dataset "
                            f"(defaults: [override /dataset: <name>]) shipped in conf/dataset/")
    check_schemas(p)


def check_schemas(p: PluginUnderTest) -> None:
    """Every key of the plugin's model file and of the dataset files it ships has a type: a field of the
    dataclass its ``ZOO_CONFIG_SCHEMAS`` declares for that file or, for a plugin that declares none, of the
    base class (``zoo_core.api.config.ModelConfig`` / ``DatasetConfig``) that then types the file. A key
    of neither is unchecked until a hook reads it, so ``model.<key>=abc`` would reach the plugin as a
    string: the contract fails, naming the keys and where to declare them."""
    import dataclasses

    from zoo_core.api.config import DatasetConfig, ModelConfig
    from zoo_core.config.confpaths import scan_plugin_confs

    declared = getattr(p.hooks.info.module, "ZOO_CONFIG_SCHEMAS", None)
    cfg = p.cfg
    sections = [("model", p.model, cfg.model)]
    # every dataset file the plugin ships, selected by its model or not (zoo-core types its own datasets)
    owned = sorted(n for n, owner in scan_plugin_confs().dataset_owner.items() if owner == p.model)
    for name in owned:
        if str(cfg.dataset.get("name")) == name:
            sections.append(("dataset", name, cfg.dataset))
            continue
        try:
            sections.append(("dataset", name, p.config([f"dataset={name}"]).dataset))
        except Exception as exc:
            raise ContractError(f"conf/dataset/{name}.yaml (shipped by {p.model}) does not compose with "
                                f"model={p.model}: {exc}") from None
    for group, name, section in sections:
        if declared is None:
            base: type = ModelConfig if group == "model" else DatasetConfig
            untyped = sorted(set(map(str, section)) - {f.name for f in dataclasses.fields(base)})
            if untyped:
                raise ContractError(
                    f"conf/{group}/{name}.yaml keys without a type: {', '.join(untyped)} "
                    f"({p.hooks.info.module.__name__} declares no ZOO_CONFIG_SCHEMAS, so only the keys of "
                    f"zoo_core.api.config.{base.__name__} are typed); declare them in a dataclass deriving from "
                    f"{base.__name__} and set ZOO_CONFIG_SCHEMAS = {{'{group}/{name}': <that class>}} "
                    f"(docs/plugins.md, Typed keys)")
            continue
        cls = declared.get(f"{group}/{name}")
        if cls is None:
            raise ContractError(f"ZOO_CONFIG_SCHEMAS has no entry {group}/{name!r} for conf/{group}/{name}.yaml")
        untyped = sorted(set(map(str, section)) - {f.name for f in dataclasses.fields(cls)})
        if untyped:
            raise ContractError(f"conf/{group}/{name}.yaml keys without a type in {cls.__qualname__}: "
                                f"{', '.join(untyped)}")


def check_dataset(p: PluginUnderTest) -> None:
    """``dataset`` returns a Dataset whose samples are unique, existing image files."""
    from zoo_core.api.types import Dataset, Sample

    ds = p.dataset
    if not isinstance(ds, Dataset):
        raise _fail("dataset", f"must return an object with name, root and samples() (got {type(ds).__name__})")
    samples = list(ds.samples())
    if not samples:
        raise _fail("dataset", "samples() is empty")
    if not all(isinstance(s, Sample) for s in samples):
        raise _fail("dataset", "samples() must hold zoo_core.api.types.Sample items")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise _fail("dataset", "sample ids must be unique")
    if [s.id for s in ds.samples()] != ids:
        raise _fail("dataset", "samples() must list samples in a deterministic order")
    missing = [s for s in samples if not Path(s.path).is_file()]  # (every sample: a run reads them all)
    if missing:
        more = f" (and {len(missing) - 1} more of the {len(samples)} samples)" if len(missing) > 1 else ""
        raise _fail("dataset", f"sample {missing[0].id!r} points to a missing file {missing[0].path}{more}")


def _check_inputs(p: PluginUnderTest, inputs, meta, where: str) -> None:
    specs = {s.name: s for s in _check_spec_list("input_spec", p.call("input_spec"))}
    if not isinstance(inputs, dict) or set(inputs) != set(specs):
        raise _fail("preprocess", f"{where}: inputs must be a dict keyed by the input_spec names "
                                  f"{sorted(specs)}, got {sorted(inputs) if isinstance(inputs, dict) else inputs!r}")
    for name, arr in inputs.items():
        spec = specs[name]
        if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(spec.dtype):
            raise _fail("preprocess", f"{where}: input {name!r} must be a {spec.dtype} numpy array, "
                                      f"got {getattr(arr, 'dtype', type(arr).__name__)}")
        if arr.ndim != len(spec.shape):
            raise _fail("preprocess", f"{where}: input {name!r} has shape {arr.shape}; input_spec says "
                                      f"{spec.shape} (no batch dimension)")
        if not arr.flags.c_contiguous:
            raise _fail("preprocess", f"{where}: input {name!r} must be C-contiguous")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise _fail("preprocess", f"{where}: meta must be JSON-serialisable: {exc}") from None


def _check_outputs_match_spec(p: PluginUnderTest, outputs, metas, hook: str, dtypes: bool = False) -> None:
    """``outputs`` have ``output_spec``'s count and per-item shapes, and with ``dtypes`` its element types (the
    exported model's outputs: the onnxruntime backend refuses a run whose outputs disagree with them)."""
    for meta in metas:
        specs = _check_spec_list("output_spec", p.call("output_spec", meta=meta))
        if len(outputs) != len(specs):
            raise _fail(hook, f"gives {len(outputs)} outputs, output_spec lists {len(specs)}")
        for out, spec in zip(outputs, specs):
            if tuple(out.shape[1:]) != tuple(spec.shape):
                raise _fail(hook, f"output {spec.name!r} has per-item shape {tuple(out.shape[1:])}, "
                                  f"output_spec says {tuple(spec.shape)}")
            if dtypes and np.asarray(out).dtype != np.dtype(spec.dtype):
                raise _fail(hook, f"output {spec.name!r} is {np.asarray(out).dtype}, output_spec says {spec.dtype}")


def check_preprocess(p: PluginUnderTest) -> None:
    """Dataset images and synthetic odd-sized images give inputs matching ``input_spec``."""
    from zoo_core.api.types import Sample

    for prep in p.prepared:
        _check_inputs(p, prep.inputs, prep.meta, str(prep.sample.path))
    rng = np.random.default_rng(0)
    for h, w in SYNTHETIC_SHAPES:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        inputs, meta = p.call("preprocess", image=image, sample=Sample(f"synthetic_{h}x{w}", Path("synthetic.png")))
        _check_inputs(p, inputs, meta, f"synthetic {h}x{w} image")


def check_roundtrip(p: PluginUnderTest) -> dict[str, float] | None:
    """preprocess -> (all-zero outputs) -> postprocess gives one valid Detections per item; and,
    when ``oracle_outputs`` is implemented, preprocess -> oracle outputs -> postprocess -> evaluate
    scores the ground truth higher than no detections at all on some metric.

    Returns the oracle metrics (or None without ``oracle_outputs``).
    """
    for batch in p.item_batches():
        metas = [it.meta for it in batch]
        specs = _check_spec_list("output_spec", p.call("output_spec", meta=metas[0]))
        zeros = [np.zeros((len(batch), *s.shape), np.dtype(s.dtype)) for s in specs]
        check_detections("postprocess", p.call("postprocess", outputs=zeros, metas=metas), len(batch))
    if not p.implements("oracle_outputs"):
        return None
    detections = {}
    for batch in p.item_batches():
        metas = [it.meta for it in batch]
        per_item = [p.call("oracle_outputs", sample=it.sample, meta=it.meta, dataset=p.dataset) for it in batch]
        outputs = [np.stack([o[i] for o in per_item]) for i in range(len(per_item[0]))]
        _check_outputs_match_spec(p, outputs, metas, "oracle_outputs")
        dets = check_detections("postprocess", p.call("postprocess", outputs=outputs, metas=metas), len(batch))
        detections.update({it.sample.id: d for it, d in zip(batch, dets)})
    samples = [it.sample for it in p.prepared]
    with tempfile.TemporaryDirectory() as out_dir:
        perfect = check_eval_result(p.call("evaluate", detections=detections, dataset=p.dataset,
                                           samples=samples, out_dir=Path(out_dir))).metrics
        empty = check_eval_result(p.call("evaluate", detections={}, dataset=p.dataset,
                                         samples=samples, out_dir=Path(out_dir))).metrics
    if not any(float(perfect[k]) > float(empty.get(k, -math.inf)) for k in perfect):
        raise ContractError(f"oracle_outputs -> postprocess -> evaluate does not beat empty detections on samples "
                            f"{[s.id for s in samples]}: oracle {perfect}, empty {empty}; the encode/decode chain "
                            "loses the ground truth")
    return {k: float(v) for k, v in perfect.items()}


def check_export(p: PluginUnderTest, target: str = "onnxruntime", compare_torch: bool = True,
                 rtol: float = 1e-3, atol: float = 1e-4) -> dict[str, Detections]:
    """``export`` writes an ONNX whose graph names match its ExportResult, onnxruntime runs it on
    the preprocessed samples with outputs shaped and typed as ``output_spec`` says, ``postprocess`` decodes
    them; with ``build_model`` the torch outputs agree within ``rtol``/``atol``.

    Returns the detections of the exported model, keyed by sample id.
    """
    import onnx

    res = p.export(target)
    graph = onnx.load(str(res.path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    g_inputs = [i.name for i in graph.input if i.name not in init]
    g_outputs = [o.name for o in graph.output]
    if list(res.input_names) != g_inputs or list(res.output_names) != g_outputs:
        raise _fail("export", f"ExportResult names {res.input_names} -> {res.output_names} differ from the "
                              f"graph's {g_inputs} -> {g_outputs}")
    detections: dict[str, Detections] = {}
    for batch in p.item_batches():
        metas = [it.meta for it in batch]
        outputs = p.run_onnx(Path(res.path), batch)
        _check_outputs_match_spec(p, outputs, metas, "export (onnxruntime outputs)", dtypes=True)
        if compare_torch and p.implements("build_model"):
            _compare_with_torch(p, batch, outputs, g_inputs, g_outputs, rtol, atol)
        dets = check_detections("postprocess", p.call("postprocess", outputs=outputs, metas=metas), len(batch))
        detections.update({it.sample.id: d for it, d in zip(batch, dets)})
    return detections


def _compare_with_torch(p, batch, ort_outputs, input_names, output_names, rtol, atol) -> None:
    torch = require_torch(f"comparing the {p.model} export with its torch model (compare_torch=True)")

    model = p.call("build_model", weights=p.weights)
    if not isinstance(model, torch.nn.Module) or model.training:
        raise _fail("build_model", "must return a torch.nn.Module in eval mode")
    inputs = stack_batch([it.inputs for it in batch])
    with torch.no_grad():
        outs = model(*[torch.from_numpy(inputs[n]) for n in input_names])
    outs = outs if isinstance(outs, (list, tuple)) else (outs,)
    if len(outs) != len(ort_outputs):
        raise _fail("build_model", f"forward returns {len(outs)} tensors, the ONNX {len(ort_outputs)}")
    for name, t, o in zip(output_names, outs, ort_outputs):
        t = t.float().numpy()
        if t.shape != o.shape or not np.allclose(t, o, rtol=rtol, atol=atol):
            err = float(np.abs(t - o).max()) if t.shape == o.shape else f"shape {t.shape} vs {o.shape}"
            raise _fail("export", f"onnxruntime output {name!r} differs from the torch model (max |diff| {err})")


def check_evaluate(p: PluginUnderTest, detections: dict[str, Detections]) -> dict[str, float]:
    """``evaluate`` returns a flat dict of numbers for real and for empty detections; ``read_detections``
    (the plugin's or zoo-core's) answers ``None`` for an empty folder (no results format)."""
    samples = [it.sample for it in p.prepared]
    with tempfile.TemporaryDirectory() as out_dir:
        res = check_eval_result(p.call("evaluate", detections=detections, dataset=p.dataset,
                                       samples=samples, out_dir=Path(out_dir)))
        check_eval_result(p.call("evaluate", detections={}, dataset=p.dataset, samples=samples,
                                 out_dir=Path(out_dir)))
        # read_detections: an empty folder is no results format, so every reader must answer None
        read = p.call("read_detections", path=Path(out_dir), dataset=p.dataset, samples=samples)
        if read is not None:
            raise _fail("read_detections", f"claimed an empty folder as results: {read!r}")
    return {k: float(v) for k, v in res.metrics.items()}


def check_atc_args(p: PluginUnderTest, target: str | None = "ascend", overrides: Sequence[str] = ()) -> list[str]:
    """``atc_args`` returns ``list[str]`` naming the model, output and SoC, for static and gear batches.

    It gets the ONNX that ``export`` writes for ``target`` (``ascend``: what ATC converts) under the
    same config. ``overrides`` are added to the plugin's overrides for the export and this call (e.g.
    a static input size for a model whose default input size varies per image).

    A plugin without an Ascend path does not implement ``atc_args`` (``stage=convert`` refuses it, naming
    the hook); for it, and with ``target=None``, nothing is checked (no ``ascend`` export either) and the
    result is ``[]``.
    """
    if target is None or not p.implements("atc_args"):
        return []
    onnx_path = p.export(target, overrides).path
    cfg = p.config(overrides)
    out = str(p.work_dir / f"{p.model}_bs1")
    found: list[str] = []
    for batch_size in (1, [1, 4]):
        args = p.hooks.atc_args(cfg=cfg, onnx_path=onnx_path, batch_size=batch_size, soc_version="Ascend310P3",
                                output=out)
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise _fail("atc_args", f"must return list[str], got {args!r}")
        for flag in (f"--model={onnx_path}", f"--output={out}", "--soc_version=Ascend310P3"):
            if flag not in args:
                raise _fail("atc_args", f"missing {flag!r} in {args}")
        found = args
    return found


def check_lazy_torch(p: PluginUnderTest) -> None:
    """Importing the plugin module does not import torch (``zoo list`` and workers stay light)."""
    module = p.hooks.info.module.__name__
    code = f"import sys, {module}; sys.exit(3 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode == 3:
        raise ContractError(f"importing {module} imports torch; import it inside build_model / export instead")
    if proc.returncode:
        raise ContractError(f"importing {module} failed: {proc.stderr.strip()[-2000:]}")


def check_references(p: PluginUnderTest) -> list[dict[str, Any]]:
    """The ``references`` declaration (optional hook): a list of well-formed
    :class:`~zoo_core.api.types.Reference`, each protocol key present in the configuration the protocol
    selects (``dataset.name`` / ``backend.name`` pick those config groups), with a value of a type a run
    compares equal to the config's (:func:`zoo_core.runs.references.comparable`: ``"0.5"`` never matches
    a float key, ``1`` never a bool). Returns the references as dicts."""
    from zoo_core.api.errors import ZooError
    from zoo_core.runs.references import _UNSET, comparable, config_value

    if not p.implements("references"):
        return []
    try:
        refs = p.hooks.references(cfg=p.cfg)
    except ZooError as exc:
        raise _fail("references", str(exc)) from None
    composed: dict[tuple[str, ...], Any] = {}
    for ref in refs:
        groups = tuple(f"{g}={ref.protocol[f'{g}.name']}" for g in ("dataset", "backend")
                       if f"{g}.name" in ref.protocol)
        if groups not in composed:
            try:
                composed[groups] = p.config(groups)
            except Exception as exc:  # an unknown dataset / backend config
                raise _fail("references", f"reference {ref.metric} ({ref.source}): its protocol selects "
                                          f"{', '.join(groups)}, which does not compose: {exc}") from None
        cfg = composed[groups]
        for key, want in ref.protocol.items():
            have = config_value(cfg, key)
            if have is _UNSET:
                raise _fail("references", f"reference {ref.metric} ({ref.source}): protocol key {key!r} is not "
                                          f"in the configuration (with {', '.join(groups) or 'the defaults'})")
            if key.endswith(".name") and key.split(".")[0] in ("dataset", "backend") and have != want:
                raise _fail("references", f"reference {ref.metric}: {key}={want!r} but that config group's "
                                          f"name is {have!r}")
            if not comparable(have, want):  # the run compares with same_value: a str never equals a float
                raise _fail("references", f"reference {ref.metric} ({ref.source}): protocol {key}={want!r} "
                                          f"({type(want).__name__}) can never equal the config's "
                                          f"{type(have).__name__} value {have!r}")
    return [r.as_dict() for r in refs]


#: The checks :func:`check_plugin` runs, in order (``check_<name>`` functions).
CHECKS = ("registration", "api_version", "config", "dataset", "preprocess", "roundtrip", "export",
          "evaluate", "atc_args", "lazy_torch", "references")


def check_plugin(model: str, overrides: Sequence[str] = (), work_dir: str | Path | None = None,
                 checks: Sequence[str] = CHECKS) -> dict[str, Any]:
    """Run ``checks`` on the installed plugin ``model``; ``{check: "ok" | error message | result}``.

    Raises nothing: each failing check's :class:`ContractError` (or unexpected exception) is
    reported under its name, so one call lists everything wrong with a plugin.
    """
    p = PluginUnderTest(model, overrides, work_dir)
    report: dict[str, Any] = {}
    dets: dict[str, Detections] = {}
    for name in checks:
        result: Any
        try:
            if name == "export":
                dets = check_export(p)
                result = "ok"
            elif name == "evaluate":
                result = check_evaluate(p, dets or check_export(p))
            elif name == "atc_args" and not p.implements("atc_args"):
                result = "skipped: the plugin does not implement atc_args (no stage=convert)"
            else:
                result = globals()[f"check_{name}"](p)
            report[name] = "ok" if result is None else result
        except Exception as exc:
            report[name] = f"FAILED: {type(exc).__name__}: {exc}"
    return report
