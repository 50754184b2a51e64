"""Sweep reports (Hydra callback at multirun end), failure accounting, joblib launcher, pinning."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from zoo_core.config import pinning
from zoo_core.reports import sweep_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JOBLIB2 = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def md_rows(path: Path) -> list[list[str]]:
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def only_sweep_dir(cwd: Path) -> Path:
    dirs = list((cwd / "multirun" / "fixture").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.needs_torch
def test_perf_sweep_report_one_row_per_job_matching_perf_json(zoo, tmp_path):
    rc, out, err = zoo("run", "-m", "model=fixture", "stage=perf", "stage.loop=3",
                       "batch_size=1,2,4", "backend.graph_optimization=basic,all")
    assert rc == 0, out + err
    sweep = only_sweep_dir(tmp_path)
    assert f"failed): {sweep / 'sweep_report.md'}" in out  # hydra.sweep.dir is absolute

    rows = read_csv(sweep / "sweep_report.csv")
    assert len(rows) == 6
    seen = set()
    for row in rows:
        job = sweep / row["job"] / "perf"
        perf = json.loads((job / "perf.json").read_text())
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert row["@batch_size"] == overrides["batch_size"] == str(perf["batch_size"])
        assert row["@backend.graph_optimization"] == overrides["backend.graph_optimization"]
        assert row["status"] == "ok"
        assert float(row["throughput"]) == pytest.approx(perf["throughput"], rel=1e-9)
        assert float(row["latency_mean_ms"]) == pytest.approx(perf["latency_ms"]["mean"], rel=1e-9)
        assert float(row["latency_p99_ms"]) == pytest.approx(perf["latency_ms"]["p99"], rel=1e-9)
        assert row["model_file"] == perf["model_file"]
        seen.add((row["@batch_size"], row["@backend.graph_optimization"]))
    assert seen == {(b, g) for b in ("1", "2", "4") for g in ("basic", "all")}

    md = md_rows(sweep / "sweep_report.md")
    assert len(md) == 6
    head = next(ln for ln in (sweep / "sweep_report.md").read_text().splitlines() if ln.startswith("|"))
    assert "batch_size" in head and "backend.graph_optimization" in head and "throughput" in head
    for cells, row in zip(md, rows):
        assert cells[:3] == [row["@batch_size"], row["@backend.graph_optimization"], "ok"]
    png = (sweep / "sweep_report.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert "sweep report (6 jobs" in out


@pytest.mark.needs_torch
def test_failed_job_is_reported_and_sweep_exits_nonzero_under_joblib(zoo, tmp_path):
    rc, out, err = zoo("run", "-m", "model=fixture", "stage=perf", "stage.loop=3", "batch_size=1,0,2", *JOBLIB2)
    assert rc == 1, out + err
    assert "1 of 3 sweep jobs failed" in err
    sweep = only_sweep_dir(tmp_path)
    rows = {r["@batch_size"]: r for r in read_csv(sweep / "sweep_report.csv")}
    assert rows["0"]["status"] == "failed"
    assert "batch_size=0 is invalid" in rows["0"]["error"]
    error = json.loads((sweep / rows["0"]["job"] / "perf" / "error.json").read_text())
    assert error["error"] == rows["0"]["error"]
    assert rows["1"]["status"] == rows["2"]["status"] == "ok"
    assert (sweep / rows["2"]["job"] / "perf" / "perf.json").is_file()
    md = (sweep / "sweep_report.md").read_text()
    assert "| 0 | failed [1] |" in md
    assert f"1. job `{rows['0']['job']}`: {error['error']}" in md.splitlines()  # the full error, as a note

    rebuilt = subprocess.run([sys.executable, "-m", "zoo_core.reports.sweep_report", str(sweep)],
                             capture_output=True, text=True)
    assert rebuilt.returncode == 1
    assert read_csv(sweep / "sweep_report.csv") == list(rows.values())


@pytest.mark.needs_torch
def test_joblib_jobs_are_pinned_to_a_share_of_the_cores(zoo, tmp_path):
    rc, out, err = zoo("run", "-m", "model=fixture", "stage=perf", "stage.loop=2", "batch_size=1,2",
                       "pin.cores=2", *JOBLIB2)
    assert rc == 0, out + err
    sweep = only_sweep_dir(tmp_path)
    for job in ("0", "1"):
        perf = json.loads((sweep / job / "perf" / "perf.json").read_text())
        assert perf["intra_op_threads"] == 1
        log = (sweep / job / "perf" / "zoo.log").read_text()
        assert "job " + job + " pinned: backend.intra_op_threads=1, num_workers=0" in log


@pytest.mark.needs_torch
def test_sweep_over_an_explicit_thread_count_is_not_overridden(zoo, tmp_path):
    rc, out, err = zoo("run", "-m", "model=fixture", "stage=perf", "stage.loop=2", "backend.intra_op_threads=2",
                       "batch_size=1,2", "pin.cores=2", *JOBLIB2)
    assert rc == 0, out + err
    sweep = only_sweep_dir(tmp_path)
    assert [json.loads((sweep / j / "perf" / "perf.json").read_text())["intra_op_threads"] for j in "01"] == [2, 2]


JOBLIB_CFG = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}
BASIC_CFG = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}


def cfg_for(backend: dict, **pin) -> object:
    return OmegaConf.create({"backend": backend, "num_workers": 2, "device_id": 0,
                             "pin": {"enabled": True, "devices": None, "cores": None, "jobs": None, **pin}})


@pytest.mark.parametrize("launcher, pin, job, expected", [
    (JOBLIB_CFG, {"cores": 2}, 0, {"backend.intra_op_threads": 1, "num_workers": 0}),
    (JOBLIB_CFG, {"cores": 8}, 3, {"backend.intra_op_threads": 4, "num_workers": 2}),
    ({**JOBLIB_CFG, "n_jobs": -1}, {"cores": 4}, 0, {"backend.intra_op_threads": 1, "num_workers": 0}),
    (BASIC_CFG, {"cores": 8}, 5, {}),
    (BASIC_CFG, {"cores": 8, "jobs": 4}, 5, {"backend.intra_op_threads": 2, "num_workers": 1}),
    ({"ray": {"init": {"address": None}, "remote": {"num_cpus": 3}}}, {}, 0,
     {"backend.intra_op_threads": 3, "num_workers": 2}),
    ({"_target_": "x.SlurmLauncher", "cpus_per_task": 6}, {}, 1, {"backend.intra_op_threads": 6, "num_workers": 2}),
    (JOBLIB_CFG, {"cores": 2, "enabled": False}, 0, {}),
])
def test_pinning_plan_threads(launcher, pin, job, expected):
    plan = pinning.plan(cfg_for({"name": "onnxruntime", "intra_op_threads": 0}, **pin), job, launcher, [])
    assert plan == expected


def test_pinning_plan_devices_round_robin_and_explicit_keys_win():
    cfg = cfg_for({"name": "acl", "device_id": "${device_id}"}, devices=[4, 5, 6], cores=1)
    assert [pinning.plan(cfg, k, BASIC_CFG, [])["device_id"] for k in range(5)] == [4, 5, 6, 4, 5]
    assert "device_id" not in pinning.plan(cfg, 1, BASIC_CFG, ["device_id=2"])
    torch_cfg = cfg_for({"name": "torch", "threads": 0}, cores=4)
    assert pinning.plan(torch_cfg, 0, JOBLIB_CFG, ["num_workers=2"]) == {"backend.threads": 2}


def test_report_of_an_empty_dir_is_empty(tmp_path):
    assert sweep_report.build_report(tmp_path)["jobs"] == 0
    assert not (tmp_path / "sweep_report.csv").exists()
