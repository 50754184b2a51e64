"""The stage chain says what it reads: ``postprocess`` refuses ``outputs/`` whose ``state.json`` records another
model or other values of the model keys that decide the network or its input (the plugin's ``export_keys`` /
``aipp_keys``), naming the file, the keys and both values; ``infer`` and ``postprocess`` warn about ``inputs/`` made
under other settings (which keys decide a preprocessed input is not declared, and a network-only key such as
``head_conv`` stays the run's choice), as ``evaluate`` does about its detections.

Before, ``preprocess model.input_hw=[640,640]`` then ``infer`` / ``postprocess`` with the default ``input_hw``
ran with exit 0 without a word, scored the 640x640 inputs and recorded ``input_hw: None`` in ``outputs/state.json``,
``detections/state.json`` and ``run.json``: a later ``evaluate`` then warned about the change backwards."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from zoo_core.api.errors import ZooError


def _ctx(fixture_cfg, root, stage, **over):
    from omegaconf import OmegaConf, open_dict

    from zoo_core.plugins.manager import ZooPluginManager
    from zoo_core.runs.context import RunContext

    cfg = fixture_cfg.copy()
    with open_dict(cfg):
        cfg.stage.name = stage
        cfg.num_workers = 0
        cfg.progress = False
        for k, v in over.items():
            OmegaConf.update(cfg, k, v, merge=False)
    return RunContext(cfg, ZooPluginManager(), root)


def _run(fixture_cfg, root, stage, **over):
    from zoo_core.runs.run_stage import run_stage

    return run_stage(_ctx(fixture_cfg, root, stage, **{"backend.name": "oracle", **over}))


def test_infer_warns_about_inputs_made_with_another_export_key(fixture_cfg, tmp_path, caplog):
    run = tmp_path / "run"
    _run(fixture_cfg, run, "preprocess", **{"model.sharpness": 30.0})
    with caplog.at_level("WARNING", logger="zoo"):
        _run(fixture_cfg, run, "infer")
    assert f"{run / 'inputs' / 'state.json'}: reading inputs made under a different setup" in caplog.text
    assert "model.sharpness: 30.0 -> 20.0" in caplog.text
    assert json.loads((run / "outputs" / "state.json").read_text())["complete"] is True


def test_postprocess_refuses_outputs_made_with_another_export_key(fixture_cfg, tmp_path):
    run = tmp_path / "run"
    for stage in ("preprocess", "infer"):
        _run(fixture_cfg, run, stage, **{"model.sharpness": 30.0})
    with pytest.raises(ZooError) as err:
        _run(fixture_cfg, run, "postprocess")
    assert err.value.path == run / "outputs" / "state.json"
    assert "model.sharpness: 30.0 there, 20.0 in this run" in str(err.value)
    assert "stage=infer" in err.value.hint
    assert not (run / "detections").exists() and not (run / "postprocess" / "metrics.json").exists()

    # the outputs of a seed / ais_bench dump say nothing of their settings: read as they are
    dump = tmp_path / "dump"
    dump.mkdir()
    for p in (run / "outputs").glob("*.bin"):
        shutil.copy(p, dump / p.name)
    rec = _run(fixture_cfg, tmp_path / "seed", "postprocess", outputs_dir=str(dump))
    assert rec["images"] == 12


def test_a_decode_key_of_its_own_is_warned_about_not_refused(fixture_cfg, tmp_path, caplog):
    """A key the plugin does not list as deciding the network or its input (a threshold) may differ: re-decoding
    saved outputs under another threshold is what postprocess is for; the difference is warned about, as evaluate
    does, and the detections record this run's value."""
    run = tmp_path / "run"
    for stage in ("preprocess", "infer"):
        _run(fixture_cfg, run, stage)
    with caplog.at_level("WARNING", logger="zoo"):
        rec = _run(fixture_cfg, run, "postprocess", **{"model.mask_threshold": 0.6})
    assert rec["images"] == 12
    assert f"{run / 'outputs' / 'state.json'}: reading outputs made under a different setup" in caplog.text
    assert "model.mask_threshold: 0.5 -> 0.6" in caplog.text
    assert json.loads((run / "detections" / "state.json").read_text())["model_config"]["mask_threshold"] == 0.6


def test_postprocess_warns_about_inputs_whose_metas_were_made_with_another_export_key(fixture_cfg, tmp_path, caplog):
    """outputs_dir= a foreign dump (no state.json), but the run dir's inputs/meta.jsonl, whose metas are decoded
    with, was made under other settings."""
    run = tmp_path / "run"
    for stage in ("preprocess", "infer"):
        _run(fixture_cfg, run, stage, **{"model.sharpness": 30.0})
    dump = tmp_path / "dump"
    shutil.copytree(run / "outputs", dump)
    (dump / "state.json").unlink()
    with caplog.at_level("WARNING", logger="zoo"):
        rec = _run(fixture_cfg, run, "postprocess", outputs_dir=str(dump))
    assert rec["images"] == 12
    assert f"{run / 'inputs' / 'state.json'}: reading inputs made under a different setup" in caplog.text


def test_a_plugin_without_export_keys_is_warned_not_refused(fixture_cfg):
    """Without declared ``export_keys`` nothing says which keys only change the decode: re-decoding saved outputs
    under another IoU threshold (the README's way to compare with published numbers) must not be refused."""
    from omegaconf import OmegaConf

    from zoo_core.runs.producer import deciding_model_keys

    model = OmegaConf.to_container(fixture_cfg.model)
    assert deciding_model_keys(OmegaConf.create({k: v for k, v in model.items() if k != "export_keys"})) == set()
    assert deciding_model_keys(fixture_cfg.model) == {"sharpness"}


def test_a_refusal_hint_gives_one_override_per_leaf_of_a_mapping():
    from zoo_core.runs.producer import _overrides

    assert _overrides("model.export", {"dcn_impl": "auto", "opset": 11}) == ["model.export.dcn_impl=auto",
                                                                             "model.export.opset=11"]
    assert _overrides("model.input_hw", [640, 640]) == ['"model.input_hw=[640, 640]"']
    assert _overrides("model.sharpness", 30.0) == ["model.sharpness=30.0"]


def _shell_words(text: str, cwd: Path) -> list[str]:
    """The words bash makes of ``text`` (pasted after a command), run in ``cwd``."""
    import subprocess

    out = subprocess.run(["bash", "-c", "printf '%s\\0' " + text], cwd=cwd, capture_output=True, check=True,
                         env={"PATH": "/usr/bin:/bin"}).stdout
    return out.decode().split("\0")[:-1]


@pytest.mark.parametrize("value", ["640;touch$IFS" + "pwned", "$(touch pwned)", "`touch pwned`", "a'b c;touch pwned",
                                   "x\\", "true", "1e3", "a\nb", "é", "null", [640, "x y;z"], 30.0, None,
                                   ["é"], ["a\\b"], [{"a": 1}], [["x", 2], []]])
def test_a_refusal_hint_is_one_shell_word_hydra_reads_back_as_the_recorded_value(value, tmp_path):
    """Before: a ``state.json`` value ``640;touch$IFS/tmp/x`` was printed unquoted in the hint
    ``pass the settings they were made with (model.input_hw=640;touch$IFS/tmp/x)``: pasted, it ran ``touch``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from zoo_core.runs.producer import _overrides

    [override] = _overrides("model.input_hw", value)
    [word] = _shell_words(override, tmp_path)  # one word for the shell, and nothing ran
    assert not (tmp_path / "pwned").exists()
    parsed = OverridesParser.create().parse_override(word)
    assert parsed.key_or_group == "model.input_hw" and parsed.value() == value


def test_a_refusal_naming_another_model_quotes_its_name_for_the_shell(fixture_cfg, tmp_path):
    """Before: ``hint: pass model=centernet;touch$IFS/tmp/x, ...``."""
    from zoo_core.runs.producer import refuse_other_producer

    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "state.json").write_text(json.dumps({"model_name": "centernet;touch$IFS" + "pwned"}))
    with pytest.raises(ZooError) as err:
        refuse_other_producer(_ctx(fixture_cfg, tmp_path, "postprocess"), tmp_path / "outputs", "infer", "outputs")
    said = err.value.hint.split(", or run")[0].removeprefix("pass ")
    assert _shell_words(said, tmp_path) == ["model=centernet;touch$IFS" + "pwned"]
    assert not (tmp_path / "pwned").exists()


def test_cli_postprocess_over_outputs_of_other_settings_exits_2_naming_the_state_file(zoo):
    zoo.ok("run", "model=fixture", "stage=preprocess", "backend=oracle", "num_workers=0", "work_dir=run",
           "model.sharpness=30")
    zoo.ok("run", "model=fixture", "stage=infer", "backend=oracle", "num_workers=0", "work_dir=run",
           "model.sharpness=30")
    rc, _out, err = zoo("run", "model=fixture", "stage=postprocess", "num_workers=0", "work_dir=run")
    assert rc == 2 and "Traceback" not in err
    state = Path(zoo.cwd) / "run" / "outputs" / "state.json"
    assert (f"{state}: these outputs were made with other model settings than this run's "
            f"(model.sharpness: 30.0 there, 20.0 in this run)") in err
    assert "hint: pass the settings they were made with (model.sharpness=30.0)" in err
