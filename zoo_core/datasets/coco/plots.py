"""COCO plots: precision-recall curves at IoU 0.50 and 0.75 (all classes) and per-class AP bars."""
from __future__ import annotations

import io

import numpy as np

from zoo_core.reports.plotting import plain_text

#: IoU thresholds drawn by :func:`pr_curves_png` (indices into COCOeval's 0.50:0.05:0.95).
PR_IOUS = (0.5, 0.75)


def pr_curve_data(ev) -> dict[float, tuple[np.ndarray, np.ndarray, float]]:
    """``{iou: (recall, precision, AP)}`` from a finished COCOeval (area "all", 100 detections).

    ``precision`` is the mean over the categories that have ground truth of COCOeval's interpolated
    precision at its 101 recall points; ``AP`` is the mean of those values, i.e. exactly ``AP50`` /
    ``AP75`` of ``ev.stats``. Recall points where no category has a value are dropped.
    """
    p = ev.params
    precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    recall = np.asarray(p.recThrs, np.float64)
    out = {}
    for iou in PR_IOUS:
        t = int(np.argmin(np.abs(np.asarray(p.iouThrs) - iou)))
        pr = precision[t, :, :, 0, -1]  # [R, K]
        has = (pr > -1).any(axis=0)
        valid = pr[:, has]
        if valid.size == 0:
            out[iou] = (recall[:0], recall[:0], -1.0)
            continue
        with np.errstate(invalid="ignore"):
            masked = np.where(valid > -1, valid, np.nan)
            curve = np.nanmean(masked, axis=1)
        ap = float(np.mean(valid[valid > -1]))
        ok = np.isfinite(curve)
        out[iou] = (recall[ok], curve[ok], ap)
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def pr_curves_png(ev, title: str) -> bytes:
    """A PNG of the all-class precision-recall curves at IoU 0.50 and 0.75, APs in the legend.

    :param ev: a finished COCOeval (pycocotools or faster-coco-eval).
    :param title: names the scored dataset (e.g. ``"coco_sample (24 images)"``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with plain_text():  # the title holds the dataset name
        fig = Figure(figsize=(6, 5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for (iou, (rec, prec, ap)), colour in zip(pr_curve_data(ev).items(), ("tab:blue", "tab:red")):
            label = f"IoU {iou:.2f} (AP {ap:.4f})" if ap >= 0 else f"IoU {iou:.2f} (no ground truth)"
            ax.plot(rec, prec, color=colour, lw=1.8, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{title}, all classes (area all, 100 dets)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left")
        return _png(fig)


def ap_per_class_png(per_class: dict[str, float], mean_ap: float, title: str) -> bytes:
    """A PNG bar chart of ``AP/<name>`` (IoU 0.50:0.95) per category, best first, with the mean AP line.

    :param per_class: ``{"AP/<name>": ap}`` as :func:`zoo_core.datasets.coco.per_category_ap` returns.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = sorted(((k.split("/", 1)[1], v) for k, v in per_class.items()), key=lambda kv: (-kv[1], kv[0]))
    height = max(3.0, 0.22 * len(items) + 1.2)
    with plain_text():  # category names come from the annotation file: drawn as written, never as mathtext
        fig = Figure(figsize=(6, height), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        names = [n for n, _ in items]
        values = [v for _, v in items]
        ax.barh(range(len(items)), values, color="tab:blue")
        ax.set_yticks(range(len(items)), names, fontsize=7 if len(items) > 30 else 9)
        ax.set_ylim(len(items) - 0.5, -0.5)  # best first, no empty margin
        ax.set_xlim(0, 1)
        mean = ""
        if mean_ap >= 0:
            ax.axvline(mean_ap, color="tab:red", lw=1.2)
            mean = f" (red: AP {mean_ap:.4f})"
        ax.set_xlabel("AP (IoU 0.50:0.95)")
        ax.set_title(f"{title}: AP per class{mean}", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        # fixed margins (tight_layout costs ~1 s with 80 labels): room for the longest COCO name
        fig.subplots_adjust(left=0.25, right=0.97, top=1 - 0.45 / height, bottom=0.55 / height)
        return _png(fig)
