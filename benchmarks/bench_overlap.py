"""Targets 1 and 3: host/device overlap with the replay backend, and peak RSS vs dataset size.

Each model gets an enlarged dataset (copies of its bundled sample under new stems) and recorded
outputs in ais_bench layout: the real Star-Clouds ONNX outputs for ``centerface`` starclouds (one
``stage=eval save_outputs=true`` run on the sample), plausible synthetic head maps of the right
shapes for the 800x800 ``ascend`` variant and for CenterNet 512x512. ``zoo run stage=eval
backend=replay`` then replays them at a fixed emulated device latency; the ratio is the end-to-end
img/s over the emulated device img/s (``batch / latency``).
"""
from __future__ import annotations

import json
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .datasets import bench_env, link_outputs, run_zoo, synthetic_heads, wider_set, write_records, zoo_cmd


@dataclass
class ReplaySet:
    name: str
    args: list[str]          # zoo run arguments selecting model, variant and dataset
    outputs: Path            # replay dir
    n_images: int


def _wider_stems(root: Path) -> dict[str, str]:
    """stem -> source stem (``<src>_r<k>``)."""
    from zoo_core.datasets.widerface import load_wider_gt

    gt = load_wider_gt(root / "ground_truth")
    return {s: s.rsplit("_r", 1)[0] for files in gt.files for s in files}


def prepare(work: Path, n_images: int,
            models: tuple[str, ...] = ("starclouds", "ascend", "centernet")) -> list[ReplaySet]:
    """Build the replay sets of ``n_images`` under ``work`` (cached between calls)."""
    env = bench_env(work / "cache")
    work.mkdir(parents=True, exist_ok=True)
    from zoo_core.datasets.widerface import ensure_sample

    sample = ensure_sample(work / "cache" / "widerface_sample")
    coco_set = None
    if "centernet" in models:  # generated in a thread while the Star-Clouds outputs are recorded below
        from concurrent.futures import ThreadPoolExecutor

        from zoo_core.datasets.coco import ensure_coco_sample

        gen = ThreadPoolExecutor(1)
        coco_set = gen.submit(ensure_coco_sample, work / "coco", n_images, 0)
        gen.shutdown(wait=False)
    sets = []
    wroot = work / f"wider_{n_images}"
    if not (wroot / "ground_truth").is_dir():
        wider_set(sample, wroot, n_images)
    stems = _wider_stems(wroot)
    wider_args = ["dataset=widerface", f"dataset.root={wroot}", f"dataset.gt_dir={wroot / 'ground_truth'}"]

    rec_sc = work / "record_starclouds"
    if not (rec_sc / "outputs").is_dir():
        run_zoo(["model=centerface", "stage=eval", "save_outputs=true", f"work_dir={rec_sc}",
                 f"dataset.root={sample}"], cwd=work, env=env)
    records = {s: sorted((rec_sc / "outputs").glob(f"{s}_*.bin")) for s in set(stems.values())}
    out = link_outputs(records, stems, work / f"replay_starclouds_{n_images}")
    sets.append(ReplaySet("centerface starclouds", ["model=centerface", *wider_args], out, n_images))
    # batching Star-Clouds needs one input size (model.input_hw); its outputs are recorded at that size
    fixed = ["model=centerface", "model.input_hw=[608,800]"]
    rec_fx = work / "record_starclouds_608x800"
    if not (rec_fx / "outputs").is_dir():
        run_zoo([*fixed, "stage=eval", "save_outputs=true", f"work_dir={rec_fx}", f"dataset.root={sample}"],
                cwd=work, env=env)
    records = {s: sorted((rec_fx / "outputs").glob(f"{s}_*.bin")) for s in set(stems.values())}
    out = link_outputs(records, stems, work / f"replay_starclouds_608x800_{n_images}")
    sets.append(ReplaySet("centerface starclouds 608x800", [*fixed, *wider_args], out, n_images))

    if "ascend" not in models:
        return sets
    shapes = [(1, 200, 200), (2, 200, 200), (2, 200, 200), (10, 200, 200)]
    srcs = sorted(set(stems.values()))
    recs = write_records({s: synthetic_heads(shapes, i, True) for i, s in enumerate(srcs[:8])},
                         work / "record_ascend")
    out = link_outputs(recs, {s: srcs[i % 8] for i, s in enumerate(sorted(stems))}, work / f"replay_ascend_{n_images}")
    sets.append(ReplaySet("centerface ascend 800", ["model=centerface", "model.variant=ascend", *wider_args],
                          out, n_images))

    if "centernet" not in models:
        return sets
    from zoo_core.datasets.coco import SAMPLE_ANN_FILE as ANN_FILE

    assert coco_set is not None
    croot = coco_set.result()
    ann = json.loads((croot / ANN_FILE).read_text())
    cstems = sorted(Path(im["file_name"]).stem for im in ann["images"])
    shapes = [(80, 128, 128), (2, 128, 128), (2, 128, 128)]
    recs = write_records({f"src{i}": synthetic_heads(shapes, 100 + i, False) for i in range(8)},
                         work / "record_centernet")
    out = link_outputs(recs, {s: f"src{i % 8}" for i, s in enumerate(cstems)}, work / f"replay_centernet_{n_images}")
    sets.append(ReplaySet("centernet 512", ["model=centernet", "dataset=coco_sample", f"dataset.root={work / 'coco'}",
                                            f"dataset.n_images={n_images}"], out, n_images))
    return sets


def replay_run(work: Path, rs: ReplaySet, batch: int, latency_ms: float, tag: str,
               extra: list[str] | None = None, score: bool = True) -> dict:
    """One ``stage=eval backend=replay`` run; returns its perf.json plus the child's peak RSS (MiB).

    ``score=False`` passes ``stage.score=false``: the stream is the same, the scoring after it (which no
    throughput figure includes) is left out, so the run ends sooner.
    """
    run_dir = work / "runs" / tag
    args = [*rs.args, "stage=eval", "backend=replay", f"outputs_dir={rs.outputs}", f"batch_size={batch}",
            f"backend.device_latency_ms={latency_ms}", f"work_dir={run_dir}", *(extra or []),
            *([] if score else ["stage.score=false"])]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", *zoo_cmd(), "run", *args], cwd=work,
                          env=bench_env(work / "cache"), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"replay run failed:\n{proc.stderr[-3000:]}")
    rss = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    perf = json.loads((run_dir / "eval" / "perf.json").read_text())
    perf["peak_rss_mib"] = rss[-1] / 1024 if rss else before / 1024
    perf["disk_bytes_outputs"] = sum(p.stat().st_size for p in (run_dir / "outputs").rglob("*")
                                     if p.is_file()) if (run_dir / "outputs").exists() else 0
    return perf


def overlap_ratio(perf: dict, batch: int, latency_ms: float, steady: bool = True) -> float:
    """e2e img/s over the emulated device's img/s; ``steady`` leaves out the time to the first input."""
    device_img_s = 1000.0 * batch / latency_ms
    key = "steady_throughput_img_s" if steady else "throughput_img_s"
    return perf[key] / device_img_s


def measure(work: Path, rs: ReplaySet, batch: int, per_image_ms: float = 10.0, goal: float = 0.95,
            tries: int = 4) -> dict:
    """Ratio at ``per_image_ms``; if below ``goal``, the device speed the host keeps up with.

    The host rate seen at ``per_image_ms`` (``ratio x device img/s``) is the first guess: the device
    is emulated at 0.97x that rate, then slowed 1.1x per try until the steady ratio reaches ``goal``.
    """
    tag = rs.name.replace(" ", "_")
    lat = per_image_ms * batch
    perf = replay_run(work, rs, batch, lat, f"{tag}_b{batch}")
    out = {"model": rs.name, "batch": batch, "latency_ms": lat, "images": rs.n_images,
           "ratio": overlap_ratio(perf, batch, lat), "ratio_e2e": overlap_ratio(perf, batch, lat, False),
           "img_s": perf["steady_throughput_img_s"], "first_input_s": perf["first_input_s"],
           "host_pre_ms": perf["host_preprocess_ms_per_img"], "post_ms": perf["postprocess_ms_per_img"]}
    if out["ratio"] >= goal:
        return out
    cap_lat = lat / (0.97 * out["ratio"])
    for _ in range(tries):
        perf = replay_run(work, rs, batch, cap_lat, f"{tag}_b{batch}_cap")
        r = overlap_ratio(perf, batch, cap_lat)
        out.update(capacity_latency_ms=cap_lat, capacity_ratio=r, capacity_img_s=1000.0 * batch / cap_lat)
        if r >= goal:
            break
        cap_lat *= 1.1
    return out
