"""Where the parent process's time goes in one ``zoo run``: CPU per thread, and a cProfile per thread.

``python -m benchmarks.profile_parent [--top N] [--out FILE] -- <zoo run arguments>`` runs the
``zoo`` CLI in this process with every thread (main/device, feeder, postprocess, the process pool's
manager thread) wrapped: each gets its own ``cProfile.Profile`` and its CPU time
(``time.thread_time``) is recorded when it ends. CPU time is what survives a loaded machine; wall time
does not. The worker processes are not profiled (their CPU per image is in ``perf.json``).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import runpy
import sys
import threading
import time

_PROFILES: list[tuple[str, float, cProfile.Profile]] = []
_LOCK = threading.Lock()


def _wrap_threads() -> None:
    orig = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def bootstrap(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        prof.enable()
        try:
            orig(self)
        finally:
            prof.disable()
            with _LOCK:
                _PROFILES.append((self.name, time.thread_time(), prof))

    threading.Thread._bootstrap_inner = bootstrap  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", default=None, help="write the report here too")
    parser.add_argument("--dump", default=None, help="save each thread's pstats file in this directory")
    parser.add_argument("zoo_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    zoo_args = [a for a in args.zoo_args if a != "--"]
    _wrap_threads()
    main_prof = cProfile.Profile()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.perf_counter()
    sys.argv = ["zoo", "run", *zoo_args]
    main_prof.enable()
    try:
        runpy.run_module("zoo_core.cli", run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        main_prof.disable()
    wall = time.perf_counter() - w0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out = io.StringIO()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"parent process: wall {wall:.2f} s, CPU {cpu:.2f} s (user {r1.ru_utime - r0.ru_utime:.2f}, sys "
          f"{r1.ru_stime - r0.ru_stime:.2f}), minor faults {r1.ru_minflt - r0.ru_minflt}", file=out)
    print(f"main thread (device loop, model load, hydra): CPU {time.thread_time():.2f} s", file=out)
    for name, cpu_s, _ in sorted(_PROFILES, key=lambda p: -p[1]):
        print(f"thread {name}: CPU {cpu_s:.3f} s", file=out)
    for name, _, prof in [("main", 0.0, main_prof), *sorted(_PROFILES, key=lambda p: -p[1])]:
        if name.startswith("zoo-parent-watch"):
            continue
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        if not st.stats:  # type: ignore[attr-defined]
            continue
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            st.dump_stats(os.path.join(args.dump, f"{name}.prof"))
        st.sort_stats("tottime").print_stats(args.top)
        body = "\n".join(line for line in s.getvalue().splitlines() if line.strip())
        print(f"\n==== {name}: top {args.top} by own time\n{body}", file=out)
    text = out.getvalue()
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
