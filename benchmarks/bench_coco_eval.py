"""Target 4 (COCO): pycocotools vs faster-coco-eval on the same detections, best of N each.

The set is the generated COCO-format sample (``n_images``); detections are its ground-truth boxes
jittered, with random scores and classes, plus false positives (100 per image, as CenterNet's K).
Both evaluators run through zoo's ``score_coco``; their 12 stats and per-category APs must agree
(bit-identical, or to the last float64 ulp of a summation order: max difference <= 1e-12), and the
``auto`` default must resolve to the faster one.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _detections(dataset, samples, seed: int = 0):
    from zoo_core.api.types import Detections
    from zoo_core.datasets.coco import CATEGORY_IDS as VALID_IDS

    rng = np.random.default_rng(seed)
    by_image: dict[int, list] = {}
    for a in dataset.instances["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    cls_of = {cid: i for i, cid in enumerate(VALID_IDS)}
    out = {}
    for s in samples:
        info = dataset.image_info(s.key) if hasattr(dataset, "image_info") else None
        w, h = (info["width"], info["height"]) if info else (640, 480)
        boxes, labels = [], []
        for a in by_image.get(s.key, []):
            x, y, bw, bh = a["bbox"]
            for _ in range(3):
                j = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
                boxes.append([x + j[0], y + j[1], x + bw + j[2], y + bh + j[3]])
                labels.append(cls_of[a["category_id"]])
        while len(boxes) < 100:
            x1, y1 = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            boxes.append([x1, y1, x1 + rng.uniform(8, 200), y1 + rng.uniform(8, 200)])
            labels.append(int(rng.integers(0, 80)))
        scores = rng.random(len(boxes)).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        out[s.id] = Detections(np.asarray(boxes, np.float32)[order], scores[order],
                               np.asarray(labels, np.int32)[order])
    return out


def run(work: Path, n_images: int = 500, repeats: int = 3) -> dict:
    from zoo_core.datasets.coco import SAMPLE_ANN_FILE as ANN_FILE
    from zoo_core.datasets.coco import SAMPLE_IMAGE_DIR as IMAGE_DIR
    from zoo_core.datasets.coco import CocoDataset, ensure_coco_sample, resolve_evaluator, score_coco

    root = ensure_coco_sample(work / "coco", n_images=n_images, seed=1)
    ds = CocoDataset(root, ANN_FILE, IMAGE_DIR, name="coco_sample")
    samples = ds.samples() if callable(getattr(ds, "samples", None)) else ds.samples
    dets = _detections(ds, samples)
    times: dict[str, list[float]] = {"pycocotools": [], "faster-coco-eval": []}
    stats = {}
    for _ in range(repeats):
        for name in times:
            t0 = time.perf_counter()
            res = score_coco(dets, ds, samples, evaluator=name, plots=False)
            times[name].append(time.perf_counter() - t0)
            stats[name] = res.metrics
    best = {k: min(v) for k, v in times.items()}
    fastest = min(best, key=best.get)
    a, b = stats["pycocotools"], stats["faster-coco-eval"]
    diff = max(abs(a[k] - b.get(k, float("nan"))) if a[k] == a[k] else 0.0 for k in a)
    return {"images": len(samples), "detections": 100 * len(samples), "seconds": best,
            "identical_stats": a == b, "max_abs_diff": diff, "n_metrics": len(a),
            "n_bit_identical": sum(a[k] == b.get(k) for k in a),
            "auto": resolve_evaluator("auto"), "fastest": fastest,
            "ratio": best["pycocotools"] / best["faster-coco-eval"]}
