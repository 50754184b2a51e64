"""COCOeval bbox scoring with faster-coco-eval or pycocotools (REFERENCE 2.9, 5.5)."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from zoo_core.api.errors import ConfigError
from zoo_core.api.types import Detections, EvalResult, Sample
from zoo_core.datasets.deps import require
from zoo_core.datasets.tool_output import captured_tool_output

from .dataset import CATEGORY_IDS, CocoDataset, is_int64
from .results import coco_records

#: The 12 COCOeval bbox stats, in ``COCOeval.stats`` order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: Accepted values of ``model.coco_evaluator``.
EVALUATORS = ("auto", "pycocotools", "faster-coco-eval")
#: Loggers of the evaluators, captured into ``zoo.log`` (see :mod:`zoo_core.datasets.tool_output`).
_TOOL_LOGGERS = ("faster_coco_eval", "pycocotools")

log = logging.getLogger("zoo")


def resolve_evaluator(name: str | None) -> str:
    """``auto`` -> ``faster-coco-eval`` when importable, else ``pycocotools``; checks the name.

    Both give the same stats up to the last bit (any of the 12, AP included, may differ by one rounding, ~1e-16;
    faster-coco-eval is ~2.5x faster); raises :class:`ConfigError` for an unknown name.
    """
    name = name or "auto"
    if name not in EVALUATORS:
        raise ConfigError(f"model.coco_evaluator={name!r} is not one of {', '.join(EVALUATORS)}")
    if name == "auto":
        return "faster-coco-eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"
    return name


def _coco_api(evaluator: str):
    if evaluator == "faster-coco-eval":
        fce = require("faster_coco_eval", "model.coco_evaluator=faster-coco-eval")
        return fce.COCO, fce.COCOeval_faster
    coco = require("pycocotools.coco", "COCO evaluation").COCO
    cocoeval = require("pycocotools.cocoeval", "COCO evaluation").COCOeval
    return coco, cocoeval


def scored_category_ids(model_ids: Sequence[int], instances: dict,
                        path: str | os.PathLike | None = None) -> list[int]:
    """The categories COCO scoring averages over: the model's ``category_ids`` that the annotation file lists, sorted.

    A category the model cannot output is never scored (it would count as AP 0 and pull the mean down); a model
    id the file does not list cannot be scored: a warning names those ids when the file also lists categories the
    model lacks (the id mapping may be wrong), an info line when the model covers every category the file lists
    (a subset of COCO's categories, e.g. ``coco_sample`` for the 80-class CenterNet: COCOeval's own default). A
    listed category without ground truth among the images scored stays in the list: COCOeval gives it -1 and
    leaves it out of the mean.

    :param path: the annotation file, named in the warning and the error.
    :raises ConfigError: none of the model's ids is a category of the file (nothing could be scored).
    """
    return _scored_categories(model_ids, instances, path)[0]


def _scored_categories(model_ids: Sequence[int], instances: dict,
                       path: str | os.PathLike | None) -> tuple[list[int], str | None]:
    """:func:`scored_category_ids`, and its warning (logged here; ``None`` when there is nothing to warn about)."""
    listed = {int(c["id"]) for c in instances["categories"]}
    model = [int(i) for i in model_ids]
    missing = [i for i in model if i not in listed]
    scored = sorted(set(model) & listed)
    if not scored:
        raise ConfigError(f"none of model.category_ids {_ids(model)} is a category of this annotation file (it lists "
                          f"{_ids(sorted(listed))}): nothing could be scored", path=path,
                          hint="set model.category_ids to the category ids of the annotation file that the "
                               "model's classes detect, in class order")
    if not missing:
        return scored, None
    text = (f"{f'{path}: ' if path is not None else ''}model.category_ids {_ids(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not a category of this annotation file, so not scored; "
            f"AP is the mean over the model's {len(scored)} "
            f"{'category' if len(scored) == 1 else 'categories'} it lists")
    if listed <= set(model):  # the file lists a subset of the model's classes, all of them scored: as COCOeval does
        log.info("%s", text)
        return scored, None
    log.warning("%s", text)
    return scored, text


def _ids(ids: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return f"[{shown}{f', ... ({len(ids)} ids)' if len(ids) > limit else ''}]"


def run_cocoeval(instances: dict, records: list[dict], image_ids: Sequence[int], evaluator: str,
                 category_ids: Sequence[int] | None = None):
    """COCOeval bbox with default parameters on ``image_ids`` and ``category_ids``; returns the finished evaluator.

    ``category_ids`` (``params.catIds``, sorted; see :func:`scored_category_ids`): the categories scored and
    averaged over; ``None``: every category of ``instances`` (COCOeval's default). The one place zoo sets
    COCOeval's parameters: every score (a run, a shard merge, ``stage=evaluate``, a bootstrap) comes from here.

    What the evaluator prints (summary, progress) goes to the ``zoo.tool.<evaluator>`` logger, marked
    for the log file only.
    """
    COCO, COCOeval = _coco_api(evaluator)
    with captured_tool_output(evaluator, _TOOL_LOGGERS):
        gt = COCO()
        gt.dataset = {k: instances[k] for k in ("images", "annotations", "categories")}
        gt.createIndex()
        if records:
            dt = gt.loadRes([dict(r) for r in records])
        else:
            dt = COCO()
            dt.dataset = {"images": list(instances["images"]), "annotations": [],
                          "categories": list(instances["categories"])}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(int(i) for i in image_ids)
        if category_ids is not None:
            ev.params.catIds = sorted(int(c) for c in category_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def per_category_ap(ev, names: Mapping[int, str]) -> dict[str, float]:
    """``AP/<name>`` (IoU 0.50:0.95, all areas, 100 dets) for each category with ground truth.

    A name that two or more categories of ``names`` share (an annotation file may repeat one) becomes
    ``AP/<name>#<category id>`` for each of them, so no category's AP hides another's; a category without a
    name is ``AP/<category id>``. Should such a key meet another category's (a category named ``thing#13``
    next to two ``thing``), every category holding it gets ``#<category id>`` once more, until each key is unique.
    """
    precision = np.asarray(ev.eval["precision"])
    keys = _category_keys({c: str(names.get(c, c)) for c in (*names, *ev.params.catIds)})
    out = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        if p.size:
            out[f"AP/{keys[cat_id]}"] = float(p.mean())
    return out


def _category_keys(shown: Mapping[int, str]) -> dict[int, str]:
    """Category id -> a key unique among them: its name, ``<name>#<id>`` while others share it (repeated).

    Each round appends ``#<id>`` to every key two or more categories hold. Two keys already extended end in
    their own (distinct, ``#``-free integer) ids, so every collision holds a key still unextended, which the round
    extends: at most one round per category. The result depends on the names and ids only, never on their order.
    """
    keys = dict(shown)
    while True:
        counts = Counter(keys.values())
        if all(n == 1 for n in counts.values()):
            return keys
        keys = {c: f"{key}#{c}" if counts[key] > 1 else key for c, key in keys.items()}


def coco_stats(stats: Sequence[float], images: int) -> tuple[dict[str, float], dict[str, str]]:
    """The 12 COCOeval stats by name, and why each undefined one is undefined.

    COCOeval writes ``-1`` for a stat it cannot define (no ground truth of that kind, e.g. no large
    object, among the images scored); that is not a score of -1: it becomes NaN, which ``metrics.json``
    records as ``null`` with the reason (``info[NULL_REASONS]`` -> ``null_metrics``).
    """
    metrics: dict[str, float] = {}
    undefined: dict[str, str] = {}
    for name, v in zip(STAT_NAMES, stats):
        if float(v) == -1:
            metrics[name] = float("nan")
            undefined[name] = (f"COCOeval gave -1: no ground truth of this kind (area range / IoU) among the "
                               f"{images} image{'s' if images != 1 else ''} scored")
        else:
            metrics[name] = float(v)
    return metrics, undefined


def category_ids(model_cfg) -> tuple[int, ...]:
    """The model's 0-based class -> COCO category id mapping: ``model.category_ids``, default the COCO 80."""
    ids = model_cfg.get("category_ids") if model_cfg is not None else None
    if ids is None:
        return CATEGORY_IDS
    ids = tuple(int(i) for i in ids)
    if not ids or len(set(ids)) != len(ids):
        raise ConfigError(f"model.category_ids={list(ids)} must be a non-empty list of distinct COCO category ids")
    too_big = next((i for i in ids if not is_int64(i)), None)
    if too_big is not None:
        raise ConfigError(f"model.category_ids holds {too_big}: a COCO category id must fit in a signed 64-bit integer")
    return ids


def score_coco(detections: Mapping[str, Detections], dataset: CocoDataset, samples: Sequence[Sample],
               evaluator: str = "auto", category_ids: Sequence[int] = CATEGORY_IDS, plots: bool = True,
               bootstrap: int = 0, bootstrap_seed: int = 0) -> EvalResult:
    """Score ``detections`` of ``samples`` against ``dataset`` with COCOeval (bbox).

    :param detections: ``{sample.id: Detections}``; ``labels`` are the model's 0-based class indices.
    :param samples: only these images are scored (a shard scores its own images).
    :param evaluator: ``auto``, ``faster-coco-eval`` or ``pycocotools`` (same stats).
    :param category_ids: class index -> COCO category id (default: the 80 COCO ids, CenterNet's order). Only
        these categories are scored, those of them the annotation file lists (:func:`scored_category_ids`: a
        warning names the others, also in ``info["warnings"]``; none listed is a :class:`ConfigError`); AP is
        their mean.
    :param plots: also draw ``pr_curves.png`` and ``ap_per_class.png`` (names drawn as plain text, never as
        mathtext; a plot that fails is left out with a warning naming it).
    :param bootstrap: with N > 0, 95% intervals of AP / AP50 / AP75 over N image resamples (seeded by
        ``bootstrap_seed``) from COCOeval's per-image records, in ``ci95``; how in ``info["bootstrap"]``
        (:mod:`zoo_core.datasets.coco.bootstrap`). An evaluator that keeps no per-image records gives none
        (``info["bootstrap"]["note"]`` says so).
    :returns: metrics: the 12 COCOeval stats (``AP`` = stats[0], ...; NaN where COCOeval could not define
        one, see :func:`coco_stats`) and ``AP/<category name>`` (``AP/<name>#<category id>`` for a name
        several categories share, see :func:`per_category_ap`); files:
        ``detections.json`` (the reference results list) and the two plots; info: the evaluator used.
    """
    used = resolve_evaluator(evaluator)
    scored, warning = _scored_categories(category_ids, dataset.instances, dataset.ann_path)
    records = coco_records(detections, samples, category_ids)
    ev = run_cocoeval(dataset.instances, records, [s.key for s in samples], used, scored)
    metrics, undefined = coco_stats(ev.stats, len(samples))
    per_class = per_category_ap(ev, dataset.category_names())
    metrics.update(per_class)
    ci95: dict = {}
    boot = None
    if bootstrap:
        from .bootstrap import bootstrap_coco

        try:
            ci95, boot = bootstrap_coco(ev, bootstrap, bootstrap_seed)
        except ValueError:  # faster-coco-eval keeps its per-image records in C++: match again with pycocotools
            ev_records = run_cocoeval(dataset.instances, records, [s.key for s in samples], "pycocotools", scored)
            ci95, boot = bootstrap_coco(ev_records, bootstrap, bootstrap_seed)
            boot["records"] += f" from pycocotools ({used} keeps no per-image records)"
    files = {"detections.json": json.dumps(records).encode()}
    if plots:  # a plot that fails is left out with a warning naming it: the metrics are still written
        from zoo_core.reports.plotting import draw_or_warn

        from .plots import ap_per_class_png, pr_curves_png

        title = f"{dataset.name} ({len(samples)} image{'s' if len(samples) != 1 else ''})"
        drawn = {"pr_curves.png": draw_or_warn("pr_curves.png", lambda: pr_curves_png(ev, title))}
        if per_class:  # (no category scored, e.g. no image selected: no bars to draw)
            drawn["ap_per_class.png"] = draw_or_warn("ap_per_class.png",
                                                     lambda: ap_per_class_png(per_class, float(ev.stats[0]), title))
        files.update((k, v) for k, v in drawn.items() if v is not None)
    info: dict = {"evaluator": used, "images": len(samples), "iou_type": "bbox"}
    if warning:
        info["warnings"] = [warning]
    if undefined:
        from zoo_core.runs.records import NULL_REASONS

        info[NULL_REASONS] = undefined
    if boot is not None:
        info["bootstrap"] = boot
    return EvalResult(metrics=metrics, files=files, info=info, ci95=ci95)
