"""Pictures of ``predict``: detections above a score threshold, drawn with class names on a BGR image.

* :func:`predict_options` reads the two settings from the config: ``stage.score_threshold`` (default: the
  model's ``model.predict_threshold``; ``null`` keeps every detection) and ``model.class_names``.
* :func:`filter_detections` applies the threshold (to the picture *and* the predictions JSON).
* :func:`draw_detections` draws boxes, labels (``person 0.87``; a single-class model shows the score only)
  and landmarks, with line width and font scaled to the image size (:func:`style_for`).
"""
from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zoo_core.api.types import Detections

#: BGR colour of a single-class model's boxes, and of every model's landmarks.
SINGLE_CLASS_BGR = (60, 220, 60)
LANDMARK_BGR = (40, 40, 240)


@dataclass(frozen=True)
class PredictOptions:
    """What ``predict`` keeps and how it names it."""

    score_threshold: float | None
    class_names: list[str] | None


def predict_options(cfg) -> PredictOptions:
    """``stage.score_threshold`` (falling back to ``model.predict_threshold``) and ``model.class_names``."""
    stage = cfg.get("stage") or {}
    thr = stage.get("score_threshold") if "score_threshold" in stage else cfg.model.get("predict_threshold")
    names = cfg.model.get("class_names")
    return PredictOptions(None if thr is None else float(thr),
                          [str(n) for n in names] if names else None)


def filter_detections(det: Detections, threshold: float | None) -> Detections:
    """The detections scoring at least ``threshold`` (all of them when ``None``), extras row-aligned, order kept."""
    if threshold is None:
        return det
    keep = det.scores >= float(threshold)
    return Detections(det.boxes[keep], det.scores[keep], det.labels[keep],
                      {k: v[keep] for k, v in det.extras.items()})


@dataclass(frozen=True)
class DrawStyle:
    thickness: int     # box line width, pixels
    font_scale: float  # cv2.putText scale
    text_thickness: int


def style_for(shape: Sequence[int]) -> DrawStyle:
    """Line width and font for an image of ``shape`` (h, w, ...), proportional to sqrt(h * w).

    640x480: 2 px lines, font 0.50; 1920x1080: 4 px, font 1.31; 256x256: 1 px, font 0.35 (the minimum).
    """
    size = math.sqrt(float(shape[0]) * float(shape[1]))
    font_scale = max(0.35, size / 1100)
    return DrawStyle(thickness=max(1, round(size / 320)), font_scale=round(font_scale, 2),
                     text_thickness=max(1, round(font_scale * 1.2)))


def class_color(label: int, n_classes: int) -> tuple[int, int, int]:
    """A distinct, stable BGR colour per class (golden-ratio hues); the single-class colour when ``n_classes <= 1``."""
    if n_classes <= 1:
        return SINGLE_CLASS_BGR
    r, g, b = colorsys.hsv_to_rgb((int(label) * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def label_text(label: int, score: float, class_names: Sequence[str] | None) -> str:
    """``person 0.87`` with several class names; ``0.93`` for a single-class model (one name, or none and label 0);
    ``#3 0.50`` for a class without a name."""
    score_txt = f"{float(score):.2f}"
    if class_names and len(class_names) > 1:
        name = class_names[label] if 0 <= label < len(class_names) else f"#{label}"
        return f"{name} {score_txt}"
    return score_txt if label == 0 else f"#{label} {score_txt}"


def _text_bgr(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    b, g, r = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_detections(image: np.ndarray, det: Detections, class_names: Sequence[str] | None = None,
                    style: DrawStyle | None = None) -> np.ndarray:
    """A copy of BGR ``image`` with ``det`` drawn: boxes, a filled label per box, and landmarks if present.

    Labels sit above their box (inside it when the box touches the top edge) and stay inside the image.
    Lower-scoring boxes are drawn first, so the best ones end up on top.
    """
    import cv2

    out = np.ascontiguousarray(image.copy())
    if out.ndim == 2:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    h, w = out.shape[:2]
    st = style or style_for(out.shape)
    font = cv2.FONT_HERSHEY_SIMPLEX
    n_classes = len(class_names) if class_names else (1 if not len(det) or int(det.labels.max()) == 0 else 2)
    landmarks = det.extras.get("landmarks")
    for i in np.argsort(det.scores, kind="stable"):
        label = int(det.labels[i])
        color = class_color(label, n_classes)
        x1, y1, x2, y2 = (round(float(v)) for v in det.boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, st.thickness)
        text = label_text(label, float(det.scores[i]), class_names)
        (tw, th), base = cv2.getTextSize(text, font, st.font_scale, st.text_thickness)
        pad = max(1, st.thickness)
        box_h = th + base + 2 * pad
        lx = min(max(x1 - st.thickness // 2, 0), max(w - 1 - tw - 2 * pad, 0))
        ly = y1 - st.thickness // 2 - box_h  # top of the label
        if ly < 0:
            ly = max(y1 + st.thickness, 0)
        ly = min(ly, max(h - 1 - box_h, 0))
        cv2.rectangle(out, (lx, ly), (lx + tw + 2 * pad, ly + box_h), color, -1)
        cv2.putText(out, text, (lx + pad, ly + pad + th), font, st.font_scale, _text_bgr(color), st.text_thickness,
                    lineType=cv2.LINE_AA)
        if landmarks is not None and len(landmarks):
            for x, y in landmarks[i].reshape(-1, 2):
                cv2.circle(out, (round(float(x)), round(float(y))), st.thickness + 1, LANDMARK_BGR, -1,
                           lineType=cv2.LINE_AA)
    return out
