"""Files zoo reads whole are read through ``read_at_most``: a FIFO or a device (``/dev/zero``) is refused unopened,
a file over its cap unread, naming the file and the limit (the attacker-files audit, findings 3-6 and 9).

A FIFO case runs its read in a thread: a regression fails the test instead of hanging the suite. Files over a
cap are sparse (``truncate``), or the cap is lowered, so no real disk or memory is used.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from zoo_core.api.checkpoint import MAX_RECORD_BYTES, read_at_most
from zoo_core.api.errors import InputError, ZooError

PNG = b"\x89PNG\r\n\x1a\n"


def _within(seconds: float, fn, fifos: list[Path]):
    """``("ok", fn())`` or ``("raised", exc)``, run in a thread; fails the test if it blocks on one of ``fifos``
    (whose readers are then unblocked so the test process can end)."""
    done: list = []

    def call() -> None:
        try:
            done.append(("ok", fn()))
        except Exception as exc:
            done.append(("raised", exc))

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    blocked = t.is_alive()
    while t.is_alive():
        for f in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        t.join(0.1)
    assert not blocked, f"blocked on a FIFO: {fifos}"
    return done[0]


def _limited(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -c code`` under a 3 GiB address-space limit and a 60 s timeout: a read of ``/dev/zero`` that
    regressed fails the test (MemoryError) instead of filling the machine's memory."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60,
                          preexec_fn=limit)


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    path.write_bytes(head)
    os.truncate(path, size)
    return path


# -- the helper ------------------------------------------------------------------------------------

def test_read_at_most_refuses_a_fifo_a_device_and_a_file_over_the_limit_unread(tmp_path):
    fifo = tmp_path / "f.json"
    os.mkfifo(fifo)
    kind, exc = _within(10, lambda: read_at_most(fifo, 100, "record file"), [fifo])
    assert kind == "raised" and str(exc) == f"{fifo}: record file is a FIFO (named pipe), not a regular file"
    (tmp_path / "z.json").symlink_to("/dev/zero")
    with pytest.raises(ZooError, match=r"z.json: record file is a character device, not a regular file"):
        read_at_most(tmp_path / "z.json", 100, "record file")
    big = _sparse(tmp_path / "big.json", (5 << 30) + 1)  # 5 GiB, none of it on disk
    with pytest.raises(InputError) as err:
        read_at_most(big, 64 << 20, "JSON-lines list", InputError, hint="raise it")
    assert str(err.value) == (f"{big}: not read: it is {(5 << 30) + 1} bytes, over the limit of 64 MiB for a "
                              f"JSON-lines list\n  hint: raise it")
    (tmp_path / "ok").write_bytes(b"x" * 100)
    assert read_at_most(tmp_path / "ok", 100) == b"x" * 100
    with pytest.raises(ZooError, match="it is 100 bytes, over the limit of 99 bytes for a file"):
        read_at_most(tmp_path / "ok", 99)
    with pytest.raises(ZooError, match=r"ok\.missing: file not found"):
        read_at_most(tmp_path / "ok.missing", 99)


# -- finding 3: the sweep report and the shard merge -------------------------------------------------

def _sweep(tmp_path: Path) -> Path:
    from tests.test_sweep_report import fake_job

    t = 1_700_000_000.0
    for job in ("0", "1"):
        fake_job(tmp_path, job, "perf", ["model=fixture", "stage=perf", f"batch_size={int(job) + 1}"], t,
                 perf={"images": 4, "throughput_img_s": 2.0 + int(job), "latency_ms": {"mean": 1.0, "p99": 2.0}})
    return tmp_path / "0" / "perf" / "perf.json"


@pytest.mark.parametrize("plant", ["fifo", "over_the_cap"])
def test_a_sweep_report_reads_a_perf_json_that_is_a_fifo_a_device_or_too_large_as_missing(tmp_path, caplog,
                                                                                         monkeypatch, plant):
    """Before: `python -m zoo_core.reports.sweep_report <sweep>` hung forever on a job's perf.json that was a FIFO
    and read /dev/zero until memory ran out (10.9 GB in 20 s)."""
    from zoo_core.reports import sweep_report as sr

    perf = _sweep(tmp_path)
    perf.unlink()
    if plant == "fifo":
        os.mkfifo(perf)
    else:  # a valid record, but larger than the cap (lowered, so the file stays small)
        monkeypatch.setattr(sr, "MAX_RECORD_BYTES", 1024)
        perf.write_text(json.dumps({"images": 4, "throughput_img_s": 2.0, "pad": "x" * 2000}))
    kind, value = _within(20, lambda: sr.collect_rows(tmp_path), [perf])
    assert kind == "ok", value
    rows, _ = value
    assert [r["throughput"] for r in rows] == [None, 3.0]
    assert f"{perf} is not a readable JSON object: the sweep report reads it as missing" in caplog.text


def test_a_sweep_report_never_reads_a_perf_json_linked_to_dev_zero(tmp_path):
    """Before: read until memory ran out (10.9 GB in 20 s)."""
    perf = _sweep(tmp_path)
    perf.unlink()
    perf.symlink_to("/dev/zero")
    code = ("from pathlib import Path; from zoo_core.reports import sweep_report as sr; "
            f"print([r['throughput'] for r in sr.collect_rows(Path({str(tmp_path)!r}))[0]])")
    proc = _limited(code, tmp_path)
    assert proc.returncode == 0 and proc.stdout == "[None, 3.0]\n", proc.stderr[-2000:]
    assert f"{perf} is not a readable JSON object: the sweep report reads it as missing" in proc.stderr


def test_a_job_config_or_overrides_that_is_a_fifo_never_blocks_the_shard_merge(tmp_path):
    """Before: the shard merge's reads of .hydra/config.yaml / hydra.yaml (and read_overrides) had no regular-file
    check: a FIFO blocked them forever."""
    from zoo_core.reports.job_files import job_files
    from zoo_core.reports.shard_merge import merge_config, pinned_threads
    from zoo_core.reports.sweep_report import read_overrides

    _sweep(tmp_path)
    files = job_files(tmp_path / "0", "perf")
    (files.run).write_text(json.dumps({"config": {"backend": {"name": "torch", "threads": 2}}}))
    for f in (files.config, files.overrides, files.overrides.parent / "hydra.yaml"):
        f.unlink(missing_ok=True)
        os.mkfifo(f)
    fifos = [files.config, files.overrides]
    kind, exc = _within(20, lambda: merge_config(files), fifos)
    assert kind == "raised" and isinstance(exc, ValueError) and "FIFO (named pipe), not a regular file" in str(exc)
    kind, exc = _within(20, lambda: read_overrides(files.overrides), fifos)
    assert kind == "raised" and str(exc) == f"{files.overrides}: record file is a FIFO (named pipe), not a regular file"
    kind, value = _within(20, lambda: pinned_threads(files, []), fifos)
    assert (kind, value) == ("ok", ["pin.cores=2", "pin.jobs=1"])  # the composed config unread: pinned again


# -- finding 4: the generated sample's marker --------------------------------------------------------

@pytest.mark.parametrize("text", ['[1]', '{"recipe": "1", "files": 5}', '{"recipe": "1", "files": [["a"]]}',
                                  "[" * 100_000])
def test_a_sample_marker_that_is_not_zoos_is_an_incomplete_sample_not_a_traceback(tmp_path, text):
    """Before: `[1]`, `{"files": 5}`, `{"files": [["a"]]}` or 100,000 nested `[` in SAMPLE_COMPLETE.json were an
    AttributeError / TypeError / RecursionError traceback, exit 1. Now the sample is incomplete: a folder holding
    zoo's marker is rebuilt, as with an unparseable or outdated marker."""
    from zoo_core.datasets.widerface.sample import MARKER, _check_replaceable, _is_complete

    (tmp_path / MARKER).write_text(text)
    assert _is_complete(tmp_path) is False
    _check_replaceable(tmp_path)  # (the marker is a regular file: zoo's sample, rebuilt)


@pytest.mark.parametrize("plant", ["fifo", "dev_zero"])
def test_a_sample_marker_that_is_a_fifo_or_a_device_is_refused_unopened_and_left_alone(tmp_path, plant):
    """Before: a FIFO SAMPLE_COMPLETE.json hung `zoo run ... dataset.root=<dir>`; linked to /dev/zero it ate 24 GB.
    Now the folder is no zoo sample: refused naming it, nothing in it touched."""
    from zoo_core.datasets.widerface.sample import MARKER, ensure_sample

    root = tmp_path / "root"
    root.mkdir()
    marker = root / MARKER
    (root / "mine.txt").write_text("user data")
    expected = f"{root}: holds no sample zoo generated (its {MARKER} is not a regular file"
    if plant == "fifo":
        os.mkfifo(marker)
        kind, exc = _within(20, lambda: ensure_sample(root), [marker])
        assert kind == "raised" and isinstance(exc, ZooError) and str(exc).startswith(expected), exc
    else:  # in a subprocess under a memory limit: a regression fails instead of reading /dev/zero without end
        marker.symlink_to("/dev/zero")
        code = ("from zoo_core.datasets.widerface.sample import ensure_sample\n"
                "from zoo_core.api.errors import ZooError\n"
                f"try:\n    ensure_sample({str(root)!r})\nexcept ZooError as e:\n    print(e)")
        proc = _limited(code, tmp_path)
        assert proc.returncode == 0 and proc.stdout.startswith(expected), proc.stderr[-2000:]
    assert sorted(p.name for p in root.iterdir()) == [MARKER, "mine.txt"]
    assert (root / "mine.txt").read_text() == "user data"


def test_a_sample_marker_over_the_cap_is_not_read(tmp_path, monkeypatch):
    from zoo_core.api import checkpoint
    from zoo_core.datasets.widerface.sample import MARKER, RECIPE_VERSION, _is_complete

    (tmp_path / MARKER).write_text(json.dumps({"recipe": RECIPE_VERSION, "files": [], "pad": "x" * 100}))
    assert _is_complete(tmp_path) is True
    monkeypatch.setattr(checkpoint, "MAX_RECORD_BYTES", 64)  # (a valid marker over the cap: not read, incomplete)
    assert _is_complete(tmp_path) is False


# -- finding 5: files read whole ---------------------------------------------------------------------

def test_a_wider_prediction_file_over_the_cap_or_a_fifo_is_refused_unread(tmp_path, monkeypatch):
    """Before: a 2 GB prediction .txt took 4.2 GB RSS; 10 GB under a memory limit was `error: MemoryError`, exit 1."""
    from zoo_core.datasets.widerface import predictions as pr

    big = _sparse(tmp_path / "big.txt", pr.MAX_PREDICTION_BYTES + 1, b"img\n1\n1 2 3 4 0.9\n")
    with pytest.raises(ZooError) as err:
        pr.read_prediction_file(big)
    assert str(err.value) == (f"{big}: not read: it is {pr.MAX_PREDICTION_BYTES + 1} bytes, over the limit of "
                              f"{pr.MAX_PREDICTION_BYTES >> 20} MiB for a prediction file")
    ok = tmp_path / "ok.txt"
    ok.write_text("img\n1\n1 2 3 4 0.9\n" + "\n" * 100)
    assert pr.read_prediction_file(ok)[0] == "img"
    monkeypatch.setattr(pr, "MAX_PREDICTION_BYTES", 64)  # a valid file over the cap is refused, not parsed
    with pytest.raises(ZooError, match=r"ok.txt: not read: it is 118 bytes, over the limit of 64 bytes"):
        pr.read_prediction_file(ok)
    fifo = tmp_path / "f.txt"
    os.mkfifo(fifo)
    kind, exc = _within(10, lambda: pr.read_prediction_file(fifo), [fifo])
    assert kind == "raised" and str(exc) == f"{fifo}: prediction file is a FIFO (named pipe), not a regular file"


def test_a_detections_state_json_over_the_cap_is_refused_unread(tmp_path):
    """Before: `evaluate detections=<dir>` read a 2 GB state.json whole."""
    from zoo_core.stages.evaluate_stage import check_provenance

    state = _sparse(tmp_path / "state.json", MAX_RECORD_BYTES + 1, b'{"fingerprint": {}}')
    with pytest.raises(ZooError) as err:
        check_provenance(None, tmp_path)
    assert str(err.value) == (f"{state}: not read: it is {MAX_RECORD_BYTES + 1} bytes, over the limit of "
                              f"{MAX_RECORD_BYTES >> 20} MiB for a detections state file")


def test_an_inputs_or_outputs_state_json_over_the_cap_is_refused_unread(tmp_path):
    """Before: infer / postprocess read a 2 GB sparse inputs/state.json whole (4.2 GB RSS)."""
    from zoo_core.runs.layout import artifact_state

    state = _sparse(tmp_path / "state.json", MAX_RECORD_BYTES + 1, b'{"complete": false}')
    with pytest.raises(ZooError) as err:
        artifact_state(tmp_path)
    assert str(err.value).split("\n")[0] == (f"{state}: not read: it is {MAX_RECORD_BYTES + 1} bytes, over the "
                                             f"limit of {MAX_RECORD_BYTES >> 20} MiB for a state file")


def test_resume_over_a_state_json_over_the_cap_is_refused_unread(fixture_cfg, tmp_path):
    """Before: resume=true (start_resumable, and refuse_changed_quantize before it) read state.json whole."""
    from tests.test_om_record import _ctx
    from zoo_core.runs.resume import ResumeRefused, refuse_changed_quantize, start_resumable

    state = _sparse(tmp_path / "state.json", MAX_RECORD_BYTES + 1, b'{"fingerprint": {}}')
    ctx = _ctx(fixture_cfg, tmp_path, "infer", resume=True, **{"backend.name": "onnxruntime"})
    refuse_changed_quantize(ctx, state)  # (left to start_resumable)
    with pytest.raises(ResumeRefused) as err:
        start_resumable(ctx, state, {"model": "abc"}, lambda: None)
    assert str(err.value).split("\n")[0] == (
        f"{state}: cannot resume: the state file is unreadable (not read: it is {MAX_RECORD_BYTES + 1} bytes, over "
        f"the limit of {MAX_RECORD_BYTES >> 20} MiB for a state file)")
    assert state.stat().st_size == MAX_RECORD_BYTES + 1  # left as it was


def test_a_model_record_over_the_cap_is_not_trusted_and_not_read(tmp_path, caplog):
    """Before: read_record read a model file's .json record whole."""
    from zoo_core.runs.model_files import read_record

    meta = _sparse(tmp_path / "m.json", MAX_RECORD_BYTES + 1, b'{"sha256": "ab"}')
    with caplog.at_level(logging.INFO, logger="zoo"):
        assert read_record(meta) == {}
    assert f"{meta}: not read: it is {MAX_RECORD_BYTES + 1} bytes" in caplog.text
    assert "what it describes is not trusted" in caplog.text


def test_an_index_jsonl_over_the_cap_is_an_input_error_unread(tmp_path, monkeypatch):
    """Before: resuming read detections/index.jsonl whole (2 GB -> 4.3 GB RSS)."""
    from zoo_core.runs import resume

    index = _sparse(tmp_path / "index.jsonl", resume.MAX_JSONL_BYTES + 1)
    with pytest.raises(InputError, match=rf"index.jsonl: not read: it is {resume.MAX_JSONL_BYTES + 1} bytes, over "
                                         rf"the limit of {resume.MAX_JSONL_BYTES >> 20} MiB for a JSON-lines list"):
        resume.read_jsonl(index, drop_torn_tail=True)
    index.write_text('{"id": "chunk-000000.npz"}\n' * 10)
    assert len(resume.read_jsonl(index)) == 10
    monkeypatch.setattr(resume, "MAX_JSONL_BYTES", 100)  # valid lines over the cap: refused, not parsed
    with pytest.raises(InputError, match="over the limit of 100 bytes"):
        resume.read_jsonl(index)


def test_the_run_page_leaves_out_a_png_over_the_cap_with_a_warning(tmp_path, caplog):
    """Before: `python -m zoo_core.reports.html <run>` embedded a pr_curves.png followed by a 2 GB tail: 16.8 GB RSS
    and a 2.86 GB report.html, exit 0."""
    from zoo_core.reports import html

    (tmp_path / "metrics.json").write_text(json.dumps({"schema": 1, "model": "m", "stage": "eval",
                                                       "metrics": {"AP": 0.5}}))
    png = _sparse(tmp_path / "pr_curves.png", html.MAX_PNG_BYTES + 1, PNG)
    with caplog.at_level(logging.WARNING, "zoo"):
        page = html.render_run_report(tmp_path)
    assert "data:image/png" not in page and len(page) < 1 << 20
    assert (f"{png}: not read: it is {html.MAX_PNG_BYTES + 1} bytes, over the limit of "
            f"{html.MAX_PNG_BYTES >> 20} MiB for a picture; the report leaves it out") in caplog.text


# -- finding 6: a sweep's report files that are not UTF-8 --------------------------------------------

def test_a_sweep_csv_that_is_not_utf8_is_one_line_naming_it_exit_2(tmp_path, capsys):
    """Before: a UnicodeDecodeError traceback, exit 1."""
    from zoo_core.reports.html import main

    csv_path = tmp_path / "sweep_report.csv"
    csv_path.write_bytes(b"job,status\n0,ok\xff\n")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"error: {csv_path}: not UTF-8 text (byte 0xff at offset 15), not the CSV zoo writes"
    assert "Traceback" not in err and not (tmp_path / "report.html").exists()


def test_a_sweep_markdown_that_is_not_utf8_loses_its_notes_with_a_warning(tmp_path, caplog):
    from zoo_core.reports.html import render_sweep_report

    (tmp_path / "sweep_report.csv").write_text("job,status\n0,ok\n")
    md = tmp_path / "sweep_report.md"
    md.write_bytes(b"# Sweep\n\nnote one\n\xfe bad\n")
    with caplog.at_level(logging.WARNING, "zoo"):
        page = render_sweep_report(tmp_path)
    assert "note one" not in page and '<span class="badge ok">ok</span>' in page
    assert f"{md}: not UTF-8 text (byte 0xfe at offset 18); the report leaves its notes out" in caplog.text
