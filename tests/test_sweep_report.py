"""What the sweep report shows a person: title, table formatting, failures in full, told-apart model
files, convert columns, and the plots (throughput from 0, one legend entry per series, Pareto front)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from zoo_core.reports import sweep_report as sr

LONG_ERROR = ("onnxruntime cannot load this model: [ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from "
              "/data/models/centerface_onnxruntime.onnx failed:This is an invalid model. In Node, ('Conv_12', Conv, "
              "\"\", -1) : (\"input\": tensor(float),) -> (\"x\": tensor(float),) , Error Node (Conv_12) has input size 1 "
              "not in range [min=2, max=3].\n  hint: re-export it | or pass model_file=")


def row(job, status="ok", **kw):
    return {"job": str(job), "status": status, "model": "centerface", "stage": kw.pop("stage", "perf"),
            "backend": "onnxruntime", "host": "node7", **kw}


def table(md: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]] for ln in lines]
    return split[0], split[2:]


def test_markdown_has_a_title_job_count_without_merges_decimals_per_column_and_full_errors():
    rows = [row(0, **{"@dataset.shard": "0"}, throughput=123.456, latency_mean_ms=8.1, **{"metric:AP": 0.41234}),
            row(1, "failed", **{"@dataset.shard": "1"}, error=LONG_ERROR),
            row(2, **{"@dataset.shard": "2"}, throughput=99.0, latency_mean_ms=10.25, **{"metric:AP": 0.4}),
            {"job": "merged", "@dataset.shard": "all", "status": "ok", "metric:AP": 0.40625}]
    md = sr.write_markdown(rows, ["dataset.shard"], sr.title_of(rows))
    assert md.splitlines()[0] == "# Sweep report: centerface · perf · onnxruntime · host node7"
    assert "3 jobs (1 failed), 1 shard merge (0 failed)" in md.splitlines()
    head, cells = table(md)
    assert head == ["dataset.shard", "status", "throughput (img/s)", "latency mean (ms)", "AP"]
    assert [c[2] for c in cells] == ["123.5", "", "99.0", ""]      # one number of decimals per column
    assert [c[3] for c in cells] == ["8.10", "", "10.25", ""]
    assert [c[4] for c in cells] == ["0.4123", "", "0.4000", "0.4062"]
    assert cells[1][1] == "failed [1]"
    note = next(ln for ln in md.splitlines() if ln.startswith("1. job `1`: "))
    assert note == "1. job `1`: " + LONG_ERROR.replace("|", "\\|").replace("\n", " ")  # whole, not cut


def test_model_file_column_tells_different_files_apart():
    rows = [row(0, model_file="/sweep/0/model/centerface_onnxruntime.onnx", model_sha256="a" * 64),
            row(1, model_file="/sweep/1/model/centerface_onnxruntime.onnx", model_sha256="b" * 64),
            row(2, model_file="/sweep/0/model/centerface_onnxruntime.onnx", model_sha256="a" * 64)]
    head, cells = table(sr.write_markdown(rows, ["job"]))
    col = head.index("model file")
    assert [c[col] for c in cells] == ["0/model/centerface_onnxruntime.onnx (aaaaaaaa)",
                                       "1/model/centerface_onnxruntime.onnx (bbbbbbbb)",
                                       "0/model/centerface_onnxruntime.onnx (aaaaaaaa)"]
    assert sr.short_paths(["/m/a.onnx", "/m/b.onnx"]) == {"/m/a.onnx": "a.onnx", "/m/b.onnx": "b.onnx"}


def test_throughput_plot_starts_at_zero_with_one_legend_entry_per_series():
    rows = [row(f"{b}{t}", **{"@batch_size": str(b), "@backend.intra_op_threads": str(t)}, throughput=10.0 * b + t)
            for t in (1, 2) for b in (1, 4, 16)]
    fig = sr.figure(rows, ["batch_size", "backend.intra_op_threads"], "centerface · perf · onnxruntime · host h")
    [ax] = fig.axes
    assert ax.get_label() == "throughput" and ax.get_ylim()[0] == 0
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "backend.intra_op_threads"
    assert [t.get_text() for t in legend.get_texts()] == ["1", "2"]
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[1, 4, 16], [1, 4, 16]]
    assert list(ax.get_lines()[1].get_ydata()) == [12.0, 42.0, 162.0]
    assert fig._suptitle.get_text() == "centerface · perf · onnxruntime · host h"


def test_pareto_plot_labels_each_point_and_draws_the_front():
    pts = {"none": (20.0, 0.91), "int8": (35.0, 0.89), "int8-bad": (30.0, 0.70)}
    rows = [row(i, stage="eval", **{"@quantize": q}, throughput=x, **{"metric:easy": y, "metric:hard": 0.5})
            for i, (q, (x, y)) in enumerate(pts.items())]
    rows.append({"job": "merged", "status": "ok", "metric:easy": 0.99})  # merges have no throughput: not plotted
    fig = sr.figure(rows, ["quantize"])
    assert [a.get_label() for a in fig.axes] == ["throughput", "pareto"]
    ax = fig.axes[1]
    assert ax.get_xlabel() == "throughput (img/s)" and ax.get_ylabel() == "easy"
    assert ax.get_xlim()[0] == 0 and ax.get_ylim()[0] == 0
    assert sorted(t.get_text() for t in ax.texts) == ["int8", "int8-bad", "none"]
    front = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    assert list(zip(front.get_xdata(), front.get_ydata())) == [(20.0, 0.91), (35.0, 0.89)]
    assert sr.pareto_front([(1, 1), (2, 0.5), (0.5, 0.5), (2, 1)]) == [3]


MATHTEXT = "$\\frac{$"  # mathtext matplotlib cannot parse: drawing it as math raises


def test_labels_and_titles_are_drawn_as_written_never_as_mathtext():
    """Before: a sweep value, job label or title holding '$...$' was parsed as mathtext (one like '$\\frac{$'
    raised while the figure was drawn)."""
    rows = [row(i, stage="eval", **{"@quantize": q}, throughput=10.0 + i, **{"metric:easy": 0.5 + i / 10})
            for i, q in enumerate((MATHTEXT, "$x^2$"))]
    png = sr.plot_png(rows, ["quantize"], MATHTEXT)
    assert png is not None and png[:4] == b"\x89PNG"
    fig = sr.figure(rows, ["quantize"], MATHTEXT)
    assert sorted(t.get_text() for t in fig.axes[1].texts) == sorted([MATHTEXT, "$x^2$"])
    assert all(not t.get_parse_math() for t in fig.axes[1].texts)


def test_a_shard_sweep_has_no_pareto_plot():
    rows = [row(i, stage="eval", **{"@dataset.shard": str(i)}, throughput=10.0 + i, **{"metric:AP": 0.4})
            for i in range(3)]
    assert [a.get_label() for a in sr.figure(rows, ["dataset.shard"]).axes] == ["throughput"]


def test_convert_sweep_shows_om_files_and_atc_status(zoo, fixtures_dir, fixture_onnx, tmp_path):
    fake = fixtures_dir / "fake_ascend"
    env = zoo.env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", FAKE_ATC_LOG=str(tmp_path / "argv.json"))
    sweep = tmp_path / "sweep"
    zoo.ok("run", "-m", "model=fixture", "stage=convert", "batch_size=1,2", f"model_file={fixture_onnx}",
           f"hydra.sweep.dir={sweep}", env=env)
    md = (sweep / "sweep_report.md").read_text()
    assert md.splitlines()[0].startswith("# Sweep report: fixture · convert · atc Ascend310P3 · host ")
    head, cells = table(md)
    assert head == ["batch_size", "status", "OM file", "ATC"]
    assert cells == [["1", "ok", "fixture_bs1.om", "converted"], ["2", "ok", "fixture_bs2.om", "converted"]]
    result = json.loads((sweep / "1" / "convert" / "result.json").read_text())
    assert result["converted"] is True and result["om"].endswith("fixture_bs2.om")
    assert not (sweep / "sweep_report.png").exists()  # nothing to plot, no empty picture


def test_rebuild_tool_says_what_is_missing(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "zoo_core.reports.sweep_report", *map(str, args)],
                              capture_output=True, text=True)

    p = run(tmp_path / "nope")
    assert p.returncode == 2 and p.stderr.startswith(f"error: {tmp_path / 'nope'}: no such directory")
    p = run(tmp_path)
    assert p.returncode == 2 and "no sweep jobs found" in p.stderr
    assert run().returncode == 2


@pytest.mark.parametrize("values, decimals", [([0.4123, 0.9], 4), ([12.5, 99.0], 2), ([55.1, 289.8], 1),
                                              ([13806.7], 1), ([0.07, 0.17], 4), ([None, "x"], 2)])
def test_decimals_follow_the_largest_value_of_a_column(values, decimals):
    assert sr.decimals_for(values) == decimals


def test_a_fully_resumed_job_has_no_throughput_or_latency_and_says_why(tmp_path):
    """Before: a job whose images were all resumed showed 0 img/s and 0 ms (perf.json of 0 timed images)."""
    for job, perf in (("0", {"images": 0, "resumed_images": 4, "throughput_img_s": 0.0,
                             "device_call_ms": {"mean": 0.0, "p99": 0.0}}),
                      ("1", {"images": 4, "resumed_images": 0, "throughput_img_s": 8.0,
                             "device_call_ms": {"mean": 120.0, "p99": 150.0}})):
        rec = tmp_path / job / "eval"
        (rec / ".hydra").mkdir(parents=True)
        (rec / ".hydra" / "overrides.yaml").write_text(f"- model=fixture\n- dataset.shard={job}\n")
        (rec / "perf.json").write_text(json.dumps({"stage": "eval", **perf}))
        (rec / "metrics.json").write_text(json.dumps({"metrics": {"AP50": 1.0}, "images": 4}))
    rows, swept = sr.collect_rows(tmp_path)
    assert [r["throughput"] for r in rows] == [None, 8.0]
    assert [r["latency_mean_ms"] for r in rows] == [None, 120.0]
    md = sr.write_markdown(rows, swept)
    head, cells = table(md)
    assert cells[0][head.index("throughput (img/s)")] == "" and cells[0][head.index("latency mean (ms)")] == ""
    assert cells[0][head.index("status")] == "ok [1]"
    assert "1. job `0`: all 4 images were resumed from an earlier run: no throughput or latency measured" in md
    ax = sr.figure(rows, swept).axes[0]
    assert [p.get_height() for p in ax.patches] == [8.0]  # the resumed job is not plotted at 0


def fake_job(sweep, job: str, stage: str, overrides: list[str], mtime: float, **records) -> None:
    """A job's record dir ``<sweep>/<job>/<stage>`` with its overrides and ``records`` (name -> JSON), all
    dated ``mtime``."""
    rec = sweep / job / stage
    (rec / ".hydra").mkdir(parents=True, exist_ok=True)
    (rec / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (rec / ".hydra" / "config.yaml").write_text(f"model:\n  name: fixture\nstage:\n  name: {stage}\n")
    for name, obj in records.items():
        (rec / f"{name}.json").write_text(json.dumps(obj))
    for p in [*rec.rglob("*"), rec]:
        os.utime(p, (mtime, mtime))


def fake_multirun(sweep, mtime: float, hydra_overrides: tuple[str, ...] = ()) -> None:
    (sweep / "multirun.yaml").write_text(json.dumps({"hydra": {"overrides": {"hydra": list(hydra_overrides)}}}))
    os.utime(sweep / "multirun.yaml", (mtime, mtime))


def test_a_chained_sweep_is_reported_for_the_stage_it_ran(tmp_path, capsys):
    """Before: every job dir was read as its first stage in STAGES order (preprocess), whose records are
    older than the infer sweep: no job was found, the infer sweep had no report and exited 0, and the
    rebuild said "no sweep jobs found"."""
    t = 1_700_000_000.0
    for job in ("0", "1"):
        fake_job(tmp_path, job, "preprocess", ["stage=preprocess", f"dataset.shard={job}"], t,
                 run={"status": "ok"})
    fake_multirun(tmp_path, t + 60)  # the infer sweep into the same dir
    for job in ("0", "1"):
        fake_job(tmp_path, job, "infer", ["stage=infer", f"dataset.shard={job}"], t + 70,
                 run={"status": "ok"}, perf={"images": 4, "throughput_img_s": 5.0})
    assert [f.records.name for f in sr.sweep_jobs(tmp_path)] == ["infer", "infer"]
    assert sr.main([str(tmp_path)]) == 0
    md = capsys.readouterr().out
    assert "# Sweep report: fixture · infer ·" in md and "2 jobs (0 failed)" in md


def test_a_sweep_whose_jobs_the_report_cannot_find_says_so(zoo):
    """Before: the sweep printed no report and exited 0 (its jobs' records were not where it looked)."""
    sweep = zoo.cwd / "sweep"
    rc, out, err = zoo("run", "-m", "model=fixture", "backend=oracle", "stage=eval", "dataset.limit=2",
                       "batch_size=1,2", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=nested/${hydra.job.num}/eval")
    assert rc == 1, out + err
    assert "job failed" not in err and "warning" not in err
    assert err.strip().splitlines()[-1] == (f"error: {sweep}: the sweep report found no job of this sweep (a job dir "
                                            f"<n>/ with <stage>/.hydra/overrides.yaml written since the sweep "
                                            f"started): no report written")


def test_a_stage_writing_no_perf_or_metrics_that_ended_ok_has_a_result(tmp_path):
    """Before: a successful preprocess sweep was reported "no result (killed, or still running)" with
    re-run commands."""
    fake_job(tmp_path, "0", "preprocess", ["stage=preprocess"], 1_700_000_000.0, run={"status": "ok"})
    fake_job(tmp_path, "1", "preprocess", ["stage=preprocess"], 1_700_000_000.0, run={"status": "running"})
    summary = sr.build_report(tmp_path)
    assert summary["no_result"] == 1
    md = summary["markdown"]
    assert [r[-1] for r in table(md)[1]] == ["ok", "no result [1]"]
    assert "job `0`" not in md and "1. job `1`: no result (killed, or still running). Re-run it" in md


def test_a_shard_without_images_says_so_not_that_they_were_resumed(tmp_path):
    """Before: "all 0 images were resumed from an earlier run" for a shard of dataset.limit=3 num_shards=5."""
    fake_job(tmp_path, "3", "eval", ["dataset.shard=3"], 1_700_000_000.0, run={"status": "ok"},
             perf={"images": 0, "resumed_images": 0, "skipped": 0, "throughput_img_s": 0.0},
             metrics={"metrics": {"AP50": None}, "images": 0})
    rows, _ = sr.collect_rows(tmp_path)
    assert rows[0]["note"] == ("its share of the dataset holds no image (more shards than images): no throughput "
                               "or latency measured")
    assert sr.untimed_note({"images": 0, "skipped": 2}).startswith("all 2 images were skipped (on_error=skip)")


def test_rerun_commands_name_the_sweep_dir_absolute_when_given_relative(tmp_path, monkeypatch, capsys):
    """Before: ``python -m zoo_core.reports.sweep_report sweep`` wrote ``hydra.sweep.dir=sweep`` into its
    re-run commands, which run elsewhere (another cwd) into another dir."""
    fake_job(tmp_path / "sweep", "0", "perf", ["model=fixture", "stage=perf", "batch_size=1"], 1_700_000_000.0)
    monkeypatch.chdir(tmp_path)
    sr.main(["sweep"])
    assert f"hydra.sweep.dir={tmp_path / 'sweep'} hydra.sweep.subdir=0/perf" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["swé ep dir", "it's, \\ a: dir", "plain"])
def test_a_rerun_command_gives_back_the_exact_sweep_dir_through_the_shell_and_hydra(tmp_path, name):
    """Before: `'hydra.sweep.dir=/tmp/swé ep dir'` (only shell-quoted), which Hydra's parser refuses when pasted
    (LexerNoViableAltException). Now the value is quoted in Hydra's grammar, then for the shell."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from zoo_core.reports.shard_merge import rerun_command

    sweep = tmp_path / name
    fake_job(sweep, "0", "perf", ["model=fixture", "stage=perf", "batch_size=1"], 1_700_000_000.0)
    rerun = rerun_command(sweep, sr.sweep_jobs(sweep)[0])
    argv = shlex.split(rerun)
    assert argv[:3] == ["zoo", "run", "-m"]
    parsed = {o.get_key_element(): o.value() for o in OverridesParser.create().parse_overrides(argv[3:])}
    assert parsed["hydra.sweep.dir"] == str(sweep) and parsed["hydra.sweep.subdir"] == "0/perf"
    assert parsed["batch_size"] == 1


def test_a_patch_rerun_keeps_the_jobs_of_an_older_sweep_in_the_dir_out(tmp_path):
    """A 3-job sweep into a dir holding an older 5-job sweep ignores jobs 3 and 4; before, re-running one
    of its jobs in place (hydra.sweep.subdir=, as the report's commands do) brought them back."""
    t = 1_700_000_000.0
    for job in range(5):
        fake_job(tmp_path, str(job), "perf", ["stage=perf", f"batch_size={job + 1}", "dataset.limit=9"], t,
                 perf={"images": 9, "throughput_img_s": 1.0})
    fake_multirun(tmp_path, t + 100)
    for job in range(3):
        fake_job(tmp_path, str(job), "perf", ["stage=perf", f"batch_size={job + 1}"], t + 110,
                 perf={"images": 4, "throughput_img_s": 2.0})
    assert sr.build_report(tmp_path)["jobs"] == 3
    fake_multirun(tmp_path, t + 200, ("hydra.sweep.dir=x", "hydra.sweep.subdir=1/perf"))  # the patch re-run
    fake_job(tmp_path, "1", "perf", ["stage=perf", "batch_size=2"], t + 210, perf={"images": 4, "throughput_img_s": 3.0})
    assert [f.root.name for f in sr.sweep_jobs(tmp_path)] == ["0", "1", "2"]
    summary = sr.build_report(tmp_path)
    assert summary["jobs"] == 3 and "dataset.limit" not in summary["markdown"]
    fake_multirun(tmp_path, t + 300, ("hydra.sweep.subdir=2/perf",))  # a second one adds to the first
    fake_job(tmp_path, "2", "perf", ["stage=perf", "batch_size=3"], t + 310, perf={"images": 4, "throughput_img_s": 3.0})
    assert [f.root.name for f in sr.sweep_jobs(tmp_path)] == ["0", "1", "2"]


def test_a_patch_rerun_after_a_sweep_that_never_reported_takes_that_sweeps_jobs(tmp_path):
    """A new sweep empties the manifest when it starts; killed before its report, its jobs are those written
    since then, not those of the older sweep the manifest listed."""
    from omegaconf import OmegaConf

    t = 1_700_000_000.0
    for job in range(5):
        fake_job(tmp_path, str(job), "perf", ["stage=perf", f"batch_size={job + 1}"], t, perf={"images": 9})
    sr.write_manifest(tmp_path, sr.sweep_jobs(tmp_path))
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "overrides": {"hydra": []}}})
    sr.SweepReport().on_multirun_start(cfg)  # the new sweep starts...
    assert json.loads((tmp_path / sr.MANIFEST).read_text())["jobs"] is None
    os.utime(tmp_path / sr.MANIFEST, (t + 100, t + 100))
    fake_multirun(tmp_path, t + 100)
    for job in range(2):  # ...runs jobs 0 and 1, and is killed
        fake_job(tmp_path, str(job), "perf", ["stage=perf", f"batch_size={job + 1}"], t + 110, perf={"images": 4})
    fake_multirun(tmp_path, t + 200, ("hydra.sweep.subdir=2/perf",))
    fake_job(tmp_path, "2", "perf", ["stage=perf", "batch_size=3"], t + 210, perf={"images": 4})
    assert [f.root.name for f in sr.sweep_jobs(tmp_path)] == ["0", "1", "2"]


@pytest.mark.parametrize("name, content, warning", [
    ("perf.json", "[1, 2]", "{f} is not a readable JSON object"),
    ("perf.json", '{"latency_ms": "fast", "throughput_img_s": 3}', "{f}: 'latency_ms' is not a JSON object"),
    ("metrics.json", '{"metrics": [1, 2]}', "{f}: 'metrics' is not a JSON object"),
    ("result.json", '"x"', "{f} is not a readable JSON object"),
    ("error.json", "[1]", "{f} is not a readable JSON object"),
    ("run.json", '{"status": "ok", "inputs": {"model_file": "abc"}}', "{f}: 'model_file' is not a JSON object"),
    ("run.json", '{"status": "ok", "inputs": [1]}', "{f}: 'inputs' is not a JSON object"),
    (".hydra/config.yaml", "- 1", "{f} is not a readable config mapping"),
    (".hydra/overrides.yaml", '- !!python/object/apply:os.system ["echo pwned"]',
     "{f}: not readable as Hydra's list of overrides (could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system')"),
    (".hydra/overrides.yaml", "a: 1", "{f}: not a list of overrides as Hydra writes it (a dict)"),
])
def test_a_job_record_of_the_wrong_type_is_read_as_missing_and_named_not_a_traceback(tmp_path, caplog, capsys,
                                                                                       name, content, warning):
    """Before: the report (``python -m zoo_core.reports.sweep_report``, and the same code at the end of every
    sweep) crashed with an AttributeError (``'list' object has no attribute 'get'``) or a yaml ConstructorError
    traceback on a record of valid JSON / YAML but of another type than zoo writes."""
    t = 1_700_000_000.0
    for job in ("0", "1"):
        fake_job(tmp_path, job, "perf", ["model=fixture", "stage=perf", f"batch_size={job}"], t,
                 run={"status": "ok"}, perf={"images": 4, "throughput_img_s": 2.0,
                                             "latency_ms": {"mean": 1.0, "p99": 2.0}})
    f = tmp_path / "0" / "perf" / name
    f.write_text(content)
    rc = sr.main([str(tmp_path)])
    md = capsys.readouterr().out
    assert "2 jobs (" in md and rc == (1 if name == "error.json" else 0)
    assert warning.format(f=f) in caplog.text
    rows, _ = sr.collect_rows(tmp_path)
    if name == "error.json":  # written only when a job fails: the job failed, whatever the file holds
        assert rows[0]["status"] == "failed"
        assert rows[0]["error"] == f"the job failed, but its {f} is not a readable JSON object"
    assert rows[1]["throughput"] == 2.0  # the other job is read as before


def test_a_failure_note_from_error_json_shows_control_characters_as_escapes(tmp_path, capsys):
    """Before: a job's error.json `{"error": "ESC]0;...BEL ESC[2K CR forged ESC[8m hidden"}` was printed (and written
    to sweep_report.md) raw: the terminal's title set, the line erased, the rest hidden."""
    t = 1_700_000_000.0
    fake_job(tmp_path, "0", "perf", ["model=fixture", "stage=perf", "batch_size=1"], t,
             perf={"images": 4, "throughput_img_s": 2.0, "latency_ms": {"mean": 1.0, "p99": 2.0}})
    fake_job(tmp_path, "1", "perf", ["model=fixture", "stage=perf", "batch_size=2"], t,
             error={"error": "\x1b]0;PWNED-TITLE\x07\x1b[2K\rforged\x1b[8m hidden"})
    assert sr.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    note = "1. job `1`: \\x1b]0;PWNED-TITLE\\x07\\x1b[2K\\rforged\\x1b[8m hidden"
    assert note in out.splitlines() and "\x1b" not in out and "\r" not in out
    md = (tmp_path / "sweep_report.md").read_text()
    assert note in md.splitlines() and "\x1b" not in md
    assert json.loads((tmp_path / "1" / "perf" / "error.json").read_text())["error"].startswith("\x1b]0;")  # data kept


BIG = int("1" + "0" * 400)  # beyond the float range: float() raises OverflowError


@pytest.mark.parametrize("perf", [
    {"images": 4, "throughput_img_s": BIG, "latency_ms": {"mean": 1.0, "p99": 2.0}},
    {"images": 4, "throughput_img_s": 2.0, "latency_ms": {"mean": BIG, "p99": 2.0}},
    {"images": 4, "throughput_img_s": 2.0, "device_call_ms": {"mean": 1.0, "p99": BIG}},
])
def test_a_400_digit_number_in_perf_json_is_read_as_missing_and_named_not_a_traceback(tmp_path, caplog, capsys, perf):
    """Before: `python -m zoo_core.reports.sweep_report <sweep>` died with an OverflowError traceback (decimals_for's
    float()) on a perf.json value of 400 digits."""
    t = 1_700_000_000.0
    fake_job(tmp_path, "0", "perf", ["model=fixture", "stage=perf", "batch_size=1"], t, perf=perf)
    fake_job(tmp_path, "1", "perf", ["model=fixture", "stage=perf", "batch_size=2"], t,
             perf={"images": 4, "throughput_img_s": 3.0, "latency_ms": {"mean": 1.0, "p99": 2.0}})
    assert sr.main([str(tmp_path)]) == 0
    assert "2 jobs (0 failed)" in capsys.readouterr().out
    f = tmp_path / "0" / "perf" / "perf.json"
    assert f"{f}: " in caplog.text and "is 100000...(401 digits), not a finite number: the sweep report reads " \
                                      "it as missing" in caplog.text
    rows, _ = sr.collect_rows(tmp_path)
    assert rows[1]["throughput"] == 3.0
    assert sr.decimals_for([BIG, 2.5]) == sr.decimals_for([2.5])


def test_a_400_digit_metric_is_read_as_missing(tmp_path, caplog):
    t = 1_700_000_000.0
    for job in ("0", "1"):
        fake_job(tmp_path, job, "eval", ["model=fixture", "stage=eval", f"batch_size={job}"], t,
                 perf={"images": 4, "throughput_img_s": 2.0 + int(job)},
                 metrics={"metrics": {"AP": BIG if job == "0" else 0.5}})
    rows, swept = sr.collect_rows(tmp_path)
    assert [r["metric:AP"] for r in rows] == [None, 0.5] and "'AP' is 100000...(401 digits)" in caplog.text
    assert sr.plot_png(rows, swept) is not None


@pytest.mark.parametrize(("record", "text", "key", "shown"), [
    ("perf", '{"images": 4, "throughput_img_s": 1e400, "latency_ms": {"mean": 1.0, "p99": 2.0}}', "throughput",
     "'throughput_img_s' is inf"),
    ("perf", '{"images": 4, "throughput_img_s": 2.0, "latency_ms": {"mean": NaN, "p99": 2.0}}', "latency_mean_ms",
     "'mean' is nan"),
    ("metrics", '{"metrics": {"easy": NaN}}', "metric:easy", "'easy' is nan"),
    ("metrics", '{"metrics": {"easy": -Infinity}}', "metric:easy", "'easy' is -inf"),
])
def test_a_nan_or_an_infinity_in_a_job_record_is_read_as_missing_with_a_warning(tmp_path, caplog, record, text,
                                                                               key, shown):
    """Before: `"throughput_img_s": 1e400` in perf.json or `"easy": NaN` in metrics.json printed `inf` / `nan` cells,
    while a 400-digit integer was read as missing with a warning. zoo writes neither (an undefined metric is null)."""
    t = 1_700_000_000.0
    for job in ("0", "1"):
        fake_job(tmp_path, job, "eval", ["model=fixture", "stage=eval", f"batch_size={int(job) + 1}"], t,
                 perf={"images": 4, "throughput_img_s": 3.0, "latency_ms": {"mean": 1.0, "p99": 2.0}},
                 metrics={"metrics": {"easy": 0.5}})
    f = tmp_path / "0" / "eval" / f"{record}.json"
    f.write_text(text)
    rows, swept = sr.collect_rows(tmp_path)
    assert rows[0][key] is None and rows[1][key] in (3.0, 1.0, 0.5)
    assert f"{f}: {shown}, not a finite number: the sweep report reads it as missing" in caplog.text
    md = sr.write_markdown(rows, swept, "t")
    assert "nan" not in md.lower().replace("name", "") and "inf" not in md
    assert sr.plot_png(rows, swept) is not None


def test_a_new_sweep_removes_the_temp_files_a_killed_sweep_left_in_its_dir(tmp_path):
    """Before: a sweep killed while it wrote sweep_jobs.json (or sweep_report.*, report.html) left its
    `.sweep_jobs.json.<pid>.<random>.tmp` there for good; docs/errors.md promises the next run removes it. A
    live writer's temp file (another pid still running) and the files of the job dirs' own runs are left."""
    from omegaconf import OmegaConf

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = proc.pid
    stale = [tmp_path / f".{sr.MANIFEST}.{dead}.0badf00d.tmp", tmp_path / f".sweep_report.md.{dead}.12345678.tmp"]
    live = tmp_path / f".report.html.{os.getppid()}.abcdef01.tmp"
    for p in (*stale, live):
        p.write_text("partial")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "overrides": {"hydra": []}}})
    report = sr.SweepReport()
    report.on_multirun_start(cfg)
    try:
        assert not any(p.exists() for p in stale)
        assert live.read_text() == "partial"
    finally:
        report.__dict__.pop("_sweep_lock").release()


@pytest.mark.parametrize("name", ["²", "9" * 200])
def test_a_job_folder_named_with_digits_int_does_not_take_is_sorted_as_a_name(tmp_path, name):
    """Before: ``'²'.isdigit()`` is true but ``int('²')`` raises: a job folder ``²`` killed the sweep report with a
    ValueError traceback (the job sort, the shard merge's free job numbers); a job folder of 200 digits left the
    merge no free job number for a missing shard (StopIteration out of the report)."""
    import shutil

    from tests.test_shard_merge import fake_shard_sweep

    fake_shard_sweep(tmp_path)
    shutil.rmtree(tmp_path / "1")  # shard 1 never ran: its re-run command gets a new job dir
    fake_job(tmp_path, name, "eval", ["model=fixture", "stage=eval"], 1_700_000_000.0, perf={"images": 1})
    assert [f.root.name for f in sr.sweep_jobs(tmp_path)] == ["0", name]
    [row] = sr.build_report(tmp_path)["merged"]
    assert row["status"] == "failed" and "shard 1 of 2 is missing" in row["error"]
    assert "hydra.sweep.subdir=1/eval" in row["error"]


def test_perf_and_eval_records_land_in_the_throughput_and_latency_columns(tmp_path):
    """perf.json of a perf stage has "throughput" and "latency_ms" {mean, median, p99, ...}; of eval,
    "throughput_img_s" and "device_call_ms": each lands in throughput / latency mean / latency p99
    (docs/sweeps.md), never the median or max in their place."""
    jobs = {"0": {"stage": "perf", "images": 20, "throughput": 100.0,
                  "latency_ms": {"mean": 10.0, "median": 9.0, "p99": 30.0, "min": 8.0, "max": 31.0}},
            "1": {"stage": "eval", "images": 4, "throughput_img_s": 8.0,
                  "device_call_ms": {"mean": 120.0, "median": 110.0, "p99": 150.0}}}
    for job, perf in jobs.items():
        rec = tmp_path / job / "perf"
        (rec / ".hydra").mkdir(parents=True)
        (rec / ".hydra" / "overrides.yaml").write_text(f"- model=fixture\n- batch_size={job}\n")
        (rec / "perf.json").write_text(json.dumps(perf))
    rows, _ = sr.collect_rows(tmp_path)
    assert [(r["throughput"], r["latency_mean_ms"], r["latency_p99_ms"]) for r in rows] == \
        [(100.0, 10.0, 30.0), (8.0, 120.0, 150.0)]
    csv_rows = sr.write_csv(rows).splitlines()
    head = csv_rows[0].split(",")
    assert [[ln.split(",")[head.index(c)] for c in ("throughput", "latency_mean_ms", "latency_p99_ms")]
            for ln in csv_rows[1:]] == [["100.0", "10.0", "30.0"], ["8.0", "120.0", "150.0"]]


def test_only_headline_metrics_become_columns_not_per_class_ones(tmp_path):
    """metrics.json holds per-class AP under "AP/<class>" keys beside the headline metrics; the report's
    columns are the headline metrics only (docs/sweeps.md: every headline metric, metric:<name>)."""
    rec = tmp_path / "0" / "eval"
    (rec / ".hydra").mkdir(parents=True)
    (rec / ".hydra" / "overrides.yaml").write_text("- model=fixture\n- batch_size=1\n")
    (rec / "metrics.json").write_text(json.dumps({"images": 4, "metrics": {"AP": 0.5, "AP50": 0.75,
                                                                           "AP/person": 0.25, "AP/car": 1.0}}))
    rows, _ = sr.collect_rows(tmp_path)
    assert {k: v for k, v in rows[0].items() if k.startswith("metric:")} == {"metric:AP": 0.5, "metric:AP50": 0.75}
    assert "AP/person" not in sr.write_csv(rows).splitlines()[0]


def test_a_one_job_sweep_shows_its_swept_values_as_columns(tmp_path):
    """`zoo run -m batch_size=4` makes one job: no value differs between jobs, yet the table still shows the
    value that job ran with (a swept key column), as a sweep of several jobs does."""
    fake_job(tmp_path, "0", "perf", ["model=fixture", "batch_size=4"], 1_000_000.0,
             perf={"stage": "perf", "images": 20, "throughput": 50.0, "latency_ms": {"mean": 80.0, "p99": 90.0}})
    rows, swept = sr.collect_rows(tmp_path)
    assert swept == ["model", "batch_size"]
    head, cells = table(sr.write_markdown(rows, swept))
    assert head[:3] == ["model", "batch_size", "status"]
    assert cells[0][:3] == ["fixture", "4", "ok"]


@pytest.mark.parametrize("metrics, used", [(["mAP", "AP"], "AP"), (["AP50", "easy"], "easy"),
                                           (["hard", "medium"], "hard")])
def test_the_pareto_plot_uses_ap_else_easy_else_the_first_metric(metrics, used):
    """docs/sweeps.md: the accuracy metric of the Pareto plot is AP, else easy, else the jobs' first metric."""
    rows = [row(0, **{f"metric:{m}": 0.5 for m in metrics})]
    assert sr.accuracy_metric(rows) == used
