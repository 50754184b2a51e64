"""CLI conventions: --version, list --json, closed pipes, shell completion, new-plugin name clashes, sweep_report usage."""
from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from zoo_core.api.errors import ZooError
from zoo_core.cli import main as zoo_main
from zoo_core.cli.completion import hydra_comp_line
from zoo_core.cli.scaffold import new_plugin

ZOO = [sys.executable, "-m", "zoo_core.cli"]


def test_version_lists_core_and_each_plugin_distribution(zoo):
    lines = zoo.ok("--version").splitlines()
    assert lines[0] == f"zoo-core {metadata.version('zoo-core')}"
    by_name = {ln.split()[0]: ln for ln in lines[1:]}
    assert by_name["zoo-centerface"] == f"zoo-centerface {metadata.version('zoo-centerface')}  (models: centerface)"
    assert by_name["zoo-centernet"] == f"zoo-centernet {metadata.version('zoo-centernet')}  (models: centernet)"
    assert by_name["zoo-fixture"] == "zoo-fixture 0.3.1  (models: fixture; plugins: fixture_observer)"
    assert zoo.ok("-V") == "\n".join(lines) + "\n"


def test_list_json_has_models_backends_datasets_and_broken_plugins(zoo, fixtures_dir):
    data = json.loads(zoo.ok("list", "--json", env=zoo.env(PYTHONPATH=str(fixtures_dir / "bad_plugins"))))
    models = {m["name"]: m for m in data["models"]}
    assert {"centerface", "centernet", "fixture"} <= set(models)
    assert models["fixture"]["distribution"] == "zoo-fixture" and models["fixture"]["version"] == "0.3.1"
    assert {"dataset", "preprocess", "postprocess", "evaluate", "export", "oracle_outputs"} <= set(
        models["fixture"]["hooks"])
    assert models["centerface"]["missing_hooks"] == []
    assert [p["name"] for p in data["plugins"]] == ["fixture_observer"]
    backends = {b["name"]: b for b in data["backends"]}
    assert set(backends) >= {"onnxruntime", "torch", "acl", "replay", "oracle"}
    assert backends["onnxruntime"]["entry_point"] == "zoo_core.backends.onnxruntime_backend:OnnxRuntimeBackend"
    datasets = {(d["name"], d["model"]) for d in data["datasets"]}
    assert {("widerface", "zoo-core"), ("widerface_sample", "zoo-core"), ("coco", "zoo-core"),
            ("coco_sample", "zoo-core"), ("squares", "fixture")} <= datasets
    broken = {b["name"]: b for b in data["broken"]}
    assert broken["badapi"]["error"].startswith("plugin needs zoo hook API '2' (its ZOO_HOOK_API)")
    assert broken["badimport"]["distribution"] == "zoo_bad_import"
    assert data["zoo_core"] == metadata.version("zoo-core") and data["disabled"] == []


def test_list_text_shows_datasets_and_rejects_unknown_flags(zoo):
    out = zoo.ok("list")
    assert "datasets:" in out and "widerface_sample" in out.split("datasets:")[1]
    rc, out, err = zoo("list", "--jsn")
    assert rc == 2 and err.strip() == "error: zoo list takes only --json, not --jsn"


def test_list_and_info_help_print_help_and_examples_name_a_shipped_model(capsys):
    # `zoo list --help` was "takes only --json" (exit 2); `zoo info --help` was "no model given ... Example:
    # zoo run model=anchorface" (the alphabetically first installed model, a test fixture)
    from zoo_core.cli import main as zoo_main
    from zoo_core.cli.listing import print_listing

    assert zoo_main(["list", "--help"]) == 0 and capsys.readouterr().out.startswith("usage: zoo list [--json]")
    assert zoo_main(["info", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: zoo info [--config-dir DIR] [--config-name NAME] model=<name>") and "zoo info model=centerface" in out
    assert zoo_main(["info"]) == 2
    err = capsys.readouterr().err
    assert "no model given" in err and err.strip().endswith("Example: zoo info model=centerface")
    assert zoo_main(["run", "stage=eval"]) == 2
    assert capsys.readouterr().err.strip().endswith("Example: zoo run model=centerface stage=eval")
    print_listing()
    listing = capsys.readouterr().out.split("datasets:")[1]
    assert "  widerface_sample     (zoo-core)\n" in listing and "  squares              (model fixture)\n" in listing
    assert "(model zoo-core)" not in listing


def _run_into_closed_pipe(args, cwd, env, timeout=180):
    """Run the CLI with stdout a pipe whose reading end is already closed (what `| head` leaves)."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(ZOO + list(args), cwd=cwd, env=env, stdout=w, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)
    finally:
        os.close(w)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["--version"], ["--help"],
                                  ["info", "model=fixture"], ["run", "model=fixture", "--cfg", "job"]])
def test_no_broken_pipe_traceback(zoo, args):
    rc, err = _run_into_closed_pipe(args, zoo.cwd, zoo.env())
    assert rc == 0 and err == "", err


def test_a_run_into_a_closed_pipe_still_finishes(zoo, fixture_onnx):
    rc, err = _run_into_closed_pipe(["run", "model=fixture", "stage=eval", f"model_file={fixture_onnx}"],
                                    zoo.cwd, zoo.env())
    assert rc == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
    metrics = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "metrics.json").read_text())
    assert metrics["images"] > 0


def test_head_in_a_shell_pipeline(zoo):
    """The user's case: `zoo list | head -1` in a real shell pipeline, stderr clean."""
    cmd = f"{shlex.join(ZOO)} list --json | head -c 1 >/dev/null; {shlex.join(ZOO)} --help | head -n 1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=zoo.cwd, env=zoo.env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "usage: zoo <command> [args]\n" and proc.stderr == ""


# -- shell completion ------------------------------------------------------------------------------

def _complete(line: str, env: dict, cwd: Path) -> list[str]:
    """What bash offers for ``line`` (cursor at the end) after eval "$(zoo run -sc install=bash)"."""
    script = f"""
set -e
eval "$(zoo run -sc install=bash)"
COMP_LINE={shlex.quote(line)}
COMP_POINT=${{#COMP_LINE}}
read -r -a COMP_WORDS <<< "$COMP_LINE"
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
if [[ "$COMP_LINE" == *" " ]]; then COMP_WORDS+=(""); COMP_CWORD=$(( COMP_CWORD + 1 )); fi
_zoo_complete
printf '%s\\n' "${{COMPREPLY[@]}}"
complete -p zoo >&2
"""
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "complete -o default -o nospace -F _zoo_complete zoo", proc.stderr
    return sorted(x for x in proc.stdout.split("\n") if x)


@pytest.fixture
def bash_env(zoo):
    env = zoo.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def test_shell_completion_completes_commands_and_overrides(zoo, bash_env):
    assert _complete("zoo ", bash_env, zoo.cwd) == sorted(["run", "list", "info", "new-plugin", "--version",
                                                            "--help"])
    assert _complete("zoo r", bash_env, zoo.cwd) == ["run"]
    assert _complete("zoo run model=centerf", bash_env, zoo.cwd) == ["model=centerface"]
    assert _complete("zoo run model=fixture stage=ev", bash_env, zoo.cwd) == ["stage=eval", "stage=evaluate"]
    assert _complete("zoo info model=fixture backend=onnx", bash_env, zoo.cwd) == ["backend=onnxruntime"]
    assert _complete("zoo list --j", bash_env, zoo.cwd) == ["--json"]


def test_shell_completion_registers_only_zoo_and_refuses_other_shells(zoo):
    out = zoo.ok("run", "-sc", "install=bash")
    assert out.rstrip().endswith("complete -o nospace -o default -F _zoo_complete zoo")
    assert "zoo run" not in out.splitlines()[-1]
    assert zoo.ok("run", "-sc", "install=zsh").startswith("autoload -Uz bashcompinit && bashcompinit\n")
    assert "complete -r zoo" in zoo.ok("run", "-sc", "uninstall=bash")
    rc, out, err = zoo("run", "-sc", "install=fish")
    assert rc == 2 and "available for bash and zsh, not 'fish'" in err


@pytest.mark.parametrize("line, expected", [("zoo run model=cen", "zoo model=cen"), ("zoo run ", "zoo "),
                                            ("zoo run", "zoo "), ("zoo info a=1 b", "zoo a=1 b"),
                                            ("zoo run model=x ", "zoo model=x ")])
def test_hydra_sees_the_line_without_the_subcommand(line, expected):
    assert hydra_comp_line(line) == expected


# -- new-plugin ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, owner", [("centernet", "zoo-centernet"), ("fixture", "zoo-fixture 0.3.1")])
def test_new_plugin_refuses_an_installed_model(tmp_path, capsys, name, owner):
    assert zoo_main(["new-plugin", name, "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot create a plugin named {name!r}: model {name!r} is already provided by "
                          f"the installed {owner}"), err
    assert len(err.splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_new_plugin_refuses_a_name_whose_package_exists(tmp_path, monkeypatch):
    (tmp_path / "lib" / "zoo_shadowed").mkdir(parents=True)
    (tmp_path / "lib" / "zoo_shadowed" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    with pytest.raises(ZooError, match=r"a package zoo_shadowed is already importable"):
        new_plugin("shadowed", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- sweep_report ----------------------------------------------------------------------------------

def test_sweep_report_says_what_is_missing(tmp_path, zoo):
    report = [sys.executable, "-m", "zoo_core.reports.sweep_report"]
    proc = subprocess.run([*report, str(tmp_path / "nonexistent")], capture_output=True, text=True, env=zoo.env())
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == f"error: {tmp_path / 'nonexistent'}: no such directory; give the sweep dir " \
                                          f"that holds the job dirs 0/, 1/, ..."
    proc = subprocess.run([*report, str(tmp_path)], capture_output=True, text=True, env=zoo.env())
    assert proc.returncode == 2 and "no sweep jobs found" in proc.stderr
    proc = subprocess.run(report, capture_output=True, text=True, env=zoo.env())
    assert proc.returncode == 2 and proc.stderr.startswith("usage: python -m zoo_core.reports.sweep_report")


@pytest.mark.parametrize("args", [["--version"], ["list", "--json"]])
def test_version_and_list_import_neither_hydra_nor_torch(zoo, args):
    code = (f"import sys; from zoo_core.cli import main; rc = main({args!r}); "
            f"sys.stderr.write(repr(sorted(m for m in ('torch', 'hydra') if m in sys.modules))); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=zoo.cwd, env=zoo.env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stderr == "[]", proc.stderr


# -- one composition per single run ----------------------------------------------------------------

def test_a_single_run_composes_its_config_once_and_records_what_hydra_main_records(tmp_path, monkeypatch,
                                                                                    cache_dir):
    from hydra._internal.hydra import Hydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    modes: list = []
    real = Hydra.compose_config

    def counting(self, *args, **kwargs):
        modes.append(kwargs.get("run_mode"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Hydra, "compose_config", counting)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    overrides = ["model=fixture", "backend=oracle", "num_workers=0", "dataset.limit=3", f"work_dir={tmp_path / 'run'}"]
    assert zoo_main(["run", *overrides]) == 0
    assert modes == [RunMode.RUN]
    hydra_dir = tmp_path / "run" / "eval" / ".hydra"
    assert OmegaConf.load(hydra_dir / "overrides.yaml") == overrides
    hydra_cfg = OmegaConf.load(hydra_dir / "hydra.yaml").hydra
    assert hydra_cfg.mode == "RUN" and list(hydra_cfg.overrides.hydra) == ["hydra.mode=RUN"]
    assert hydra_cfg.runtime.output_dir == str(tmp_path / "run" / "eval")
    assert OmegaConf.load(hydra_dir / "config.yaml").dataset.limit == 3
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["images"] == 3

    modes.clear()  # a sweep and a Hydra flag go through hydra.main (its own composition, zoo's check first)
    assert zoo_main(["run", "-m", *overrides[:-1], f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 0
    assert len(modes) >= 2 and (tmp_path / "sweep" / "0" / "eval" / "metrics.json").is_file()


@pytest.mark.parametrize("override, message", [
    ("batch_size=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("model.mask_threshold=abc", "model.mask_threshold: Value 'abc' of type 'str' could not be converted to Float"),
    ("batch_size=1,2", "Ambiguous value for argument 'batch_size=1,2'"),
    ("batch_sise=2", "unknown config key 'batch_sise'.\nDid you mean 'batch_size'?"),
    # a section's key given at the top level, and a case slip (no suggestion before)
    ("limit=3", "unknown config key 'limit'.\nDid you mean 'dataset.limit'?"),
    ("num_shards=3", "unknown config key 'num_shards'.\nDid you mean 'dataset.num_shards'?"),
    ("iou_thresh=0.4", "unknown config key 'iou_thresh'.\nDid you mean 'model.iou_thresh'?"),
    ("model.MASK_THRESHOLD=0.2", "unknown config key 'model.MASK_THRESHOLD'.\nDid you mean 'model.mask_threshold'?"),
])
def test_a_single_run_refuses_a_bad_override_before_writing_anything(tmp_path, monkeypatch, capsys, cache_dir,
                                                                       override, message):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    assert zoo_main(["run", "model=fixture", "backend=oracle", override, f"work_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_cli_gives_its_processes_one_blas_thread_unless_the_user_chose(monkeypatch, capsys):
    """``zoo`` sets OPENBLAS_NUM_THREADS=1 before numpy is imported (OpenBLAS threads spin ~0.1 s of
    CPU each at import: zoo_core/blas.py); a value the user exported is kept."""
    from zoo_core.cli import main

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "placeholder")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")  # (restored to the session's state afterwards)
    assert main(["--help"]) == 0
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    assert main(["--help"]) == 0
    assert os.environ["OPENBLAS_NUM_THREADS"] == "4"
    capsys.readouterr()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="counts the process's threads in /proc; OpenBLAS adds none on one core")
def test_a_zoo_process_runs_no_blas_helper_thread():
    """In a ``zoo`` process numpy's import starts no OpenBLAS helper thread (checked against a plain
    interpreter, which starts one per extra core)."""
    count = "import os; import numpy; print(len(os.listdir('/proc/self/task')))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}

    def threads(code: str) -> int:
        return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                  check=True).stdout.split()[-1])

    assert threads(count) > 1  # the oracle: numpy alone starts helper threads here
    assert threads("from zoo_core.cli import main; main(['--help']); " + count) == 1


@pytest.mark.parametrize("err", [30, 28])  # EROFS, ENOSPC
def test_a_storage_error_before_the_run_starts_is_one_line(monkeypatch, capsys, err):
    """Before: a read-only work_dir failed in the lock's mkdir, outside the run's handler: a traceback, exit 1."""
    import zoo_core.cli as cli

    def fail(args):
        raise OSError(err, os.strerror(err), "/ro/run")

    monkeypatch.setattr(cli, "cmd_run", fail)
    assert zoo_main(["run", "model=fixture"]) == 2
    assert capsys.readouterr().err == f"error: /ro/run: {os.strerror(err)}\n"


def test_a_full_disk_while_hydra_writes_its_files_names_the_file_and_leaves_none_cut_short(tmp_path, monkeypatch,
                                                                                            capsys, cache_dir):
    """Before: `error: No space left on device` naming no file (Hydra's write() raised an OSError without a file
    name), and a cut-short .hydra/hydra.yaml was left. Now the file is named and this run's .hydra/*.yaml are
    removed; an earlier run's file Hydra never reached is kept."""
    import hydra.core.utils as hydra_utils

    real = hydra_utils._save_config

    def full_disk(cfg, filename, output_dir):
        if filename != "hydra.yaml":
            return real(cfg, filename, output_dir)
        with open(output_dir / filename, "w") as f:
            f.write("hydra:\n  run:\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hydra_utils, "_save_config", full_disk)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    hydra_dir = tmp_path / "run" / "eval" / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text("- earlier=run\n")
    assert zoo_main(["run", "model=fixture", "backend=oracle", f"work_dir={tmp_path / 'run'}"]) == 2
    assert capsys.readouterr().err == (f"error: {hydra_dir / 'hydra.yaml'}: No space left on device (Hydra's record "
                                       f"of the run's config; this run's .hydra files are removed)\n")
    assert sorted(p.name for p in hydra_dir.iterdir()) == ["overrides.yaml"]
    assert (hydra_dir / "overrides.yaml").read_text() == "- earlier=run\n"
    assert not (tmp_path / "run" / "eval" / "run.json").exists()


def test_console_warnings_and_errors_get_their_prefix_once():
    """Before: `warning: warning: 1 of 24 ground-truth images ...` (a message that said it itself)."""
    import logging

    from zoo_core.reports.logfmt import ConsoleFormatter

    fmt = ConsoleFormatter("%(message)s")
    line = lambda level, msg: fmt.format(logging.LogRecord("zoo", level, __file__, 1, msg, None, None))  # noqa: E731
    assert line(logging.WARNING, "3 images missing") == "warning: 3 images missing"
    assert line(logging.WARNING, "warning: 3 images missing") == "warning: 3 images missing"
    assert line(logging.ERROR, "bad") == "error: bad" and line(logging.INFO, "done") == "done"
