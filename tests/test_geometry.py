"""zoo_core.api.geometry: the letterbox and its inverse, against closed-form geometry.

Bit-exactness against the reference implementations is proven by the plugins' golden preprocess and
decode tests (plugins/*/tests), which go through these functions.
"""
from __future__ import annotations

import numpy as np
import pytest

from zoo_core.api.geometry import (
    Letterbox,
    get_affine_transform,
    letterbox,
    letterbox_boxes,
    letterbox_center_scale,
    letterbox_points,
    unletterbox_boxes,
    unletterbox_points,
)


def test_fix_res_rule_centres_the_whole_image():
    c, s = letterbox_center_scale(480, 640)
    assert c.dtype == np.float32 and c.tolist() == [320.0, 240.0] and s == 640.0
    c, s = letterbox_center_scale(37, 23)
    assert c.tolist() == [11.5, 18.5] and s == 37.0


def test_letterbox_scales_keeps_aspect_and_pads_black():
    image = np.full((480, 640, 3), 200, np.uint8)
    warped, box = letterbox(image, (512, 512))
    assert isinstance(box, Letterbox) and box.out_hw == (512, 512) and box.scale == 640.0
    assert warped.shape == (512, 512, 3) and warped.dtype == np.uint8
    # zoom 512/640 = 0.8: the 480 rows become 384, centred (64 black rows above and below)
    rows = np.flatnonzero(warped[:, 256, 0])
    assert rows[0] in (63, 64) and rows[-1] in (447, 448)
    assert (warped[70:440, 5:505] == 200).all() and (warped[:60] == 0).all() and (warped[452:] == 0).all()


def test_a_non_square_keep_res_letterbox_records_height_then_width():
    """CenterNet keep_res: a 640x480 image on a 672-wide, 512-high input; Letterbox.out_hw is (height, width)."""
    image = np.full((480, 640, 3), 200, np.uint8)
    warped, box = letterbox(image, (512, 672), center=np.float32([320, 240]), scale=np.float32([672, 512]))
    assert warped.shape == (512, 672, 3)
    assert box.out_hw == (512, 672)


def test_affine_points_rounds_float64_points_to_float32_first():
    """REFERENCE 2.11 item 8: the point is float32 and the matrix float64. A float64 point (0.1, 0.1) maps as
    float32(0.1) does, bit for bit: x * m00 + y * m01 + m02 in float64 with x = y = float64(float32(0.1))."""
    from zoo_core.api.geometry import affine_points

    m = get_affine_transform(np.array([320, 240], np.float32), 640.0, (128, 128))
    x = float(np.float32(0.1))
    assert x != 0.1
    expected = [[x * m[0, 0] + x * m[0, 1] + m[0, 2], x * m[1, 0] + x * m[1, 1] + m[1, 2]]]
    got = affine_points(np.array([[0.1, 0.1]], np.float64), m)
    assert got.dtype == np.float64 and got.tolist() == expected
    assert affine_points(np.float32([[0.1, 0.1]]), m).tolist() == expected


def test_inverse_maps_the_content_corners_back_to_the_image_corners():
    c, s = letterbox_center_scale(480, 640)
    corners = np.array([[0, 64], [512, 448]], np.float32)
    np.testing.assert_allclose(unletterbox_points(corners, c, s, (512, 512)), [[0, 0], [640, 480]], atol=1e-4)
    # on the stride-4 output grid the same corners are 4x smaller
    np.testing.assert_allclose(unletterbox_points(corners / 4, c, s, (128, 128)), [[0, 0], [640, 480]], atol=1e-4)
    box = unletterbox_boxes(np.array([[0, 16, 128, 112]], np.float32), c, s, (128, 128))
    assert box.dtype == np.float32 and box.shape == (1, 4)
    np.testing.assert_allclose(box, [[0, 0, 640, 480]], atol=1e-4)


@pytest.mark.parametrize("hw, out_hw, keep_res", [((480, 640), (512, 512), False), ((853, 1280), (800, 800), False),
                                                  ((23, 37), (32, 64), True)])
def test_forward_then_inverse_is_the_identity(hw, out_hw, keep_res):
    h, w = hw
    if keep_res:  # CenterNet keep_res: integer centre, scale = the frame size
        c, s = np.array([w // 2, h // 2], np.float32), np.array([out_hw[1], out_hw[0]], np.float32)
    else:
        c, s = letterbox_center_scale(h, w)
    rng = np.random.default_rng(0)
    pts = rng.uniform([0, 0], [w, h], (50, 2)).astype(np.float32)
    for grid in (out_hw, (out_hw[0] // 4, out_hw[1] // 4)):
        on_grid = letterbox_points(pts, c, s, grid)
        np.testing.assert_allclose(unletterbox_points(on_grid, c, s, grid), pts, rtol=0, atol=2e-3)
    boxes = np.concatenate([pts[:25], pts[25:] + 1], axis=1)
    np.testing.assert_allclose(unletterbox_boxes(letterbox_boxes(boxes, c, s, out_hw), c, s, out_hw), boxes, atol=2e-3)


def test_letterbox_warp_matches_its_points():
    """A white square at a known source position lands where letterbox_points says it does
    (OpenCV's convention: pixel centres at integer coordinates)."""
    image = np.zeros((300, 500, 3), np.uint8)
    image[100:104, 400:404] = 255
    warped, box = letterbox(image, (256, 256))
    (x, y), = letterbox_points(np.array([[401.5, 101.5]], np.float32), box.center, box.scale, box.out_hw)
    ys, xs = np.nonzero(warped[:, :, 0])
    weights = warped[ys, xs, 0].astype(np.float64)
    assert abs(np.average(xs, weights=weights) - x) < 0.25 and abs(np.average(ys, weights=weights) - y) < 0.25


def _reference_affine(center, scale, out, inv):
    """REFERENCE 2.2 step 3 as written: p2 = p1 + R90(p0 - p1), R90(dx, dy) = (-dy, dx), float32 points."""
    import cv2

    s = np.asarray(scale, np.float32).reshape(-1)
    src_w = s[0]
    c = np.asarray(center, np.float32)

    def three(p0, w):
        p1 = p0 + np.array([0, w * -0.5], np.float32)
        d = p0 - p1
        return np.stack([p0, p1, p1 + np.array([-d[1], d[0]], np.float32)]).astype(np.float32)

    src = three(c, src_w)
    dst = three(np.array([out[0] * 0.5, out[1] * 0.5], np.float32), np.float32(out[0]))
    return cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)


def test_the_affine_matrix_is_bit_identical_to_the_reference_construction():
    """The third point turns p0 - p1 by +90 degrees as the reference does; turning it by -90 degrees gives the
    same transform in exact arithmetic but a matrix that differed in its last bits for 2 of 3 image sizes."""
    rng = np.random.default_rng(7)
    for h, w in rng.integers(1, 4000, (600, 2)):
        fix = (np.array([w / 2, h / 2], np.float32), float(max(h, w)))
        keep = (np.array([w // 2, h // 2], np.float32), np.array([(w | 31) + 1, (h | 31) + 1], np.float32))
        for (c, s), out in ((fix, (512, 512)), (fix, (128, 128)), (keep, (((w | 31) + 1) // 4, ((h | 31) + 1) // 4))):
            for inv in (False, True):
                assert np.array_equal(get_affine_transform(c, s, out, inv=inv), _reference_affine(c, s, out, inv))
