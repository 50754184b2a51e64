"""Benchmark: vectorised WIDER FACE evaluation vs the per-image reference implementation.

Runs both on the full WIDER FACE val ground truth (61 events, 3226 images) with the golden prediction
set ``shared/golden/widerface_eval/set1.tar.gz`` (483,426 boxes), median of N runs each, and checks that
both give the same APs. ``run()`` returns the numbers; ``python benchmarks/bench_wider_eval.py`` prints
them. The reference takes about half a minute per run.
"""
from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn, repeats: int) -> tuple[list[float], list[float], object]:
    """(wall s per run, CPU s per run, the last result)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus, out


def _load(shared: str | Path | None) -> tuple:
    from zoo_core.datasets.widerface import load_wider_gt, read_prediction_tree
    from zoo_core.testing import shared_dir

    root = Path(shared) if shared is not None else shared_dir()
    if root is None:
        raise SystemExit("shared data not found; set ZOO_SHARED_DIR")
    golden = root / "golden" / "widerface_eval"
    gt = load_wider_gt(root / "widerface_gt")
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(golden / "set1.tar.gz") as tar:
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        t0 = time.perf_counter()
        preds = read_prediction_tree(tmp, gt)
        read_s = time.perf_counter() - t0
    return golden, gt, preds, read_s


def reference(repeats: int = 1, iou_thresh: float = 0.5, shared: str | Path | None = None) -> dict:
    """Time the per-image reference alone: ``{"runs_s", "runs_cpu_s", "ap"}`` (JSON-ready)."""
    from zoo_core.datasets.widerface import evaluate_wider_reference

    _, gt, preds, _ = _load(shared)
    walls, cpus, ref = _timed(lambda: evaluate_wider_reference(preds, gt, iou_thresh), repeats)
    return {"runs_s": walls, "runs_cpu_s": cpus, "ap": {k: float(v) for k, v in ref.ap.items()}}


def run(repeats: int = 3, reference_repeats: int = 3, iou_thresh: float = 0.5,
        shared: str | Path | None = None, reference_result: dict | None = None) -> dict:
    """Time ``evaluate_wider`` and ``evaluate_wider_reference`` on the full val set (median of N each).

    The speed-up is the ratio of CPU times (both are single-process and CPU-bound, and CPU time lets
    the reference run in another process while something that needs no timing runs alongside; pass its
    :func:`reference` result as ``reference_result``). Returns seconds per implementation (wall and CPU),
    the ratio, the APs of both, the expected golden APs and the set size. ``shared`` defaults to
    ``zoo_core.testing.shared_dir()``.
    """
    from zoo_core.datasets.widerface import evaluate_wider

    golden, gt, preds, read_s = _load(shared)
    n_boxes = sum(len(s) for _, s in preds.values())
    vec_runs, vec_cpu, vec = _timed(lambda: evaluate_wider(preds, gt, iou_thresh), repeats)
    ref = reference_result or reference(reference_repeats, iou_thresh, shared)
    vec_s, ref_s = float(np.median(vec_cpu)), float(np.median(ref["runs_cpu_s"]))
    expected = json.loads((golden / "expected.json").read_text()).get(f"iou_{iou_thresh:g}")
    ap_vec = {k: float(v) for k, v in vec.ap.items()}
    return {
        "images": gt.num_images,
        "boxes": n_boxes,
        "iou_thresh": iou_thresh,
        "read_tree_s": read_s,
        "vectorised_s": vec_s,
        "vectorised_runs_s": vec_runs,
        "vectorised_runs_cpu_s": vec_cpu,
        "reference_s": ref_s,
        "reference_runs_s": ref["runs_s"],
        "reference_runs_cpu_s": ref["runs_cpu_s"],
        "speedup": ref_s / vec_s,
        "ap_vectorised": ap_vec,
        "ap_reference": ref["ap"],
        "ap_identical": ap_vec == ref["ap"],
        "ap_expected": expected,
        "repeats": {"vectorised": repeats, "reference": len(ref["runs_s"])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--reference-json", action="store_true",
                        help="time only the reference and print its result as JSON (make bench runs it alongside)")
    args = parser.parse_args()
    if args.reference_json:
        print(json.dumps(reference(args.reference_repeats, args.iou)))
        return
    res = run(args.repeats, args.reference_repeats, args.iou)
    print(f"WIDER FACE val: {res['images']} images, {res['boxes']} boxes, IoU {res['iou_thresh']:g}")
    print(f"read prediction tree : {res['read_tree_s']:.3f} s")
    print(f"vectorised           : {res['vectorised_s']:.3f} CPU-s (median of {args.repeats})")
    print(f"per-image reference  : {res['reference_s']:.3f} CPU-s (median of {args.reference_repeats})")
    print(f"speed-up             : {res['speedup']:.1f}x")
    for s in ("easy", "medium", "hard"):
        exp = res["ap_expected"][s] if res["ap_expected"] else float("nan")
        print(f"{s:<6} AP vectorised {res['ap_vectorised'][s]!r}  reference {res['ap_reference'][s]!r}  "
              f"golden {exp!r}")
    print(f"identical APs        : {res['ap_identical']}")


if __name__ == "__main__":
    main()
