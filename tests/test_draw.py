"""predict pictures: threshold, labels with class names, boxes drawn where they are, sizes scaled to the image."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zoo_core.api.types import Detections
from zoo_core.reports.draw import (
    LANDMARK_BGR,
    SINGLE_CLASS_BGR,
    class_color,
    draw_detections,
    filter_detections,
    label_text,
    predict_options,
    style_for,
)
from zoo_core.runs.fingerprint import model_config_hash


def _det(boxes, scores, labels, **extras):
    return Detections(np.asarray(boxes, np.float32), scores, labels, extras)


def _runs(mask_row: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of the runs of True in a 1-D mask."""
    idx = np.flatnonzero(mask_row)
    if not len(idx):
        return []
    cuts = np.flatnonzero(np.diff(idx) > 1)
    starts = np.r_[idx[0], idx[cuts + 1]]
    ends = np.r_[idx[cuts], idx[-1]]
    return [(int(s), int(e - s + 1)) for s, e in zip(starts, ends)]


def _is(img, color):
    return np.all(img == np.asarray(color, np.uint8), axis=-1)


# -- threshold -------------------------------------------------------------------------------------

def test_filter_keeps_scores_at_or_above_the_threshold_with_their_extras():
    lm = np.arange(40, dtype=np.float32).reshape(4, 10)
    det = _det([[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3], [3, 3, 4, 4]], [0.93, 0.5, 0.31, 0.076], [0, 0, 0, 0],
               landmarks=lm)
    kept = filter_detections(det, 0.5)
    assert kept.scores.tolist() == pytest.approx([0.93, 0.5]) and kept.boxes[:, 0].tolist() == [0, 1]
    np.testing.assert_array_equal(kept.extras["landmarks"], lm[:2])
    assert len(filter_detections(det, 0.3)) == 3 and len(filter_detections(det, 0.95)) == 0
    assert filter_detections(det, None) is det
    assert len(det) == 4  # the input is not changed


def test_predict_options_come_from_the_stage_with_model_defaults():
    from zoo_core.config.validate import compose
    from zoo_core.datasets.coco import CATEGORY_NAMES

    face = predict_options(compose(["model=centerface", "stage=predict"]))
    assert face.score_threshold == 0.5 and face.class_names == ["face"]
    coco = predict_options(compose(["model=centernet", "stage=predict"]))
    assert coco.score_threshold == 0.3 and coco.class_names == list(CATEGORY_NAMES) and len(coco.class_names) == 80
    assert predict_options(compose(["model=centerface", "stage=predict", "stage.score_threshold=0.8"])) \
        .score_threshold == 0.8
    assert predict_options(compose(["model=centerface", "stage=predict", "model.predict_threshold=0.2"])) \
        .score_threshold == 0.2
    assert predict_options(compose(["model=centerface", "stage=predict", "stage.score_threshold=null"])) \
        .score_threshold is None
    assert predict_options(compose(["model=fixture", "stage=predict"])).score_threshold is None
    assert predict_options(compose(["model=centernet", "stage=eval"])).score_threshold == 0.3


def test_display_keys_are_not_part_of_the_model_fingerprint():
    from zoo_core.config.validate import compose

    base = compose(["model=centerface"]).model
    assert model_config_hash(compose(["model=centerface", "model.predict_threshold=0.9"]).model) \
        == model_config_hash(base)
    assert model_config_hash(compose(["model=centerface", "model.class_names=[head]"]).model) \
        == model_config_hash(base)
    assert model_config_hash(compose(["model=centerface", "model.nms_iou=0.4"]).model) != model_config_hash(base)


@pytest.mark.needs_torch
def test_changing_the_predict_threshold_does_not_re_export(zoo):
    common = ["model=fixture", "stage=export", "work_dir=run"]
    zoo.ok("run", *common)
    meta = zoo.cwd / "run" / "model" / "fixture_onnxruntime.json"
    first = json.loads(meta.read_text())
    zoo.ok("run", "model=fixture", "stage=eval", "work_dir=run", "model.predict_threshold=0.9")
    assert json.loads(meta.read_text()) == first
    assert "re-exporting" not in (zoo.cwd / "run" / "eval" / "zoo.log").read_text()
    zoo.ok("run", "model=fixture", "stage=eval", "work_dir=run", "model.sharpness=10.0")  # a change of the graph
    assert json.loads(meta.read_text())["fingerprint"] != first["fingerprint"]
    assert "re-exporting" in (zoo.cwd / "run" / "eval" / "zoo.log").read_text()


# -- labels ----------------------------------------------------------------------------------------

def test_label_text_names_classes_and_omits_the_index_of_single_class_models():
    from zoo_core.datasets.coco import CATEGORY_NAMES

    assert label_text(0, 0.874, CATEGORY_NAMES) == "person 0.87"
    assert label_text(15, 0.4, CATEGORY_NAMES) == "cat 0.40"
    assert label_text(79, 0.305, CATEGORY_NAMES) == "toothbrush 0.30"
    assert label_text(85, 0.5, CATEGORY_NAMES) == "#85 0.50"
    assert label_text(0, 0.929, ["face"]) == "0.93"
    assert label_text(0, 0.929, None) == "0.93"
    assert label_text(3, 0.5, None) == "#3 0.50"


# -- pixels ----------------------------------------------------------------------------------------

def test_box_edges_are_drawn_where_the_box_is():
    img = np.zeros((300, 400, 3), np.uint8)
    out = draw_detections(img, _det([[100, 120, 300, 250]], [0.93], [0]), ["face"])
    assert not img.any()  # the input is untouched
    on = _is(out, SINGLE_CLASS_BGR)
    assert style_for(img.shape).thickness == 1
    assert _runs(on[185]) == [(100, 1), (300, 1)]                # left and right edges, 1 px
    assert _runs(on[121:250, 100].astype(bool)) == [(0, 129)]   # the whole left edge
    assert _runs(on[250, :]) == [(100, 201)]                     # the bottom edge
    assert not out[125:246, 104:297].any()                       # the inside stays black
    assert not out[255:, :].any() and not out[:, 305:].any()     # nothing beyond the box
    # the label sits on top of the box: a filled box in the class colour, as wide as its text
    import cv2

    st = style_for(img.shape)
    (tw, th), base = cv2.getTextSize("0.93", cv2.FONT_HERSHEY_SIMPLEX, st.font_scale, st.text_thickness)
    label_rows = np.flatnonzero(out[:120, 100:300].any(axis=(1, 2)))  # the label ends on the box's top edge
    assert label_rows.max() == 119 and 119 - label_rows.min() + 1 == th + base + 2 * 1
    top_row = on[label_rows.min()]
    assert _runs(top_row) == [(100, tw + 2 + 1)]


def test_labels_show_class_names_and_each_class_gets_its_colour():
    import cv2

    from zoo_core.datasets.coco import CATEGORY_NAMES

    img = np.full((480, 640, 3), 30, np.uint8)
    det = _det([[50, 100, 250, 400], [350, 100, 600, 300]], [0.9, 0.45], [0, 15])
    out = draw_detections(img, det, CATEGORY_NAMES)
    st = style_for(img.shape)
    person, cat = class_color(0, 80), class_color(15, 80)
    assert person != cat
    assert _is(out, person)[250, 50] and _is(out, cat)[200, 350]
    for (x1, y1), text in (((50, 100), "person 0.90"), ((350, 100), "cat 0.45")):
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, st.font_scale, st.text_thickness)
        color = person if text.startswith("person") else cat
        row = y1 - st.thickness // 2 - (th + base + 2 * st.thickness) + 1  # the label's first full row
        (start, length), = _runs(_is(out, color)[row, x1 - 5: x1 + 300])
        assert start + x1 - 5 == x1 - st.thickness // 2 and length == tw + 2 * st.thickness + 1, text


def test_the_best_box_is_drawn_last():
    img = np.zeros((200, 200, 3), np.uint8)
    det = _det([[20, 20, 120, 120], [20, 60, 120, 160]], [0.3, 0.8], [1, 2])  # share the left edge x = 20
    out = draw_detections(img, det, ["a", "b", "c"])
    assert _is(out, class_color(2, 3))[90, 20]  # 0.8 over 0.3 where both edges overlap
    det_swapped = _det(det.boxes[::-1], det.scores[::-1], det.labels[::-1])
    assert _is(draw_detections(img, det_swapped, ["a", "b", "c"]), class_color(2, 3))[90, 20]


def test_labels_stay_inside_the_image():
    import cv2

    img = np.zeros((200, 300, 3), np.uint8)
    out = draw_detections(img, _det([[250, 0, 299, 100]], [0.99], [1]), ["thing", "motorcycle"])  # top-right corner
    on = _is(out, class_color(1, 2))
    st = style_for(img.shape)
    (tw, th), base = cv2.getTextSize("motorcycle 0.99", cv2.FONT_HERSHEY_SIMPLEX, st.font_scale, st.text_thickness)
    # no room above the box: the label is inside it, below the top edge, shifted left to end at the image border
    row = st.thickness + 1
    assert _runs(on[row]) == [(300 - tw - 2 * st.thickness - 1, tw + 2 * st.thickness + 1)]
    lx, ly = 300 - tw - 2 * st.thickness - 1, st.thickness
    assert on[ly: ly + th + base + 2 * st.thickness + 1, lx].all() and not on[ly - 1, lx]


def test_landmarks_are_drawn_at_their_points():
    img = np.zeros((240, 320, 3), np.uint8)
    lm = np.array([[130, 90, 170, 90, 150, 110, 135, 130, 165, 130]], np.float32)
    out = draw_detections(img, _det([[110, 60, 190, 150]], [0.9], [0], landmarks=lm), ["face"])
    for x, y in lm[0].reshape(-1, 2).astype(int):
        assert _is(out, LANDMARK_BGR)[y, x]
    assert not _is(out, LANDMARK_BGR)[100:, :100].any()


def test_grayscale_input_gives_a_colour_picture():
    out = draw_detections(np.zeros((64, 64), np.uint8), _det([[8, 20, 40, 50]], [0.7], [0]))
    assert out.shape == (64, 64, 3) and _is(out, SINGLE_CLASS_BGR)[35, 8]


@pytest.mark.parametrize("shape, thickness, font", [((300, 400), 1, 0.35), ((480, 640), 2, 0.5),
                                                    ((1080, 1920), 4, 1.31), ((4000, 6000), 15, 4.45)])
def test_line_width_and_font_scale_with_the_image(shape, thickness, font):
    st = style_for(shape)
    assert (st.thickness, st.font_scale) == (thickness, font)
    h, w = shape
    img = np.zeros((h, w, 3), np.uint8)
    out = draw_detections(img, _det([[w * 0.25, h * 0.3, w * 0.75, h * 0.8]], [0.9], [0]))
    (left, width), (right, width2) = _runs(_is(out, SINGLE_CLASS_BGR)[int(h * 0.55)])
    assert width == width2 and thickness <= width <= thickness + 2  # cv2 draws t (odd) or t + 1 (even) pixels
