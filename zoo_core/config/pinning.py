"""Per-job devices and cores for sweep jobs, on every launcher (``pin.*`` in the run config).

In a multirun, each job is pinned before its stage runs (:func:`pinned_job`):

* **device** (``device_id``; the ``acl`` backend's ``backend.device_id`` follows it), first match wins:

  1. NPUs the scheduler gave the job, read from its environment: ``ASCEND_RT_VISIBLE_DEVICES``
     (set by Ray for a task given ``resources={"NPU": n}``, or by a cluster's Slurm task prolog).
     The runtime renumbers visible devices from 0, so the job uses *index* ``SLURM_LOCALID % n``
     (0 for a one-task job). Else ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS`` (a cluster that declares its
     NPUs as gres ``gpu``): physical ids, not renumbered; the job uses ``ids[SLURM_LOCALID % n]``.
  2. ``pin.devices``: job *k* (``hydra.job.num``) gets ``devices[k % len(devices)]``.

* **threads** for onnxruntime (``backend.intra_op_threads``) and torch (``backend.threads``);
  ``num_workers`` is capped at ``threads - 1`` (the job's main process uses one share):

  1. ``pin.jobs`` set: ``max(1, cores // pin.jobs)`` (``cores`` = ``pin.cores`` or the CPUs this
     process may run on);
  2. a launcher that reserves CPUs per job: Ray's ``ray.remote.num_cpus`` (Ray's default for a task
     is 1), submitit's ``cpus_per_task``; a Slurm job without ``cpus_per_task`` gets the CPUs of its
     allocation (its affinity mask);
  3. a launcher that runs several jobs at once on this machine: ``max(1, cores // jobs)``, where ``jobs``
     is joblib's ``n_jobs`` (at most the sweep's number of jobs) or, for submitit's local launcher, which
     starts every job at once, the sweep's number of jobs. ``zoo run -m`` counts the sweep's jobs
     (:func:`sweep_job_count`) and passes the count to them in :data:`SWEEP_JOBS_ENV`.

  The job's process also gets that many threads for OpenCV and (when loaded) torch, and
  ``OMP_NUM_THREADS`` for the processes it starts.

Keys given explicitly on the command line are never changed. Single runs are not pinned.

Launchers such as Ray run several jobs one after another in one worker process. Everything pinning
changes in the process (environment variables, OpenCV and torch thread counts) is put back when the
job ends, so nothing carries from one job into the next.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from omegaconf import OmegaConf, open_dict

log = logging.getLogger("zoo")

#: Environment variables a pinned job sets for itself (and restores at its end).
PINNED_ENV = ("OMP_NUM_THREADS",)
#: Environment variable in which ``zoo run -m`` tells the sweep's jobs how many jobs the sweep has.
SWEEP_JOBS_ENV = "ZOO_SWEEP_JOBS"


def sweep_job_count(overrides: list[str]) -> int | None:
    """How many jobs Hydra's basic sweeper makes of the command line's ``overrides`` (the product of the
    sweeps' lengths); None when it cannot tell without the config (a ``glob`` or interval sweep)."""
    jobs = planned_jobs(overrides)
    return None if jobs is None else len(jobs)


def planned_jobs(overrides: list[str]) -> list[list[str]] | None:
    """The task overrides of each job Hydra's basic sweeper makes of the command line's ``overrides``, in
    job-number order (``hydra.*`` and flags left out); None when it cannot tell without the config."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = [o for o in overrides if "=" in o and not o.startswith("-")
            and not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        parsed = OverridesParser.create().parse_overrides(task)
        [batch] = BasicSweeper.split_arguments(parsed, None)
        return [list(job) for job in batch]
    except Exception:  # Hydra reports a bad override itself; this plan is only a hint
        return None


def _sweep_jobs(env: Mapping[str, str]) -> int | None:
    v = str(env.get(SWEEP_JOBS_ENV, "")).strip()
    return int(v) if v.isdigit() and int(v) > 0 else None


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, which SLURM and taskset restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _target(launcher_cfg) -> str:
    return str((launcher_cfg or {}).get("_target_", ""))


def parallel_jobs(launcher_cfg, cores: int, env: Mapping[str, str] | None = None) -> int:
    """How many jobs the launcher runs at once on this machine: joblib's ``n_jobs`` (its semantics; at
    most the sweep's jobs), submitit's local launcher all the sweep's jobs (:data:`SWEEP_JOBS_ENV`), else 1."""
    total = _sweep_jobs(os.environ if env is None else env)
    target = _target(launcher_cfg)
    if "JoblibLauncher" in target:
        n = int(launcher_cfg.get("n_jobs", -1) or -1)
        n = n if n > 0 else max(1, cores + 1 + n)
        return min(n, total) if total else n
    if target.endswith("submitit_launcher.LocalLauncher"):
        return total or 1
    return 1


def is_ray(launcher_cfg) -> bool:
    cfg = launcher_cfg or {}
    return "RayLauncher" in _target(cfg) or ("ray" in cfg and not _target(cfg))


def launcher_cpus_per_job(launcher_cfg) -> int | None:
    """CPUs a launcher reserves per job: Ray's ``ray.remote.num_cpus`` (default 1), submitit's
    ``cpus_per_task``; None for launchers that reserve nothing."""
    cfg = launcher_cfg or {}
    if is_ray(cfg):
        n = ((cfg.get("ray") or {}).get("remote") or {}).get("num_cpus")
        return int(n) if n else 1
    n = cfg.get("cpus_per_task")
    return int(n) if n else None


def explicit_keys(task_overrides) -> set[str]:
    """Config keys set on the command line (``a.b=1``, ``+a.b=1``, ``++a.b=1``)."""
    keys = set()
    for o in task_overrides or []:
        key = str(o).split("=", 1)[0].lstrip("+~")
        keys.add(key)
    return keys


def parse_device_list(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; like the Ascend runtime, reading stops at the first entry that
    is not a device number."""
    ids = []
    for part in str(text).split(","):
        if not part.isdigit():
            break
        ids.append(int(part))
    return ids


def local_rank(env: Mapping[str, str]) -> int:
    """The task's rank on its node: ``SLURM_LOCALID`` under Slurm, 0 otherwise."""
    v = str(env.get("SLURM_LOCALID", "")).strip()
    return int(v) if v.isdigit() else 0


def given_devices(env: Mapping[str, str]) -> tuple[list[int], bool, str] | None:
    """NPUs the scheduler gave this job: ``(ids, renumbered, variable)``; None when it gave none.

    ``renumbered`` is True for ``ASCEND_RT_VISIBLE_DEVICES``: the runtime then addresses the
    visible devices as 0..n-1.
    """
    for name, renumbered in (("ASCEND_RT_VISIBLE_DEVICES", True), ("SLURM_STEP_GPUS", False),
                             ("SLURM_JOB_GPUS", False)):
        ids = parse_device_list(str(env.get(name, "")).strip())
        if ids:
            return ids, renumbered, name
    return None


def device_for_job(pin, job_num: int, env: Mapping[str, str]) -> tuple[int, str] | None:
    """The device id job ``job_num`` should use and where it came from; None to leave it alone."""
    given = given_devices(env)
    if given:
        ids, renumbered, name = given
        k = local_rank(env) % len(ids)
        if renumbered:
            return k, f"{name}={env[name]}: physical {ids[k]}"
        return ids[k], f"{name}={env[name]}"
    devices = list(pin.get("devices") or [])
    if devices:
        return int(devices[job_num % len(devices)]), f"pin.devices[{job_num % len(devices)}]"
    return None


def threads_for_job(pin, launcher_cfg, env: Mapping[str, str] | None = None) -> int | None:
    """Threads the job may use (see the module doc), or None to leave the libraries' defaults."""
    cores = int(pin.get("cores") or 0) or available_cores()
    if pin.get("jobs"):
        return max(1, cores // int(pin.get("jobs")))
    per_job = launcher_cpus_per_job(launcher_cfg)
    if per_job:
        return per_job
    if "SlurmLauncher" in _target(launcher_cfg):
        return cores
    jobs = parallel_jobs(launcher_cfg, cores, env)
    return max(1, cores // jobs) if jobs > 1 else None


def plan(cfg, job_num: int, launcher_cfg, task_overrides, env: Mapping[str, str] | None = None) -> dict:
    """The config values pinning would set for job ``job_num`` (only keys not given explicitly)."""
    env = os.environ if env is None else env
    pin = cfg.get("pin") or {}
    if not bool(pin.get("enabled", True)):
        return {}
    given = explicit_keys(task_overrides)
    out: dict = {}
    if not ({"device_id", "backend.device_id"} & given):
        device = device_for_job(pin, job_num, env)
        if device is not None:
            out["device_id"] = device[0]
    threads = threads_for_job(pin, launcher_cfg, env)
    if threads:
        backend = cfg.get("backend") or {}
        for key in ("intra_op_threads", "threads"):
            if key in backend and f"backend.{key}" not in given:
                out[f"backend.{key}"] = threads
        if "num_workers" not in given:
            out["num_workers"] = min(int(cfg.get("num_workers", 0)), threads - 1)
    return out


def apply(cfg, hydra_cfg, env: Mapping[str, str] | None = None) -> dict:
    """Pin the current multirun job's config (``hydra_cfg`` is ``HydraConfig.get()``); returns what was set."""
    env = os.environ if env is None else env
    job_num = int(hydra_cfg.job.num)
    changes = plan(cfg, job_num, hydra_cfg.get("launcher"), hydra_cfg.overrides.task, env)
    if not changes:
        return changes
    with open_dict(cfg):
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value, merge=False)
    device = device_for_job(cfg.get("pin") or {}, job_num, env) if "device_id" in changes else None
    log.info("job %s pinned: %s%s", job_num, ", ".join(f"{k}={v}" for k, v in changes.items()),
             f" (device from {device[1]})" if device else "")
    return changes


class ProcessState:
    """What a pinned job changes in its process: the :data:`PINNED_ENV` variables and the thread
    counts of OpenCV and (if loaded) torch. ``capture()`` then ``restore()`` puts them back."""

    def __init__(self) -> None:
        self.env: dict[str, str | None] = {}
        self.cv2_threads: int | None = None
        self.torch_threads: int | None = None
        self.torch_loaded = False

    @classmethod
    def capture(cls) -> ProcessState:
        s = cls()
        s.env = {k: os.environ.get(k) for k in PINNED_ENV}
        cv2 = sys.modules.get("cv2")
        s.cv2_threads = cv2.getNumThreads() if cv2 is not None else None
        torch = sys.modules.get("torch")
        s.torch_loaded = torch is not None
        s.torch_threads = torch.get_num_threads() if torch is not None else None
        return s

    def restore(self) -> None:
        for k, v in self.env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cv2 = sys.modules.get("cv2")
        if cv2 is not None and self.cv2_threads is not None:
            cv2.setNumThreads(self.cv2_threads)
        torch = sys.modules.get("torch")
        if torch is not None:
            if self.torch_threads is not None:
                torch.set_num_threads(self.torch_threads)
            elif str(self.env.get("OMP_NUM_THREADS") or "").isdigit():
                # loaded during the job: back to the default it would have had (OMP_NUM_THREADS)
                torch.set_num_threads(int(str(self.env["OMP_NUM_THREADS"])))


def set_process_threads(threads: int) -> None:
    """Give this process ``threads`` threads: ``OMP_NUM_THREADS`` (for processes it starts and
    libraries loaded later), OpenCV, and torch when it is loaded."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


@contextmanager
def pinned_job(cfg, hydra_cfg, env: Mapping[str, str] | None = None) -> Iterator[dict]:
    """Pin the current multirun job (config and process) for the duration of the block; undo the
    process-wide changes at its end, even when the job fails. Yields the config changes."""
    saved = ProcessState.capture()
    try:
        changes = apply(cfg, hydra_cfg, env)
        pin = cfg.get("pin") or {}
        threads = threads_for_job(pin, hydra_cfg.get("launcher"), env) if bool(pin.get("enabled", True)) else None
        if threads:
            set_process_threads(threads)
        yield changes
    finally:
        saved.restore()


def allow_nested_spawn() -> None:
    """Let a job running inside a loky worker (joblib launcher) start ``spawn`` process pools.

    loky makes ``"loky"`` the worker's default start method; a ``spawn`` child then fails to
    re-create it and dies at start-up. The job's own pools use the standard ``spawn`` method.
    """
    if multiprocessing.get_start_method(allow_none=True) == "loky":
        multiprocessing.set_start_method("spawn", force=True)
