"""Host capacity, the floor, busy ratios and the long run (issue 16's definitions).

* **Host capacity**: steady img/s (first to last device call, ``perf.json``
  ``steady_throughput_img_s``) of ``zoo run stage=eval backend=replay backend.device_latency_ms=0
  num_workers=2`` on the enlarged set: the rate at which the host feeds an infinitely fast device.
* **Floor**: the same images through the irreducible host work in a tight loop, in as many processes as
  there are cores: ``cv2.imread`` + the model's letterbox warp, plus for float inputs the normalise +
  CHW done with OpenCV's own per-channel arithmetic (``cv2.split`` + one ``cv2.addWeighted`` per
  channel into the CHW plane); nothing more for AIPP's uint8.
* **Busy ratio** at a device latency ``L`` per call: steady img/s / (batch / L), with the device
  emulated at 0.9 x the host capacity measured in the same run; the **whole-wall** ratio uses
  images / the stream's whole wall time instead (first fill and last drain included; the workers
  start before the stream, while the dataset is listed and the backend opens).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .bench_overlap import ReplaySet, prepare, replay_run

#: mean/std (BGR) of both models (CenterFace ascend and CenterNet use COCO's).
_MEAN_BGR = (0.40789654, 0.44719302, 0.47026115)
_STD_BGR = (0.28863828, 0.27408164, 0.27809835)


@dataclass
class Setup:
    key: str                 # short name used in results.json
    label: str
    rs: ReplaySet
    batch: int
    extra: list[str] = field(default_factory=list)
    floor: str | None = None  # floor mode (None: no floor for this setup)
    busy: bool = False        # one of the six busy-ratio setups


def setups(work: Path, n_images: int) -> list[Setup]:
    """The bench setups on ``n_images``-image replay sets (built under ``work`` once)."""
    sc, sc608, asc, cn = prepare(work, n_images)
    return [
        Setup("starclouds_serial_b1", "centerface starclouds b1, num_workers=0", sc, 1, ["num_workers=0"]),
        Setup("starclouds_b1", "centerface starclouds b1", sc, 1, busy=True),
        Setup("starclouds608_b16", "centerface starclouds 608x800 b16", sc608, 16, busy=True),
        Setup("ascend_aipp_b1", "centerface ascend 800 aipp (uint8) b1", asc, 1, ["model.aipp=true"], "ascend_aipp"),
        Setup("ascend_aipp_b16", "centerface ascend 800 aipp (uint8) b16", asc, 16, ["model.aipp=true"],
              "ascend_aipp"),
        Setup("ascend_float_b1", "centerface ascend 800 float b1", asc, 1, [], "ascend_float", busy=True),
        Setup("ascend_float_b1_w1", "centerface ascend 800 float b1, num_workers=1", asc, 1, ["num_workers=1"]),
        Setup("ascend_float_b16", "centerface ascend 800 float b16", asc, 16, [], "ascend_float", busy=True),
        Setup("centernet_b1", "centernet 512 b1", cn, 1, [], "centernet", busy=True),
        Setup("centernet_b16", "centernet 512 b16", cn, 16, [], "centernet", busy=True),
    ]


def floor_images(work: Path, mode: str, n_images: int) -> list[str]:
    """The image files of the set a floor mode runs on (the same files the capacity runs read)."""
    if mode == "centernet":
        from zoo_core.datasets.coco import SAMPLE_IMAGE_DIR, ensure_coco_sample

        return [str(p) for p in sorted((ensure_coco_sample(work / "coco", n_images=n_images, seed=0)
                                        / SAMPLE_IMAGE_DIR).glob("*.jpg"))]
    return [str(p) for p in sorted((work / f"wider_{n_images}" / "WIDER_val" / "images").rglob("*.jpg"))]


# -- the floor: runs in spawned processes ---------------------------------------------------------

def _floor_init() -> None:
    import cv2

    cv2.setNumThreads(1)


def _floor_chunk(args: tuple[str, list[str]]) -> tuple[int, float, float]:
    """One process's share: (images, wall s, CPU s) of imread + warp (+ normalise/CHW)."""
    import cv2
    import numpy as np

    from zoo_core.api.geometry import get_affine_transform, letterbox_center_scale

    mode, paths = args
    size = 512 if mode == "centernet" else 800
    mean, std = np.asarray(_MEAN_BGR, np.float64), np.asarray(_STD_BGR, np.float64)
    alpha = [float(1.0 / (255.0 * s)) for s in std]
    beta = [float(-m / s) for m, s in zip(mean, std, strict=True)]
    t0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        img = cv2.imread(p)
        h, w = img.shape[:2]
        c, s = letterbox_center_scale(h, w)
        m = get_affine_transform(np.asarray(c, np.float32), s, (size, size))
        warped = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR)
        if mode != "ascend_aipp":
            chw = np.empty((3, size, size), np.float32)
            for ch, plane in enumerate(cv2.split(warped)):
                cv2.addWeighted(plane, alpha[ch], plane, 0.0, beta[ch], dst=chw[ch], dtype=cv2.CV_32F)
    return len(paths), time.perf_counter() - t0, time.process_time() - c0


class FloorPool:
    """``cores`` warm spawned processes for the floor loops."""

    def __init__(self, procs: int | None = None):
        self.procs = procs or os.cpu_count() or 1
        self.pool = mp.get_context("spawn").Pool(self.procs, initializer=_floor_init)
        self.pool.map(_floor_chunk, [("ascend_aipp", [])] * self.procs)  # imports done before timing

    def rate(self, mode: str, paths: list[str]) -> dict:
        chunks = [(mode, paths[i::self.procs]) for i in range(self.procs)]
        t0 = time.perf_counter()
        res = self.pool.map(_floor_chunk, chunks, chunksize=1)
        wall = time.perf_counter() - t0
        n = sum(r[0] for r in res)
        return {"img_s": n / max(r[1] for r in res), "img_s_incl_dispatch": n / wall,
                "cpu_ms_per_img": 1000 * sum(r[2] for r in res) / n}

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


# -- replay runs -----------------------------------------------------------------------------------

def capacity_run(work: Path, s: Setup, tag: str) -> dict:
    workers = [] if any(e.startswith("num_workers=") for e in s.extra) else ["num_workers=2"]
    perf = replay_run(work, s.rs, s.batch, 0.0, tag, [*workers, *s.extra], score=False)
    return {"img_s": perf["steady_throughput_img_s"], "wall_img_s": perf["throughput_img_s"],
            "pre_cpu_ms": perf["host_preprocess_ms_per_img"], "post_ms": perf["postprocess_ms_per_img"],
            "parent_cpu_ms": perf.get("parent_cpu_ms_per_img", float("nan")),
            "in_place": perf.get("inputs_in_place", 0), "images": perf["images"]}


def busy_run(work: Path, s: Setup, device_img_s: float, tag: str, rs: ReplaySet | None = None,
             images: int | None = None) -> dict:
    """One run with the device emulated at ``device_img_s``: busy and whole-wall ratios (on the first
    ``images`` of the set, default all)."""
    lat_ms = 1000.0 * s.batch / device_img_s
    limit = [f"dataset.limit={images}"] if images else []
    perf = replay_run(work, rs or s.rs, s.batch, lat_ms, tag, ["num_workers=2", *s.extra, *limit], score=False)
    return {"busy": perf["steady_throughput_img_s"] / device_img_s,
            "whole_wall": perf["throughput_img_s"] / device_img_s, "latency_ms": lat_ms,
            "first_input_s": perf["first_input_s"], "images": perf["images"], "wall_s": perf["wall_s"]}


def alternate(rounds: int, jobs: list[tuple[str, Callable[[], dict]]],
              progress: Callable[[str, dict], None]) -> dict[str, list[dict]]:
    """Run every job once per round, in order, ``rounds`` times (side by side, alternated)."""
    out: dict[str, list[dict]] = {name: [] for name, _ in jobs}
    for _ in range(rounds):
        for name, fn in jobs:
            r = fn()
            r["load_avg"] = list(os.getloadavg())
            out[name].append(r)
            progress(name, r)
    return out
