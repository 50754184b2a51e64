"""CenterNet decode -> zoo_core.datasets.coco results json: byte-identical to the reference's json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zoo_centernet.decode import decode_batch
from zoo_core.api.types import Sample
from zoo_core.datasets.coco import coco_records
from zoo_core.testing import golden_dir


@pytest.mark.parametrize("name", ["case_640x480", "case_427x640", "case_tiny37x23"])
def test_coco_json_equals_golden_exactly(name):
    d = np.load(golden_dir("centernet", "decode_cases") / f"{name}.npz")
    meta = {"c": d["c"].tolist(), "s": float(d["s"]), "out_h": 128, "out_w": 128}
    det = decode_batch(d["hm"], d["wh"], d["reg"], [meta])[0]
    sample = Sample(id="img", path=Path("img.jpg"), key=int(d["image_id"]))
    assert json.dumps(coco_records({"img": det}, [sample])) == str(d["coco_json"])
