"""A launcher that raises (a job's process killed: submitit's UncompletedJobError, joblib's
TerminatedWorkerError; no Slurm on the host) still gets a sweep report, and ``zoo run`` says in one line
what stopped the sweep: exit 1 with the report naming the jobs without a result and how to re-run them,
exit 2 when no job ran. Simulated in Hydra's basic launcher (no process is killed): it runs some jobs,
then raises like the real launchers do."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

#: Runs ``zoo run <argv[2:]>`` with the basic launcher replaced: mode "none" raises before any job,
#: mode "killed" runs jobs 0 and 1, wipes job 1's records as a SIGKILL before its end would (its
#: .hydra/ and detections stay), never starts job 2 and raises a submitit-like error.
CODE = """
import shutil, sys
from pathlib import Path
from hydra.core.plugins import Plugins
Plugins.instance()  # Hydra's plugin scan re-executes the launcher's module: patch the class it keeps
from hydra._internal.core_plugins.basic_launcher import BasicLauncher

class UncompletedJobError(RuntimeError):
    pass

real = BasicLauncher.launch
mode = sys.argv[1]

def launch(self, job_overrides, initial_job_idx):
    if mode == "none":
        raise RuntimeError('Could not detect "srun", are you indeed on a slurm cluster?')
    real(self, job_overrides[:2], initial_job_idx)
    records = next(p for p in (Path(str(self.config.hydra.sweep.dir)) / "1").iterdir() if (p / ".hydra").is_dir())
    for p in records.iterdir():
        if p.name != ".hydra":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    raise UncompletedJobError("Job 1 (task: 0) with path /x/1_0_log.out\\nhas not produced any output (state: FAILED)")

BasicLauncher.launch = launch
from zoo_core.cli import main
sys.exit(main(["run", *sys.argv[2:]]))
"""

RERUN = re.compile(r"then the merge completes: (zoo run .*?)(?:\s*\||$)", re.M)


def run(zoo, mode: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CODE, mode, *args], capture_output=True, text=True,
                          env=zoo.env(), cwd=zoo.cwd)


def test_a_killed_job_gives_a_report_and_one_line_and_its_rerun_completes_the_merge(zoo, fixture_onnx):
    sweep = zoo.cwd / "sweep"
    args = ("-m", "model=fixture", "stage=eval", f"model_file={fixture_onnx}", "dataset.num_shards=3",
            "dataset.shard=range(0,3)", f"hydra.sweep.dir={sweep}")
    p = run(zoo, "killed", *args)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stderr == (f"error: hydra/launcher=basic stopped the sweep: UncompletedJobError: Job 1 (task: 0) with "
                        f"path /x/1_0_log.out (2 of 3 jobs without a result, 0 failed; see {sweep}/sweep_report.md)\n")
    assert "Traceback" not in p.stdout
    md = (sweep / "sweep_report.md").read_text()
    assert "**The sweep was stopped**: hydra/launcher=basic raised UncompletedJobError: Job 1" in md
    assert "3 jobs (0 failed, 2 without a result), 1 shard merge (1 failed)" in md
    note = next(ln for ln in md.splitlines() if ln.startswith("1. job `1`: no result"))
    assert "hydra.sweep.subdir=1/eval resume=true" in note  # job 1 left detections to resume
    note = next(ln for ln in md.splitlines() if ln.startswith("2. job `2`: not started (the launcher stopped first)"))
    assert note.endswith(f"dataset.shard=2 hydra.sweep.dir={sweep} hydra.sweep.subdir=2/eval")
    assert "shard 1 (job 1) has no result" in md and "shard 2 of 3 is missing" in md
    assert (sweep / "report.html").is_file() and "The sweep was stopped" in (sweep / "report.html").read_text()
    assert not (sweep / "merged").exists()

    cmds = [shlex.split(c)[2:] for c in RERUN.search(md).group(1).split(" ; ")]
    assert [[a for a in c if a.startswith(("dataset.shard=", "hydra.sweep.subdir=", "resume"))] for c in cmds] == [
        ["dataset.shard=1", "hydra.sweep.subdir=1/eval", "resume=true"],
        ["dataset.shard=2", "hydra.sweep.subdir=2/eval"]]  # a new job dir: nothing to resume
    for cmd in cmds:
        rc, out, err = zoo("run", *cmd)
    assert rc == 0, out + err
    merged = json.loads((sweep / "merged" / "metrics.json").read_text())
    zoo.ok("run", "model=fixture", "stage=eval", f"model_file={fixture_onnx}", "work_dir=full")
    assert merged["metrics"] == json.loads((zoo.cwd / "full" / "eval" / "metrics.json").read_text())["metrics"]
    assert merged["images"] == 12


def test_a_launcher_that_cannot_start_any_job_is_one_line_exit_2(zoo):
    sweep = zoo.cwd / "sweep"
    p = run(zoo, "none", "-m", "model=fixture", "stage=perf", "batch_size=1,2", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr == 'error: hydra/launcher=basic: Could not detect "srun", are you indeed on a slurm cluster?\n'
    assert not (sweep / "sweep_report.md").exists()


def test_an_error_before_the_sweep_starts_is_not_blamed_on_the_launcher(zoo, tmp_path):
    """A failure in Hydra's set-up of the multirun before the sweep starts (here its composition) is one
    line too, naming what failed, not the launcher."""
    code = CODE.replace('BasicLauncher.launch = launch', 'from hydra._internal.hydra import Hydra\n'
                        'def bad(*a, **k):\n    raise ValueError("composition failed")\n'
                        'Hydra.multirun = bad')
    p = subprocess.run([sys.executable, "-c", code, "x", "-m", "model=fixture", "stage=perf", "batch_size=1,2",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, env=zoo.env(),
                       cwd=zoo.cwd)
    assert (p.returncode, p.stderr.splitlines()[-1:]) == (1, ["error: ValueError: composition failed"]), p.stderr


def test_a_stopped_sweep_names_the_jobs_never_started_with_their_commands(zoo, fixture_onnx):
    sweep = zoo.cwd / "sweep"
    p = run(zoo, "killed", "-m", "model=fixture", "stage=perf", f"model_file={fixture_onnx}", "dataset.limit=2",
            "batch_size=1,2,4", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "(2 of 3 jobs without a result, 0 failed;" in p.stderr
    md = (sweep / "sweep_report.md").read_text()
    rows = [ln.split("|")[1:3] for ln in md.splitlines() if re.match(r"\| [124] \|", ln)]
    assert [[c.strip() for c in r] for r in rows] == [["1", "ok"], ["2", "no result [1]"], ["4", "not started [2]"]]
    cmd = re.search(r"2\. job `2`: not started \(the launcher stopped first\)\. Run it: (zoo run .*)$", md, re.M).group(1)
    args = shlex.split(cmd)[2:]
    assert "batch_size=4" in args and "hydra.sweep.subdir=2/perf" in args and "resume=true" not in args
    rc, out, err = zoo("run", *args)
    assert rc == 0, out + err
    assert json.loads((sweep / "2" / "perf" / "perf.json").read_text())["batch_size"] == 4
