"""Datasets and their metrics, shared by every model plugin (the dataset API).

A dataset config (``conf/dataset/<name>.yaml``, in zoo-core or in any plugin) that sets ``kind`` is read
and scored by zoo-core: a model plugin names the dataset (``defaults: [override /dataset: <name>]``
in its model yaml, or ``dataset=<name>`` on the command line) and implements neither ``dataset`` nor
``evaluate``. Kinds:

* ``widerface`` (:mod:`zoo_core.datasets.widerface`): WIDER FACE val or any WIDER-format set, scored
  Easy / Medium / Hard AP by the official algorithm. Model knobs: ``model.iou_thresh`` (0.5),
  ``model.report_both_iou`` (false). Datasets shipped: ``widerface``, ``widerface_sample``.
* ``coco`` (:mod:`zoo_core.datasets.coco`): a COCO instances json + images, scored by COCOeval
  (bbox). Model knobs: ``model.category_ids`` (0-based class -> category id; default the 80 COCO
  ids), ``model.coco_evaluator`` (``auto``). Datasets shipped: ``coco``, ``coco_sample``.

Each kind also reads the results users bring (``stage=evaluate detections=<path>``, the
``read_detections`` hook's default): a WIDER prediction tree (knobs ``model.pred_count``,
``model.pred_order``) or a COCO results json. Scoring them needs the ground truth only:
``stage=evaluate`` opens the dataset with ``images_required: false``.

A plugin's own ``dataset`` / ``evaluate`` hook still wins (it is called first; returning ``None``
from ``dataset`` hands an unknown dataset back to the core). A dataset without ``kind`` needs the
plugin's hooks.

Versioning: :data:`DATASET_API_VERSION` covers the config keys above (``kind``, ``generator``, each
kind's keys and model knobs), the metric and file names the scorers return, and every name in
``__all__`` of :mod:`zoo_core.datasets`, :mod:`zoo_core.datasets.widerface` and
:mod:`zoo_core.datasets.coco` (``docs/api.md``). A plugin may declare ``ZOO_DATASET_API = "1"``
next to ``ZOO_HOOK_API``; another major version makes it broken at load, like the hook API. New
kinds, functions or keys keep the major version; renaming or removing one, or changing a metric's
meaning, bumps it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zoo_core.api.errors import ConfigError

#: Version of the dataset API (see the module docstring); plugins may declare ``ZOO_DATASET_API``.
DATASET_API_VERSION = "1"


@dataclass(frozen=True)
class DatasetKind:
    """A dataset format zoo-core reads and scores.

    :param name: the ``dataset.kind`` value.
    :param open: ``(dataset_cfg, skip_missing_images=False) -> Dataset`` (the ``cfg.dataset`` section;
        ``skip_missing_images`` is true under ``on_error=skip``: image files missing on disk are then
        left to be skipped and listed when read, never an error at open).
    :param score: ``(cfg, detections, dataset, samples) -> EvalResult``, knobs read from ``cfg.model``.
    :param dataset_type: the class ``open`` returns (``score`` refuses other objects).
    :param knobs: ``{"model.<key>": "what it does (default)"}`` documented for plugin authors.
    :param read: ``(cfg, path, dataset, samples) -> DetectionsRead | None``: reads the results formats of
        the kind (``None``: ``path`` is not one of them); ``None`` when the kind reads none.
    :param results_files: ``(cfg, detections, samples) -> {relative path: bytes}``: the detections in the
        kind's native results format (what ``stage=postprocess stage.score=false`` writes).
    """

    name: str
    open: Callable[..., Any]
    score: Callable[..., Any]
    dataset_type: type
    knobs: dict[str, str]
    read: Callable[..., Any] | None = None
    results_files: Callable[..., dict[str, bytes]] | None = None


def _widerface() -> DatasetKind:
    from zoo_core.datasets import widerface

    def score(cfg, detections, dataset, samples):
        m = cfg.get("model") or {}
        n, seed = bootstrap_request(cfg)
        return widerface.score_widerface(detections, dataset, samples, iou_thresh=float(m.get("iou_thresh", 0.5)),
                                         report_both_iou=bool(m.get("report_both_iou", False)),
                                         pred_order=str(m.get("pred_order") or "sort"),
                                         bootstrap=n, bootstrap_seed=seed)

    def results_files(cfg, detections, samples):
        sort = str((cfg.get("model") or {}).get("pred_order") or "sort") == "sort"
        return {f"predictions/{ev}/{stem}.txt": widerface.format_prediction_file(ev, stem, d.boxes, d.scores,
                                                                                 sort).encode()
                for s in samples if (d := detections.get(s.id)) is not None for ev, stem in [tuple(s.key)]}

    def read(cfg, path, dataset, samples):
        if not widerface.is_prediction_tree(path):
            return None
        m = cfg.get("model") or {}
        return widerface.read_tree_detections(path, samples, count=str(m.get("pred_count") or "strict"),
                                              order=str(m.get("pred_order") or "sort"),
                                              dataset_keys={(str(s.key[0]), str(s.key[1])) for s in dataset.samples()})

    return DatasetKind("widerface", widerface.open_widerface, score, widerface.WiderFaceDataset, {
        "model.iou_thresh": "IoU of a true positive (0.5, the official protocol; 0.4 for the chenjun2hao / "
                            "Ascend numbers)",
        "model.report_both_iou": "also report <setting>_iou0.5 and <setting>_iou0.4 (false)",
        "model.pred_count": "reading a WIDER prediction tree: strict (a count line that disagrees with the box "
                            "lines is an error) | lines (trust the box lines) (strict)",
        "model.pred_order": "boxes of a prediction file: sort (stable descending score, MATLAB read_pred.m) | "
                            "keep (file order, as wondervictor) (sort)"}, read, results_files)


def _coco() -> DatasetKind:
    from zoo_core.datasets import coco

    def score(cfg, detections, dataset, samples):
        m = cfg.get("model") or {}
        n, seed = bootstrap_request(cfg)
        return coco.score_coco(detections, dataset, samples, evaluator=str(m.get("coco_evaluator") or "auto"),
                               category_ids=coco.category_ids(m), bootstrap=n, bootstrap_seed=seed)

    def results_files(cfg, detections, samples):
        import json

        records = coco.coco_records(detections, samples, coco.category_ids(cfg.get("model") or {}))
        return {"detections.json": json.dumps(records).encode()}

    def read(cfg, path, dataset, samples):
        return coco.read_coco_results(path, dataset, samples, coco.category_ids(cfg.get("model") or {}))

    return DatasetKind("coco", coco.open_coco, score, coco.CocoDataset, {
        "model.category_ids": "0-based class index -> COCO category id (null: the 80 COCO ids)",
        "model.coco_evaluator": "auto (faster-coco-eval when installed) | pycocotools | faster-coco-eval"},
        read, results_files)


def bootstrap_request(cfg) -> tuple[int, int]:
    """``(N, seed)`` from the run-level keys ``bootstrap`` (0: off) and ``bootstrap_seed``; a kind's scorer
    then returns 95% intervals in ``EvalResult.ci95`` (:mod:`zoo_core.datasets.bootstrap`).

    :raises ConfigError: ``bootstrap`` is negative or 1, or ``bootstrap_seed`` is negative."""
    n = int(cfg.get("bootstrap", 0) or 0)
    if n < 0 or n == 1:
        raise ConfigError(f"bootstrap={n} must be 0 (off) or the number of resamples (>= 2; 1000 is usual)")
    seed = int(cfg.get("bootstrap_seed", 0) or 0)
    if seed < 0:  # numpy's default_rng refuses it, and only once every image has run
        raise ConfigError(f"bootstrap_seed={seed} is invalid: it must be >= 0")
    return n, seed


_FACTORIES: dict[str, Callable[[], DatasetKind]] = {"coco": _coco, "widerface": _widerface}
_KINDS: dict[str, DatasetKind] = {}


def kinds() -> list[str]:
    """The ``dataset.kind`` values zoo-core reads and scores."""
    return sorted(_FACTORIES)


def get_kind(name: str) -> DatasetKind:
    """The :class:`DatasetKind` called ``name``; :class:`ConfigError` listing the kinds for an unknown one."""
    if name not in _FACTORIES:
        raise ConfigError(f"dataset.kind={name!r} is not a dataset kind zoo-core reads; kinds: {', '.join(kinds())}")
    if name not in _KINDS:
        _KINDS[name] = _FACTORIES[name]()
    return _KINDS[name]


def kind_of(dataset_cfg) -> str | None:
    """``dataset_cfg.kind`` (``None`` when the section has no kind: the model plugin reads it)."""
    if dataset_cfg is None:
        return None
    kind = dataset_cfg.get("kind")
    return None if kind is None or str(kind) == "" else str(kind)


def open_dataset(cfg):
    """Open ``cfg.dataset`` with its kind's reader (what the ``dataset`` hook returns for a plugin
    that does not implement it).

    :raises ConfigError: the section has no ``kind`` or an unknown one.
    """
    ds = cfg.get("dataset")
    kind = kind_of(ds)
    if kind is None:
        name = ds.get("name") if ds is not None else None
        raise ConfigError(f"dataset {name!r} has no 'kind', so zoo-core cannot read it (kinds: {', '.join(kinds())}); "
                          "the model plugin must implement the dataset and evaluate hooks for it")
    skip = str(cfg.get("on_error") or "fail").split(".")[-1] == "skip"
    return get_kind(kind).open(ds, skip_missing_images=skip)


def evaluate(cfg, detections, dataset, samples, out_dir=None):
    """Score ``detections`` with ``cfg.dataset``'s kind, knobs from ``cfg.model`` (what the ``evaluate``
    hook returns for a plugin that does not implement it).

    :param detections: ``{sample.id: Detections}``.
    :param dataset: the object :func:`open_dataset` returned.
    :param samples: the samples to score.
    :param out_dir: unused (the result's files are written by the core).
    :returns: :class:`zoo_core.api.types.EvalResult`.
    """
    kind = kind_of(cfg.get("dataset"))
    if kind is None:
        raise ConfigError("cfg.dataset has no 'kind': zoo-core does not know how to score it; "
                          "the model plugin must implement the evaluate hook")
    k = get_kind(kind)
    if not isinstance(dataset, k.dataset_type):
        raise ConfigError(f"dataset.kind={kind!r} scores a {k.dataset_type.__name__}, but the dataset hook returned a "
                          f"{type(dataset).__name__}; a plugin that opens its own dataset implements evaluate too")
    return k.score(cfg, detections, dataset, samples)


def read_detections(cfg, path, dataset, samples):
    """Read a user's results file or folder with ``cfg.dataset``'s kind (what the ``read_detections`` hook
    returns for a plugin that does not implement it): ``widerface`` reads a WIDER prediction tree
    (``<event>/<stem>.txt``, policies ``model.pred_count`` / ``model.pred_order``), ``coco`` a COCO results
    json. ``None`` when the dataset has no kind, the kind reads no results, or ``path`` is not its format.

    :returns: :class:`zoo_core.api.types.DetectionsRead` or ``None``.
    """
    kind = kind_of(cfg.get("dataset"))
    if kind is None:
        return None
    k = get_kind(kind)
    if k.read is None or not isinstance(dataset, k.dataset_type):
        return None
    return k.read(cfg, path, dataset, samples)


def results_files(cfg, detections, samples) -> dict[str, bytes] | None:
    """``detections`` of ``samples`` in ``cfg.dataset``'s native results format, as ``{relative path: bytes}``
    (``widerface``: ``predictions/<event>/<stem>.txt``; ``coco``: ``detections.json``, the results list);
    ``None`` for a dataset without a kind or a kind without a results format."""
    kind = kind_of(cfg.get("dataset"))
    if kind is None:
        return None
    k = get_kind(kind)
    return None if k.results_files is None else k.results_files(cfg, detections, samples)


__all__ = ["DATASET_API_VERSION", "DatasetKind", "bootstrap_request", "evaluate", "get_kind", "kind_of", "kinds",
           "open_dataset", "read_detections", "results_files"]
