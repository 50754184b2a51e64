"""The published COCO val2017 numbers of CenterNet ctdet DLA-34 (REFERENCE 2.10), as ``Reference``\\ s.

Protocol: the dataset (zoo-core's ``coco`` config reading ``instances_val2017.json``, all 5000 images: a
COCO-format set of one's own under that name is not val2017), the preprocessing geometry (``model.keep_res``;
fix_res at 512x512). ``K``, the weights, the backend and the precision are not protocol: a run that changes
them is compared with the published number.
"""
from __future__ import annotations

from zoo_core.api.types import Reference

VAL2017 = {"dataset.name": "coco", "dataset.ann_file": "annotations/instances_val2017.json"}
#: COCO val2017's image count, annotated or not (REFERENCE 2.9).
VAL2017_IMAGES = 5000

REFERENCES = (
    Reference(metric="AP", expected=0.366, tolerance=0.003,
              source="Ascend ModelZoo CenterNet README: fix_res 512, no flip, K 100, original PyTorch "
                     "('online') AP 36.6; the Ascend OM (310, 310P3) scored 36.4",
              protocol={**VAL2017, "model.keep_res": False, "model.input_h": 512, "model.input_w": 512},
              note="the tolerance covers the OM's 36.4", images=VAL2017_IMAGES),
    Reference(metric="AP", expected=0.374, tolerance=0.004,
              source="CenterNet readme/MODEL_ZOO.md: ctdet_coco_dla_2x keep_res, plain (no flip) AP 37.4",
              protocol={**VAL2017, "model.keep_res": True},
              note="up to 0.4 AP training jitter (MODEL_ZOO.md)", images=VAL2017_IMAGES),
)


def references() -> list[Reference]:
    """The references above (all of them; zoo-core picks the one matching a run's protocol)."""
    return list(REFERENCES)
