"""Per-job resource pinning for sweeps whose jobs run side by side (``pin.*`` in the run config).

In a multirun, each job gets a share of the machine so parallel jobs do not fight:

* ``device_id = pin.devices[hydra.job.num % len(pin.devices)]`` when ``pin.devices`` is set (the
  ``acl`` backend's ``backend.device_id`` follows ``device_id``);
* ``threads = max(1, cores // jobs)`` goes to ``backend.intra_op_threads`` (onnxruntime) and
  ``backend.threads`` (torch), and ``num_workers`` is capped at ``threads - 1`` (the job's main
  process uses one share), where ``jobs`` is ``pin.jobs`` or the joblib launcher's ``n_jobs`` and
  ``cores`` is ``pin.cores`` or the CPUs this process may run on. Launchers that give each job its
  own allocation (ray ``ray.remote.num_cpus``, submitit ``cpus_per_task``) set ``threads`` to it.

Keys given explicitly on the command line are never changed. Single runs are not pinned.
"""
from __future__ import annotations

import logging
import multiprocessing
import os

from omegaconf import OmegaConf, open_dict

log = logging.getLogger("zoo")


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, which SLURM and taskset restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parallel_jobs(launcher_cfg, cores: int) -> int:
    """How many jobs the launcher runs at once on this machine (joblib's ``n_jobs`` semantics)."""
    target = str((launcher_cfg or {}).get("_target_", ""))
    if "JoblibLauncher" not in target:
        return 1
    n = int(launcher_cfg.get("n_jobs", -1) or -1)
    return n if n > 0 else max(1, cores + 1 + n)


def launcher_cpus_per_job(launcher_cfg) -> int | None:
    """CPUs a remote launcher reserves per job: ray's ``ray.remote.num_cpus``, submitit's ``cpus_per_task``."""
    cfg = launcher_cfg or {}
    ray = cfg.get("ray") or {}
    n = (ray.get("remote") or {}).get("num_cpus") if ray else cfg.get("cpus_per_task")
    return int(n) if n else None


def explicit_keys(task_overrides) -> set[str]:
    """Config keys set on the command line (``a.b=1``, ``+a.b=1``, ``++a.b=1``)."""
    keys = set()
    for o in task_overrides or []:
        key = str(o).split("=", 1)[0].lstrip("+~")
        keys.add(key)
    return keys


def plan(cfg, job_num: int, launcher_cfg, task_overrides) -> dict:
    """The values pinning would set for job ``job_num`` (only keys not given explicitly)."""
    pin = cfg.get("pin") or {}
    if not bool(pin.get("enabled", True)):
        return {}
    given = explicit_keys(task_overrides)
    out: dict = {}
    devices = list(pin.get("devices") or [])
    if devices and not ({"device_id", "backend.device_id"} & given):
        out["device_id"] = int(devices[job_num % len(devices)])
    cores = int(pin.get("cores") or 0) or available_cores()
    jobs = int(pin.get("jobs") or 0) or parallel_jobs(launcher_cfg, cores)
    threads = max(1, cores // jobs) if jobs > 1 else launcher_cpus_per_job(launcher_cfg)
    if threads:
        backend = cfg.get("backend") or {}
        for key in ("intra_op_threads", "threads"):
            if key in backend and f"backend.{key}" not in given:
                out[f"backend.{key}"] = threads
        if "num_workers" not in given:
            out["num_workers"] = min(int(cfg.get("num_workers", 0)), threads - 1)
    return out


def apply(cfg, hydra_cfg) -> dict:
    """Pin the current multirun job (``hydra_cfg`` is ``HydraConfig.get()``); returns what was set."""
    changes = plan(cfg, int(hydra_cfg.job.num), hydra_cfg.get("launcher"), hydra_cfg.overrides.task)
    if not changes:
        return changes
    with open_dict(cfg):
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value, merge=False)
    log.info("job %s pinned: %s", hydra_cfg.job.num, ", ".join(f"{k}={v}" for k, v in changes.items()))
    return changes


def allow_nested_spawn() -> None:
    """Let a job running inside a loky worker (joblib launcher) start ``spawn`` process pools.

    loky makes ``"loky"`` the worker's default start method; a ``spawn`` child then fails to
    re-create it and dies at start-up. The job's own pools use the standard ``spawn`` method.
    """
    if multiprocessing.get_start_method(allow_none=True) == "loky":
        multiprocessing.set_start_method("spawn", force=True)
