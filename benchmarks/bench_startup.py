"""Target 6: ``zoo list`` wall time, and ``stage=evaluate`` on saved detections without torch.

``python -X importtime`` lists every module a process imports; the evaluate run must list no
``torch``. Wall times are taken in N fresh processes.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .datasets import bench_env


def zoo_list_runs(work: Path, repeats: int = 5) -> list[float]:
    """Wall seconds of ``zoo list`` in ``repeats`` fresh processes."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "zoo_core.cli", "list"], cwd=work, env=bench_env(work / "cache"),
                       capture_output=True, check=True)
        runs.append(time.perf_counter() - t0)
    return runs


def zoo_list_s(work: Path, repeats: int = 5) -> float:
    return min(zoo_list_runs(work, repeats))


def evaluate_without_torch(work: Path, args: list[str], detections: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "zoo_core.cli", "run", *args, "stage=evaluate",
                           f"detections={detections}", f"work_dir={work / 'runs' / 'evaluate_only'}"],
                          cwd=work, env=bench_env(work / "cache"), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    mods = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    torch_mods = [m for m in mods if m == "torch" or m.startswith("torch.")]
    return {"wall_s": wall, "modules": len(mods), "torch_imported": bool(torch_mods)}
