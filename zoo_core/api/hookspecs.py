"""Hook specifications: the whole contract between the zoo core and a model plugin.

A model plugin is a module registered under the entry-point group ``zoo.models`` (entry-point
name = model name). It implements some of the hooks below with ``@zoo_core.hookimpl``. The core
calls every *model* hook (all but ``zoo_*`` observers) on the selected model's plugin only, so two
model plugins never answer for each other; cross-cutting plugins (timers, reporters) registered in
the same manager still see every call through ``wrapper=True`` implementations.

Every hook receives ``cfg``, the whole resolved run configuration (an OmegaConf ``DictConfig``):
``cfg.model`` is the plugin's own ``conf/model/<name>.yaml`` section, ``cfg.dataset`` its dataset
section, and run-level keys (``batch_size``, ``weights``, ``export``, ``atc``...) sit at the top.

Model hooks are ``firstresult``: the selected plugin's non-``None`` answer is the result. A plugin
that does not implement a hook makes the stage that needs it fail with a message naming the hook.
Raise :class:`zoo_core.api.errors.ZooError` (or a subclass) for a user-facing problem: it reaches the
user unchanged. Any other exception escaping a hook, ``SystemExit`` included, is a plugin bug: the
core reports it as one line naming the distribution, the hook and the reason
(:class:`zoo_core.api.errors.PluginHookError`, exit code 1) and keeps the traceback.

The annotations are the contract's types (the core calls hooks through the typed methods of
:class:`zoo_core.plugins.manager.ModelHooks`); they are imported under ``TYPE_CHECKING`` only, so
importing this module stays cheap.

Hook API version: :data:`zoo_core.HOOK_API_VERSION`. A plugin module may set
``ZOO_HOOK_API = "1"``; a plugin asking for another major version is reported as broken at load.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # the annotations only; importing this module stays cheap (no numpy, omegaconf, torch)
    from collections.abc import Mapping, Sequence
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

hookspec = pluggy.HookspecMarker("zoo")

#: Names of the hooks dispatched to the selected model only, in pipeline order.
MODEL_HOOKS = (
    "dataset",
    "input_spec",
    "preprocess",
    "build_model",
    "export",
    "atc_args",
    "output_spec",
    "postprocess",
    "evaluate",
    "oracle_outputs",
    "references",
    "read_detections",
)

#: The five hooks of a complete model plugin. ``atc_args`` is needed by ``stage=convert`` only: a plugin
#: without an Ascend path leaves it out (the contract kit's ``REQUIRED_HOOKS`` are the ones eval/export need).
CORE_HOOKS = ("preprocess", "export", "atc_args", "postprocess", "evaluate")


@hookspec(firstresult=True)
def dataset(cfg: DictConfig) -> Dataset:
    """Open the dataset described by ``cfg.dataset``.

    Called once per run, before any image is read, by every stage that touches images or ground
    truth (``preprocess``, ``postprocess``, ``evaluate``, ``eval``, ``predict`` uses a folder instead).

    Optional for a dataset config with a ``kind`` zoo-core reads (``widerface``, ``coco``): zoo-core's
    dataset API (:mod:`zoo_core.datasets`) answers when the plugin does not implement this hook or
    returns ``None``.

    :param cfg: the run configuration.
    :returns: a :class:`zoo_core.api.types.Dataset` whose ``samples()`` lists every image in a
        deterministic order (the core shards and batches that list). Raise
        :class:`zoo_core.api.errors.ZooError` naming the missing file and what to download when the
        dataset is absent.
    """


@hookspec(firstresult=True)
def input_spec(cfg: DictConfig) -> list[TensorSpec]:
    """Describe the model's nominal input(s) for one item.

    Called by ``perf`` (random input of this shape), ``export`` callers and backends that need a
    static shape.

    :returns: ``list[TensorSpec]`` in graph input order; shapes exclude the batch dimension.
    """


@hookspec(firstresult=True)
def preprocess(cfg: DictConfig, image: np.ndarray, sample: Sample) -> tuple[Inputs, Meta]:
    """Turn one decoded image into model input.

    Called once per image, in a worker process, by ``preprocess``, ``eval`` and ``predict``.

    :param image: ``HxWx3`` BGR ``uint8`` array, exactly what ``cv2.imread(path)`` returns
        (grayscale expanded to three channels, alpha dropped, EXIF orientation applied).
    :param sample: the :class:`zoo_core.api.types.Sample` being processed.
    :returns: ``(inputs, meta)``: ``inputs`` maps each graph input name to a C-contiguous array
        *without* the batch dimension (the core stacks a batch); ``meta`` is a small JSON-able dict
        with whatever ``postprocess`` needs to map outputs back to image pixels (e.g. CenterNet's
        ``c`` and ``s``). The core adds ``id`` and ``orig_hw`` to ``meta``. Read back from ``meta.jsonl``, a
        meta must hold finite numbers only, and ``s`` (when present) is a letterbox scale: a positive number
        or a list of them; a line that breaks this is refused (keys of the plugin's own are its ``postprocess``'s
        to check). Both are checked on the hook's return, for
        every image in every stage: ``inputs`` must have the names, dtypes and ranks of ``input_spec`` (its
        dims may differ, e.g. keep-resolution inputs) and ``meta`` must pass the read-back checks; otherwise
        that image fails (or is skipped with ``on_error=skip``) naming the plugin and the image.
    """


@hookspec(firstresult=True)
def build_model(cfg: DictConfig, weights: str | Path | None) -> torch.nn.Module:
    """Build the PyTorch model in eval mode with ``weights`` loaded (``weights_only=True``).

    Called by the ``torch`` backend and by ``export``. Import torch inside the implementation.

    :param weights: a path, or ``None`` for the plugin's default / random weights.
    :returns: a ``torch.nn.Module`` whose ``forward(*inputs)`` returns a tuple of tensors in the
        same order as ``output_spec``.
    """


@hookspec(firstresult=True)
def export(cfg: DictConfig, weights: str | Path | None, output: Path, target: str) -> ExportResult:
    """Write an ONNX file for ``target``.

    Called by the ``export`` stage and, when no model file is given, by the ``onnxruntime``
    backend and ``convert``.

    :param weights: path to the user's weights (``None``: the plugin's default, if any).
    :param output: the ``pathlib.Path`` to write.
    :param target: ``"onnxruntime"`` (standard ops, runs in ORT) or ``"ascend"`` (what ATC takes).
    :returns: :class:`zoo_core.api.types.ExportResult` with the graph's input and output names.
    """


@hookspec(firstresult=True)
def atc_args(cfg: DictConfig, onnx_path: str | Path, batch_size: int | list[int], soc_version: str,
             output: str, image_sizes: list[list[int]] | None) -> list[str]:
    """Build the ATC command line (no shell quoting) that converts ``onnx_path`` to an OM.

    Called by the ``convert`` stage once per batch size. Optional: a plugin without an Ascend path does not
    implement it; ``stage=convert`` then refuses the model before exporting, naming this hook, and the
    contract kit skips ``test_atc_args``.

    :param onnx_path: the exported ``ascend``-target ONNX.
    :param batch_size: an ``int`` (static OM) or a list of ints (``--dynamic_batch_size`` gears).
    :param soc_version: e.g. ``"Ascend310P3"``.
    :param output: the ``--output`` prefix (no ``.om``).
    :param image_sizes: ``None`` (the model's fixed input size), or the image-size gears ``[[h, w], ...]``
        ``convert`` planned from the dataset with ``atc.dynamic_image_size=true`` (at most 100; never with
        dynamic-batch gears): pass them on to :func:`zoo_core.api.atc.common_args`, which writes
        ``--input_shape`` with ``-1`` for H and W and ``--dynamic_image_size="h1,w1;h2,w2"`` (one gear: a
        static shape of that size). An implementation that does not declare this argument keeps working
        for fixed-size models (pluggy passes only the arguments it names); ``convert`` refuses gears it ignored.
    :returns: ``list[str]`` of arguments *after* ``atc`` (see :func:`zoo_core.api.atc.common_args`).
    """


@hookspec(firstresult=True)
def output_spec(cfg: DictConfig, meta: Meta) -> list[TensorSpec]:
    """Describe the raw model outputs for one item, in output order.

    Called to read ais_bench ``<stem>_<i>.bin`` dumps (``postprocess``, ``replay`` backend) and to
    check outputs. ``meta`` is the item's preprocess meta (its ``input_shape`` lets a model with
    variable input size compute its output size).

    :returns: ``list[TensorSpec]`` without the batch dimension.
    """


@hookspec(firstresult=True)
def postprocess(cfg: DictConfig, outputs: Sequence[np.ndarray], metas: Sequence[Meta]) -> list[Detections]:
    """Decode one batch of raw outputs into detections in original-image pixels.

    Called once per batch by ``eval``, ``postprocess`` and ``predict``; must be numpy only.

    :param outputs: ``list[np.ndarray]``, one per model output, each with the batch dimension
        first, in ``output_spec`` order.
    :param metas: one preprocess meta per batch item.
    :returns: ``list[Detections]``, one per item, boxes sorted by descending score.
    """


@hookspec(firstresult=True)
def evaluate(cfg: DictConfig, detections: Mapping[str, Detections], dataset: Dataset, samples: Sequence[Sample],
             out_dir: Path) -> EvalResult:
    """Score detections against the dataset's ground truth.

    Called once per run by ``evaluate`` and at the end of ``eval``. Optional for a dataset config with a
    ``kind`` zoo-core reads: zoo-core scores it (knobs from ``cfg.model``, see :mod:`zoo_core.datasets`)
    when the plugin does not implement this hook.

    :param detections: ``dict[sample.id, Detections]``.
    :param dataset: the object ``dataset`` returned.
    :param samples: the samples that were run (a shard scores only its own images).
    :param out_dir: the run directory (read-only hint; return files instead of writing).
    :returns: :class:`zoo_core.api.types.EvalResult`: a flat ``{name: number}`` dict, files to write
        (``detections.json``, PR-curve PNGs...) and non-numeric ``info`` (IoU threshold used...).
    """


@hookspec(firstresult=True)
def oracle_outputs(cfg: DictConfig, sample: Sample, meta: Meta, dataset: Dataset) -> list[np.ndarray]:
    """Encode a sample's ground truth as the raw outputs a perfect model would produce.

    Called by the ``oracle`` backend, so that ``stage=eval backend=oracle`` scores the
    preprocess -> postprocess -> evaluate chain without weights.

    :returns: ``list[np.ndarray]`` without the batch dimension, in ``output_spec`` order.
    """


@hookspec(firstresult=True)
def references(cfg: DictConfig) -> list[Reference]:
    """List the reference values this plugin knows (published or pinned metrics, each under its protocol).

    Called once per ``eval`` / ``evaluate`` (and ``postprocess``, merged shards) run, after scoring.
    Optional: a plugin that does not implement it has no references. Return *every* reference the plugin
    knows, whatever ``cfg`` says: zoo-core decides which match the run's protocol (a verdict is printed and
    written to ``metrics.json["reference"]``), which are a protocol mismatch (same variant and dataset,
    another IoU threshold: said, not compared) and which are about something else (ignored). With
    ``gate=true`` a matched reference out of tolerance makes the run exit 1.

    :returns: ``list[Reference]`` (:class:`zoo_core.api.types.Reference`; may be empty).
    """


@hookspec(firstresult=True)
def read_detections(cfg: DictConfig, path: Path, dataset: Dataset, samples: Sequence[Sample]) -> DetectionsRead | None:
    """Read detections a user brings (``stage=evaluate detections=<path>``) from a format the model knows.

    Called by ``evaluate`` when ``path`` is not zoo's own ``detections/`` directory (the core recognises
    that one itself). Decide by content whether ``path`` is a format this hook reads; return ``None`` when
    it is not, so that the next reader (zoo-core's, for a dataset with a ``kind``) is asked. Optional for a
    dataset config with a ``kind`` zoo-core reads: ``widerface`` reads a WIDER prediction tree
    (``<event>/<stem>.txt``; policies ``model.pred_count`` and ``model.pred_order``), ``coco`` a COCO
    results json (see :func:`zoo_core.datasets.read_detections`).

    :param path: the user's file or directory (exists).
    :param dataset: the object ``dataset`` returned (ground truth; its images need not exist).
    :param samples: the samples to score (after ``dataset.limit`` / sharding); results for other images
        of the dataset are ignored, results for images not in the dataset are an error.
    :returns: :class:`zoo_core.api.types.DetectionsRead`, or ``None`` for a format this hook does not
        read. Raise :class:`zoo_core.api.errors.ZooError` naming the file and the reason for a file of
        this format that cannot be used (malformed line, unknown image or category...).
    """


@hookspec
def zoo_stage_finished(cfg: DictConfig, stage: str, run_dir: Path, result: dict[str, Any]) -> None:
    """Observe the end of a stage (all plugins are called, not only the selected model).

    Called once the stage's records are complete (``run.json`` says ``ok``). An exception raised here does not
    fail the run, nor a sweep's job or its shard merge: it is logged as a warning naming the plugin and the
    hook and listed in ``run.json["observer_errors"]``; the other observers are still called.

    :param stage: the stage name.
    :param run_dir: the run directory (``pathlib.Path``).
    :param result: the dict the stage wrote as its summary (metrics, perf...).
    """
