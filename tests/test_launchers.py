"""Launcher choice: a missing Hydra launcher plugin is one line naming the pip install; the Slurm recipe of
docs/sweeps.md produces the batch script it promises (through a fake ``sbatch``, there is no cluster)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from zoo_core.api.errors import ConfigError
from zoo_core.config import validate

DOCS = Path(__file__).resolve().parents[1] / "docs" / "sweeps.md"

#: docs/sweeps.md's Slurm recipe for nodes with 8 NPUs, verbatim.
SLURM_RECIPE = (
    "zoo run -m hydra/launcher=submitit_slurm hydra.launcher.partition=ascend hydra.launcher.gres=npu:1 "
    "hydra.launcher.cpus_per_task=24 hydra.launcher.mem_gb=64 hydra.launcher.timeout_min=120 "
    "hydra.launcher.array_parallelism=16 "
    "\"hydra.launcher.setup=['source /usr/local/Ascend/ascend-toolkit/set_env.sh']\" "
    "model=centernet dataset=coco dataset.root=/shared/coco stage=eval backend=acl "
    "dataset.num_shards=16 'dataset.shard=range(0,16)'"
)


@pytest.mark.parametrize("name, module, package", [
    ("ray", "hydra_plugins.hydra_ray_launcher", "'zoo-core[ray]'"),
    ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher", "'zoo-core[submitit]'"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher", "'zoo-core[submitit]'"),
    ("joblib", "hydra_plugins.hydra_joblib_launcher", "'zoo-core[joblib]'"),
])
def test_missing_launcher_plugin_names_the_pip_install(monkeypatch, name, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ConfigError) as exc:
        validate.check_launcher(["model=fixture", f"hydra/launcher={name}"])
    assert str(exc.value) == (f"hydra/launcher={name} needs Hydra's {name.split('_')[0]} launcher plugin "
                              f"({module} is not installed): pip install {package}")


def test_launcher_plugin_without_its_engine_names_the_pip_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ray" else real(n, *a))
    with pytest.raises(ConfigError, match=r"\(ray is not installed\): pip install 'zoo-core\[ray\]'$"):
        validate.check_launcher(["hydra/launcher=ray"])


def test_installed_and_unknown_launchers():
    for name in ("basic", "joblib", "ray", "submitit_local", "submitit_slurm"):
        validate.check_launcher([f"hydra/launcher={name}"])  # installed by make venv
    validate.check_launcher(["model=fixture"])
    with pytest.raises(ConfigError, match=r"unknown hydra/launcher 'slurm'\. Did you mean hydra/launcher=submitit_slurm\?"
                                          r" Launchers: basic, joblib, ray, "):
        validate.check_launcher(["hydra/launcher=slurm"])


def test_cli_missing_launcher_is_one_line_exit_2(zoo):
    code = ("import sys; sys.modules['hydra_plugins.hydra_ray_launcher'] = None\n"
            "from zoo_core.cli import main\n"
            "sys.exit(main(['run', '-m', 'hydra/launcher=ray', 'model=fixture', 'stage=perf']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=zoo.env(), cwd=zoo.cwd)
    assert proc.returncode == 2
    assert proc.stderr == ("error: hydra/launcher=ray needs Hydra's ray launcher plugin "
                           "(hydra_plugins.hydra_ray_launcher is not installed): pip install 'zoo-core[ray]'\n")
    assert not (zoo.cwd / "multirun").exists()


def test_docs_show_the_slurm_recipe():
    text = re.sub(r"[ \t]+", " ", DOCS.read_text().replace("\\\n", " "))
    assert SLURM_RECIPE in text


def test_slurm_recipe_submits_one_array_job_with_one_npu_per_shard(zoo, fixtures_dir, tmp_path):
    """The recipe through hydra-submitit-launcher and submitit up to ``sbatch`` (a contract double that
    keeps the script and refuses it): 16 array tasks, 8 per node's NPUs at most by gres, 24 CPUs each."""
    saved = tmp_path / "submitted.sh"
    env = zoo.env(PATH=f"{fixtures_dir / 'fake_slurm'}{os.pathsep}{os.environ['PATH']}", FAKE_SBATCH_SAVE=str(saved))
    sweep = tmp_path / "sweep"
    rc, out, err = zoo(*shlex.split(SLURM_RECIPE)[1:], f"hydra.sweep.dir={sweep}", env=env)
    assert rc != 0 and "fake_slurm test double" in out + err  # refused by the double, after building the job
    script = saved.read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.M))
    assert sbatch["array"] == "0-15%16"
    assert sbatch["gres"] == "npu:1" and sbatch["cpus-per-task"] == "24" and sbatch["partition"] == "ascend"
    assert sbatch["mem"] == "64GB" and sbatch["time"] == "120" and sbatch["ntasks-per-node"] == "1"
    assert sbatch["output"].startswith(f"{sweep}/.submitit/")
    body = script.split("# setup", 1)[1]
    assert body.index("source /usr/local/Ascend/ascend-toolkit/set_env.sh") < body.index("srun")
    assert "submitit.core._submit" in body


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_sharded_command_names_the_weights_and_the_data_it_needs():
    """CenterNet on COCO needs its checkpoint and the dataset's root: a command without them cannot run."""
    text = re.sub(r"[ \t]+", " ", README.read_text().replace("\\\n", " "))
    [cmd] = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("zoo run -m") and "dataset.num_shards" in ln]
    args = shlex.split(cmd)[2:]
    assert "weights=ctdet_coco_dla_2x.pth" in args and "dataset.root=/data/coco" in args
    cfg = validate.compose([a for a in args if a != "-m" and not a.startswith("hydra")])
    assert str(cfg.dataset.root) == "/data/coco" and cfg.dataset.num_shards == 3


#: docs/sweeps.md's recipe for parallel jobs that export different models, its model_dir verbatim.
OWN_MODEL_DIR = "'model_dir=${hydra:runtime.output_dir}/../model'"


@pytest.mark.needs_torch
def test_own_model_dir_recipe_keeps_each_jobs_model_in_its_run_root(zoo, tmp_path):
    """Each job exports into <sweep>/<job>/model (not its record dir, which stage runs clear), and a
    re-run of a job into its dir (hydra.sweep.subdir) reuses that job's export."""
    assert OWN_MODEL_DIR in docs_text()
    sweep = tmp_path / "sweep"
    model_dir = shlex.split(OWN_MODEL_DIR)[0]
    zoo.ok("run", "-m", "model=fixture", "stage=perf", "model.sharpness=10,20", model_dir,
           f"hydra.sweep.dir={sweep}", "dataset.limit=2")
    files = [sweep / str(k) / "model" / "fixture_onnxruntime.onnx" for k in (0, 1)]
    assert all(f.is_file() for f in files) and files[0].read_bytes() != files[1].read_bytes()
    for k in (0, 1):
        perf = json.loads((sweep / str(k) / "perf" / "perf.json").read_text())
        assert Path(perf["model_file"]) == files[k]
    before = files[1].stat().st_mtime_ns
    zoo.ok("run", "-m", "model=fixture", "stage=eval", "model.sharpness=20", model_dir, "dataset.limit=2",
           f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=1/eval")
    assert "reusing " + str(files[1]) in (sweep / "1" / "eval" / "zoo.log").read_text()
    assert files[1].stat().st_mtime_ns == before and (sweep / "1" / "perf" / "perf.json").is_file()


def docs_text() -> str:
    return re.sub(r"[ \t]+", " ", DOCS.read_text().replace("\\\n", " "))
