"""Drawing detections (boxes, scores, landmarks) on a BGR image for ``predict``."""
from __future__ import annotations

import numpy as np

from zoo_core.api.types import Detections


def draw_detections(image: np.ndarray, det: Detections, names: list[str] | None = None) -> np.ndarray:
    import cv2

    out = image.copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    for i in range(len(det)):
        x1, y1, x2, y2 = (round(float(v)) for v in det.boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), thick)
        label = names[det.labels[i]] if names and 0 <= det.labels[i] < len(names) else str(int(det.labels[i]))
        cv2.putText(out, f"{label} {det.scores[i]:.2f}", (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, (0, 255, 0), thick)
        lm = det.extras.get("landmarks")
        if lm is not None and len(lm):
            for x, y in lm[i].reshape(-1, 2):
                cv2.circle(out, (round(float(x)), round(float(y))), thick + 1, (0, 0, 255), -1)
    return out
