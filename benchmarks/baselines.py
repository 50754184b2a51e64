"""Straightforward single-image implementations of the reference algorithms (REFERENCE 2.2, 2.7,
2.8, 3.2, 3.3), written the way the seed scripts work: torch per image, per-point affine loops,
per-class dicts, greedy NMS in a Python loop. They are the "before" side of target 2; the
benchmark also checks that they agree with zoo's vectorised code on the same data.
"""
from __future__ import annotations

import numpy as np

STRIDE = 4


def _affine(center, scale, out_w, out_h, inv=False):
    import cv2

    src_w = float(scale)
    c = np.array(center, np.float32)
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = c
    src[1] = c + np.array([0, -0.5 * src_w], np.float32)
    src[2] = src[1] + np.array([src[0, 1] - src[1, 1], src[1, 0] - src[0, 0]], np.float32)
    dst[0] = [out_w / 2.0, out_h / 2.0]
    dst[1] = dst[0] + np.array([0, -0.5 * out_w], np.float32)
    dst[2] = dst[1] + np.array([dst[0, 1] - dst[1, 1], dst[1, 0] - dst[0, 0]], np.float32)
    return cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)


def naive_preprocess_affine(path, input_hw, mean, std):
    """``cv2.imread`` + ``cv2.warpAffine`` + ``((x / 255) - mean) / std`` in float64, NCHW float32."""
    import cv2

    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    trans = _affine((w / 2.0, h / 2.0), max(h, w), input_hw[1], input_hw[0])
    warped = cv2.warpAffine(img, trans, (input_hw[1], input_hw[0]), flags=cv2.INTER_LINEAR)
    x = ((warped / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)
    return x.transpose(2, 0, 1).reshape(1, 3, input_hw[0], input_hw[1])


def naive_preprocess_starclouds(path):
    """``cv2.imread`` + ``cv2.resize`` to multiples of 32 + BGR->RGB + float32 NCHW."""
    import cv2

    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    nh, nw = int(np.ceil(h / 32) * 32), int(np.ceil(w / 32) * 32)
    rgb = cv2.resize(img, (nw, nh))[:, :, ::-1]
    return rgb.astype(np.float32).transpose(2, 0, 1)[None]


def _transform_preds(coords, center, scale, out_w, out_h):
    trans = _affine(center, scale, out_w, out_h, inv=True)
    out = np.zeros(coords.shape, np.float32)
    for p in range(coords.shape[0]):
        pt = np.array([coords[p, 0], coords[p, 1], 1.0], np.float32)
        out[p, 0:2] = np.dot(trans, pt.T)[:2]
    return out


def naive_centernet(hm, wh, reg, meta, K=100):
    """CenterNet ctdet per image with torch, then the per-class post-process dict (class -> rows)."""
    import torch
    import torch.nn.functional as F

    heat = torch.sigmoid(torch.from_numpy(hm[None]))
    hmax = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * (hmax == heat).float()
    _, c, _, w = heat.shape
    cls_scores, cls_inds = torch.topk(heat.view(1, c, -1), K)
    scores, ind = torch.topk(cls_scores.view(1, -1), K)
    classes = (ind // K).float()
    inds = cls_inds.view(1, -1).gather(1, ind)
    ys = (inds // w).float()
    xs = (inds % w).float()
    regt = torch.from_numpy(reg).view(2, -1)[:, inds[0]]
    wht = torch.from_numpy(wh).view(2, -1)[:, inds[0]]
    xs = xs[0] + regt[0]
    ys = ys[0] + regt[1]
    dets = torch.stack([xs - wht[0] / 2, ys - wht[1] / 2, xs + wht[0] / 2, ys + wht[1] / 2,
                        scores[0], classes[0]], 1).numpy()
    dets[:, :2] = _transform_preds(dets[:, 0:2], meta["c"], meta["s"], meta["out_w"], meta["out_h"])
    dets[:, 2:4] = _transform_preds(dets[:, 2:4], meta["c"], meta["s"], meta["out_w"], meta["out_h"])
    out = {}
    for j in range(c):
        sel = dets[:, 5] == j
        out[j + 1] = np.concatenate([dets[sel, :4].astype(np.float32), dets[sel, 4:5].astype(np.float32)], 1).tolist()
    return out


def naive_centerface_ascend(hm, wh, off, lms, meta, K=200):
    """Family-B CenterFace per image with torch: peak keep, top-K, then per-detection loops."""
    import torch
    import torch.nn.functional as F

    heat = torch.from_numpy(hm[None])
    hmax = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * (hmax == heat).float()
    _, _, _, w = heat.shape
    scores, inds = torch.topk(heat.view(-1), K)
    out_h, out_w = meta["out_hw"]
    rows = []
    for score, ind in zip(scores.tolist(), inds.tolist()):
        y, x = divmod(ind, w)
        cx = x + float(off[0, y, x])
        cy = y + float(off[1, y, x])
        bw = np.exp(float(wh[0, y, x])) * STRIDE
        bh = np.exp(float(wh[1, y, x])) * STRIDE
        pts = [[cx - bw / 2, cy - bh / 2], [cx + bw / 2, cy + bh / 2]]
        for k in range(5):
            pts.append([float(lms[2 * k, y, x]) + cx, float(lms[2 * k + 1, y, x]) + cy])
        mapped = _transform_preds(np.array(pts, np.float32), meta["c"], meta["s"], out_w, out_h)
        rows.append([*mapped.reshape(-1)[:4], score, *mapped.reshape(-1)[4:]])
    return rows


def naive_nms(boxes, scores, thresh):
    """Greedy IoU-NMS with "+1" areas, one kept box per loop iteration."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    suppressed = np.zeros(len(scores), bool)
    for _i in range(len(order)):
        i = order[_i]
        if suppressed[i]:
            continue
        keep.append(i)
        for _j in range(_i + 1, len(order)):
            j = order[_j]
            if suppressed[j]:
                continue
            xx1, yy1 = max(x1[i], x1[j]), max(y1[i], y1[j])
            xx2, yy2 = min(x2[i], x2[j]), min(y2[i], y2[j])
            inter = max(0.0, xx2 - xx1 + 1) * max(0.0, yy2 - yy1 + 1)
            if inter / (areas[i] + areas[j] - inter) >= thresh:
                suppressed[j] = True
    return keep


def naive_centerface_starclouds(heat, scale, offset, lms, meta, threshold=0.05, nms_iou=0.3):
    """Family-A CenterFace per image: candidate loop in Python, then :func:`naive_nms`."""
    h_in, w_in = meta["input_shape"][1:]
    ys, xs = np.where(heat[0] > threshold)
    boxes, scores, marks = [], [], []
    for y, x in zip(ys, xs):
        s0, s1 = np.exp(scale[0, y, x]) * 4, np.exp(scale[1, y, x]) * 4
        o0, o1 = offset[0, y, x], offset[1, y, x]
        x1 = max(0, (x + o1 + 0.5) * 4 - s1 / 2)
        y1 = max(0, (y + o0 + 0.5) * 4 - s0 / 2)
        x1, y1 = min(x1, w_in), min(y1, h_in)
        boxes.append([x1, y1, min(x1 + s1, w_in), min(y1 + s0, h_in)])
        scores.append(heat[0, y, x])
        marks.append([v for k in range(5) for v in (lms[2 * k + 1, y, x] * s1 + x1, lms[2 * k, y, x] * s0 + y1)])
    if not boxes:
        return []
    boxes = np.array(boxes, np.float32)
    scores = np.array(scores, np.float32)
    marks = np.array(marks, np.float32)
    keep = naive_nms(boxes, scores, nms_iou)
    out = []
    for i in keep:
        b = boxes[i].copy()
        m = marks[i].copy()
        b[0::2] /= meta["scale_w"]
        b[1::2] /= meta["scale_h"]
        m[0::2] /= meta["scale_w"]
        m[1::2] /= meta["scale_h"]
        out.append((b, scores[i], m))
    return out
