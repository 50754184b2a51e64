"""The WIDER FACE precision-recall plot (``pr_curves.png``), drawn with matplotlib's Agg canvas."""
from __future__ import annotations

import numpy as np

from zoo_core.reports.plotting import plain_text

from .evaluation import WiderResult
from .ground_truth import SETTINGS


def pr_curves_title(dataset_name: str, images: int, iou_thresh: float) -> str:
    """The plot title: the dataset that was scored, its image count and the IoU, e.g.
    ``"widerface_sample (24 images), IoU 0.5"`` (never "WIDER FACE val" for a subset or a sample)."""
    return f"{dataset_name} ({images} image{'s' if images != 1 else ''}), IoU {iou_thresh:g}"


def pr_curves_png(result: WiderResult, title: str | None = None) -> bytes:
    """A PNG of the easy / medium / hard precision-recall curves with their APs in the legend.

    :param result: what :func:`zoo_core.datasets.widerface.evaluate_wider` returned.
    :param title: the plot title; ``None`` gives ``"WIDER FACE protocol, IoU <t>"`` (name the scored
        dataset with :func:`pr_curves_title`).
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with plain_text():  # the title holds the dataset name: drawn as written, never as mathtext
        fig = Figure(figsize=(6, 5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for s, colour in zip(SETTINGS, ("tab:green", "tab:blue", "tab:red")):
            ok = np.isfinite(result.precision[s]) & np.isfinite(result.recall[s])
            ax.plot(result.recall[s][ok], result.precision[s][ok], color=colour, lw=1.8,
                    label=f"{s} (AP {result.ap[s]:.4f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(title or f"WIDER FACE protocol, IoU {result.iou_thresh:g}")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
