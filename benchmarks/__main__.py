"""``python -m benchmarks [PART ...]`` (= ``make bench``): issue 16's performance targets, one table.

Parts (default: all but ``extra``, in this order): ``host`` (host capacity and the floor, alternated),
``busy`` (busy ratio at 0.9 x host capacity, the six setups), ``long`` (whole-wall ratio on a
2,000-image run; each busy and long run right after a capacity run of its setup, in the host part's
schedule when it runs too, and measured against that capacity), ``memory`` (peak RSS 50 vs 500
images, intermediate bytes), ``wider`` (WIDER eval vs the per-image reference), ``perf``
(``stage=perf`` overhead), ``startup`` (``zoo list``, evaluate without torch). ``issue5`` (``make
bench-issue5``, run on its own: it would take the default run past issue 16's 6 minutes) measures issue 5's
targets the default parts do not: postprocess >= 5x and preprocess no slower than the per-image baselines,
COCO's default evaluator the faster one with the same stats, CenterNet's ONNX Runtime export no slower than
torch eager.

Every figure is the median of >= 3 runs alternated with the runs it is compared to, shown with its
min-max and the load average at the end of each run. Ratios only (never absolute wall-clock
asserts). Results go to ``benchmarks/results.json`` and the generated part of ``BENCHMARKS.md``
(between the ``bench:begin``/``bench:end`` markers; the hand-written text around it is kept). Exit
status 1 when a target fails (each failed target is named), 2 on a benchmark error. ``issue5``'s rows go
to their own section of ``BENCHMARKS.md`` (``bench-issue5`` markers) and to the ``issue5`` key of
``results.json``; a run of either kind keeps what the other wrote.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.json"
BEGIN, END = "<!-- bench:begin (written by `make bench`; edit outside these markers) -->", "<!-- bench:end -->"
ISSUE5_BEGIN = "<!-- bench-issue5:begin (written by `make bench-issue5`; edit outside these markers) -->"
ISSUE5_END = "<!-- bench-issue5:end -->"
DEFAULT_PARTS = ("host", "busy", "long", "memory", "wider", "perf", "startup")
#: parts run only when named: their rows, results and section are kept apart from the default run's
SEPARATE_PARTS = ("issue5",)
ALL_PARTS = (*DEFAULT_PARTS, *SEPARATE_PARTS)
#: issue 5's goals for the targets the ``issue5`` part measures (ratios: baseline time / zoo's time)
POSTPROCESS_MIN_SPEEDUP = 5.0
PREPROCESS_MIN_SPEEDUP = 1.0
COCO_MAX_STAT_DIFF = 1e-12
CENTERNET_MIN_TORCH_OVER_ORT = 1.0
#: images per busy-ratio run: the steady ratio (first to last device call) needs no more, and 18 runs of
#: 480 would cost ~15 s of the 6-minute budget
BUSY_IMAGES = 360
LONG_SETUP = "starclouds_b1"
#: How many cores a part keeps busy on a quiet 2-core machine (for the quiet wall-time estimate from CPU
#: time): the pipeline parts run 2 workers + the parent (their per-run start-up is one process, hence < 2);
#: the per-image WIDER reference and ``zoo list`` are one process.
PART_PARALLELISM = {"host": 1.7, "busy": 1.7, "long": 1.8, "memory": 1.7, "wider": 1.0, "perf": 1.0,
                    "startup": 1.0, "issue5": 1.0}


def cpu_s() -> float:
    """CPU seconds of this process and its reaped children (every run the bench starts is reaped)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


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
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": numpy.__version__,
            "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__, "platform": platform.platform(),
            "load_avg_start": [round(x, 2) for x in os.getloadavg()]}


def figure(values: list[float], loads: list[list[float]] | None = None) -> dict:
    """median, min, max of ``values`` (+ the 1-minute load average of each run)."""
    out = {"median": statistics.median(values), "min": min(values), "max": max(values),
           "runs": [round(v, 4) for v in values]}
    if loads:
        out["load_avg_1m"] = [round(x[0], 2) for x in loads]
    return out


def fmt(f: dict, digits: int = 3, unit: str = "") -> str:
    if len(f["runs"]) == 1:
        return f"{f['median']:.{digits}f}{unit} (1 run)"
    return f"{f['median']:.{digits}f}{unit} [{f['min']:.{digits}f}-{f['max']:.{digits}f}]"


class Report:
    """Targets (PASS/FAIL rows), figures (results.json) and notes (BENCHMARKS.md)."""

    def __init__(self) -> None:
        self.part: str | None = None  # the part being run: each row is kept with it
        self.rows: list[dict] = []
        self.figures: dict[str, dict] = {}
        self.notes: dict[str, list[str]] = {}

    def target(self, name: str, measured: str, goal: str, ok: bool, figure_key: str | None = None) -> None:
        verdict = "PASS" if ok else "FAIL"
        self.rows.append({"target": name, "measured": measured, "goal": goal, "verdict": verdict,
                          "figure": figure_key, "part": self.part})
        print(f"  => {name:<52} {measured:<44} {goal:<14} {verdict}", flush=True)

    def note(self, part: str, text: str) -> None:
        self.notes.setdefault(part, []).append(text)

    @property
    def failed(self) -> list[str]:
        return [r["target"] for r in self.rows if r["verdict"] != "PASS"]


def progress(total: int) -> Callable[[str, dict], None]:
    state = {"n": 0}

    def show(name: str, r: dict) -> None:
        state["n"] += 1
        main = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                         if k in ("img_s", "busy", "whole_wall", "cpu_ms_per_img"))
        print(f"  [{state['n']:>2}/{total}] {name:<44} {main}  (load {r['load_avg'][0]:.2f})", flush=True)
    return show


class Bench:
    def __init__(self, work: Path, images: int, long_images: int, rounds: int, report: Report):
        self.work, self.images, self.long_images, self.rounds, self.rep = work, images, long_images, rounds, report
        self.capacity: dict[str, dict] = {}
        self.parts: tuple[str, ...] = ()
        self._reference: subprocess.Popen | None = None
        self._calibrated: dict[str, list[dict]] = {}  # busy and long runs the host part already made

    # -- host capacity and floor ------------------------------------------------------------------
    def host(self) -> None:
        from .bench_capacity import FloorPool, alternate, capacity_run, floor_images, setups

        sets = setups(self.work, self.images)
        modes = sorted({s.floor for s in sets if s.floor})
        paths = {m: floor_images(self.work, m, self.images) for m in modes}
        with_busy, with_long = "busy" in self.parts, "long" in self.parts
        long_setup = self._long_setup() if with_long else None
        pool = FloorPool()
        try:
            jobs: list = []
            for s in sets:  # busy and long runs right after the capacity run they are measured against
                follow = [("busy", s, None)] if with_busy and s.busy else []
                if long_setup is not None and s.key == long_setup.key:
                    follow.append(("long", long_setup, 0))
                if follow:
                    jobs += self._calibrated_jobs(s, follow)
                else:
                    jobs.append((f"capacity {s.key}", (lambda s=s: capacity_run(self.work, s, f"cap_{s.key}"))))
            jobs += [(f"floor {m}", (lambda m=m: pool.rate(m, paths[m]))) for m in modes]
            print(f"host capacity and floor: {len(sets)} setups + {len(modes)} floors x {self.rounds} rounds, "
                  f"{self.images} images each" + (", each busy and long run right after its setup's capacity run"
                                                  if with_busy or with_long else ""), flush=True)
            res = alternate(self.rounds, jobs, progress(self.rounds * len(jobs)))
        finally:
            pool.close()
        self._calibrated = {k: v for k, v in res.items() if k.split()[0] in ("busy", "long")}
        res = {k: v for k, v in res.items() if k not in self._calibrated}
        rep = self.rep
        for name, runs in res.items():
            rep.figures[name.replace(" ", ":")] = {
                **figure([r["img_s"] for r in runs], [r["load_avg"] for r in runs]),
                "unit": "img/s", **({"cpu_ms_per_img": figure([r["cpu_ms_per_img"] for r in runs])}
                                    if "cpu_ms_per_img" in runs[0] else
                                    {"preprocess_cpu_ms_per_img": figure([r["pre_cpu_ms"] for r in runs]),
                                     "postprocess_ms_per_img": figure([r["post_ms"] for r in runs]),
                                     "parent_cpu_ms_per_img": figure([r["parent_cpu_ms"] for r in runs]),
                                     "inputs_in_place": [r["in_place"] for r in runs]})}
        for s in sets:
            self.capacity[s.key] = rep.figures[f"capacity:{s.key}"]
        for s in sets:
            if not s.floor:
                continue
            cap = res[f"capacity {s.key}"]
            flo = res[f"floor {s.floor}"]
            ratios = [c["img_s"] / f["img_s"] for c, f in zip(cap, flo, strict=True)]
            f = figure(ratios)
            f["cpu"] = figure([fl["cpu_ms_per_img"] / (c["pre_cpu_ms"] + c["parent_cpu_ms"])
                               for c, fl in zip(cap, flo, strict=True)])
            rep.figures[f"capacity_over_floor:{s.key}"] = f
            rep.target(f"capacity/floor {s.label}", fmt(f) + f" ({rep.figures[f'capacity:{s.key}']['median']:.0f} / "
                       f"{rep.figures[f'floor:{s.floor}']['median']:.0f} img/s)", ">= 0.85", f["median"] >= 0.85,
                       f"capacity_over_floor:{s.key}")
        ser = res["capacity starclouds_serial_b1"]
        par = res["capacity starclouds_b1"]
        f = figure([p["img_s"] / (2 * q["img_s"]) for p, q in zip(par, ser, strict=True)])
        rep.figures["starclouds_over_2x_serial"] = f
        rep.target("capacity starclouds b1 / (2 x serial)", fmt(f) + f" ({self.capacity['starclouds_b1']['median']:.0f}"
                   f" vs serial {self.capacity['starclouds_serial_b1']['median']:.0f} img/s)", ">= 0.90",
                   f["median"] >= 0.90, "starclouds_over_2x_serial")
        rep.note("host", "capacity (img/s, steady, device_latency_ms=0, num_workers=2; median [min-max]); CPU-ms "
                         "per image of the workers (preprocess, copy into shared memory, pool IPC) and of the "
                         "parent process (all its threads), the postprocess thread's ms/img, and the CPU ratio "
                         "floor CPU-ms / (workers + parent CPU-ms), which a loaded machine distorts less:")
        for s in sets:
            c = rep.figures[f"capacity:{s.key}"]
            cpu = rep.figures.get(f"capacity_over_floor:{s.key}", {}).get("cpu")
            rep.note("host", f"{s.label}: {fmt(c, 1)} img/s; workers "
                             f"{c['preprocess_cpu_ms_per_img']['median']:.2f} + parent "
                             f"{c['parent_cpu_ms_per_img']['median']:.2f} CPU-ms/img (postprocess "
                             f"{c['postprocess_ms_per_img']['median']:.2f} ms/img); inputs in place "
                             f"{c['inputs_in_place']}" + (f"; CPU ratio {fmt(cpu)}" if cpu else "")
                             + f"; load {c['load_avg_1m']}")
        for key in ("ascend_aipp_b1", "ascend_float_b1"):
            c = rep.figures[f"capacity:{key}"]
            w, par = c["preprocess_cpu_ms_per_img"]["median"], c["parent_cpu_ms_per_img"]["median"]
            card = {name: {"rate": rate, "cores": rate * (w + par) / 1000, "parent_cores": rate * par / 1000,
                           "workers": math.ceil(rate * w / 1000)}
                    for name, rate in (("310 card", 367.0), ("310P3 CenterFace bs1", 439.9))}
            # the 1-worker capacity is measured for float input only (one setup fewer in every round);
            # AIPP's card figures come from its own CPU-ms per image, as the float ones do
            w1 = rep.figures.get(f"capacity:{key}_w1")
            one = w1["median"] if w1 else None
            scaling = c["median"] / one if one else None
            rep.figures[f"feeding:{key}"] = {"worker_cpu_ms": w, "parent_cpu_ms": par,
                                             "capacity_1_worker": one, "capacity_2_workers": c["median"],
                                             "scaling_1_to_2": scaling, **card}
            measured = (f"capacity {one:.0f} img/s with 1 worker, {c['median']:.0f} with 2 ({scaling:.2f}x)"
                        if one and scaling else f"capacity {c['median']:.0f} img/s with 2 workers")
            rep.note("host", f"feeding a card ({key}): {measured}; workers {w:.2f} + parent {par:.2f} CPU-ms/img, "
                             "so: " + "; ".join(
                f"{n} at {v['rate']:.0f} img/s needs {v['cores']:.1f} cores of this machine's kind "
                f"({v['workers']} workers; the parent process alone {v['parent_cores']:.2f} cores)"
                for n, v in card.items()))
        for m in modes:
            fl = rep.figures[f"floor:{m}"]
            rep.note("host", f"floor {m} ({os.cpu_count()} processes): {fmt(fl, 1)} img/s, "
                             f"{fl['cpu_ms_per_img']['median']:.2f} CPU-ms/img; load {fl['load_avg_1m']}")

    # -- busy ratio at 0.9 x capacity -------------------------------------------------------------
    def _calibrated_jobs(self, s, follow: list) -> list[tuple[str, Callable[[], dict]]]:
        """A capacity run of setup ``s``, then each ``(tag, setup, images)`` of ``follow`` with the device at
        0.9 x the capacity just measured (``images``: None = the busy part's count, 0 = all of the setup's):
        the VM's speed drifts by tens of percent over minutes, so each run is measured against the capacity of
        the same moment, not a median taken earlier."""
        from .bench_capacity import busy_run, capacity_run

        measured: dict[str, float] = {}

        def capacity() -> dict:
            r = capacity_run(self.work, s, f"cap_{s.key}")
            measured["img_s"] = r["img_s"]
            return r

        def calibrated(tag: str, setup, images: int | None) -> Callable[[], dict]:
            n = min(BUSY_IMAGES, self.images) if images is None else images

            def run() -> dict:
                rate = 0.9 * measured["img_s"]
                r = busy_run(self.work, setup, rate, f"{tag}_{s.key}", images=n or None)
                r["device_img_s"] = rate
                return r
            return run

        return [(f"capacity {s.key}", capacity),
                *((f"{tag} {s.key}", calibrated(tag, setup, images)) for tag, setup, images in follow)]

    def _long_setup(self):
        from .bench_capacity import Setup, setups
        from .bench_overlap import prepare

        base = next(s for s in setups(self.work, self.images) if s.key == LONG_SETUP)
        rs = prepare(self.work, self.long_images, ("starclouds",))[0]
        return Setup(base.key, base.label, rs, base.batch, base.extra)

    def busy(self) -> None:
        from .bench_capacity import alternate, setups

        busy = [s for s in setups(self.work, self.images) if s.busy]
        n = min(BUSY_IMAGES, self.images)
        res = self._calibrated
        if not any(k.startswith("busy ") for k in res):  # the part alone: its own capacity runs
            jobs = [job for s in busy for job in self._calibrated_jobs(s, [("busy", s, None)])]
            print(f"busy ratio at 0.9 x host capacity: {len(busy)} setups x {self.rounds} rounds, each right after "
                  f"a capacity run", flush=True)
            res = alternate(self.rounds, jobs, progress(self.rounds * len(jobs)))
        else:
            print(f"busy ratio at 0.9 x host capacity: {len(busy)} setups x {self.rounds} rounds (run in the host "
                  f"part, each right after its capacity run)", flush=True)
        for s in busy:
            runs = res[f"busy {s.key}"]
            f = figure([r["busy"] for r in runs], [r["load_avg"] for r in runs])
            rate = figure([r["device_img_s"] for r in runs])
            f["device_img_s"] = rate
            f["whole_wall"] = figure([r["whole_wall"] for r in runs])
            self.rep.figures[f"busy:{s.key}"] = f
            self.rep.target(f"busy ratio {s.label}", fmt(f) + f" @ {fmt(rate, 0)} img/s", ">= 0.95",
                            f["median"] >= 0.95, f"busy:{s.key}")
            self.rep.note("busy", f"{s.label}: device {fmt(rate, 1)} img/s (0.9 x the capacity run just before; "
                                  f"{1000 * s.batch / rate['median']:.1f} ms/call) -> busy {fmt(f)}, whole-wall "
                                  f"{fmt(f['whole_wall'])} on {n} images; load {f['load_avg_1m']}")

    # -- whole-wall ratio on a long run -----------------------------------------------------------
    def long(self) -> None:
        from .bench_capacity import alternate, setups

        s = self._long_setup()
        res = self._calibrated.get(f"long {s.key}")
        if res is None:  # the part alone: its own capacity runs
            print(f"long run: {self.long_images} images, {s.label}, device at 0.9 x the capacity run just before "
                  f"x {self.rounds}", flush=True)
            base = next(b for b in setups(self.work, self.images) if b.key == s.key)
            jobs = self._calibrated_jobs(base, [("long", s, 0)])
            res = alternate(self.rounds, jobs, progress(self.rounds * len(jobs)))[f"long {s.key}"]
        else:
            print(f"long run: {self.long_images} images, {s.label} x {self.rounds} (run in the host part, each "
                  f"right after its capacity run)", flush=True)
        f = figure([r["whole_wall"] for r in res], [r["load_avg"] for r in res])
        f["busy"] = figure([r["busy"] for r in res])
        rate = figure([r["device_img_s"] for r in res])
        f["device_img_s"] = rate
        self.rep.figures["long:whole_wall"] = f
        self.rep.target(f"whole-wall ratio, {self.long_images} img {s.label}", fmt(f) + f" @ {fmt(rate, 0)} img/s",
                        ">= 0.90", f["median"] >= 0.90, "long:whole_wall")
        self.rep.note("long", f"{self.long_images} images of {s.label} with the device at 0.9 x the capacity "
                              f"run just before ({fmt(rate, 1)} img/s): whole-wall {fmt(f)}, busy {fmt(f['busy'])}, "
                              f"stream wall "
                              f"{statistics.median(r['wall_s'] for r in res):.1f} s, first input after "
                              f"{statistics.median(r['first_input_s'] for r in res):.2f} s; load {f['load_avg_1m']}")

    # -- kept-what-holds checks -------------------------------------------------------------------
    def memory(self) -> None:
        from .bench_overlap import prepare, replay_run

        if "wider" in self.parts:
            # peak RSS needs no timing: the WIDER part's slow per-image reference (timed by CPU time) runs
            # in its own process meanwhile
            self._reference = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_wider_eval",
                                                "--reference-json", "--reference-repeats", "1"],
                                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
        small = prepare(self.work, 50, ("starclouds",))[1]
        big = prepare(self.work, 500, ("starclouds",))[1]
        rss: dict[int, list[float]] = {50: [], 500: []}
        disk = 0
        n = 0
        print(f"memory: peak RSS 50 vs 500 images (starclouds 608x800 b16), alternated x {self.rounds}", flush=True)
        for _ in range(self.rounds):
            for rs in (small, big):
                p = replay_run(self.work, rs, 16, 0.0, f"mem_{rs.n_images}")
                rss[rs.n_images].append(p["peak_rss_mib"])
                disk += p["disk_bytes_outputs"]
                n += 1
                print(f"  [{n:>2}/{2 * self.rounds}] {rs.n_images} images: {p['peak_rss_mib']:.0f} MiB "
                      f"(load {os.getloadavg()[0]:.2f})", flush=True)
        f50, f500 = figure(rss[50]), figure(rss[500])
        diff = abs(f500["median"] - f50["median"]) / f50["median"]
        self.rep.figures["memory:peak_rss_mib_50"], self.rep.figures["memory:peak_rss_mib_500"] = f50, f500
        self.rep.target("peak RSS 50 vs 500 img (b16)", f"{fmt(f50, 0)} vs {fmt(f500, 0)} MiB ({100 * diff:.1f}%)",
                        "<= 10%", diff <= 0.10, "memory:peak_rss_mib_500")
        self.rep.target("intermediate bytes on disk (save_outputs=false)", f"{disk} B", "0", disk == 0)

    def wider(self) -> None:
        from .bench_wider_eval import run as wider_run

        ref = None
        if self._reference is not None:
            print(f"WIDER eval: vectorised x {self.rounds}; the per-image reference ran alongside the memory part",
                  flush=True)
            out, _ = self._reference.communicate()
            if self._reference.returncode != 0:
                raise RuntimeError(f"the WIDER reference process failed ({self._reference.returncode})")
            ref = json.loads(out.strip().splitlines()[-1])
        else:
            print(f"WIDER eval: vectorised x {self.rounds}, per-image reference x 1 (about a minute)", flush=True)
        w = wider_run(repeats=self.rounds, reference_repeats=1, reference_result=ref)
        fv = figure(w["vectorised_runs_cpu_s"])
        self.rep.figures["wider:vectorised_s"] = fv
        self.rep.figures["wider:reference_s"] = figure(w["reference_runs_cpu_s"])
        self.rep.figures["wider:speedup"] = {"median": w["speedup"]}
        self.rep.target("WIDER eval (483k boxes) vs per-image reference",
                        f"{w['speedup']:.1f}x ({fmt(fv, 2, ' CPU-s')} vs {w['reference_s']:.1f} CPU-s), "
                        f"APs identical={w['ap_identical']}", ">= 20x, identical",
                        w["speedup"] >= 20 and w["ap_identical"], "wider:speedup")

    def perf(self) -> None:
        from .bench_infer import perf_overhead

        pairs = 2 * self.rounds - 1
        print(f"stage=perf vs bare session.run, {pairs} pairs in alternating order", flush=True)
        p = perf_overhead(self.work, repeats=pairs)
        inter = p["interleaved"]
        f = figure(inter["pairs"])
        runs = figure(p["overhead_runs"])
        self.rep.figures["perf:overhead"] = {**f, "zoo_block_ms": figure(inter["zoo_blocks_ms"]),
                                             "bare_block_ms": figure(inter["bare_blocks_ms"]),
                                             "process_pairs": runs, "zoo_ms": figure(p["zoo_runs_ms"]),
                                             "bare_ms": figure(p["bare_runs_ms"]),
                                             "zoo_mean_ms": figure(p["zoo_runs_mean_ms"]),
                                             "bare_mean_ms": figure(p["bare_runs_mean_ms"])}
        self.rep.target("stage=perf overhead vs bare session.run",
                        f"{100 * p['overhead']:+.1f}% (median call {inter['zoo_ms']:.2f} vs {inter['bare_ms']:.2f} ms, "
                        f"{len(inter['pairs'])} pairs of blocks {100 * f['min']:+.1f}..{100 * f['max']:+.1f}%; "
                        f"in separate processes {100 * p['runs_overhead']:+.1f}%, {len(p['overhead_runs'])} pairs "
                        f"{100 * runs['min']:+.1f}..{100 * runs['max']:+.1f}%)",
                        "<= +3%", p["overhead"] <= 0.03,
                        "perf:overhead")

    def startup(self) -> None:
        from .bench_overlap import prepare, replay_run
        from .bench_startup import evaluate_without_torch, zoo_list_runs

        runs = zoo_list_runs(self.work, self.rounds)
        f = figure(runs)
        self.rep.figures["startup:zoo_list_s"] = f
        self.rep.target("zoo list", fmt(f, 2, " s"), "< 1 s", f["median"] < 1.0, "startup:zoo_list_s")
        rs = prepare(self.work, 50, ("starclouds",))[0]
        det = self.work / "runs" / "evaluate_src" / "detections"
        if not (det.parent / "eval" / "perf.json").is_file():
            replay_run(self.work, rs, 1, 0.0, "evaluate_src")
        e = evaluate_without_torch(self.work, rs.args, det)
        self.rep.target("stage=evaluate imports torch", f"{e['torch_imported']} ({e['modules']} modules)", "False",
                        not e["torch_imported"])

    def issue5(self) -> None:
        from .bench_coco_eval import run as coco_run
        from .bench_host import run as host_run
        from .bench_infer import centernet_ort_vs_torch
        from .bench_overlap import prepare
        from .bench_pool import run as pool_run

        prepare(self.work, self.images)
        print(f"issue 5: host CPU-ms per image vs the per-image baselines (best of {self.rounds}, interleaved)",
              flush=True)
        host = host_run(self.work, repeats=self.rounds)
        print(f"issue 5: COCO evaluators (best of {self.rounds} each)", flush=True)
        coco = coco_run(self.work, repeats=self.rounds)
        print("issue 5: CenterNet 512 stage=perf, onnxruntime vs torch eager", flush=True)
        cn = centernet_ort_vs_torch(self.work)
        issue5_targets(self.rep, host, coco, cn)
        pool = pool_run(self.rounds)
        self.rep.note("issue5", "process pool, parent per no-op task (CPU / wall us; not a target): "
                                "ProcessPoolExecutor " + ", ".join(f"{c:.0f}/{w:.0f}" for c, w in pool["executor"])
                                + "; zoo's ProcessPool " + ", ".join(f"{c:.0f}/{w:.0f}" for c, w in pool["procpool"]))


def issue5_targets(rep: Report, host: dict, coco: dict, cn: dict) -> None:
    """Issue 5's target 2 (per model), target 4's COCO half and target 5's CenterNet half as rows of ``rep``,
    from :func:`benchmarks.bench_host.run`, :func:`benchmarks.bench_coco_eval.run` and
    :func:`benchmarks.bench_infer.centernet_ort_vs_torch` results."""
    for name, r in host.items():
        pre, post = r["preprocess"], r["postprocess"]
        key = name.replace(" ", "_")
        rep.figures[f"issue5:postprocess:{key}"] = post
        rep.figures[f"issue5:preprocess:{key}"] = pre
        worst = min(post["speedup_b1"], post["speedup_b16"])
        rep.target(f"postprocess {name} vs per-image baseline",
                   f"b1 {post['speedup_b1']:.1f}x, b16 {post['speedup_b16']:.1f}x ({post['zoo_b1_ms']:.2f} / "
                   f"{post['zoo_b16_ms']:.2f} vs {post['naive_ms']:.2f} CPU-ms/img)",
                   f">= {POSTPROCESS_MIN_SPEEDUP:g}x (b1 and b16)", worst >= POSTPROCESS_MIN_SPEEDUP,
                   f"issue5:postprocess:{key}")
        rep.target(f"preprocess {name} vs naive", f"{pre['speedup']:.2f}x ({pre['zoo_ms']:.2f} vs "
                   f"{pre['naive_ms']:.2f} CPU-ms/img)", f">= {PREPROCESS_MIN_SPEEDUP:g}x (no slower)",
                   pre["speedup"] >= PREPROCESS_MIN_SPEEDUP, f"issue5:preprocess:{key}")
    rep.figures["issue5:coco"] = coco
    same = coco["max_abs_diff"] <= COCO_MAX_STAT_DIFF
    rep.target("COCO evaluator: the default is the faster, same stats",
               f"auto={coco['auto']}, fastest={coco['fastest']} (pycocotools / faster-coco-eval "
               f"{coco['ratio']:.2f}x), {coco['n_bit_identical']}/{coco['n_metrics']} stats bit-identical, max "
               f"diff {coco['max_abs_diff']:.1e}", f"auto = fastest, diff <= {COCO_MAX_STAT_DIFF:g}",
               coco["auto"] == coco["fastest"] and same, "issue5:coco")
    rep.figures["issue5:centernet_ort_vs_torch"] = cn
    top = ", ".join(f"{op} {100 * v:.0f}%" for op, v in list(cn.get("op_share", {}).items())[:3])
    rep.target("CenterNet 512 ORT export vs torch eager",
               f"torch / ORT {cn['ratio']:.2f}x ({cn['ort_ms']:.0f} vs {cn['torch_ms']:.0f} ms/img)"
               + (f"; ORT time by op: {top}" if top else ""), f">= {CENTERNET_MIN_TORCH_OVER_ORT:g}x (no slower)",
               cn["ratio"] >= CENTERNET_MIN_TORCH_OVER_ORT, "issue5:centernet_ort_vs_torch")


METHODS = {
    "host": "**Host capacity**: steady img/s (`perf.json` `steady_throughput_img_s`: images / time from the start "
            "of the first device call to the end of the last) of `zoo run stage=eval backend=replay "
            "backend.device_latency_ms=0 num_workers=2` on {n} images (copies of the bundled samples under new "
            "stems; recorded outputs: the real Star-Clouds ONNX outputs, synthetic head maps of the right shapes "
            "for CenterFace-ascend 800x800 and CenterNet 512x512, hard-linked per stem in ais_bench layout). "
            "**Floor**: the same files through `cv2.imread` + the letterbox `cv2.warpAffine` (800² / 512²) + "
            "for float inputs `cv2.split` and one `cv2.addWeighted(..., dtype=CV_32F)` per channel into the CHW "
            "plane (nothing more for AIPP's uint8), in a tight loop in one warm process per core, "
            "img/s = images / the slowest process's loop time. Each capacity run and each floor run alternate "
            "within a round; every ratio is taken per round and the median of the rounds is shown with its "
            "min-max. Star-Clouds (natural size, no floor defined) is compared with 2 x its serial "
            "capacity (`num_workers=0`).",
    "busy": "**Busy ratio**: steady img/s / (batch / L) with the replay device emulated at L = batch / (0.9 x the "
            "host capacity of the capacity run of the same setup made just before, in the same round: the VM's "
            "speed drifts over minutes), on the first 360 images of the capacity set; whole-wall = images / the "
            "stream's whole wall time (first fill and last drain included; the workers start before the stream, "
            "while the dataset is listed and the backend opens) / the same device rate. Capacity and busy runs "
            "pass `stage.score=false` (the stream is the same; no figure includes "
            "the scoring after it).",
    "long": "The whole-wall ratio of one {long}-image run of the fastest setup (Star-Clouds b1: its fixed "
            "start-up costs weigh most) with the device at 0.9 x the host capacity of the capacity run made "
            "just before it, in the same round.",
    "memory": "Peak RSS of the `zoo run` subprocess (/usr/bin/time -f %M), replay backend at zero latency, "
              "Star-Clouds 608x800 batch 16, 50 vs 500 images alternated; bytes written under the run's outputs/ "
              "with save_outputs=false.",
    "wider": "zoo's vectorised WIDER evaluation vs the per-image reference on the full WIDER val ground truth with "
             "the golden 483k-box prediction set (median of 3 / 1 run), APs compared for equality. Both are "
             "single-process and CPU-bound and are timed by CPU time, so the reference can run in its own "
             "process while the memory part (peak RSS, no timing) runs.",
    "perf": "`zoo run stage=perf` (CenterFace 480x640, batch 1, 40 loops, 5 warm-up) and a bare "
            "InferenceSession.run loop over the same ONNX file in a fresh process, 2 x rounds - 1 pairs run back "
            "to back in alternating order (each run's median call; shown for the record). The verdict: one process "
            "composes the same run config and opens zoo's backend as `stage=perf` does (the same file, zoo's "
            "session options) next to a bare default InferenceSession on that file, and times 12 pairs of blocks "
            "of 10 calls on the same input, alternating which side goes first (each block's first call untimed: "
            "the other session's threads were just running); overhead = the median over the pairs of zoo's block "
            "median / the bare block median - 1. Runs in separate processes a minute apart differed by up to 1.8x "
            "on this shared VM (round 7: pairs from -14 to +47 %), which blocks a few hundred ms long cancel.",
    "startup": "Wall time of `zoo list` (median of 5 fresh processes); `python -X importtime -m zoo_core.cli run "
               "stage=evaluate detections=...` must list no torch module.",
    "issue5": "`python -m benchmarks issue5` (`make bench-issue5`). **Host cost** (issue 5, target 2): CPU time "
              "(`time.process_time`) per image in this process, best of {rounds} interleaved passes each side. "
              "Preprocess: zoo's `read_image` + the plugin's preprocess vs `cv2.imread` + `cv2.warpAffine` + a "
              "float64 normalise (Star-Clouds: `cv2.resize` + cast), on the 24 bundled WIDER images (CenterFace) and "
              "48 generated COCO images (CenterNet). Postprocess: the plugin decoder on batches of 1 and 16 "
              "(stacked before the clock starts, as a device returns them) vs `benchmarks/baselines.py` (torch per "
              "image with one thread, per-point Python loops, Python-loop NMS; checked to give zoo's top detection) "
              "on recorded Star-Clouds outputs and synthetic CenterFace-ascend / CenterNet head maps. **COCO**: "
              "`score_coco` with pycocotools and with faster-coco-eval on 500 generated images x 100 detections, "
              "best of {rounds} each; `evaluator=auto` must resolve to the faster, the 12 stats and per-category "
              "APs equal (to 1e-12). **CenterNet**: `zoo run stage=perf` at 512x512 batch 1 with "
              "`backend=onnxruntime` (the plugin's export) and `backend=torch` (eager), best mean of 2 runs x 4 "
              "loops each, then one profiled ORT session for the time per operator type.",
}


def _table(rows: list[dict]) -> list[str]:
    lines = ["| target | measured | goal | verdict |", "|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k]).replace("|", "/") for k in ("target", "measured", "goal", "verdict"))
                     + " |")
    return lines


def _method_lines(parts, rep: Report, args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    for part in parts:
        lines += [f"#### {part}", "", METHODS[part].format(n=args.images, long=args.long_images, rounds=args.rounds),
                  ""]
        lines += [f"- {n}" for n in rep.notes.get(part, [])]
        lines.append("")
    return lines


def markdown(info: dict, rep: Report, elapsed: float, args: argparse.Namespace) -> str:
    """The generated section of the default parts' run (rows of the separate parts left out)."""
    parts = [p for p in args.parts if p not in SEPARATE_PARTS]
    lines = [BEGIN, "", "## Results of the last `make bench`", "",
             f"Parts: {', '.join(parts)}; {args.rounds} alternated rounds; suite wall time {elapsed:.0f} s.", ""]
    for k, v in info.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "The 2 cores may be shared with other jobs: the load averages say how busy they were. "
              "Figures: median [min-max] of the rounds.", ""]
    lines += _table([r for r in rep.rows if r.get("part") not in SEPARATE_PARTS])
    lines += ["", "### Methods and details", ""]
    lines += _method_lines(parts, rep, args)
    lines.append(END)
    return "\n".join(lines)


def markdown_issue5(info: dict, rep: Report, elapsed: float, args: argparse.Namespace) -> str:
    """The generated section of the ``issue5`` part's run."""
    lines = [ISSUE5_BEGIN, "", f"Last `make bench-issue5`: {elapsed:.0f} s; cpu {info.get('cpu')}, {info.get('cores')} "
             f"cores; load average {info.get('load_avg_start')} at the start, {info.get('load_avg_end')} at the end.",
             ""]
    lines += _table([r for r in rep.rows if r.get("part") == "issue5"])
    lines += ["", "How measured:", ""]
    lines += _method_lines(["issue5"], rep, args)[2:]
    lines.append(ISSUE5_END)
    return "\n".join(lines)


def write_markdown(text: str, begin: str = BEGIN, end: str = END) -> None:
    path = ROOT / "BENCHMARKS.md"
    old = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    if begin in old and end in old:
        new = old[:old.index(begin)] + text + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + text + "\n"
    path.write_text(new)


def results_json(old: dict, info: dict, rep: Report, elapsed: float, args: argparse.Namespace) -> dict:
    """``results.json`` after this run: the default parts' figures at the top level, the ``issue5`` part's under
    ``"issue5"``; whatever this run did not measure is kept from ``old``."""
    def block(rows: list[dict], figures: dict, notes: dict, parts: list[str]) -> dict:
        return {"machine": info, "parts": parts, "rounds": args.rounds, "images": args.images,
                "long_images": args.long_images, "wall_s": round(elapsed, 1), "targets": rows, "figures": figures,
                "notes": notes, "failed": [r["target"] for r in rows if r["verdict"] != "PASS"]}

    main_parts = [p for p in args.parts if p not in SEPARATE_PARTS]
    is5 = [r for r in rep.rows if r.get("part") == "issue5"]
    out = {k: v for k, v in old.items() if k != "issue5"} if not main_parts else {}
    if main_parts:
        out.update(block([r for r in rep.rows if r.get("part") != "issue5"],
                         {k: v for k, v in rep.figures.items() if not k.startswith("issue5:")},
                         {k: v for k, v in rep.notes.items() if k != "issue5"}, main_parts))
    if "issue5" in args.parts:
        out["issue5"] = block(is5, {k: v for k, v in rep.figures.items() if k.startswith("issue5:")},
                              {k: v for k, v in rep.notes.items() if k == "issue5"}, ["issue5"])
    elif "issue5" in old:
        out["issue5"] = old["issue5"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="zoo benchmark suite (issue 16)")
    parser.add_argument("parts", nargs="*", metavar="PART",
                        help=f"parts to run, of {', '.join(ALL_PARTS)} (default: {' '.join(DEFAULT_PARTS)})")
    parser.add_argument("--work", type=Path, default=None, help="keep generated data here between runs")
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--long-images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="leave results.json and BENCHMARKS.md alone")
    args = parser.parse_args()
    unknown = [p for p in args.parts if p not in ALL_PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; parts are {', '.join(ALL_PARTS)}")
    args.parts = [p for p in ALL_PARTS if p in (args.parts or DEFAULT_PARTS)]
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    rep = Report()
    t0 = time.time()
    errors = []
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(work, args.images, args.long_images, args.rounds, rep)
        bench.parts = tuple(args.parts)
        for i, part in enumerate(args.parts, 1):
            print(f"== part {i}/{len(args.parts)}: {part} ({time.time() - t0:.0f} s elapsed)", flush=True)
            rep.part = part
            w0, c0 = time.time(), cpu_s()
            try:
                getattr(bench, part)()
            except Exception as exc:
                traceback.print_exc()
                errors.append(part)
                rep.target(f"{part} (error)", f"{type(exc).__name__}: {exc}"[:120], "-", False)
            cost = {"wall_s": round(time.time() - w0, 1), "cpu_s": round(cpu_s() - c0, 1)}
            cost["quiet_wall_s_est"] = round(cost["cpu_s"] / PART_PARALLELISM[part], 1)
            info.setdefault("part_cost", {})[part] = cost
            rep.part = None
            print(f"   {part}: {cost['wall_s']} s wall, {cost['cpu_s']} CPU-s -> ~{cost['quiet_wall_s_est']} s "
                  f"on a quiet {os.cpu_count()}-core machine", flush=True)
    elapsed = time.time() - t0
    costs = info.get("part_cost", {})
    info["quiet_wall_s_est"] = round(sum(c["quiet_wall_s_est"] for c in costs.values()), 1)
    info["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    if tuple(args.parts) == DEFAULT_PARTS and args.images >= 480:
        rep.target("make bench wall time", f"{elapsed:.0f} s (quiet estimate {info['quiet_wall_s_est']:.0f} s)",
                   "<= 360 s", elapsed <= 360)
    total_cpu = sum(c["cpu_s"] for c in costs.values())
    print(f"done in {elapsed:.0f} s; load average {info['load_avg_end']}; {total_cpu:.0f} "
          f"CPU-s, i.e. ~{info['quiet_wall_s_est']:.0f} s on a quiet machine (CPU-s / each part's parallelism)")
    if not args.no_write:
        old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        RESULTS.write_text(json.dumps(results_json(old, info, rep, elapsed, args), indent=1) + "\n")
        if any(p not in SEPARATE_PARTS for p in args.parts):
            write_markdown(markdown(info, rep, elapsed, args))
        if "issue5" in args.parts:
            write_markdown(markdown_issue5(info, rep, elapsed, args), ISSUE5_BEGIN, ISSUE5_END)
        print(f"-> {RESULTS} and {ROOT / 'BENCHMARKS.md'}")
    if rep.failed:
        print("FAILED targets:\n" + "\n".join(f"  - {t}" for t in rep.failed), file=sys.stderr)
        return 2 if errors else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
