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
    """Before: AttributeError ('list' object has no attribute 'get'), exit 1."""
    from zoo_core.stages import postprocess_stage

    dump = tmp_path / "dump"
    shutil.copytree(infer_run / "outputs", dump)
    state = json.loads((dump / "state.json").read_text())
    (dump / "state.json").write_text(json.dumps({**state, "fingerprint": [1]}))
    ctx = _ctx(fixture_cfg, tmp_path / "run", "postprocess", outputs_dir=str(dump),
               inputs_dir=str(infer_run / "inputs"))
    assert postprocess_stage.run(ctx)["images"] == 12
