"""References (hook ``references``): which ones a run is judged against, the verdicts, the gate; CLI wiring
on the bundled CenterFace eval (the Star-Clouds sample reference)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from zoo_core.api.types import Reference
from zoo_core.runs.references import gate_failures, judge, verdict_lines

PROTO_04 = {"model.variant": "ascend", "dataset.name": "widerface", "model.iou_thresh": 0.4}


def _cfg(**over):
    base = {"model": {"variant": "ascend", "iou_thresh": 0.4, "threshold": 0.05, "keep_res": False},
            "dataset": {"name": "widerface", "limit": None, "num_shards": 1},
            "backend": {"name": "onnxruntime"}}
    cfg = OmegaConf.create(base)
    for k, v in over.items():
        OmegaConf.update(cfg, k.replace("__", "."), v)
    return cfg


REFS = [
    Reference("easy", 0.9257, 0.005, "chenjun2hao", PROTO_04),
    Reference("easy", 0.9191, 0.005, "Ascend 310 OM", {**PROTO_04, "backend.name": "acl"}),
    Reference("hard", 0.7717, 0.005, "chenjun2hao", PROTO_04),
    Reference("easy", 0.9688, 0.005, "sample", {"model.variant": "starclouds", "dataset.name": "widerface_sample",
                                                "model.iou_thresh": 0.5}),
]


def test_a_matching_protocol_gets_a_verdict_with_delta_and_source():
    verdicts, mismatches = judge(_cfg(), REFS, {"easy": 0.9230, "hard": 0.7000})
    assert mismatches == []
    assert verdicts["easy"]["expected"] == 0.9257 and verdicts["easy"]["source"] == "chenjun2hao"
    assert verdicts["easy"]["within"] is True and verdicts["easy"]["delta"] == pytest.approx(-0.0027)
    assert verdicts["hard"]["within"] is False and verdicts["hard"]["delta"] == pytest.approx(-0.0717)
    assert gate_failures(verdicts) == [
        "hard: measured 0.7000, reference 0.7717 ± 0.005: off by -0.0717"]


@pytest.mark.parametrize("easy, shown, mark", [
    (0.97379, "0.97379 vs 0.96880 ± 0.005 (delta +0.00499): ok", None),
    (0.97381, "0.97381 vs 0.96880 ± 0.005 (delta +0.00501): OUT OF TOLERANCE", "off by +0.00501"),
    (0.9738, "0.9738 vs 0.9688 ± 0.005 (delta +0.0050): ok", None),  # exactly on the edge: 4 digits say it
    (0.9700, "0.9700 vs 0.9688 ± 0.005 (delta +0.0012): ok", None),
])
def test_a_verdict_near_the_tolerance_prints_the_digits_that_decide_it(easy, shown, mark):
    verdicts, _ = judge(_cfg(model__variant="starclouds", dataset__name="widerface_sample", model__iou_thresh=0.5),
                        REFS, {"easy": easy})
    assert f"easy       {shown}" in "\n".join(verdict_lines({"reference": verdicts}))
    assert gate_failures(verdicts) == ([f"easy: measured {easy:.5f}, reference 0.96880 ± 0.005: {mark}"]
                                       if mark else [])


def test_the_most_specific_reference_wins_on_its_backend():
    verdicts, _ = judge(_cfg(backend__name="acl"), REFS, {"easy": 0.9200})
    assert verdicts["easy"]["source"] == "Ascend 310 OM" and verdicts["easy"]["within"] is True
    assert [a["source"] for a in verdicts["easy"]["also"]] == ["chenjun2hao"]
    onnx, _ = judge(_cfg(), REFS, {"easy": 0.9200})
    assert onnx["easy"]["source"] == "chenjun2hao" and "also" not in onnx["easy"]


def test_another_iou_is_a_protocol_mismatch_said_not_compared():
    verdicts, mismatches = judge(_cfg(model__iou_thresh=0.5), REFS, {"easy": 0.91, "hard": 0.70})
    assert verdicts == {}
    assert {(m["metric"], m["source"]) for m in mismatches} == {("easy", "chenjun2hao"), ("hard", "chenjun2hao")}
    assert all(m["differs"] == {"model.iou_thresh": {"reference": 0.4, "run": 0.5}} for m in mismatches)
    text = "\n".join(verdict_lines({"reference_mismatches": mismatches}))
    assert "protocol mismatch (model.iou_thresh is 0.5 here, 0.4 there)" in text
    # the acl-only reference is about another backend: neither compared nor reported as a mismatch
    assert "Ascend 310 OM" not in text


def test_a_reference_note_is_printed_with_its_verdict_or_mismatch():
    # the CenterFace IoU note was zoo-core's WIDER evaluator's info.note, printed for every model scored on
    # WIDER FACE; it now rides on CenterFace's own references and is printed with them only
    from zoo_centerface.references import IOU_NOTE, REFERENCES

    assert all(r.note == IOU_NOTE for r in REFERENCES)
    noted = [Reference(r.metric, r.expected, r.tolerance, r.source, r.protocol, note="uses IoU 0.4") for r in REFS]
    verdicts, _ = judge(_cfg(), noted, {"easy": 0.9230, "hard": 0.7000})
    assert verdict_lines({"reference": verdicts}).count("    (note: uses IoU 0.4)") == 1
    _, mismatches = judge(_cfg(model__iou_thresh=0.5), noted, {"easy": 0.91, "hard": 0.70})
    [line] = verdict_lines({"reference_mismatches": mismatches})
    assert line.endswith("[chenjun2hao] (note: uses IoU 0.4)")
    assert not any("note" in ln for ln in verdict_lines({"reference": judge(_cfg(), REFS, {"easy": 0.92})[0]}))


def test_another_variant_or_dataset_is_not_about_this_run():
    assert judge(_cfg(model__variant="starclouds"), REFS[:3], {"easy": 0.9}) == ({}, [])
    assert judge(_cfg(dataset__name="widerface_sample"), REFS[:3], {"easy": 0.9}) == ({}, [])


def test_decoding_parameters_are_not_protocol():
    verdicts, _ = judge(_cfg(model__threshold=0.6), REFS, {"easy": 0.80})
    assert verdicts["easy"]["within"] is False


def test_a_subset_of_the_dataset_is_a_mismatch():
    verdicts, mismatches = judge(_cfg(dataset__limit=10), REFS, {"easy": 0.9257})
    assert verdicts == {}
    assert mismatches[0]["differs"] == {"dataset.limit": {"reference": None, "run": 10}}
    _, shard = judge(_cfg(dataset__num_shards=4), REFS, {"easy": 0.9257})
    assert shard[0]["differs"] == {"dataset.num_shards": {"reference": 1, "run": 4}}


def test_another_number_of_images_than_the_references_is_a_mismatch():
    """Before: a COCO-format set of one's own saved as instances_val2017.json (400 images) was judged, and gated,
    against the val2017 AP 0.366 ("OUT OF TOLERANCE", exit 1 with gate=true)."""
    ref = Reference("easy", 0.9257, 0.005, "chenjun2hao", PROTO_04, images=3226)
    verdicts, mismatches = judge(_cfg(), [ref], {"easy": 0.5}, images=400)
    assert verdicts == {} and mismatches[0]["differs"] == {"images": {"reference": 3226, "run": 400}}
    assert mismatches[0]["images"] == 3226
    verdicts, mismatches = judge(_cfg(), [ref], {"easy": 0.9257}, images=3226)
    assert verdicts["easy"]["within"] is True and mismatches == []
    verdicts, _ = judge(_cfg(), REFS, {"easy": 0.9257}, images=400)  # a reference that names no count
    assert verdicts["easy"]["within"] is True


def test_the_oracle_reproduces_no_models_reference_unless_the_reference_names_it():
    """Before: `backend=oracle` on CenterFace printed OUT OF TOLERANCE (AP 1.0 against the weights' 0.9688)."""
    verdicts, mismatches = judge(_cfg(backend__name="oracle"), REFS, {"easy": 1.0, "hard": 1.0})
    assert verdicts == {}
    assert {m["source"] for m in mismatches} == {"chenjun2hao"}  # the acl one differs in backend.name anyway
    assert all(m["differs"]["backend.name"]["run"] == "oracle" for m in mismatches)
    oracle_ref = [Reference("easy", 1.0, 0.0, "oracle", {**PROTO_04, "backend.name": "oracle"})]
    assert judge(_cfg(backend__name="oracle"), oracle_ref, {"easy": 1.0})[0]["easy"]["within"] is True


def test_the_backend_that_made_saved_outputs_stands_for_the_runs_backend():
    """evaluate / postprocess pass ``made_by``: oracle-made detections are a mismatch, as eval said."""
    verdicts, mismatches = judge(_cfg(), REFS, {"easy": 1.0, "hard": 1.0}, made_by="oracle")
    assert verdicts == {} and {m["source"] for m in mismatches} == {"chenjun2hao"}
    assert all(m["differs"]["backend.name"]["run"] == "oracle" for m in mismatches)
    acl, _ = judge(_cfg(backend__name="oracle"), REFS, {"easy": 0.9200}, made_by="acl")
    assert acl["easy"]["source"] == "Ascend 310 OM" and acl["easy"]["within"] is True
    assert judge(_cfg(), REFS, {"easy": 0.9257}, made_by=None) == judge(_cfg(), REFS, {"easy": 0.9257})


def test_evaluate_and_postprocess_judge_oracle_outputs_as_eval_does(tmp_path, monkeypatch, cache_dir):
    """Before: ``stage=evaluate`` of ``backend=oracle`` detections (and ``postprocess`` of oracle outputs) judged
    them for their own backend (onnxruntime): a model's reference was compared with the ground truth's 1.0
    ("OUT OF TOLERANCE"), and the fixture's oracle-only reference was not compared at all."""
    from zoo_core.cli import main as zoo_main

    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    common = ["model=fixture", "num_workers=0", f"work_dir={run}"]
    assert zoo_main(["run", *common, "stage=eval", "backend=oracle"]) == 0
    made = json.loads((run / "eval" / "metrics.json").read_text())
    assert made["reference"]["AP50"]["within"] is True
    assert json.loads((run / "detections" / "state.json").read_text())["backend"] == "oracle"
    for stages in (["stage=evaluate"], ["stage=preprocess", "stage=infer backend=oracle", "stage=postprocess"]):
        for stage in stages:
            assert zoo_main(["run", *common, *stage.split()]) == 0
        name = stages[-1].split("=")[1]
        m = json.loads((run / name / "metrics.json").read_text())
        assert m["reference"] == made["reference"] and "reference_mismatches" not in m, name
    assert json.loads((run / "evaluate" / "metrics.json").read_text())["provenance"]["backend"] == "oracle"


def test_values_compare_by_type():
    keep = [Reference("AP", 0.366, 0.003, "fix_res", {"dataset.name": "widerface", "model.keep_res": False})]
    assert "AP" in judge(_cfg(), keep, {"AP": 0.366})[0]
    # 0 is not False, and a missing key never matches
    zero = [Reference("AP", 0.366, 0.003, "x", {"dataset.name": "widerface", "model.keep_res": 0})]
    assert judge(_cfg(), zero, {"AP": 0.366})[0] == {}
    missing = [Reference("AP", 0.366, 0.003, "x", {"dataset.name": "widerface", "model.nope": 1})]
    _, mm = judge(_cfg(), missing, {"AP": 0.366})
    assert mm[0]["differs"] == {"model.nope": {"reference": 1, "run": "<not set>"}}


def test_undefined_or_unreported_metric_fails_the_gate():
    verdicts, _ = judge(_cfg(), REFS, {"easy": None})
    assert verdicts["easy"]["within"] is False and "undefined" in verdicts["easy"]["why"]
    assert "hard" in verdicts and "did not report" in verdicts["hard"]["why"]
    assert len(gate_failures(verdicts)) == 2


def test_a_reference_outside_the_interval_fails_the_gate_even_within_tolerance():
    verdicts, _ = judge(_cfg(), REFS[:1], {"easy": 0.9220}, {"easy": [0.9210, 0.9240]})
    assert verdicts["easy"]["within"] is True and verdicts["easy"]["in_ci95"] is False
    assert gate_failures(verdicts) == ["easy: reference 0.9257 lies outside the 95% interval of the measured 0.9220"]
    inside, _ = judge(_cfg(), REFS[:1], {"easy": 0.9220}, {"easy": [0.9100, 0.9300]})
    assert inside["easy"]["in_ci95"] is True and gate_failures(inside) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"tolerance": -0.1}, "tolerance must be >= 0"),
    ({"expected": float("nan")}, "finite number"),
    ({"source": " "}, "source"),
    ({"protocol": {}}, "non-empty mapping"),
    ({"protocol": {"model.": 1}}, "dotted config keys"),
    ({"images": 0}, "positive int"),
    ({"images": 5000.0}, "positive int"),
])
def test_a_malformed_reference_is_refused(kwargs, message):
    args = {"metric": "AP", "expected": 0.3, "tolerance": 0.01, "source": "s", "protocol": {"dataset.name": "coco"}}
    with pytest.raises(ValueError, match=message):
        Reference(**{**args, **kwargs})


def test_plugins_declare_the_published_numbers():
    from zoo_centerface.references import REFERENCES as CF
    from zoo_centernet.references import REFERENCES as CN

    assert [r.expected for r in CF if r.protocol.get("dataset.name") == "widerface" and "backend.name" not in
            r.protocol] == [0.9257383, 0.9131309, 0.7717306]
    assert [r.expected for r in CF if r.protocol.get("backend.name") == "acl"] == [0.9190736, 0.9067769, 0.7425807]
    assert all(r.protocol["model.iou_thresh"] == 0.4 for r in CF if r.protocol["dataset.name"] == "widerface")
    assert [r.expected for r in CF if r.protocol["dataset.name"] == "widerface_sample"] == [0.9688, 0.9754, 0.7409]
    fix, keep = CN
    assert (fix.expected, fix.protocol["model.keep_res"]) == (0.366, False)
    assert (keep.expected, keep.protocol["model.keep_res"]) == (0.374, True)
    assert abs(0.364 - fix.expected) <= fix.tolerance  # the OM's 36.4 is within the fix_res tolerance
    assert {r.images for r in CN} == {5000}  # val2017, annotated or not (REFERENCE 2.9)
    assert {r.images for r in CF if r.protocol["dataset.name"] == "widerface"} == {3226}
    assert {r.images for r in CF if r.protocol["dataset.name"] == "widerface_sample"} == {24}


# ----------------------------------------------------------------------------------------------------- CLI

SAMPLE_PINNED = {"easy": 0.9688, "medium": 0.9754, "hard": 0.7409}


def _metrics(zoo) -> dict:
    return json.loads((zoo.cwd / "outputs" / "centerface" / "eval" / "metrics.json").read_text())


@pytest.mark.slow
def test_bundled_centerface_eval_prints_its_verdict_and_bootstrap_interval(zoo):
    out = zoo.ok("run", "model=centerface", "stage=eval", "bootstrap=300", "bootstrap_seed=5", "gate=true")
    m = _metrics(zoo)
    assert "reference: pinned in this repository" in out
    for k, v in SAMPLE_PINNED.items():
        ref = m["reference"][k]
        assert (ref["expected"], ref["within"], ref["in_ci95"]) == (v, True, True)
        assert abs(ref["measured"] - v) <= ref["tolerance"]
        lo, hi = m["ci95"][k]
        assert lo <= m["metrics"][k] <= hi
        assert f"{k:<10} {m['metrics'][k]:.4f} vs {v:.4f} ± 0.005" in out
    assert m["bootstrap"]["n"] == 300 and m["bootstrap"]["seed"] == 5 and m["bootstrap"]["images"] == 24
    assert "95% intervals (bootstrap over images, N=300, seed 5)" in out


@pytest.mark.slow
def test_gate_fails_with_exit_1_when_decoding_changes_and_metrics_json_is_still_written(zoo):
    code, out, err = zoo("run", "model=centerface", "stage=eval", "model.threshold=0.6", "gate=true")
    assert code == 1, err
    assert "gate: the run does not reproduce its reference" in err and "OUT OF TOLERANCE" in err
    m = _metrics(zoo)
    assert m["reference"]["hard"]["within"] is False and m["metrics"]["hard"] < 0.7409 - 0.005
    run = json.loads((zoo.cwd / "outputs" / "centerface" / "eval" / "run.json").read_text())
    assert run["status"] == "failed"
    # the record of the scored run names the model file it scored (before: only the dataset's files)
    model = run["inputs"]["model_file"]
    assert run["backend"]["backend"] == "onnxruntime" and model["path"] == run["backend"]["model_file"]
    assert model["sha256"] == hashlib.sha256(Path(model["path"]).read_bytes()).hexdigest()


@pytest.mark.slow
def test_protocol_mismatch_is_said_and_the_gate_has_nothing_to_check(zoo):
    out = zoo.ok("run", "model=centerface", "stage=eval", "model.iou_thresh=0.4")
    assert "protocol mismatch (model.iou_thresh is 0.4 here, 0.5 there)" in out
    m = _metrics(zoo)
    assert "reference" not in m
    assert {x["metric"] for x in m["reference_mismatches"]} == {"easy", "medium", "hard"}
    code, _, err = zoo("run", "model=centerface", "stage=eval", "model.iou_thresh=0.4", "gate=true")
    assert code == 1 and "nothing to gate on" in err


# ------------------------------------------------------------------------------ the fixture plugin (fast)


def test_fixture_oracle_reference_gates_both_ways(zoo):
    zoo.ok("run", "model=fixture", "stage=eval", "backend=oracle", "gate=true")
    m = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "metrics.json").read_text())
    assert m["reference"]["AP50"]["within"] is True and m["reference"]["AP50"]["measured"] == 1.0
    code, _, err = zoo("run", "model=fixture", "stage=eval", "backend=oracle", "gate=true",
                       FIXTURE_REFERENCE_AP50="0.9")
    assert code == 1 and "AP50: measured 1.0000, reference 0.9000" in err, err
    m = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "metrics.json").read_text())
    assert m["reference"]["AP50"]["within"] is False  # written before the gate failed the run
    # without gate=true the same verdict is printed, and the run succeeds
    out = zoo.ok("run", "model=fixture", "stage=eval", "backend=oracle", FIXTURE_REFERENCE_AP50="0.9")
    assert "OUT OF TOLERANCE" in out


def test_bootstrap_with_an_evaluator_that_has_no_intervals_says_so(zoo):
    out = zoo.ok("run", "model=fixture", "stage=eval", "backend=oracle", "bootstrap=50", "bootstrap_seed=3")
    m = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "metrics.json").read_text())
    assert m["ci95"] == {} and m["bootstrap"]["n"] == 50 and m["bootstrap"]["seed"] == 3
    assert "computed no bootstrap intervals" in m["bootstrap"]["note"] and "bootstrap:" in out


@pytest.mark.parametrize("bad", ["bootstrap=1", "bootstrap=-5"])
def test_bad_bootstrap_is_a_config_error(zoo, bad):
    code, _, err = zoo("run", "model=fixture", "stage=eval", "backend=oracle", bad)
    assert code == 2 and "must be 0 (off) or the number of resamples" in err


def test_negative_bootstrap_seed_is_refused_before_any_image_runs(zoo):
    """Before: bootstrap_seed=-1 ran every image, then numpy's default_rng raised 'ValueError: expected
    non-negative integer' (exit 1, no metrics.json) or, with an evaluator that has no intervals, was written
    to metrics.json as the seed (exit 0)."""
    run_dir = zoo.cwd / "outputs" / "fixture"
    code, _, err = zoo("run", "model=fixture", "stage=eval", "backend=oracle", "bootstrap=50", "bootstrap_seed=-1")
    assert code == 2 and "bootstrap_seed=-1 is invalid: it must be >= 0" in err, err
    assert not (run_dir / "detections").exists() and not (run_dir / "eval" / "metrics.json").exists()
    zoo.ok("run", "model=fixture", "stage=eval", "backend=oracle")
    before = (run_dir / "eval" / "metrics.json").read_bytes()
    code, _, err = zoo("run", "model=fixture", "stage=evaluate", "bootstrap=50", "bootstrap_seed=-1")
    assert code == 2 and "bootstrap_seed=-1 is invalid: it must be >= 0" in err, err
    assert (run_dir / "eval" / "metrics.json").read_bytes() == before


def test_bootstrap_request_names_a_negative_seed():
    from zoo_core.api.errors import ConfigError
    from zoo_core.datasets import bootstrap_request

    assert bootstrap_request(OmegaConf.create({"bootstrap": 200, "bootstrap_seed": 7})) == (200, 7)
    with pytest.raises(ConfigError, match=r"bootstrap_seed=-1 is invalid"):
        bootstrap_request(OmegaConf.create({"bootstrap": 200, "bootstrap_seed": -1}))


def test_one_shard_is_not_gated_and_says_why_it_was_not_compared(zoo):
    zoo.ok("run", "model=fixture", "stage=eval", "backend=oracle", "gate=true", "dataset.num_shards=2",
           "dataset.shard=0")
    m = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "metrics.json").read_text())
    assert "reference" not in m
    assert m["reference_mismatches"][0]["differs"] == {"dataset.num_shards": {"reference": 1, "run": 2}}
    code, _, err = zoo("run", "model=fixture", "stage=eval", "backend=oracle", "gate=true", "dataset.limit=3")
    assert code == 1 and "nothing to gate on" in err


def test_a_composed_config_with_typed_enum_fields_matches_its_declared_reference():
    """Typed plugin schemas turn ``model.variant`` into an Enum; the protocol still compares the YAML value."""
    from zoo_centerface.references import REFERENCES
    from zoo_core.config.validate import compose

    cfg = compose(["model=centerface", "stage=eval"])
    verdicts, mismatches = judge(cfg, list(REFERENCES), {"easy": 0.9688, "medium": 0.9754, "hard": 0.7409})
    assert mismatches == []
    assert sorted(verdicts) == ["easy", "hard", "medium"]
    assert all(v["within"] for v in verdicts.values())
    assert verdicts["easy"]["expected"] == 0.9688
