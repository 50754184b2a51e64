"""Per-job devices and cores on every engine, and no carry-over between jobs that share a process.

The device each job used is recorded by the ``acl`` contract double (``fixtures/fake_ascend``:
``$FAKE_ACL_LOG``, one line per InferSession with the logical and physical device), the process state
by the fixture observer plugin (``$ZOO_FIXTURE_OBSERVER_LOG``: pid, OMP_NUM_THREADS, OpenCV and torch
threads when the stage finished).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from zoo_core.config import pinning

RAY = ("hydra/launcher=ray", "+hydra.launcher.ray.init.include_dashboard=false")
SHARDS = ("dataset.num_shards=3", "dataset.shard=range(0,3)")


def lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture
def ascend(zoo, fixtures_dir, fixture_onnx, tmp_path):
    """An environment with the fake atc/ais_bench, and the fixture model converted to an OM (batch 1)."""
    fake = fixtures_dir / "fake_ascend"
    env = zoo.env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(fake),
                  FAKE_ACL_LOG=str(tmp_path / "acl.jsonl"), ZOO_FIXTURE_OBSERVER_LOG=str(tmp_path / "observer.jsonl"))
    model_dir = tmp_path / "model"
    zoo.ok("run", "model=fixture", "stage=convert", f"model_file={fixture_onnx}", f"model_dir={model_dir}", env=env)
    assert (model_dir / "fixture_bs1.om").is_file()
    return env, model_dir


def pinned_device(job_dir: Path) -> tuple[int, str]:
    log = "\n".join(p.read_text() for p in job_dir.glob("*/zoo.log"))  # <job>/<stage>/zoo.log
    m = re.search(r"pinned: device_id=(\d+).*\(device from (.*)\)", log)
    assert m, log
    return int(m.group(1)), m.group(2)


# -- in-process: the plan for each engine and scheduler environment ---------------------------------------

RAY_CFG = {"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
           "ray": {"init": {"address": None}, "remote": {}}}
SLURM_CFG = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
             "cpus_per_task": 24}
BASIC = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
LOCAL_CFG = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
             "cpus_per_task": None}


def acl_cfg(**pin):
    return OmegaConf.create({"backend": {"name": "acl", "device_id": "${device_id}"}, "num_workers": 2,
                             "device_id": 0, "pin": {"enabled": True, "devices": None, "cores": 8, "jobs": None,
                                                     **pin}})


@pytest.mark.parametrize("launcher, env, job, pin, expected", [
    # Ray gave the task NPU 3: the runtime renumbers it to 0
    (RAY_CFG, {"ASCEND_RT_VISIBLE_DEVICES": "3"}, 5, {"devices": [0, 1]}, (0, "physical 3")),
    # a Slurm task prolog exported two devices; task 1 of the node takes the second (index 1)
    (SLURM_CFG, {"ASCEND_RT_VISIBLE_DEVICES": "4,6", "SLURM_LOCALID": "1"}, 0, {}, (1, "physical 6")),
    # NPUs declared as gres gpu: physical ids, not renumbered, picked by SLURM_LOCALID
    (SLURM_CFG, {"SLURM_JOB_GPUS": "2,3,4,5", "SLURM_LOCALID": "2"}, 0, {}, (4, "SLURM_JOB_GPUS=2,3,4,5")),
    (SLURM_CFG, {"SLURM_STEP_GPUS": "7", "SLURM_JOB_GPUS": "6,7"}, 3, {"devices": [0]}, (7, "SLURM_STEP_GPUS=7")),
    # nothing given by the scheduler: pin.devices round-robin by job number
    (LOCAL_CFG, {}, 4, {"devices": [4, 5, 6]}, (5, "pin.devices[1]")),
    (RAY_CFG, {"ASCEND_RT_VISIBLE_DEVICES": ""}, 2, {"devices": [4, 5, 6]}, (6, "pin.devices[2]")),
    (LOCAL_CFG, {}, 0, {}, None),
])
def test_device_for_each_engine_and_scheduler(launcher, env, job, pin, expected):
    cfg = acl_cfg(**pin)
    got = pinning.device_for_job(cfg.pin, job, env)
    assert (got if expected is None else (got[0], got[1][-len(expected[1]):])) == expected
    plan = pinning.plan(cfg, job, launcher, [], env)
    assert plan.get("device_id") == (None if expected is None else expected[0])
    assert "device_id" not in pinning.plan(cfg, job, launcher, ["device_id=2"], env)


@pytest.mark.parametrize("launcher, pin, expected", [
    (RAY_CFG, {}, 1),                                                      # Ray's default: 1 CPU per task
    ({**RAY_CFG, "ray": {"init": {}, "remote": {"num_cpus": 4}}}, {}, 4),
    (SLURM_CFG, {}, 24),
    ({**SLURM_CFG, "cpus_per_task": None}, {"cores": 6}, 6),               # the job's whole allocation
    (LOCAL_CFG, {}, None),
    ({**LOCAL_CFG, "cpus_per_task": 2}, {}, 2),
    (RAY_CFG, {"jobs": 2, "cores": 6}, 3),                                 # pin.jobs wins
    (RAY_CFG, {"jobs": 16, "cores": 6}, 1),                                # more jobs than cores: 1 each, never 0
])
def test_threads_for_each_engine(launcher, pin, expected):
    cfg = OmegaConf.create({"backend": {"name": "onnxruntime", "intra_op_threads": 0}, "num_workers": 2,
                            "device_id": 0, "pin": {"enabled": True, "devices": None, "cores": 8, "jobs": None,
                                                    **pin}})
    assert pinning.threads_for_job(cfg.pin, launcher) == expected
    plan = pinning.plan(cfg, 0, launcher, [], {})
    assert plan.get("backend.intra_op_threads") == expected
    if expected:
        assert plan["num_workers"] == min(2, expected - 1)


JOBLIB_CFG = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}


@pytest.mark.parametrize("launcher, sweep_jobs, expected", [
    (LOCAL_CFG, "3", 2),        # submitit starts all 3 jobs at once: 8 cores // 3
    (LOCAL_CFG, "12", 1),
    (LOCAL_CFG, "1", None),     # one job: nothing to share
    (LOCAL_CFG, None, None),    # count unknown (a glob sweep): left alone, as before
    ({**LOCAL_CFG, "cpus_per_task": 2}, "3", 2),  # an explicit reservation wins
    (JOBLIB_CFG, None, 2),      # n_jobs=4
    (JOBLIB_CFG, "2", 4),       # only 2 jobs in the sweep: 2 run at once, not 4
    ({**JOBLIB_CFG, "n_jobs": -6}, None, 2),  # joblib's n_jobs=-6 on 8 CPUs runs 8 + 1 - 6 = 3 at once
    (BASIC, "3", None),         # one after another
])
def test_threads_shared_by_the_jobs_running_at_once(launcher, sweep_jobs, expected):
    """Before: submitit_local jobs kept intra_op_threads=0 and num_workers=2 each, all started at once."""
    cfg = OmegaConf.create({"backend": {"name": "onnxruntime", "intra_op_threads": 0}, "num_workers": 2,
                            "device_id": 0, "pin": {"enabled": True, "devices": None, "cores": 8, "jobs": None}})
    env = {} if sweep_jobs is None else {pinning.SWEEP_JOBS_ENV: sweep_jobs}
    assert pinning.threads_for_job(cfg.pin, launcher, env) == expected
    plan = pinning.plan(cfg, 0, launcher, [], env)
    assert plan.get("backend.intra_op_threads") == expected
    if expected:
        assert plan["num_workers"] == min(2, expected - 1)


@pytest.mark.parametrize("n_jobs, expected", [(-1, 8), (-2, 7), (-8, 1), (-20, 1), (3, 3), (None, 8)])
def test_joblib_negative_n_jobs_counts_back_from_all_cpus(n_jobs, expected):
    """joblib: n_jobs=-1 uses all CPUs, -2 all but one, ... (n_cpus + 1 + n_jobs), at least 1; unset is -1."""
    assert pinning.parallel_jobs({**JOBLIB_CFG, "n_jobs": n_jobs}, 8, {}) == expected


@pytest.mark.parametrize("overrides, jobs", [
    (["model=fixture", "stage=eval"], 1),
    (["dataset.num_shards=3", "dataset.shard=range(0,3)"], 3),
    (["batch_size=1,2,4", "backend.intra_op_threads=1,2", "hydra/launcher=submitit_local"], 6),
    (["a=choice(1,2)", "b=shuffle(range(3))", "c=[1,2]"], 6),  # a list value is one value
    (["model=glob(*)"], None),     # a glob needs the config's options to count: unknown
    (["lr=interval(0,1)"], None),  # not a basic-sweeper sweep
])
def test_sweep_job_count_is_the_basic_sweepers_product(overrides, jobs):
    assert pinning.sweep_job_count(overrides) == jobs


def test_zoo_run_tells_the_jobs_how_many_jobs_the_sweep_has(zoo, tmp_path):
    """The wiring: ``zoo run -m`` puts the count in the environment every launcher passes to its jobs."""
    code = ("import os, sys\n"
            "from hydra.core.plugins import Plugins\n"
            "Plugins.instance()\n"
            "from hydra._internal.core_plugins.basic_launcher import BasicLauncher\n"
            "def launch(self, job_overrides, initial_job_idx):\n"
            "    print('jobs in env:', os.environ.get('ZOO_SWEEP_JOBS'), len(job_overrides))\n"
            "    raise RuntimeError('stop here')\n"
            "BasicLauncher.launch = launch\n"
            "from zoo_core.cli import main\n"
            "sys.exit(main(['run', '-m', 'model=fixture', 'stage=perf', 'batch_size=1,2', 'dataset.limit=1,2,3',\n"
            f"               'hydra.sweep.dir={tmp_path / 'sweep'}']))\n")
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=zoo.env(), cwd=zoo.cwd)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "jobs in env: 6 6" in p.stdout
    assert "ZOO_SWEEP_JOBS" not in os.environ


def test_parse_device_list_stops_like_the_ascend_runtime():
    assert pinning.parse_device_list("1,2,3") == [1, 2, 3]
    assert pinning.parse_device_list("1, 2,3") == [1]
    assert pinning.parse_device_list("") == []


def test_pinned_job_restores_the_process_even_when_the_job_fails(monkeypatch):
    import cv2

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    cv2.setNumThreads(2)
    cfg = OmegaConf.create({"backend": {"name": "onnxruntime", "intra_op_threads": 0}, "num_workers": 2,
                            "device_id": 0, "pin": {"enabled": True, "devices": [9], "cores": 3, "jobs": 1}})
    hc = OmegaConf.create({"job": {"num": 0}, "launcher": BASIC, "overrides": {"task": []}})
    with pytest.raises(RuntimeError), pinning.pinned_job(cfg, hc, env={}) as changes:
        assert changes == {"device_id": 9, "backend.intra_op_threads": 3, "num_workers": 2}
        assert os.environ["OMP_NUM_THREADS"] == "3" and cv2.getNumThreads() == 3
        raise RuntimeError("job failed")
    assert os.environ["OMP_NUM_THREADS"] == "7" and cv2.getNumThreads() == 2
    assert cfg.device_id == 9  # the job's own config keeps its pinning


# -- on the engines, with the contract doubles -------------------------------------------------------------

@pytest.mark.slow
def test_ray_jobs_use_the_npus_ray_gave_them(zoo, ascend, tmp_path):
    """Ray schedules NPUs as a resource and sets ASCEND_RT_VISIBLE_DEVICES per task; each job opens its
    device as index 0 of what it sees, which is the NPU Ray gave it."""
    env, model_dir = ascend
    sweep = tmp_path / "sweep"
    rc, out, err = zoo("run", "-m", *RAY, "+hydra.launcher.ray.init.num_cpus=3",
                       "+hydra.launcher.ray.init.resources={NPU:3}", "+hydra.launcher.ray.remote.resources={NPU:1}",
                       "model=fixture", "stage=eval", "backend=acl", f"model_dir={model_dir}", *SHARDS,
                       f"hydra.sweep.dir={sweep}", env=env)
    assert rc == 0, out + err
    sessions = lines(tmp_path / "acl.jsonl")
    assert len(sessions) == 3
    given = set()
    for k in range(3):
        device_id, source = pinned_device(sweep / str(k))
        m = re.fullmatch(r"ASCEND_RT_VISIBLE_DEVICES=(\d): physical (\d)", source)
        assert m and m.group(1) == m.group(2) and device_id == 0
        given.add(m.group(1))
    assert given <= {"0", "1", "2"}
    assert all(s["device_id"] == 0 and s["visible"] in given and s["physical"] == int(s["visible"])
               for s in sessions)
    assert json.loads((sweep / "merged" / "metrics.json").read_text())["images"] == 12


@pytest.mark.slow
def test_one_ray_worker_runs_differently_pinned_jobs_without_carry_over(zoo, tmp_path, fixture_onnx):
    """Ray reuses a worker for later jobs (one CPU: one worker). Job 1 is pinned (3 threads, NPU 5), jobs 0
    and 2 are not: job 2 must find the worker as job 0 left it, not as job 1 did."""
    obs = tmp_path / "observer.jsonl"
    sweep = tmp_path / "sweep"
    rc, out, err = zoo("run", "-m", *RAY, "+hydra.launcher.ray.init.num_cpus=1", "model=fixture", "stage=eval",
                       "backend=torch", "pin.enabled=false,true,false", "pin.jobs=1", "pin.cores=3",
                       "pin.devices=[5]", f"hydra.sweep.dir={sweep}", ZOO_FIXTURE_OBSERVER_LOG=str(obs))
    assert rc == 0, out + err
    seen = {Path(e["run_dir"]).parent.name: e for e in lines(obs) if e["hook"] == "zoo_stage_finished"}
    assert sorted(seen) == ["0", "1", "2"]
    assert len({e["pid"] for e in seen.values()}) == 1, "the three jobs did not share one Ray worker"
    state = {k: (e["device_id"], e["OMP_NUM_THREADS"], e["cv2_threads"], e["torch_threads"]) for k, e in seen.items()}
    assert state["1"] == (5, "3", 3, 3)
    assert state["2"] == state["0"] != state["1"]
    assert json.loads((sweep / "1" / "eval" / "perf.json").read_text())["threads"] == 3
    logs = {k: (sweep / k / "eval" / "zoo.log").read_text() for k in "012"}
    assert "job 1 pinned: device_id=5, backend.threads=3, num_workers=2" in logs["1"]
    assert "pinned" not in logs["0"] + logs["2"]  # and job 1's log lines stayed in job 1's log


@pytest.mark.slow
def test_submitit_jobs_get_pin_devices_and_slurm_given_devices(zoo, ascend, tmp_path):
    env, model_dir = ascend
    sweep = tmp_path / "sweep"
    rc, out, err = zoo("run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
                       "pin.devices=[4,5,6]", "model=fixture", "stage=eval", "backend=acl", f"model_dir={model_dir}",
                       *SHARDS, f"hydra.sweep.dir={sweep}", env=env)
    assert rc == 0, out + err
    used = {}
    for k in range(3):
        device_id, source = pinned_device(sweep / str(k))
        assert (device_id, source) == (4 + k, f"pin.devices[{k}]")
        used[device_id] = k
    sessions = lines(tmp_path / "acl.jsonl")
    assert sorted(s["physical"] for s in sessions) == [4, 5, 6]
    assert len({s["pid"] for s in sessions}) == 3  # one process per job
    assert "backend.intra_op_threads" not in (sweep / "0" / "eval" / "zoo.log").read_text()  # acl has no ORT threads

    # the same launcher inside a (simulated) Slurm allocation: devices come from the scheduler, not pin.devices
    (tmp_path / "acl.jsonl").unlink()
    sweep2 = tmp_path / "sweep2"
    rc, out, err = zoo("run", "-m", "hydra/launcher=submitit_local",
                       "+hydra.launcher.setup=['export SLURM_JOB_GPUS=6,7','export SLURM_LOCALID=1']",
                       "pin.devices=[4,5,6]", "model=fixture", "stage=eval", "backend=acl", f"model_dir={model_dir}",
                       "dataset.limit=2", f"hydra.sweep.dir={sweep2}", env=env)
    assert rc == 0, out + err
    assert pinned_device(sweep2 / "0") == (7, "SLURM_JOB_GPUS=6,7")
    assert [s["physical"] for s in lines(tmp_path / "acl.jsonl")] == [7]


def test_a_job_pinned_to_other_threads_still_resumes(zoo, fixture_onnx):
    """onnxruntime's threads change how fast a run computes, not its outputs: a sweep job pinned to 1 thread is
    resumed by its re-run command, which runs alone and unpinned (before: "cannot resume: backend changed").
    torch's do change its outputs: test_resume.py, test_shard_merge.py."""
    args = ("model=fixture", "stage=eval", f"model_file={fixture_onnx}", "work_dir=run")
    zoo.ok("run", *args, "backend.intra_op_threads=1", "num_workers=0")
    zoo.ok("run", *args, "backend.intra_op_threads=2", "resume=true")
    assert "resuming: 12 images already done" in (zoo.cwd / "run" / "eval" / "zoo.log").read_text()
    rc, out, err = zoo("run", *args, "backend.graph_optimization=disable", "resume=true")
    # keys that may change the outputs still refuse, naming the key (before: "backend changed" only)
    assert rc == 2 and "cannot resume: backend changed since the interrupted run (backend.graph_optimization: " \
                       "'all' -> 'disable')" in err, err


def test_runtime_backend_keys_are_out_of_the_resume_fingerprint():
    from zoo_core.runs.fingerprint import backend_config_hash

    base = {"name": "onnxruntime", "intra_op_threads": 0, "device_id": 0, "providers": ["CPUExecutionProvider"]}
    assert backend_config_hash(base) == backend_config_hash({**base, "intra_op_threads": 1, "device_id": 3})
    assert backend_config_hash(base) != backend_config_hash({**base, "providers": ["CUDAExecutionProvider"]})


def test_torch_threads_are_in_the_resume_fingerprint_as_torch_ran_them():
    """torch's outputs change in the last bits with its thread count (onnxruntime's were bit-identical); the count
    is the one torch ran (its describe()), so threads: 0, torch's default, is what that default was."""
    from zoo_core.runs.fingerprint import backend_config_hash, backend_section

    torch = {"name": "torch", "threads": 0}
    assert backend_section(torch, {"backend": "torch", "threads": 4}) == {"name": "torch", "threads": 4}
    assert backend_config_hash(torch, {"threads": 1}) != backend_config_hash(torch, {"threads": 2})
    assert backend_config_hash(torch, {"threads": 2}) == backend_config_hash({**torch, "threads": 2}, {"threads": 2})
