"""INT8 quantization (issue 15; docs/quantize.md): stage=quantize for onnxruntime (static QDQ, ONNX Runtime's
quantizer) and for Ascend (calibration .bin files + the AMCT command, run against ``fixtures/fake_ascend/amct_onnx``,
a contract double), and ``quantize=int8`` selecting the INT8 model in eval / perf / compare / convert."""
from __future__ import annotations

import json
import logging
import os
import shlex
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from omegaconf import OmegaConf

from tests.test_om_record import _ctx as _stage_ctx
from zoo_core.api.errors import ConfigError
from zoo_core.api.types import Sample
from zoo_core.quantize.calibration import calibration_samples


def _ctx(n_samples: int, n: int, seed: int):
    cfg = OmegaConf.create({"quantize": {"calibration_images": n, "seed": seed}, "dataset": {"name": "d"}})
    samples = [Sample(f"img{i:03d}", f"/x/img{i:03d}.jpg") for i in range(n_samples)]
    rng = np.random.default_rng(99)
    shuffled = [samples[i] for i in rng.permutation(n_samples)]   # the dataset's own order must not matter
    return SimpleNamespace(cfg=cfg, dataset=SimpleNamespace(samples=lambda: shuffled))


def test_calibration_draw_is_seeded_and_one_per_stratum():
    a = [s.id for s in calibration_samples(_ctx(100, 8, seed=0))]
    assert a == [s.id for s in calibration_samples(_ctx(100, 8, seed=0))]
    assert a != [s.id for s in calibration_samples(_ctx(100, 8, seed=1))]
    idx = [int(i[3:]) for i in a]
    edges = [0, 12, 25, 37, 50, 62, 75, 87, 100]   # 100 sorted ids cut into 8 strata
    assert all(edges[k] <= i < edges[k + 1] for k, i in enumerate(idx))
    assert [s.id for s in calibration_samples(_ctx(5, 8, seed=0))] == [f"img{i:03d}" for i in range(5)]


def _run_ctx(fixture_cfg, root, stage="quantize", **over):
    """An in-process run context of the fixture model in ``root`` (model_dir ``root/model``), a quantize stage's."""
    return _stage_ctx(fixture_cfg, root, stage, **over)


@pytest.mark.parametrize("images", [2, 1000])  # fewer than the dataset's 12 (a draw), more (all of them)
@pytest.mark.parametrize("target", ["onnxruntime", "ascend"])
def test_a_negative_seed_is_refused_before_anything_is_exported(fixture_cfg, tmp_path, images, target):
    """Before: quantize.seed=-1 failed with numpy's 'ValueError: expected non-negative integer' (exit 1) after the
    FP32 export was written, and was accepted silently when the dataset had no more images than were drawn."""
    from zoo_core.stages import quantize_stage

    ctx = _run_ctx(fixture_cfg, tmp_path, **{"quantize.seed": -1, "quantize.calibration_images": images,
                                             "export.target": target})
    with pytest.raises(ConfigError, match=r"quantize\.seed=-1 is invalid: it must be >= 0"):
        quantize_stage.run(ctx)
    assert not (tmp_path / "model").exists()


def test_the_calibration_images_are_drawn_before_anything_is_exported(fixture_cfg, tmp_path, monkeypatch):
    """Before: CenterNet stage=quantize on dataset=coco without dataset.root exported the 78 MB FP32 model (40 s)
    and only then said dataset.root is not set (the calibration images were drawn after the export)."""
    import zoo_core.quantize.onnxruntime_int8 as int8
    from zoo_core.api.errors import ZooError
    from zoo_core.stages import quantize_stage

    def no_images(ctx):
        raise ZooError("dataset.root is not set")

    monkeypatch.setattr(int8, "calibration_samples", no_images)
    with pytest.raises(ZooError, match="dataset.root is not set"):
        quantize_stage.run(_run_ctx(fixture_cfg, tmp_path))
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("bad", [{"quantize.seed": -1}, {"quantize.calibration_images": 0}])
def test_compare_with_int8_refuses_bad_quantize_settings_before_the_reference_exports(fixture_cfg, tmp_path, bad):
    """Before: stage=compare quantize=int8 opened the FP32 reference first (exporting it: 77 MB and 17 s for
    CenterNet) and refused the settings only when it built the candidate."""
    from zoo_core.stages import compare_stage

    ctx = _run_ctx(fixture_cfg, tmp_path, stage="compare", **{"quantize.name": "int8", "compare.reference":
                                                              "onnxruntime", "compare.candidate": "onnxruntime",
                                                              **bad})
    with pytest.raises(ConfigError, match=r"quantize\.(seed|calibration_images)=-?\d+ is invalid"):
        compare_stage.run(ctx)
    assert not (tmp_path / "model").exists()


def _onnx_symbolic_shape_inference_gives_up_on(path):
    """image (B,1,H,W) -> Conv stride 2 -> ConvTranspose stride 2 -> Add image -> Sigmoid: onnxruntime's symbolic
    shape inference cannot merge the ConvTranspose's new dims with the input's at the Add (as in CenterFace)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.random((32, 1, 3, 3), np.float32), "w"),  # > 1 KB: external data
             numpy_helper.from_array(rng.random((32, 1, 2, 2), np.float32), "wt")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2]),
             helper.make_node("Add", ["t", "image"], ["a"]), helper.make_node("Sigmoid", ["a"], ["mask"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 1, "H", "W"])],
                              [helper.make_tensor_value_info("mask", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_quantize_pre_processing_writes_nothing_in_the_current_directory(tmp_path, monkeypatch, caplog):
    """Before: every onnxruntime quantize of CenterFace / CenterNet left sym_shape_infer_temp.onnx + <uuid>.data
    (7.2 MB / 78 MB) in the current directory: onnxruntime saves its partial model there when its symbolic shape
    inference gives up."""
    from zoo_core.quantize.onnxruntime_int8 import prepared_model

    fp32 = _onnx_symbolic_shape_inference_gives_up_on(tmp_path / "m.onnx")
    cwd, work = tmp_path / "cwd", tmp_path / "model"
    cwd.mkdir()
    work.mkdir()
    monkeypatch.chdir(cwd)
    with caplog.at_level("INFO", logger="zoo"):
        model = prepared_model(fp32, True, work)
    assert "without symbolic shape inference" in caplog.text  # the path that used to write into the cwd
    assert [n.op_type for n in model.graph.node] == ["Conv", "ConvTranspose", "Add", "Sigmoid"]
    assert list(cwd.iterdir()) == [] and list(work.iterdir()) == [] and os.getcwd() == str(cwd)


def _onnx_conv_bn_sigmoid(path):
    """The fixture model's interface (image -> mask) with a BatchNormalization after its Conv, nodes unnamed."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 1, 3, 3)).astype(np.float32), "w"),
             *(numpy_helper.from_array(np.array([v], np.float32), k)
               for k, v in (("g", 1.5), ("b", 0.1), ("mean", 0.2), ("var", 0.9)))]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "mean", "var"], ["bn"]),
             helper.make_node("Sigmoid", ["bn"], ["mask"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 1, "H", "W"])],
                              [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", 1, "H", "W"])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_an_exclude_op_type_folded_by_pre_processing_is_refused_saying_so(fixture_cfg, tmp_path):
    """Before: quantize.exclude_op_types=[BatchNormalization] was checked on the FP32 graph (which has the BN) while
    the exclusions were taken from the graph after quant_pre_process, which folds BN into the Conv: nothing was
    excluded, the model was byte-identical to the default one, exit 0."""
    from zoo_core.quantize.onnxruntime_int8 import ensure_int8_onnx

    fp32 = _onnx_conv_bn_sigmoid(tmp_path / "bn.onnx")
    over = {"quantize.exclude_op_types": ["BatchNormalization"], "quantize.calibration_images": 2}
    with pytest.raises(ConfigError) as err:
        ensure_int8_onnx(_run_ctx(fixture_cfg, tmp_path, **over), str(fp32))
    assert str(err.value).startswith("quantize.exclude_op_types: 'BatchNormalization': no such node is left in the "
                                     "graph that is quantized: quantize.preprocess (onnxruntime's quant_pre_process) "
                                     "folded the 1 BatchNormalization node(s) of bn.onnx")
    assert "quantize.preprocess=false" in err.value.hint
    assert not list((tmp_path / "model").glob("*int8*"))
    # without pre-processing the BN is a node of the quantized graph, and it is kept in FP32
    path = ensure_int8_onnx(_run_ctx(fixture_cfg, tmp_path, **over, **{"quantize.preprocess": False}), str(fp32))
    rec = _record(tmp_path / "model", "fixture")
    assert rec["fp32_nodes"] == {"BatchNormalization": 1} and rec["excluded"]["nodes"] == ["BatchNormalization_1"]
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("BatchNormalization") == 1


def test_exclude_nodes_takes_a_node_by_the_tensor_it_writes_and_lists_the_choices(fixture_cfg, tmp_path):
    """Before: the Star-Clouds CenterFace nodes have no names (zoo names them <op>_<index> after pre-processing),
    and quantize.exclude_nodes=[539] (an output tensor) failed with 'no node named '539' in the centerface graph',
    no hint of the names there are."""
    from zoo_core.quantize.onnxruntime_int8 import ensure_int8_onnx

    fp32 = _onnx_conv_bn_sigmoid(tmp_path / "bn.onnx")  # after pre-processing: Conv (BN folded) -> Sigmoid
    with pytest.raises(ConfigError) as err:
        ensure_int8_onnx(_run_ctx(fixture_cfg, tmp_path, **{"quantize.exclude_nodes": ["Conv_9", "maks"]}), str(fp32))
    assert str(err.value).partition("\n")[0] == ("quantize.exclude_nodes: no node named 'Conv_9', 'maks' (nor writing a tensor of that "
                              "name) in the fixture graph bn.onnx as it is quantized (2 nodes; close: Conv_0 (-> bn), "
                              "Sigmoid_1 (-> mask); writing the graph's outputs: Sigmoid_1 (-> mask))")
    assert "quantize.exclude_nodes=[mask]" in err.value.hint and "<op type>_<index>" in err.value.hint
    assert not list((tmp_path / "model").glob("*int8*"))
    ensure_int8_onnx(_run_ctx(fixture_cfg, tmp_path, **{"quantize.exclude_nodes": ["mask"],
                                                        "quantize.calibration_images": 2}), str(fp32))
    rec = _record(tmp_path / "model", "fixture")
    assert rec["excluded"]["nodes"] == ["Sigmoid_1"] and rec["fp32_nodes"] == {"Sigmoid": 1}


#: Two quantize settings that give two INT8 models of the fixture computing different outputs (its calibration
#: images all span the same ranges, so two seeds give one model).
SETTINGS = {0: {"quantize.method": "minmax"}, 1: {"quantize.method": "percentile", "quantize.percentile": 90.0}}


def _int8_job(fixture_cfg, fixture_onnx, root, which, model_dir, stage="eval"):
    """A run of ``stage`` with ``quantize=int8`` and the settings ``SETTINGS[which]`` in ``root``, its INT8 model
    in ``model_dir``."""
    return _run_ctx(fixture_cfg, root, stage=stage, **{"quantize.name": "int8", "quantize.calibration_images": 2,
                                                       "model_dir": str(model_dir), "model_file": str(fixture_onnx),
                                                       **SETTINGS[which]})


@pytest.fixture
def int8_by_job(fixture_cfg, fixture_onnx, tmp_path):
    """The oracle: the INT8 model of each of the two settings, each built alone in its own model_dir."""
    from zoo_core.quantize.onnxruntime_int8 import ensure_int8_onnx

    out = {i: ensure_int8_onnx(_int8_job(fixture_cfg, fixture_onnx, tmp_path / f"alone{i}", i,
                                         tmp_path / f"alone{i}" / "model")).read_bytes() for i in (0, 1)}
    assert out[0] != out[1]
    return out


def _outputs(model: bytes | str) -> np.ndarray:
    import onnxruntime as ort

    x = np.random.default_rng(5).random((1, 1, 64, 64), np.float32)
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


def test_a_parallel_job_replacing_the_shared_int8_model_changes_neither_what_a_run_loads_nor_records(
        fixture_cfg, fixture_onnx, tmp_path, monkeypatch, int8_by_job):
    """Before: in a parallel sweep over quantize settings sharing model_dir (audit: zoo run -m
    hydra/launcher=joblib model=centerface stage=eval quantize=int8 quantize.seed=0,1) both jobs wrote
    <model_dir>/<model>_onnxruntime_int8.onnx; job 0 scored with its seed-0 model but its run.json hashed that file
    at the end: the seed-1 model (exit 0); a job loading it after the other's write would run the other's model."""
    import hashlib

    from zoo_core.quantize import onnxruntime_int8
    from zoo_core.runs.records import write_run_record
    from zoo_core.stages.open_backend import open_backend

    shared = tmp_path / "shared"
    job0 = _int8_job(fixture_cfg, fixture_onnx, tmp_path / "0", 0, shared)
    job1 = _int8_job(fixture_cfg, fixture_onnx, tmp_path / "1", 1, shared)
    build = onnxruntime_int8.ensure_int8_onnx

    def then_job1_builds(ctx, given=None):  # job 1 replaces the shared file between job 0's build and its load
        path = build(ctx, given)
        if ctx is job0:
            build(job1, given)
        return path

    monkeypatch.setattr(onnxruntime_int8, "ensure_int8_onnx", then_job1_builds)
    backend = open_backend(job0)
    assert (shared / "fixture_onnxruntime_int8.onnx").read_bytes() == int8_by_job[1]
    np.testing.assert_array_equal(backend.session.run(None, {"image": np.random.default_rng(5).random(
        (1, 1, 64, 64), np.float32)})[0], _outputs(int8_by_job[0]))
    assert not np.array_equal(_outputs(int8_by_job[0]), _outputs(int8_by_job[1]))
    build(job1, None)  # and once more before job 0's records are written
    run = json.loads(write_run_record(job0, {"backend": backend.describe(), **job0.notes}).read_text())
    sha0 = hashlib.sha256(int8_by_job[0]).hexdigest()
    assert run["inputs"]["model_file"]["sha256"] == sha0 == run["int8_calibration"]["sha256"]
    assert run["inputs"]["model_file"]["path"] == str(tmp_path / "0" / "eval" / "fixture_onnxruntime_int8.onnx")
    assert json.loads((tmp_path / "0" / "eval" / "fixture_onnxruntime_int8.json").read_text())["sha256"] == sha0
    assert run["int8_calibration"]["model_dir_file"] == str(shared / "fixture_onnxruntime_int8.onnx")


def test_an_int8_model_replaced_while_it_is_checked_for_reuse_is_rebuilt_not_used(
        fixture_cfg, fixture_onnx, tmp_path, monkeypatch, caplog, int8_by_job):
    """The shared file is replaced (by a job with other settings, its record not yet written) after this run read
    the record that matches it: the bytes checked are those linked for the run, so it rebuilds its own model."""
    from zoo_core.quantize import onnxruntime_int8
    from zoo_core.runs import model_files

    shared = tmp_path / "shared"
    job0 = _int8_job(fixture_cfg, fixture_onnx, tmp_path / "0", 0, shared)
    onnxruntime_int8.ensure_int8_onnx(job0)  # the shared file and its record: job 0's
    link = model_files.link_model_file

    def replaced_first(src, dst):
        if src.name == "fixture_onnxruntime_int8.onnx" and src.read_bytes() == int8_by_job[0]:
            (shared / "other.tmp").write_bytes(int8_by_job[1])
            os.replace(shared / "other.tmp", src)
        return link(src, dst)

    monkeypatch.setattr(onnxruntime_int8, "link_model_file", replaced_first)
    with caplog.at_level("INFO", logger="zoo"):
        path = onnxruntime_int8.ensure_int8_onnx(_int8_job(fixture_cfg, fixture_onnx, tmp_path / "0", 0, shared))
    assert "rebuilding fixture_onnxruntime_int8.onnx: it no longer matches the sha256 recorded" in caplog.text
    assert path.read_bytes() == int8_by_job[0]


def test_an_int8_model_is_rebuilt_after_a_plugin_zoo_core_or_onnxruntime_upgrade(fixture_cfg, fixture_onnx, tmp_path,
                                                                                 monkeypatch, caplog):
    """Before: the INT8 record held no versions and the re-export after an upgrade wrote the same FP32 bytes, so an
    upgrade that changed preprocessing (the calibration tensors) reused the stale INT8 model ('reusing ... its
    quantization inputs are unchanged', other AP than a fresh build, exit 0). Now the plugin's, zoo-core's and
    the quantizer's (onnxruntime's) versions are in its fingerprint; a change rebuilds it, naming the versions."""
    from zoo_core.quantize import onnxruntime_int8

    core = {"v": "0.1.0"}
    monkeypatch.setattr("zoo_core.runs.fingerprint.core_version", lambda: core["v"], raising=False)
    model_dir = tmp_path / "model"

    def build() -> str:
        caplog.clear()
        with caplog.at_level("INFO", logger="zoo"):
            onnxruntime_int8.ensure_int8_onnx(_int8_job(fixture_cfg, fixture_onnx, tmp_path / "r", 0, model_dir))
        return caplog.text

    build()
    record = json.loads((model_dir / "fixture_onnxruntime_int8.json").read_text())["fingerprint"]
    import onnxruntime

    assert record["zoo_core"] == "0.1.0" and record["plugin"].startswith("zoo-fixture ")
    assert record["quantizer"] == f"onnxruntime {onnxruntime.__version__}"
    assert "reusing" in build()  # nothing changed
    core["v"] = "0.2.0"
    said = build()
    assert "reusing" not in said and "zoo_core: '0.1.0' -> '0.2.0'" in said
    monkeypatch.setattr(onnxruntime_int8, "quantizer_version", lambda: "onnxruntime 99.0", raising=False)
    said = build()
    assert "reusing" not in said and f"quantizer: 'onnxruntime {onnxruntime.__version__}' -> 'onnxruntime 99.0'" in said


def test_a_batchnorm_scale_quantized_per_tensor_is_one_info_line_not_a_warning_each(fixture_cfg, tmp_path, caplog):
    """Before: onnxruntime's 'Axis 1 is out-of-range for weight ... with rank 1' printed once per BatchNormalization
    left in the graph (16 warnings on every CenterNet quantize): it quantizes a rank-1 BN scale per tensor."""
    from zoo_core.quantize.onnxruntime_int8 import ensure_int8_onnx

    fp32 = _onnx_conv_bn_sigmoid(tmp_path / "bn.onnx")
    with caplog.at_level("INFO"):
        ensure_int8_onnx(_run_ctx(fixture_cfg, tmp_path, **{"quantize.preprocess": False,
                                                             "quantize.calibration_images": 2}), str(fp32))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "out-of-range" in r.getMessage()]
    assert "1 weight(s) with no channel axis quantized per tensor" in caplog.text and "first: g" in caplog.text
    assert "BatchNormalization" in _record(tmp_path / "model", "fixture")["quantized_nodes"]


def test_a_bad_calibration_image_is_named_once(fixture_cfg, tmp_path):
    """Before: 'error: <path>: calibration image: <path>: not a decodable image (...)'; a skip's reason (and so
    '... skipped (on_error=skip; first: <path>: <reason>)') repeated the path too."""
    from zoo_core.api.errors import InputError
    from zoo_core.quantize.calibration import calibration_inputs

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    good = calibration_samples(_run_ctx(fixture_cfg, tmp_path, **{"quantize.calibration_images": 1}))
    with pytest.raises(InputError) as err:
        calibration_inputs(_run_ctx(fixture_cfg, tmp_path), [Sample("bad", str(bad))])
    assert str(err.value) == f"{bad}: calibration image: not a decodable image (corrupt, truncated or not an image file)"
    cal = calibration_inputs(_run_ctx(fixture_cfg, tmp_path, on_error="skip"), [Sample("bad", str(bad)), *good])
    assert cal.skipped == [{"id": "bad", "path": str(bad),
                            "reason": "not a decodable image (corrupt, truncated or not an image file)"}]


@pytest.fixture
def ascend_env(zoo, fixtures_dir, tmp_path):
    fake = fixtures_dir / "fake_ascend"
    return zoo.env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(fake),
                   FAKE_ATC_LOG=str(tmp_path / "atc_argv.json"), FAKE_AMCT_LOG=str(tmp_path / "amct_argv.json"))


def _no_amct_env(zoo):
    return zoo.env(PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                        if not os.path.exists(os.path.join(p, "amct_onnx"))))


def _record(model_dir, name="fixture"):
    return json.loads((model_dir / f"{name}_onnxruntime_int8.json").read_text())


def test_quantize_onnxruntime_writes_a_qdq_int8_model_with_its_record(zoo, fixture_onnx):
    zoo.ok("run", "model=fixture", "stage=quantize", f"model_file={fixture_onnx}", "quantize.calibration_images=4")
    model_dir = zoo.cwd / "outputs" / "fixture" / "model"
    path = model_dir / "fixture_onnxruntime_int8.onnx"
    rec = _record(model_dir)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "Conv" in ops
    assert rec["quantized_nodes"] == {"Conv": 1, "Sigmoid": 1} and rec["format"] == "QDQ"
    assert rec["fingerprint"]["quantize"]["method"] == "minmax" and rec["fingerprint"]["quantize"]["per_channel"]
    assert len(rec["calibration"]["ids"]) == 4 == rec["calibration"]["images"]
    assert rec["excluded"] == {"op_types": [], "nodes": []}
    summary = json.loads((zoo.cwd / "outputs" / "fixture" / "quantize" / "run.json").read_text())
    assert summary["status"] == "ok"


def test_calibration_is_deterministic_for_a_seed(zoo, fixture_onnx, tmp_path):
    runs = []
    for d, seed in (("a", 0), ("b", 0), ("c", 3)):
        zoo.ok("run", "model=fixture", "stage=quantize", f"model_file={fixture_onnx}", f"work_dir={d}",
               "quantize.calibration_images=3", f"quantize.seed={seed}", "quantize.method=percentile")
        model_dir = zoo.cwd / d / "model"
        runs.append(((model_dir / "fixture_onnxruntime_int8.onnx").read_bytes(), _record(model_dir)))
    (a, ra), (b, rb), (_c, rc) = runs
    assert a == b and ra["calibration"] == rb["calibration"] and ra["sha256"] == rb["sha256"]
    assert rc["calibration"]["ids"] != ra["calibration"]["ids"]


def test_int8_eval_builds_then_reuses_then_rebuilds_on_a_setting(zoo, fixture_onnx):
    args = ("run", "model=fixture", "stage=eval", "quantize=int8", f"model_file={fixture_onnx}",
            "quantize.calibration_images=4")
    zoo.ok(*args)
    perf = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "perf.json").read_text())
    assert perf["model_file"].endswith("fixture_onnxruntime_int8.onnx")
    m = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "metrics.json").read_text())
    assert m["metrics"]  # scored
    log = (zoo.cwd / "outputs" / "fixture" / "eval" / "zoo.log")
    zoo.ok(*args)
    assert "reusing" in log.read_text() and "fixture_onnxruntime_int8.onnx" in log.read_text()
    zoo.ok(*args, "quantize.method=entropy")
    text = log.read_text()
    assert "rebuilding fixture_onnxruntime_int8.onnx" in text and "quantize" in text
    assert _record(zoo.cwd / "outputs" / "fixture" / "model")["fingerprint"]["quantize"]["method"] == "entropy"


@pytest.mark.parametrize("backend", ["oracle", "torch"])
def test_int8_with_a_backend_that_runs_no_model_file_is_refused(zoo, backend):
    rc, out, err = zoo("run", "model=fixture", "stage=eval", f"backend={backend}", "quantize=int8")
    assert rc == 2 and f"quantize=int8 does not apply to backend={backend}" in err and "Traceback" not in err


def test_bad_quantize_settings_exit_2(zoo, fixture_onnx):
    rc, out, err = zoo("run", "model=fixture", "stage=quantize", f"model_file={fixture_onnx}",
                       "quantize.calibration_images=0")
    assert rc == 2 and "quantize.calibration_images=0" in err
    rc, out, err = zoo("run", "model=fixture", "stage=quantize", f"model_file={fixture_onnx}",
                       "quantize.exclude_nodes=[nope]")
    assert rc == 2 and "no node named 'nope'" in err
    rc, out, err = zoo("run", "model=fixture", "stage=quantize", "quantize.method=kl")
    assert rc == 2 and "kl" in err


def test_compare_fp32_reference_with_int8_candidate(zoo, fixture_onnx):
    rc, out, err = zoo("run", "model=fixture", "stage=compare", "compare.reference=onnxruntime",
                       "compare.candidate=onnxruntime", "quantize=int8", f"model_file={fixture_onnx}",
                       "compare.reference_model=" + str(fixture_onnx), "quantize.calibration_images=4")
    assert rc in (0, 1), err
    res = json.loads((zoo.cwd / "outputs" / "fixture" / "compare" / "compare.json").read_text())
    assert res["reference"]["model_file"] == str(fixture_onnx)
    assert res["candidate"]["model_file"].endswith("fixture_onnxruntime_int8.onnx")
    assert res["images"] > 0
    # run.json names the INT8 model judged and its calibration, as for eval / perf / predict (before: neither)
    run = json.loads((zoo.cwd / "outputs" / "fixture" / "compare" / "run.json").read_text())
    assert run["inputs"]["model_file"]["path"] == res["candidate"]["model_file"]
    assert len(run["int8_calibration"]["ids"]) == 4 and run["int8_calibration"]["sha256"]


def test_quantize_ascend_without_amct_writes_bins_and_the_command(zoo, fixture_onnx):
    rc, out, err = zoo("run", "model=fixture", "stage=quantize", "export.target=ascend",
                       f"model_file={fixture_onnx}", "quantize.calibration_images=3", env=_no_amct_env(zoo))
    assert rc == 0, err
    model_dir = zoo.cwd / "outputs" / "fixture" / "model"
    script = model_dir / "amct_bs1.sh"
    assert "amct_onnx is not on PATH" in out and str(script) in out and os.access(script, os.X_OK)
    argv = shlex.split(script.read_text().splitlines()[-1])
    cal = model_dir / "calibration" / "image"
    assert argv[:2] == ["amct_onnx", "calibration"]
    assert f"--model={fixture_onnx}" in argv and f"--save_path={model_dir / 'amct_bs1' / 'fixture'}" in argv
    assert "--input_shape=image:1,1,64,64" in argv and f"--data_dir={cal}" in argv
    assert "--data_types=float32" in argv and "--batch_num=3" in argv
    bins = sorted(cal.glob("*.bin"))
    assert [p.name for p in bins] == ["000000.bin", "000001.bin", "000002.bin"]
    assert all(p.stat().st_size == 64 * 64 * 4 for p in bins)
    assert not (model_dir / "amct_bs1").exists()


@pytest.mark.needs_torch
def test_amct_calibrates_an_aipp_model_on_the_onnxs_float_input(zoo):
    """Before: with model.aipp=true AMCT got the OM's uint8 HWC input (image:1,800,800,3, uint8) for an ONNX
    whose input is float32 NCHW: AIPP exists only after ATC (REFERENCE 3.4, 5.2)."""
    args = ("model=centerface", "model.variant=ascend", "model.aipp=true", "stage=quantize", "export.target=ascend",
            "quantize.calibration_images=2", "weights=random", "dataset.limit=4")
    rc, out, err = zoo("run", *args, env=_no_amct_env(zoo))
    assert rc == 0, err
    model_dir = zoo.cwd / "outputs" / "centerface" / "model"
    argv = shlex.split((model_dir / "amct_bs1.sh").read_text().splitlines()[-1])
    graph_input = onnx.load(str(model_dir / "centerface_ascend.onnx"), load_external_data=False).graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert "--input_shape=image:1,3,800,800" in argv and "--data_types=float32" in argv
    bins = sorted((model_dir / "calibration" / "image").glob("*.bin"))
    assert len(bins) == 2 and all(b.stat().st_size == 3 * 800 * 800 * 4 for b in bins)
    x = np.fromfile(bins[0], np.float32)
    assert x.min() < -1 and x.max() > 1  # normalised, not 0..255 pixels


def test_quantize_ascend_runs_amct_then_convert_and_acl_take_the_int8_model(zoo, ascend_env, fixture_onnx, tmp_path):
    zoo.ok("run", "model=fixture", "stage=quantize", "export.target=ascend", f"model_file={fixture_onnx}",
           "quantize.calibration_images=3", env=ascend_env)
    model_dir = zoo.cwd / "outputs" / "fixture" / "model"
    deploy = model_dir / "amct_bs1" / "fixture_deploy_model.onnx"
    contract = json.loads((model_dir / "amct_bs1" / "fixture_contract.json").read_text())
    assert deploy.is_file() and contract["batch_num"] == 3 and contract["inputs"]["image"]["dims"] == [1, 1, 64, 64]
    argv = json.loads((tmp_path / "amct_argv.json").read_text())
    assert argv[0] == "calibration" and "--batch_num=3" in argv
    # the calibration tensors are the eval preprocessing of the drawn images: same bytes as preprocess writes
    zoo.ok("run", "model=fixture", "stage=preprocess", env=ascend_env)
    pre = {p.read_bytes() for p in (zoo.cwd / "outputs" / "fixture" / "inputs").glob("*.bin")}
    assert {p.read_bytes() for p in (model_dir / "calibration" / "image").glob("*.bin")} <= pre
    zoo.ok("run", "model=fixture", "stage=convert", "quantize=int8", env=ascend_env)
    atc = json.loads((tmp_path / "atc_argv.json").read_text())
    assert f"--model={deploy}" in atc and f"--output={model_dir / 'fixture_int8_bs1'}" in atc
    assert (model_dir / "fixture_int8_bs1.om").is_file() and (model_dir / "atc_int8_bs1.sh").is_file()
    zoo.ok("run", "model=fixture", "stage=eval", "backend=acl", "quantize=int8", env=ascend_env)
    perf = json.loads((zoo.cwd / "outputs" / "fixture" / "eval" / "perf.json").read_text())
    assert perf["model_file"].endswith("fixture_int8_bs1.om")


def test_convert_int8_without_amct_says_what_to_run(zoo, fixture_onnx, fixtures_dir):
    env = _no_amct_env(zoo)
    rc, out, err = zoo("run", "model=fixture", "stage=convert", "quantize=int8", "quantize.calibration_images=2",
                       env=env)
    assert rc == 2 and "amct_onnx is not on PATH" in err and "amct_bs1.sh" in err and "Traceback" not in err


@pytest.mark.parametrize("pct, ok", [(100.0, True), (99.999, True), (0.0, False), (100.5, False)])
def test_the_percentile_may_be_100_but_not_0_or_above(fixture_cfg, tmp_path, pct, ok):
    """docs/errors.md: quantize.percentile must be within (0, 100]: 100 is accepted and recorded; 0 and anything
    above 100 are refused."""
    from zoo_core.quantize.calibration import settings

    ctx = _run_ctx(fixture_cfg, tmp_path, **{"quantize.method": "percentile", "quantize.percentile": pct})
    if ok:
        assert settings(ctx)["percentile"] == pct
    else:
        with pytest.raises(ConfigError, match=rf"quantize\.percentile={pct} is invalid: it must be within \(0, 100\]"):
            settings(ctx)


def test_the_calibration_digest_tells_dtypes_apart_when_the_bytes_are_equal():
    """The digest covers each tensor's name, dtype, shape and bytes: all-zero float32 and int32 tensors (the same
    bytes) are different calibration inputs, so an INT8 model calibrated on one is not reused for the other."""
    from zoo_core.quantize.calibration import calibration_digest

    f32 = [{"image": np.zeros((1, 3, 2, 2), np.float32)}]
    i32 = [{"image": np.zeros((1, 3, 2, 2), np.int32)}]
    assert f32[0]["image"].tobytes() == i32[0]["image"].tobytes()
    assert calibration_digest(f32) != calibration_digest(i32)
    assert calibration_digest(f32) == calibration_digest([{"image": np.zeros((1, 3, 2, 2), np.float32)}])
