"""Target 2: host CPU-ms per image, zoo's code next to the straightforward baselines.

Preprocess: zoo's ``read_image`` + the plugin preprocess vs ``cv2.imread`` + ``cv2.warpAffine`` +
float64 normalise (resize + cast for Star-Clouds). Postprocess: the plugin decoders (batch 1 and
16) vs :mod:`benchmarks.baselines` (torch per image with one thread, per-point Python loops,
Python-loop NMS). CPU time is ``time.process_time`` over the set, best of N passes. zoo's decoders get
each batch already stacked (as a device returns it); only the decode is timed.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import baselines


def _best_cpu_ms(fn, items, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for it in items:
            fn(it)
        best = min(best, time.process_time() - t0)
    return 1000.0 * best / len(items)


def _as_batch(group) -> tuple[list[np.ndarray], list[dict]]:
    """``[(outputs, meta), ...]`` -> (one ``(B, ...)`` array per output, metas): what a device hands the
    postprocess hook (zoo's stream passes the backend's batched outputs as they come)."""
    return [np.stack([g[0][k] for g in group]) for k in range(len(group[0][0]))], [m for _, m in group]


def _batched_cpu_ms(fn, items, batch: int, repeats: int) -> float:
    """CPU-ms per item of ``fn(outputs, metas)`` over batches of ``batch`` same-shape items. The batches are
    stacked before the clock starts: the copy into one array per output is the benchmark's (its recorded
    outputs are per image), not the decoder's, which receives the device's batched arrays."""
    by_shape: dict = {}
    for it in items:
        by_shape.setdefault(tuple(a.shape for a in it[0]), []).append(it)
    groups = [_as_batch(g[i:i + batch]) for g in by_shape.values() for i in range(0, len(g), batch)]
    return _best_cpu_ms(lambda g: fn(*g), groups, repeats) * len(groups) / len(items)


def _read(spec_shapes, paths):
    return [np.fromfile(p, "<f4").reshape(s) for p, s in zip(paths, spec_shapes)]


def run(work: Path, repeats: int = 3) -> dict:
    """CPU-ms per image for every model, both sides; also checks that both sides agree."""
    import torch

    from zoo_centerface import decode as cf_decode
    from zoo_centerface import preprocess as cf_pre
    from zoo_centernet import decode as cn_decode
    from zoo_centernet import preprocess as cn_pre
    from zoo_core.api.imaging import read_image
    from zoo_core.datasets.coco import SAMPLE_ANN_FILE as ANN_FILE
    from zoo_core.datasets.coco import SAMPLE_IMAGE_DIR as IMAGE_DIR

    torch.set_num_threads(1)
    from zoo_core.datasets.widerface import ensure_sample

    sample = ensure_sample(work / "cache" / "widerface_sample")
    face_paths = sorted((sample / "WIDER_val" / "images").rglob("*.jpg"))
    coco_root = work / "coco" / "n200_seed0"
    coco_paths = sorted((coco_root / IMAGE_DIR).glob("*.jpg")) if coco_root.is_dir() else []
    if not coco_paths:
        from zoo_core.datasets.coco import ensure_coco_sample

        coco_paths = sorted((ensure_coco_sample(work / "coco", 200, 0) / IMAGE_DIR).glob("*.jpg"))
    coco_paths = coco_paths[:48]
    _ = ANN_FILE
    mean, std = cf_pre.MEAN_BGR, cf_pre.STD_BGR
    res = {}

    # preprocess
    def zoo_ascend(p):
        return cf_pre.preprocess_ascend(read_image(p))

    def zoo_sc(p):
        return cf_pre.preprocess_starclouds(read_image(p))

    def zoo_cn(p):
        return cn_pre.preprocess_image(read_image(p))

    assert np.allclose(zoo_ascend(face_paths[0])[0]["image"], baselines.naive_preprocess_affine(
        face_paths[0], (800, 800), mean, std)[0], atol=1e-5)
    for name, zfn, nfn, paths in (
        ("centerface ascend 800", zoo_ascend, lambda p: baselines.naive_preprocess_affine(p, (800, 800), mean, std),
         face_paths),
        ("centerface starclouds", zoo_sc, baselines.naive_preprocess_starclouds, face_paths),
        ("centernet 512", zoo_cn, lambda p: baselines.naive_preprocess_affine(p, (512, 512), mean, std), coco_paths),
    ):
        naive, zoo = [], []
        for _ in range(repeats):  # interleaved, best of N each
            naive.append(_best_cpu_ms(nfn, paths, 1))
            zoo.append(_best_cpu_ms(zfn, paths, 1))
        res.setdefault(name, {})["preprocess"] = {"zoo_ms": min(zoo), "naive_ms": min(naive),
                                                  "speedup": min(naive) / min(zoo)}

    # postprocess on recorded / synthetic outputs
    rec_sc = work / "record_starclouds" / "outputs"
    sc_items = []
    for p in face_paths:
        _, meta = zoo_sc(p)
        h, w = meta["input_shape"][1:]
        shapes = [(1, h // 4, w // 4), (2, h // 4, w // 4), (2, h // 4, w // 4), (10, h // 4, w // 4)]
        sc_items.append((_read(shapes, [rec_sc / f"{p.stem}_{i}.bin" for i in range(4)]), meta))
    asc_shapes = [(1, 200, 200), (2, 200, 200), (2, 200, 200), (10, 200, 200)]
    asc_recs = sorted((work / "record_ascend").glob("*_0.bin"))
    asc_items = []
    for k, p in enumerate(face_paths):
        r = asc_recs[k % len(asc_recs)]
        outs = _read(asc_shapes, [r.with_name(r.name[:-6] + f"_{i}.bin") for i in range(4)])
        asc_items.append((outs, zoo_ascend(p)[1]))
    cn_shapes = [(80, 128, 128), (2, 128, 128), (2, 128, 128)]
    cn_items = []
    for k, p in enumerate(coco_paths[:32]):
        outs = _read(cn_shapes, [work / "record_centernet" / f"src{k % 8}_{i}.bin" for i in range(3)])
        cn_items.append((outs, zoo_cn(p)[1]))

    decoders = {  # zoo's side takes (batched outputs, metas); the baselines one (outputs, meta) item
        "centerface starclouds": (
            sc_items,
            lambda outs, metas: cf_decode.decode_starclouds(*outs, metas),
            lambda it: baselines.naive_centerface_starclouds(*it[0], it[1])),
        "centerface ascend 800": (
            asc_items,
            lambda outs, metas: cf_decode.decode_ascend(*outs, metas, k=200),
            lambda it: baselines.naive_centerface_ascend(*it[0], it[1])),
        "centernet 512": (
            cn_items,
            lambda outs, metas: cn_decode.decode_batch(*outs, metas, K=100),
            lambda it: baselines.naive_centernet(*it[0], it[1])),
    }
    for name, (items, zfn, nfn) in decoders.items():
        _check_agree(name, items[0], zfn, nfn)
        naive, z1, z16 = [], [], []
        for _ in range(repeats):
            naive.append(_best_cpu_ms(nfn, items, 1))
            z1.append(_batched_cpu_ms(zfn, items, 1, 1))
            z16.append(_batched_cpu_ms(zfn, items, 16, 1))
        res[name]["postprocess"] = {"zoo_b1_ms": min(z1), "zoo_b16_ms": min(z16), "naive_ms": min(naive),
                                    "speedup_b1": min(naive) / min(z1), "speedup_b16": min(naive) / min(z16)}
    return res


def _check_agree(name: str, item, zfn, nfn) -> None:
    """The baseline and zoo must give the same top detection (else the comparison is meaningless)."""
    det = zfn(*_as_batch([item]))[0]
    ref = nfn(item)
    if name == "centernet 512":
        rows = [(r[4], r[:4]) for rows in ref.values() for r in rows]
        top = max(rows, key=lambda r: r[0])
        ok = np.isclose(top[0], det.scores[0]) and np.allclose(top[1], det.boxes[0], atol=1e-2)
    elif name == "centerface ascend 800":
        ok = np.isclose(ref[0][4], det.scores[0]) and np.allclose(ref[0][:4], det.boxes[0], atol=1e-2)
    else:
        ok = len(ref) == len(det.scores) and (not ref or np.allclose(ref[0][0], det.boxes[0], atol=1e-2))
    if not ok:
        raise AssertionError(f"{name}: the baseline and zoo disagree on the first image")
