"""Benchmark data: enlarged WIDER / COCO-format sets and recorded outputs in ais_bench layout.

Images are copies of the bundled samples under new stems (the JPEG decode is real work for every
image). Recorded outputs are written once per distinct source and linked under every stem that
reuses it, so a 500-image replay set costs a few files on disk.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np


def zoo_cmd() -> list[str]:
    """The ``zoo`` command line of this interpreter."""
    return [sys.executable, "-m", "zoo_core.cli"]


def run_zoo(args: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``zoo run <args>`` in ``cwd`` with output captured; raises with stderr on failure."""
    proc = subprocess.run([*zoo_cmd(), "run", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"zoo run {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def bench_env(cache: Path) -> dict:
    env = dict(os.environ)
    env["ZOO_CACHE_DIR"] = str(cache)
    env.setdefault("CI", "1")
    # the test venv registers a fixture plugin that wraps every model's postprocess: a user's
    # install has no such plugin, so the benchmark leaves it out
    env.setdefault("ZOO_DISABLE_PLUGINS", "fixture_observer")
    return env


def wider_set(src_root: Path, dst: Path, n_images: int) -> Path:
    """A WIDER-format set of ``n_images`` built from the sample at ``src_root`` (copies under new stems).

    Returns ``dst``; its ground truth (in ``dst/ground_truth``) repeats the source boxes.
    """
    from zoo_core.datasets.widerface import load_wider_gt, write_wider_gt

    gt = load_wider_gt(src_root / "ground_truth")
    src = [(e, ev, j) for e, ev in enumerate(gt.events) for j in range(len(gt.files[e]))]
    events = list(gt.events)
    files: list[list[str]] = [[] for _ in events]
    boxes: list[list[np.ndarray]] = [[] for _ in events]
    keep = {k: [[] for _ in events] for k in gt.keep}
    img_root = dst / "WIDER_val" / "images"
    for n in range(n_images):
        e, ev, j = src[n % len(src)]
        stem = f"{gt.files[e][j]}_r{n // len(src)}"
        out = img_root / ev / f"{stem}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_root / "WIDER_val" / "images" / ev / f"{gt.files[e][j]}.jpg", out)
        files[e].append(stem)
        boxes[e].append(np.asarray(gt.boxes[e][j]))
        for k in gt.keep:
            keep[k][e].append(np.asarray(gt.keep[k][e][j]).reshape(-1).astype(np.int64))
    write_wider_gt(dst / "ground_truth", events, files, boxes, keep)
    return dst


def link_outputs(records: dict[str, list[Path]], stems_to_source: dict[str, str], out_dir: Path) -> Path:
    """ais_bench layout ``out_dir/<stem>_<i>.bin`` for every stem, hard-linked to its source's record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stem, source in stems_to_source.items():
        for i, p in enumerate(records[source]):
            target = out_dir / f"{stem}_{i}.bin"
            if target.exists():
                target.unlink()
            try:
                os.link(p, target)
            except OSError:
                os.symlink(p, target)
    return out_dir


def synthetic_heads(shapes: list[tuple[int, ...]], seed: int, sigmoid_first: bool,
                    n_peaks: int = 40) -> list[np.ndarray]:
    """Plausible raw head maps: a low-level heatmap with ``n_peaks`` blobs, small regressions.

    ``sigmoid_first``: the first map holds post-sigmoid scores (CenterFace) instead of logits.
    """
    rng = np.random.default_rng(seed)
    heat_shape = shapes[0]
    c, h, w = heat_shape
    logits = rng.normal(-6.0, 1.0, heat_shape).astype(np.float32)
    for _ in range(n_peaks):
        ch, y, x = int(rng.integers(c)), int(rng.integers(2, h - 2)), int(rng.integers(2, w - 2))
        logits[ch, y - 1:y + 2, x - 1:x + 2] += np.float32(rng.uniform(3, 8))
    first = (1 / (1 + np.exp(-logits))).astype(np.float32) if sigmoid_first else logits
    rest = [rng.normal(0.0, 0.3, s).astype(np.float32) for s in shapes[1:]]
    return [first, *rest]


def write_records(arrays_by_source: dict[str, list[np.ndarray]], rec_dir: Path) -> dict[str, list[Path]]:
    """Write each source's arrays once as raw ``.bin`` and return their paths."""
    from zoo_core.api.aisbench import write_bin

    rec_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for src, arrays in arrays_by_source.items():
        paths = []
        for i, a in enumerate(arrays):
            p = rec_dir / f"{src}_{i}.bin"
            write_bin(p, a)
            paths.append(p)
        out[src] = paths
    return out
