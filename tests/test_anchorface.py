"""zoo-anchorface (tests/fixtures/zoo-anchorface): a third-party face detector scored on WIDER FACE through
zoo-core's public dataset API, with no import from zoo_centerface (issue 19's proof in CI)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zoo_core.testing.contract import PluginContract

PACKAGE = Path(__file__).resolve().parent / "fixtures" / "zoo-anchorface" / "zoo_anchorface"

anchorface = pytest.importorskip("zoo_anchorface.anchors", reason="zoo-anchorface is not installed (make venv)")


def test_imports_only_zoo_core_never_another_model_plugin():
    imported = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
    assert imported <= {"__future__", "numpy", "cv2", "torch", "warnings", "pathlib", "collections", "dataclasses",
                        "zoo_core"}, \
        imported
    code = ("import sys, zoo_anchorface.plugin, zoo_anchorface.anchors, zoo_core.datasets.widerface; "
            "print(sorted(m for m in sys.modules if m.startswith(('zoo_centerface', 'zoo_centernet'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_two_anchors_per_cell_at_strides_8_and_16():
    a = anchorface.all_anchors(256, {8: [12, 24], 16: [48, 96]})
    assert len(a) == 32 * 32 * 2 + 16 * 16 * 2
    np.testing.assert_array_equal(a[:2], [[4, 4, 12, 12], [4, 4, 24, 24]])
    np.testing.assert_array_equal(a[32 * 32 * 2], [8, 8, 48, 48])


def test_encode_decode_round_trip_and_shared_cells():
    meta = {"scale_xy": [2.5, 1.875]}
    sides = {8: [12, 24], 16: [48, 96]}
    # three faces whose centres share one stride-8 cell: each still gets its own anchor
    boxes = np.array([[10, 10, 30, 40], [12, 11, 29, 38], [11, 12, 31, 41], [300, 200, 520, 430]], np.float32)
    outs = anchorface.encode_outputs(boxes, meta, 256, sides)
    dets = anchorface.decode_batch([o[None] for o in outs], [meta], anchorface.all_anchors(256, sides), 0.05, 1.01)[0]
    assert len(dets) == 4
    got = dets.boxes[np.lexsort((dets.boxes[:, 1], dets.boxes[:, 0]))]
    want = boxes[np.lexsort((boxes[:, 1], boxes[:, 0]))]
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_oracle_eval_scores_the_sample_perfectly_through_zoo_core(zoo):
    # the bundled model plugins are disabled: WIDER reading and scoring are zoo-core's alone
    out = zoo.ok("run", "model=anchorface", "stage=eval", "backend=oracle", ZOO_DISABLE_PLUGINS="centerface,centernet")
    run = zoo.cwd / "outputs" / "anchorface" / "eval"
    m = json.loads((run / "metrics.json").read_text())
    assert m["dataset"] == "widerface_sample" and m["images"] == 24
    assert m["metrics"] == {"easy": 1.0, "medium": 1.0, "hard": 1.0}
    assert m["info"]["evaluator"].startswith("WIDER FACE") and m["info"]["iou_thresh"] == 0.5
    assert len(list((run / "predictions").rglob("*.txt"))) == 24
    assert (run / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "anchorface on widerface_sample (24 images)" in out
    listing = zoo.ok("list")
    line = next(ln for ln in listing.splitlines() if ln.strip().startswith("anchorface"))
    assert "zoo-anchorface" in line and "dataset" not in line.split("hooks:")[1] and "evaluate" not in line


def test_iou_knob_reaches_zoo_cores_evaluator(zoo):
    zoo.ok("run", "model=anchorface", "stage=eval", "backend=oracle", "model.iou_thresh=0.4", "dataset.limit=8")
    m = json.loads((zoo.cwd / "outputs" / "anchorface" / "eval" / "metrics.json").read_text())
    assert m["info"]["iou_thresh"] == 0.4 and m["images"] == 8 and m["metrics"]["hard"] == 1.0


def test_a_bad_value_of_its_own_key_is_a_config_error_naming_the_key(tmp_path):
    # untyped, model.score_threshold=abc reached postprocess as a string: ValueError, "bug in the plugin", exit 1
    from zoo_core.api.errors import ConfigError
    from zoo_core.testing.checks import PluginUnderTest

    p = PluginUnderTest("anchorface", ("model.score_threshold=abc",), tmp_path)
    with pytest.raises(ConfigError, match=r"model\.score_threshold.*declared float in zoo-anchorface's AnchorFaceConfig"):
        p.cfg  # noqa: B018


class TestAnchorFaceContract(PluginContract):
    """The contract kit on a plugin whose dataset and evaluate hooks are zoo-core's."""

    model = "anchorface"
