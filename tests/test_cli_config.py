"""Configuration errors through the real CLI (exit code and the helpful text), info/--cfg/--help, start-up cost."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

CASES = [
    # overrides, texts that must appear in stderr
    (["model=fixture", "stage=evl"], ["unknown stage 'evl'", "stage=eval", "preprocess", "perf", "predict"]),
    (["model=fixture", "batch_sise=4"], ["'batch_sise'", "Did you mean 'batch_size'", "num_workers", "on_error"]),
    (["model=fixture", "model.mask_treshold=1"], ["'model.mask_treshold'", "'model.mask_threshold'", "iou_thresh"]),
    (["stage=eval"], ["no model given", "fixture", "centerface", "centernet"]),
    (["model=nosuchmodel"], ["unknown model 'nosuchmodel'", "fixture"]),
    (["model=fixture", "on_error=maybe"], ["on_error", "maybe", "fail", "skip"]),
    (["model=fixture", "batch_size=0"], ["batch_size=0", ">= 1"]),
    (["model=fixture", "batch_size=-3"], ["batch_size=-3", ">= 1"]),
    (["model=fixture", "backend=tensorrt"], ["unknown backend 'tensorrt'", "onnxruntime", "acl", "replay"]),
    (["model=fixture", "dataset.num_shards=2", "dataset.shard=2"], ["shard", "num_shards"]),
]


@pytest.mark.parametrize("overrides,texts", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_config_error_is_one_helpful_message(zoo, overrides, texts):
    rc, out, err = zoo("run", *overrides)
    assert rc != 0
    assert "Traceback" not in err, err
    for t in texts:
        assert t in err, f"{t!r} not in:\n{err}"
    assert not (zoo.cwd / "outputs" / "fixture" / "eval" / "metrics.json").exists()


def test_info_prints_resolved_config(zoo, cache_dir):
    import yaml

    out = zoo.ok("info", "model=fixture", "batch_size=3", "backend=oracle")
    cfg = yaml.safe_load(out)
    assert cfg["model"]["name"] == "fixture" and cfg["model"]["mask_threshold"] == 0.5
    assert cfg["stage"]["name"] == "eval" and cfg["backend"]["name"] == "oracle"
    assert cfg["batch_size"] == 3 and cfg["dataset"]["name"] == "squares"
    assert cfg["work_dir"] == "outputs/fixture"  # interpolation resolved
    rc, _, err = zoo("info", "stage=eval")
    assert rc != 0 and "no model given" in err


def test_run_cfg_job_prints_config_without_running(zoo):
    import yaml

    out = zoo.ok("run", "model=fixture", "stage=perf", "--cfg", "job")
    cfg = yaml.safe_load(out)
    assert cfg["stage"]["name"] == "perf" and cfg["stage"]["loop"] == 20
    assert not (zoo.cwd / "outputs").exists()


def test_run_help(zoo):
    out = zoo.ok("run", "--help")
    for t in ("model=", "fixture", "eval", "onnxruntime"):
        assert t in out
    out = zoo.ok("run", "model=fixture", "--help")
    assert "mask_threshold" in out
    out = zoo.ok("--help")
    assert "new-plugin" in out
    rc, _, err = zoo("frobnicate")
    assert rc == 2 and "unknown command" in err


def test_list_imports_neither_torch_nor_hydra(tmp_path, zoo):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "zoo_core.cli", "list"], cwd=tmp_path,
                          env=zoo.env(), capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert "fixture" in proc.stdout
    imported = {m.group(1).strip().split(".")[0]
                for m in re.finditer(r"^import time:\s+\d+\s+\|\s+\d+\s+\|\s+(.+)$", proc.stderr, re.M)}
    assert "zoo_core" in imported and "pluggy" in imported  # the import log was really parsed
    assert not {"torch", "hydra", "omegaconf", "onnxruntime", "cv2"} & imported, sorted(imported)
    print(f"\n[benchmark] zoo list wall time with -X importtime: {wall:.3f} s ({len(imported)} top-level modules)")


YAML_FILES = {
    "python_tag": ("x: !!python/object/apply:os.system ['touch {canary}']\n", "line 1, column 4",
                   "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    "syntax": ("x: [1, 2\n", "line 2, column 1", "expected ',' or ']', but got '<stream end>'"),
}


@pytest.mark.parametrize("kind", sorted(YAML_FILES))
@pytest.mark.parametrize("how", [["--config-dir", "{d}"], ["-cd={d}", "-m"], ["hydra.searchpath=[file://{d}]"]])
def test_a_bad_yaml_in_a_config_dir_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys, cache_dir, kind, how):
    """Before: Hydra's 83-line traceback, exit 1 (zoo's own check composed without the --config-dir)."""
    from zoo_core.cli import main as zoo_main

    text, where, problem = YAML_FILES[kind]
    canary = tmp_path / "canary"
    (tmp_path / "cfg" / "extra").mkdir(parents=True)
    bad = tmp_path / "cfg" / "extra" / "bad.yaml"
    bad.write_text(text.format(canary=canary))
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    flags = [a.format(d=tmp_path / "cfg") for a in how]
    assert zoo_main(["run", *flags, "model=fixture", "stage=perf", "+extra=bad", f"work_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: invalid YAML at {where}: {problem}")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not canary.exists() and not (tmp_path / "run").exists()


def test_a_config_dir_is_composed_as_hydra_composes_it(tmp_path, monkeypatch):
    """zoo's check before Hydra runs sees --config-dir's files (before: 'unknown dataset' for a dataset there)."""
    from zoo_core.config.validate import compose

    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "sq2.yaml").write_text("# @package _global_\ndataset:\n  name: squares\n  size: 3\n")
    cfg = compose(["model=fixture", "dataset=sq2"], config_dir=str(tmp_path))
    assert cfg.dataset.name == "squares" and cfg.dataset.size == 3
    with pytest.raises(Exception, match="unknown dataset 'sq2'"):
        compose(["model=fixture", "dataset=sq2"])
    with pytest.raises(Exception, match="--config-dir: not a directory"):
        compose(["model=fixture"], config_dir=str(tmp_path / "nope"))


def test_info_composes_a_config_dir_and_config_name_as_run_does(tmp_path, capsys, cache_dir):
    """Before: `zoo info --config-dir my_conf model=... dataset=<one of mine>` failed with 'cannot parse override
    --config-dir: token recognition error' (exit 2): only zoo run read the flag."""
    import yaml

    from zoo_core.cli import cmd_info

    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "sq2.yaml").write_text("# @package _global_\ndataset:\n  name: squares\n  size: 3\n")
    (tmp_path / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nbatch_size: 7\n")
    for args in (["--config-dir", str(tmp_path)], [f"-cd={tmp_path}"]):
        assert cmd_info([*args, "model=fixture", "dataset=sq2"]) == 0
        cfg = yaml.safe_load(capsys.readouterr().out)
        assert cfg["dataset"]["name"] == "squares" and cfg["dataset"]["size"] == 3 and cfg["batch_size"] == 1
    assert cmd_info(["model=fixture", "--config-dir", str(tmp_path), "--config-name", "mine"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["batch_size"] == 7
    with pytest.raises(Exception, match="zoo info takes --config-dir and --config-name, not '-m'"):
        cmd_info(["-m", "model=fixture"])


@pytest.mark.parametrize("command", ["run", "info"])
def test_a_bad_yaml_in_an_installed_config_is_one_line(tmp_path, monkeypatch, capsys, cache_dir, command):
    """A broken YAML under zoo's (or a plugin's) conf/: zoo run (one composition) and zoo info."""
    import shutil

    from zoo_core.cli import main as zoo_main
    from zoo_core.config import confpaths

    conf = tmp_path / "conf"
    shutil.copytree(confpaths.core_conf_dir(), conf)
    (conf / "stage" / "broken.yaml").write_text("name: broken\nloop: [1, 2\n")
    monkeypatch.setattr(confpaths, "core_conf_dir", lambda: conf)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    assert zoo_main([command, "model=fixture", "stage=broken", f"work_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {conf / 'stage' / 'broken.yaml'}: invalid YAML at line 3, column 1: ")
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", [["--config-path", "{d}"], ["-cp={d}"]])
def test_config_path_is_refused_with_the_config_dir_it_means(tmp_path, monkeypatch, capsys, cache_dir, flag):
    """Before: zoo's check composed without it ("Cannot find primary config 'mine'", exit 1) or Hydra replaced
    zoo's own primary config and failed with its multi-line message; now one line pointing at --config-dir."""
    from zoo_core.cli import main as zoo_main

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nbatch_size: 3\n")
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    flags = [a.format(d=tmp_path / "cfg") for a in flag]
    args = ["run", *flags, "--config-name", "mine", "model=fixture", "stage=perf", f"work_dir={tmp_path / 'run'}"]
    assert zoo_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --config-path replaces zoo's primary config") and "hint: zoo run --config-dir" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags", [[], ["-m"]])
def test_a_path_hydra_must_have_quoted_is_named_with_its_quoted_form(tmp_path, monkeypatch, capsys, cache_dir, flags):
    """Before: `error: cannot parse overrides: LexerNoViableAltException: ...` and no word of quoting; now the
    override is named and the hint shows the quoted form, which Hydra reads back as the very path."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from zoo_core.cli import main as zoo_main

    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "josé" / "run"
    assert zoo_main(["run", *flags, "model=fixture", "stage=perf", f"work_dir={work}"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: cannot parse override work_dir={work}: token recognition error at: 'é'\n"
                   f"  hint: Hydra reads a value with a space, a non-ASCII letter or another character of its override "
                   f"grammar only when it is quoted: work_dir='{work}' (in a shell: \"work_dir='{work}'\")\n")
    [shell] = re.findall(r"in a shell: (.*)\)$", err.strip())
    [override] = shlex.split(shell)
    assert OverridesParser.create().parse_override(override).value() == str(work)
    assert not work.exists()
