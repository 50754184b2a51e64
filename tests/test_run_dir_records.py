"""Run-directory files tampered with JSON of the wrong type (a ``"fingerprint"`` list or string...): one line
naming the file, or the file treated as stale, never an "unexpected error" with a traceback (exit 1).

The ledgers (``index.jsonl``, ``meta.jsonl``) are in test_pipeline.py, the model records in test_export_keys.py
and test_om_record.py.
"""
from __future__ import annotations

import json
import shutil

import pytest

from tests.test_om_record import _ctx
from zoo_core.api.errors import ZooError

BAD_FINGERPRINTS = [[1, 2], "abc", 5, None]


@pytest.mark.parametrize("fp", BAD_FINGERPRINTS)
def test_resume_over_a_state_file_whose_fingerprint_is_not_an_object_is_refused_in_one_line(fixture_cfg, tmp_path,
                                                                                            fp):
    from zoo_core.runs.resume import ResumeRefused, start_resumable

    state = tmp_path / "outputs" / "state.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"stage": "infer", "fingerprint": fp}))
    ctx = _ctx(fixture_cfg, tmp_path, "infer", resume=True)
    with pytest.raises(ResumeRefused) as exc:
        start_resumable(ctx, state, {"model": "abc"}, lambda: None)
    assert str(exc.value).startswith(f"{state}: cannot resume: the state file is unreadable")
    assert json.loads(state.read_text())["fingerprint"] == fp  # left as it was


@pytest.mark.parametrize("key, value", [("fingerprint", v) for v in BAD_FINGERPRINTS]
                         + [("model_config", [1]), ("dataset_config", "abc")])
def test_evaluate_of_detections_whose_state_has_the_wrong_types_is_one_line(fixture_cfg, tmp_path, key, value):
    from zoo_core.stages.evaluate_stage import check_provenance

    ctx = _ctx(fixture_cfg, tmp_path, "evaluate")
    good = {"stage": "eval", "model_name": "fixture", "fingerprint": {"weights_sha256": None},
            "model_config": {}, "dataset_config": {}, "complete": True}
    state = tmp_path / "state.json"
    state.write_text(json.dumps(good))
    assert check_provenance(ctx, tmp_path)["fingerprint"] == {"weights_sha256": None}
    state.write_text(json.dumps({**good, key: value}))
    with pytest.raises(ZooError, match=f"state.json: unreadable detections state file: its '{key}' is not a JSON"):
        check_provenance(ctx, tmp_path)


def test_evaluate_of_detections_whose_state_is_a_fifo_names_it(fixture_cfg, tmp_path):
    """Before: "no state.json" (a warning) for a state.json that is there but is not a regular file."""
    import os

    from zoo_core.stages.evaluate_stage import check_provenance

    ctx = _ctx(fixture_cfg, tmp_path, "evaluate")
    os.mkfifo(tmp_path / "state.json")
    with pytest.raises(ZooError, match=r"state.json: is not a regular file"):
        check_provenance(ctx, tmp_path)


def test_postprocess_of_a_dump_whose_state_fingerprint_is_a_list(fixture_cfg, tmp_path, infer_run):
    """Before: AttributeError ('list' object has no attribute 'get'), exit 1; then the state was read as if it had
    no fingerprint. Now, as evaluate does, one line naming the file (exit 2)."""
    from zoo_core.stages import postprocess_stage

    dump = tmp_path / "dump"
    shutil.copytree(infer_run / "outputs", dump)
    state = json.loads((dump / "state.json").read_text())
    (dump / "state.json").write_text(json.dumps({**state, "fingerprint": [1]}))
    ctx = _ctx(fixture_cfg, tmp_path / "run", "postprocess", outputs_dir=str(dump),
               inputs_dir=str(infer_run / "inputs"))
    with pytest.raises(ZooError) as exc:
        postprocess_stage.run(ctx)
    assert str(exc.value).split("\n")[0] == (f"{dump / 'state.json'}: unreadable state file: its 'fingerprint' is "
                                             f"[1], not an object")


@pytest.mark.parametrize("text, said", [
    ('{"complete": false,}', "not JSON (Expecting property name enclosed in double quotes"),
    ("[1]", "a JSON array, not an object"),
    ('{"complete": "no"}', "its 'complete' is \"no\", not true/false"),
    ('{"model_name": ["centernet"]}', "its 'model_name' is [\"centernet\"], not a string"),
    ('{"model_config": "x"}', "its 'model_config' is \"x\", not an object or null"),
    ('{"fingerprint": null}', "its 'fingerprint' is null, not an object"),
    ('{"backend": 3}', "its 'backend' is 3, not a string or null"),
    ("[" * 100000, "its JSON is nested too deeply to read"),
])
def test_an_artifact_state_json_zoo_cannot_read_is_an_error_naming_it(tmp_path, text, said):
    """Before: ``artifact_state`` read such a file as no state (a seed dump), silently switching off the refusals
    it feeds (an unfinished preprocess, another model's outputs)."""
    from zoo_core.runs.layout import artifact_state

    (tmp_path / "state.json").write_text(text)
    with pytest.raises(ZooError) as exc:
        artifact_state(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path / 'state.json'}: unreadable state file: {said}")
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("state", [
    {},  # none at all: a seed or ais_bench dump
    {"stage": "preprocess", "model_name": "fixture", "fingerprint": {"model": "abc"}, "complete": True},  # older zoo
    {"stage": "infer", "model_name": "fixture", "fingerprint": {}, "backend": None, "model_config": {"a": 1},
     "dataset_config": None, "complete": False, "inputs_complete": False},
])
def test_an_artifact_state_json_as_any_zoo_wrote_it_is_read(tmp_path, state):
    from zoo_core.runs.layout import artifact_state

    if state:
        (tmp_path / "state.json").write_text(json.dumps(state))
    assert artifact_state(tmp_path) == state


def test_postprocess_refuses_outputs_whose_state_names_the_model_as_another_type(fixture_cfg, tmp_path):
    """Before: refuse_other_producer skipped its model check when ``model_name`` was not a string."""
    from zoo_core.runs.producer import refuse_other_producer

    state = tmp_path / "outputs" / "state.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"model_name": ["centernet"], "fingerprint": {}}))
    with pytest.raises(ZooError, match=r"unreadable state file: its 'model_name' is \["):
        refuse_other_producer(_ctx(fixture_cfg, tmp_path, "postprocess"), state.parent, "infer", "outputs")
