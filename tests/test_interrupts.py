"""Ctrl-C (and what it causes) at the edges of a run: an error raised because of it is the interrupt (exit 130,
"interrupted"), and one that comes once the run is complete (while report.html is written) leaves it complete.

In-process, with the stage or the report replaced by a fake that raises what a Ctrl-C there raises. The preprocess
workers' side is in test_procpool.py.
"""
from __future__ import annotations

import contextlib
import json

import pytest

from zoo_core.cli import main as zoo_main


@contextlib.contextmanager
def _registered(observer, name: str):
    """``observer`` registered as a plugin of zoo's manager for the block."""
    from zoo_core.plugins import get_manager

    pm = get_manager().pm
    pm.register(observer, name=name)
    try:
        yield
    finally:
        pm.unregister(observer)


@pytest.fixture
def run_args(tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    return ["run", "model=fixture", "backend=oracle", "num_workers=0", "dataset.limit=2",
            f"work_dir={tmp_path / 'run'}"]


def _interrupted_import(ctx):
    try:
        raise KeyboardInterrupt  # (what `import onnxruntime` gets when Ctrl-C comes while it initialises)
    except KeyboardInterrupt as exc:
        raise ImportError("initialization failed") from exc


def test_an_error_a_ctrl_c_caused_is_the_interrupt(run_args, tmp_path, monkeypatch, capsys):
    """Before: `error: ImportError: initialization failed (unexpected error; traceback ...)`, exit 1, for a Ctrl-C
    during `import onnxruntime`."""
    import zoo_core.stages

    monkeypatch.setattr(zoo_core.stages, "get_stage", lambda name: _interrupted_import)
    with pytest.raises(SystemExit) as info:
        zoo_main(run_args)
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert err.endswith("interrupted\n") and "ImportError" not in err and "error:" not in err, err
    record = json.loads((tmp_path / "run" / "eval" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == "KeyboardInterrupt"
    assert not (tmp_path / "run" / "eval" / "error_traceback.txt").exists()


def test_a_ctrl_c_that_code_in_the_stage_swallowed_still_ends_the_run_as_interrupted(run_args, tmp_path, monkeypatch,
                                                                                   capsys):
    """Before: a Ctrl-C landing in numpy's Cython ``numpy.random`` import (scipy imports it as the evaluation
    starts) was swallowed there, and the run wrote run.json "ok" and exited 0 (2 of 60 trials of a stress run)."""
    import os
    import signal

    import zoo_core.stages

    stage = zoo_core.stages.get_stage("eval")
    ran = []

    def swallowing(ctx):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # (what the extension module's initialisation did with it)
        ran.append(True)
        return stage(ctx)

    monkeypatch.setattr(zoo_core.stages, "get_stage", lambda name: swallowing)
    with pytest.raises(SystemExit) as info:
        zoo_main(run_args)
    assert ran and info.value.code == 130
    assert capsys.readouterr().err.endswith("interrupted\n")
    record = json.loads((tmp_path / "run" / "eval" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == "KeyboardInterrupt"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's handler is back


def test_a_caller_of_main_keeps_its_signal_handlers():
    import signal

    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGTERM, mine)
    try:
        assert zoo_main(["--help"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, old)


def test_an_error_a_ctrl_c_caused_before_the_run_is_the_interrupt(monkeypatch, capsys):
    import zoo_core.cli as cli

    monkeypatch.setattr(cli, "cmd_run", lambda args: _interrupted_import(None))
    assert zoo_main(["run", "model=fixture"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_ctrl_c_while_report_html_is_written_leaves_the_finished_run_finished(run_args, tmp_path, monkeypatch,
                                                                               capsys):
    """Before: exit 130 "interrupted" although run.json already said ok and every record was written. Now the
    report is left out, said with the command that writes it, and the run exits 0 as the finished run it is."""
    import zoo_core.reports.html

    def interrupted(record_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo_core.reports.html, "write_report", interrupted)
    assert zoo_main(run_args) == 0
    err = capsys.readouterr().err
    record_dir = tmp_path / "run" / "eval"
    assert (f"warning: interrupted while writing {record_dir / 'report.html'}: the run is complete without it "
            f"(python -m zoo_core.reports.html {record_dir} writes it)") in err
    assert json.loads((record_dir / "run.json").read_text())["status"] == "ok"
    assert (record_dir / "metrics.json").is_file() and not (record_dir / "report.html").exists()


def test_a_ctrl_c_while_the_summary_is_printed_leaves_the_finished_run_finished(run_args, tmp_path, monkeypatch,
                                                                                capsys):
    from zoo_core import hookimpl

    class Interrupted:  # an observer Ctrl-C stops, as it stops the summary printed on the terminal
        @hookimpl
        def zoo_stage_finished(self, cfg, stage, run_dir, result):
            raise KeyboardInterrupt

    with _registered(Interrupted(), "test-interrupted"):
        assert zoo_main(run_args) == 0
    run_json = tmp_path / "run" / "eval" / "run.json"
    assert f"warning: interrupted after the run finished: its records are complete ({run_json} says ok)" in \
        capsys.readouterr().err
    assert json.loads(run_json.read_text())["status"] == "ok"


def test_a_ctrl_c_while_hydra_closes_a_finished_run_leaves_it_finished(run_args, tmp_path, monkeypatch, capsys):
    from hydra._internal.callbacks import Callbacks

    def interrupted(self, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Callbacks, "on_run_end", interrupted)
    assert zoo_main(run_args) == 0
    run_json = tmp_path / "run" / "eval" / "run.json"
    assert f"warning: interrupted after the run finished: its records are complete ({run_json} says ok)" in \
        capsys.readouterr().err


def test_once_the_exit_status_is_decided_the_program_ignores_ctrl_c_and_sigterm():
    """Before: a Ctrl-C during the interpreter's shutdown after a finished run (27 of 40 single Ctrl-Cs sent within
    0.4 s of run.json saying ok) killed the process by SIGINT, which the shell reports as 130 like an interrupted
    run. (A caller of main() with its own argv, as the tests are, keeps its handlers.)"""
    import signal
    import subprocess
    import sys

    code = ("import signal, sys; sys.argv = ['zoo', '--help']; from zoo_core.cli import main; main(); "
            "print(*(signal.getsignal(s) is signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines()[-1] == "True True True"
    assert zoo_main(["--help"]) == 0 and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_closed_terminal_sighup_ends_the_run_as_interrupted(run_args, tmp_path, monkeypatch, capsys):
    """Before: SIGHUP (the terminal or ssh session closed) was left at its default action: the run died at once
    (exit -1, no message), its run.json saying "running" forever and its /dev/shm slot file left. Now it unwinds
    like SIGTERM: exit 130, "interrupted", run.json "failed"; the caller's handler is back afterwards."""
    import os
    import signal

    import zoo_core.stages

    def hung_up(ctx):
        os.kill(os.getpid(), signal.SIGHUP)
        return {}

    came = []

    def mine(signum, frame):  # (stands for the default action, which would end this test process)
        came.append(signum)

    monkeypatch.setattr(zoo_core.stages, "get_stage", lambda name: hung_up)
    old = signal.signal(signal.SIGHUP, mine)
    try:
        with pytest.raises(SystemExit) as info:
            zoo_main(run_args)
        assert signal.getsignal(signal.SIGHUP) is mine
    finally:
        signal.signal(signal.SIGHUP, old)
    assert info.value.code == 130 and not came
    assert capsys.readouterr().err.endswith("interrupted\n")
    record = json.loads((tmp_path / "run" / "eval" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == "KeyboardInterrupt"


def test_under_nohup_sighup_stays_ignored():
    import signal

    from zoo_core.runs import interrupts

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        handlers = interrupts.install()
        try:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        finally:
            interrupts.restore(handlers)
    finally:
        signal.signal(signal.SIGHUP, old)


def test_the_error_line_of_a_run_whose_terminal_hung_up_goes_nowhere_quietly():
    """A closed terminal fails writes with EIO (a closed pipe's EPIPE was already tolerated): the run ending on its
    SIGHUP must not fail printing `interrupted` to it."""
    import io
    import os
    import pty

    from zoo_core.cli import ClosedPipeTolerant

    master, slave = pty.openpty()
    stream = ClosedPipeTolerant(io.TextIOWrapper(io.FileIO(slave, "w"), write_through=True))
    os.close(master)  # the terminal window closed
    try:
        assert stream.write("interrupted\n") == len("interrupted\n")
        stream.flush()
        assert stream.closed_pipe
    finally:
        stream.stream.close()


class _FailingObserver:
    from zoo_core import hookimpl

    @hookimpl
    def zoo_stage_finished(self, cfg, stage, run_dir, result):
        raise RuntimeError("the dashboard is down")


def test_an_observer_failing_after_the_run_leaves_it_ok(run_args, tmp_path, capsys):
    """Before: exit 1 (`plugin ..., hook zoo_stage_finished: ...`) while run.json said ok, and a sweep's jobs showed
    failed with their merge refused though every shard was complete. Now: a warning naming the observer, listed in
    run.json's observer_errors, exit 0."""
    with _registered(_FailingObserver(), "test-failing-observer"):
        assert zoo_main(run_args) == 0
    line = "observer test-failing-observer, hook zoo_stage_finished: RuntimeError: the dashboard is down"
    assert f"warning: {line} (the run's records are complete; it stays ok)" in capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "eval" / "run.json").read_text())
    assert record["status"] == "ok" and record["observer_errors"] == [line]


def test_an_observer_failing_in_a_sharded_sweep_leaves_the_jobs_ok_and_merged(run_args, tmp_path, capsys):
    """Before: both shard jobs showed failed and the merge was refused, though both shards were complete."""
    sweep = tmp_path / "sweep"
    args = ["run", "-m", *run_args[1:-1], "dataset.num_shards=2", "dataset.shard=range(0,2)",
            f"hydra.sweep.dir={sweep}"]
    with _registered(_FailingObserver(), "test-failing-observer"):
        assert zoo_main(args) == 0
    assert "2 jobs (0 failed), 1 shard merge (0 failed)" in capsys.readouterr().out
    assert (sweep / "merged" / "metrics.json").is_file()
    for shard in ("0", "1"):
        record = json.loads((sweep / shard / "eval" / "run.json").read_text())
        assert record["status"] == "ok" and len(record["observer_errors"]) == 1
