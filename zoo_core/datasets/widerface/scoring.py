"""Score :class:`~zoo_core.api.types.Detections` on a WIDER FACE dataset the way the official tools do.

A model's detections are formatted as the standard prediction tree's files and those texts are parsed
back with the strict reader, so the scored numbers are those of the files a user would hand to the
official evaluation (the same bytes are written as ``predictions/``). Detections read from a user's tree
(:class:`~zoo_core.datasets.widerface.tree_reader.WrittenWiderDetections`) are scored with the values the
files hold, unrounded, and copied to ``predictions/`` at full precision.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

from zoo_core.api.errors import ConfigError
from zoo_core.api.types import Detections, EvalResult, Sample
from zoo_core.reports.plotting import draw_or_warn

from .bootstrap import bootstrap_wider
from .dataset import WiderFaceDataset
from .evaluation import evaluate_records, evaluate_wider, wider_image_records
from .plots import pr_curves_png, pr_curves_title
from .predictions import format_prediction_file, format_written_file, read_prediction_texts
from .tree_reader import WrittenWiderDetections

log = logging.getLogger("zoo.datasets.widerface")

#: The two IoU thresholds of ``report_both_iou``: the official protocol and the chenjun2hao / Ascend one.
IOU_BOTH = (0.5, 0.4)
EVALUATOR = "WIDER FACE (official algorithm, wondervictor order)"


def score_widerface(detections: Mapping[str, Detections], dataset: WiderFaceDataset, samples: Sequence[Sample],
                    iou_thresh: float = 0.5, report_both_iou: bool = False, pred_order: str = "sort",
                    bootstrap: int = 0, bootstrap_seed: int = 0) -> EvalResult:
    """Easy / Medium / Hard AP of ``detections`` on the images ``samples`` of ``dataset``.

    :param detections: ``{sample.id: Detections}`` in original-image pixels; an image without an entry
        counts as "no faces found" (its faces still count, as in the official MATLAB evaluation).
    :param samples: the images to score (a shard scores its own images: the ground truth is restricted
        to them).
    :param iou_thresh: 0.5 is the official protocol; the chenjun2hao / Ascend numbers use 0.4.
    :param report_both_iou: also report ``<setting>_iou0.5`` and ``<setting>_iou0.4``.
    :param bootstrap: with N > 0, 95% intervals of easy / medium / hard over N image resamples (seeded by
        ``bootstrap_seed``) in ``ci95``, how in ``info["bootstrap"]`` (:mod:`zoo_core.datasets.widerface.bootstrap`).
    :param pred_order: ``sort`` (default): each image's boxes are written best score first (stable);
        ``keep``: in the given order (a user's tree read with ``model.pred_order=keep``), and scored in
        that order as the wondervictor evaluator does.
    :returns: metrics ``easy``, ``medium``, ``hard`` (+ the ``_iou*`` ones); files
        ``predictions/<event>/<stem>.txt`` (the official tree) and ``pr_curves.png`` (titled with the
        dataset name and image count); ``info`` with the IoU, the number of images without detections and
        ``warnings`` (also logged at WARNING level, so they reach the console and ``zoo.log``).
    """
    preds = {}
    as_written = {}
    missing = 0
    for s in samples:
        det = detections.get(s.id)
        if det is None:
            missing += 1
            continue
        if isinstance(det, WrittenWiderDetections):  # a user's file: scored with its own values
            as_written[tuple(s.key)] = (det.written_xywh, det.written_scores)
        else:
            preds[tuple(s.key)] = (det.boxes, det.scores)
    gt = dataset.subset_gt([tuple(s.key) for s in samples])
    if pred_order not in ("sort", "keep"):
        raise ConfigError(f"model.pred_order={pred_order!r} must be sort or keep")
    sort = pred_order == "sort"
    texts = {(ev, stem): format_prediction_file(ev, stem, b, sc, sort) for (ev, stem), (b, sc) in preds.items()}
    files = {f"predictions/{ev}/{stem}.txt": text.encode() for (ev, stem), text in texts.items()}
    files.update({f"predictions/{ev}/{stem}.txt": format_written_file(ev, stem, *v).encode()
                  for (ev, stem), v in as_written.items()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read = read_prediction_texts(texts, gt, unsorted="error" if sort else "keep")
        read.update((k, v) for k, v in as_written.items() if k in read)
        records = wider_image_records(read, gt, iou_thresh=iou_thresh)
        result = evaluate_records(records)
        metrics = {k: float(v) for k, v in result.ap.items()}
        ci95, boot = bootstrap_wider(records, bootstrap, bootstrap_seed) if bootstrap else ({}, None)
        if report_both_iou:
            for t in IOU_BOTH:
                res_t = result if t == iou_thresh else evaluate_wider(read, gt, iou_thresh=t)
                metrics.update({f"{k}_iou{t}": float(v) for k, v in res_t.ap.items()})
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    for m in messages:
        log.warning("%s evaluation: %s", dataset.name, m)
    png = draw_or_warn("pr_curves.png", lambda: pr_curves_png(result, pr_curves_title(dataset.name, len(samples),
                                                                                    iou_thresh)))
    if png is not None:  # a plot that fails is left out with a warning naming it: the metrics are still written
        files["pr_curves.png"] = png
    info = {"iou_thresh": float(iou_thresh), "images": len(samples), "missing_predictions": missing,
            "evaluator": EVALUATOR}
    if messages:
        info["warnings"] = messages
    if boot is not None:
        info["bootstrap"] = boot
    return EvalResult(metrics=metrics, files=files, info=info, ci95=ci95)
